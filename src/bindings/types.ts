// Hand-written types of the native addon (native/src/napi). This file is the contract between the
// TypeScript side and the C++ side: change both together.

/** A float32 tensor crossing the boundary (row-major, `shape` in elements). */
export interface NativeTensor {
  data: Float32Array;
  shape: number[];
}

/** An 8-bit image crossing the boundary: HWC, row-major. */
export interface NativeImage {
  data: Uint8Array;
  width: number;
  height: number;
  channels: number;
}

export type NativeDType = "float32" | "float16" | "bfloat16";
export type NativeSchedulerKind = "pndm" | "ddim" | "dpmpp-2m";

/**
 * One exported module: its TorchScript archive and, for manifests of format_version 2, the safetensors file that
 * holds its tensors (mapped into memory at load, not copied), each with its expected sha256 (hex).
 */
export interface NativeModuleFile {
  path: string;
  sha256: string;
  weights?: { path: string; sha256: string };
}

/** What the native pipeline needs from a manifest (src/ parses manifest.json and fills this). */
export interface NativeModelSpec {
  /** Absolute paths and expected sha256 of each module; `controlnet` is optional. */
  modules: Record<"qformer" | "text_encoder" | "unet" | "vae_decoder" | "vae_encoder", NativeModuleFile> & {
    controlnet?: NativeModuleFile;
  };
  numQueryTokens: number;
  ctxBeginPos: number;
  /** CLIP context length (77). */
  textMaxLength: number;
  latentChannels: number;
  /** 2^(len(unet.block_out_channels) - 1). */
  latentScale: number;
  vaeScalingFactor: number;
  /** The scheduler config exactly as the checkpoint gives it (diffusers snake_case keys). */
  scheduler: Record<string, unknown>;
}

export interface NativeLoadOptions {
  /** "cpu", "cuda" or "cuda:N". */
  device: string;
  dtype: NativeDType;
  /** Verify each module file's sha256 before loading. */
  verifyChecksums: boolean;
  /** Freeze and optimize each module for inference at load (torch::jit::optimize_for_inference). */
  optimize?: boolean;
  /** Load only the Q-Former: encodeSubject works, generate() is refused. */
  subjectOnly?: boolean;
}

export interface NativeGenerateParams {
  /** CLIP ids of the built prompt, length textMaxLength - numQueryTokens. */
  condIds: Int32Array;
  /** CLIP ids of the negative prompt, length textMaxLength; used only when guidance > 1. */
  uncondIds: Int32Array;
  /** Subject embeddings [1, Q, D]. */
  queryEmbeds: NativeTensor;
  width: number;
  height: number;
  steps: number;
  guidance: number;
  /** Seed of image 0; image i uses seed + i. Latents are drawn with torch's CPU generator, float32, [1, C, H/f, W/f]. */
  seed: number;
  numImages: number;
  scheduler: NativeSchedulerKind;
  /** Explicit initial latents [1, C, H/f, W/f] for image 0 (overrides the seed's draw; tests use this). */
  latents?: NativeTensor;
  /** ControlNet condition [1, 3, H, W] in [0, 1] (requires a controlnet module). */
  controlImage?: NativeTensor;
  /** ControlNet residual scale. Defaults to 1. */
  conditioningScale?: number;
  /** Return the latents after every scheduler step (image 0 only) and the final decoder input. */
  recordSteps?: boolean;
  /** Fine-tuned UNet weights (full or LoRA) for this call only. */
  unet?: NativeUnetOverride;
}

export interface NativeProgress {
  phase: "text" | "denoise" | "decode";
  /** Image index, 0-based. */
  image: number;
  /**
   * 1-based step within the phase. For "denoise", one event per step asked for (`steps`), sent when the
   * step is done: PNDM's first step runs the UNet twice and reports once.
   */
  step: number;
  /** For "denoise": the `steps` asked for (not the number of UNet calls). */
  total: number;
}

export interface NativeTimings {
  textMs: number;
  denoiseMs: number;
  decodeMs: number;
  totalMs: number;
}

export interface NativeGenerateResult {
  images: NativeImage[];
  seeds: number[];
  timings: NativeTimings;
  /** With recordSteps: latents after each UNet call (one per scheduler timestep: steps + 1 for PNDM), image 0. */
  stepLatents?: NativeTensor[];
  /** With recordSteps: latents / scaling factor as given to the VAE decoder, image 0. */
  vaeInput?: NativeTensor;
}

/** A tensor as raw little-endian bytes in a safetensors dtype (fine-tuned weights crossing the boundary). */
export interface NativeRawTensor {
  dtype: "F32" | "F16";
  shape: number[];
  data: Uint8Array;
}

/** UNet weights that replace the loaded ones for one generate() call; the loaded module is unchanged afterwards. */
export type NativeUnetOverride =
  | {
      /** Full fine-tune: every UNet parameter by its diffusers name (e.g. "conv_in.weight", no "unet." prefix). */
      mode: "full";
      tensors: Record<string, NativeRawTensor>;
    }
  | {
      /**
       * LoRA: W' = W + scale * up @ down for each module (diffusers names, e.g.
       * "mid_block.attentions.0.transformer_blocks.0.attn1.to_q"): keys "<module>.lora.down.weight" [r, in] and
       * "<module>.lora.up.weight" [out, r].
       */
      mode: "lora";
      scale: number;
      tensors: Record<string, NativeRawTensor>;
    };

/** Explicit random draws of a fine-tune (replaces the seed's draws; tests and --draws use this). */
export interface NativeFinetuneDraws {
  /** [steps * batch] row-major: training-picture index of each sample. */
  index: Int32Array;
  /** [steps * batch] row-major: DDPM training timestep of each sample, in [0, num_train_timesteps). */
  timesteps: Int32Array;
  /** [steps, batch, C, h, w] standard normal: the VAE posterior-sample noise. */
  epsVae: NativeTensor;
  /** [steps, batch, C, h, w]: the noise added to the latents (the regression target). */
  noise: NativeTensor;
  /** LoRA: the initial A [rank, in] of each module, by module name; modules not given draw A from the seed. */
  loraInit?: Record<string, NativeTensor>;
}

export interface NativeFinetuneParams {
  mode: "full" | "lora";
  /** [N, 3, S, S] target pictures in [-1, 1] (LAVIS's preparation); S a multiple of the latent scale. */
  targets: NativeTensor;
  /** CLIP ids of the caption "a {subject}", unpadded (BOS ... EOS). */
  captionIds: Int32Array;
  /** [1, Q, D] initial subject embedding (the mean Q-Former output over the pictures). */
  ctxInit: NativeTensor;
  steps: number;
  batchSize: number;
  lr: number;
  weightDecay: number;
  /** LoRA rank (mode "lora"). */
  loraRank?: number;
  /** LoRA alpha; the update is scaled by alpha / rank. Defaults to the rank. */
  loraAlpha?: number;
  /** Seeds every draw (index, timesteps, VAE noise, noise, LoRA A) unless `draws` is given. */
  seed: number;
  draws?: NativeFinetuneDraws;
  /** dtype of the returned `tensors`. */
  saveDtype: "float32" | "float16";
  /** Return step 0's intermediates and gradients in `step0`. */
  record?: boolean;
}

export interface NativeFinetuneProgress {
  /** 1-based optimizer step, sent when the step is done. */
  step: number;
  total: number;
  /** The loss of that step (before its update). */
  loss: number;
}

export interface NativeFinetuneResult {
  /** One per step: the loss before that step's update. */
  losses: number[];
  /** [1, Q, D] trained subject embedding, float32. */
  ctx: NativeTensor;
  /**
   * Trained UNet tensors in `saveDtype`, without the "unet." prefix: mode "full", every UNet parameter by its
   * diffusers name; mode "lora", "<module>.lora.down.weight" (A) and "<module>.lora.up.weight" (B) per module.
   */
  tensors: Record<string, NativeRawTensor>;
  /** prepareMs: VAE moments of the pictures, trainable tensors, optimizer; stepMs: each step's time. */
  timings: { prepareMs: number; trainMs: number; totalMs: number; stepMs: number[] };
  /** With `record`: step 0's latents, noisy latents, text states [B, L+Q, D] and gradients ("cache", "unet.<param>" or "<module>.A"/"<module>.B"). */
  step0?: { latents: NativeTensor; noisy: NativeTensor; states: NativeTensor; grads: Record<string, NativeTensor> };
}

/**
 * Subject-driven prompt-to-prompt editing (../shared/fixtures/tiny-a/edit.json "spec"). The UNet runs a 4-way batch
 * [uncond, uncond, cond_src, cond_edit]; the controller edits the conditional half's attention probabilities
 * (AttentionRefine with `mapper`/`alphas`, self-attention replacement) and LocalBlend mixes the two latent rows after
 * every scheduler step. Requires a model exported with the attention-control path (manifest `capabilities`
 * includes "attention_control").
 */
export interface NativeEditParams {
  /** Subject embeddings [1, Q, D] spliced into the edited branch's prompt. */
  queryEmbeds: NativeTensor;
  /** CLIP ids of the negative prompt, length textMaxLength (no ctx; both unconditional rows). */
  uncondIds: Int32Array;
  /** CLIP ids of "a {source subject} {prompt}", length textMaxLength (no ctx). */
  srcIds: Int32Array;
  /** CLIP ids of "a {target subject} {prompt}", length textMaxLength - numQueryTokens (ctx spliced at ctxBeginPos). */
  editIds: Int32Array;
  /** Token alignment (spec section 3), textMaxLength entries: source key index per edited key, -1 for none. */
  mapper: Int32Array;
  /** textMaxLength entries, 0 or 1: where the edited key takes the source's attention column. */
  alphas: Float32Array;
  /** textMaxLength entries, 0 or 1: the source subject's token positions in the source prompt (LocalBlend). */
  subjectAlpha: Float32Array;
  width: number;
  height: number;
  /** Editing steps N (PNDM for a generated source: N + 1 UNet calls; DDIM for a real image: N). */
  steps: number;
  /** Classifier-free guidance of the edit; must be > 1. */
  guidance: number;
  /** Fraction of the controller steps (of N + 1) with cross-attention replacement, in [0, 1]. */
  crossReplace: number;
  /** Fraction of N with self-attention replacement, in [0, 1]. */
  selfReplace: number;
  /** LocalBlend threshold on the normalized map, in [0, 1]. */
  blendThreshold: number;
  /** Seed of the generated source's initial latents (torch CPU generator, as generate). Ignored with `image`. */
  seed: number;
  /** Explicit initial latents [1, C, H/f, W/f] of a generated source (overrides the seed's draw; tests). */
  latents?: NativeTensor;
  /** A real picture [1, 3, H, W] in [-1, 1]: encoded (posterior mean), inverted with DDIM, then edited with DDIM. */
  image?: NativeTensor;
  /** CLIP ids of the inversion prompt "a {source subject} {prompt}", length textMaxLength; required with `image`. */
  inversionIds?: Int32Array;
  /** DDIM inversion steps (with `image`); defaults to `steps`. */
  inversionSteps?: number;
  /** Disable every control (cross and self replacement, LocalBlend): both branches run independently (tests). */
  noControl?: boolean;
  /** Return the intermediates in `record`. */
  record?: boolean;
  /** Fine-tuned UNet weights (full or LoRA) for this call only (a fine-tuned subject's, as generate's `unet`). */
  unet?: NativeUnetOverride;
}

export interface NativeEditProgress {
  /** "inversion" only with a real image; its steps count UNet calls of the inversion. */
  phase: "text" | "encode" | "inversion" | "edit" | "decode";
  /** 1-based within the phase. For "edit", one event per step asked for (PNDM's first step runs the UNet twice). */
  step: number;
  total: number;
}

export interface NativeEditStepRecord {
  /** UNet output, 4 rows [uncond_src, uncond_edit, cond_src, cond_edit]. */
  unetOut: NativeTensor;
  /** What scheduler.step got, 2 rows [src, edit]. */
  noisePred: NativeTensor;
  latentsPreBlend: NativeTensor;
  /** [1, 1, h*, w*] LocalBlend map, [1, 1, h, w] normalized map and mask (0/1 as float32). Absent with noControl. */
  lbMap?: NativeTensor;
  lbNorm?: NativeTensor;
  lbMask?: NativeTensor;
  /** After LocalBlend: the next UNet input, [2, C, h, w]. */
  latents: NativeTensor;
}

export interface NativeEditRecord {
  /** [4, P, D] [uncond, uncond, cond_src, cond_edit]. */
  textStates: NativeTensor;
  /** [1, C, h, w]: the generated source's draw, or the inverted latents of a real image. */
  latentsInit: NativeTensor;
  /** Real image: the VAE posterior mean times the scaling factor, the inversion text states and each inversion step. */
  latentsX0?: NativeTensor;
  invTextStates?: NativeTensor;
  inversion?: { noisePred: NativeTensor; latents: NativeTensor }[];
  steps: NativeEditStepRecord[];
  /** The conditional half [2 * heads, Q, K] of every attention layer's probabilities at controller step 0, after control, by diffusers module name. */
  attnStep0: Record<string, NativeTensor>;
  /** [2, C, h, w] the final latents [src, edit]. */
  latentsFinal: NativeTensor;
}

export interface NativeEditResult {
  /** [source, edited]. */
  images: NativeImage[];
  seed: number;
  timings: { textMs: number; inversionMs: number; editMs: number; decodeMs: number; totalMs: number };
  record?: NativeEditRecord;
}

/**
 * `code` of the Errors the native calls reject with (besides Node's ERR_INVALID_ARG_TYPE/VALUE for
 * TypeError/RangeError): ERR_BLIPDIFF_NONFINITE is a NaN/Inf input (queryEmbeds, latents, controlImage) or
 * non-finite latents after denoising (found before decoding; the message names the likely cause).
 */
export type NativeErrorCode =
  | "ERR_BLIPDIFF_INVALID_ARG"
  | "ERR_BLIPDIFF_CHECKSUM"
  | "ERR_BLIPDIFF_DEVICE"
  | "ERR_BLIPDIFF_MODEL"
  | "ERR_BLIPDIFF_NOT_LOADED"
  | "ERR_BLIPDIFF_RUNTIME"
  | "ERR_BLIPDIFF_NONFINITE"
  | "ERR_BLIPDIFF_DISPOSED"
  | "ERR_BLIPDIFF_OOM"
  | "ABORT_ERR";

export interface NativePipeline {
  /** Rejects with ABORT_ERR when abort() is called while it runs; what was loaded before stays loaded. */
  load(spec: NativeModelSpec, options: NativeLoadOptions): Promise<void>;
  /**
   * pixels [B,3,S,S] normalized; ids/mask [B,T] (row-major). Returns [B,Q,D]. Errors raised inside the
   * TorchScript module give their root cause first ("... RuntimeError: <cause> (in TorchScript: fn, file:line)").
   */
  encodeSubject(pixels: NativeTensor, ids: Int32Array, mask: Int32Array, shape: [number, number]): Promise<NativeTensor>;
  generate(params: NativeGenerateParams, onProgress?: (p: NativeProgress) => void): Promise<NativeGenerateResult>;
  /**
   * Fine-tunes the UNet (full) or LoRA adapters, and the subject embedding, on the loaded model; the loaded
   * modules are unchanged afterwards (full mode in float32 trains the loaded UNet in place and reloads it from its
   * file at the end). Cancelled by abort() between steps (ABORT_ERR). Out-of-memory
   * rejects with ERR_BLIPDIFF_OOM.
   */
  finetune(params: NativeFinetuneParams, onProgress?: (p: NativeFinetuneProgress) => void): Promise<NativeFinetuneResult>;
  /**
   * Prompt-to-prompt subject editing of a generated source (from `seed`) or of a real picture (`image`, through DDIM
   * inversion). Rejects with ERR_BLIPDIFF_MODEL when the UNet lacks the attention-control path (re-convert the
   * model). Cancelled by abort() between UNet calls (ABORT_ERR).
   */
  edit(params: NativeEditParams, onProgress?: (p: NativeEditProgress) => void): Promise<NativeEditResult>;
  /**
   * Cancels every running call: generate() between steps, load() between checksum chunks (1 MiB) and
   * between modules, encodeSubject() before or after its Q-Former call. Each rejects with an Error whose
   * `code` is "ABORT_ERR" (name "AbortError").
   */
  abort(): void;
  /**
   * Drains the libtorch warnings (TORCH_WARN) this pipeline's calls raised since the last call, in order:
   * the first occurrence of each message, or every occurrence with BLIPDIFF_DEBUG=1. libtorch never writes
   * them to stderr itself (native/src/core/diagnostics.h); show them once on the warning channel.
   */
  takeWarnings(): string[];
  /** Idempotent; waits for a running call, then frees the modules. */
  dispose(): Promise<void>;
  readonly loaded: boolean;
  readonly device: string;
  readonly dtype: NativeDType;
}

export interface NativeScheduler {
  /** Returns the timesteps of the run, as the reference's `scheduler.timesteps`. */
  setTimesteps(steps: number): number[];
  /** One `scheduler.step(model_output, t, sample).prev_sample`. */
  step(modelOutput: NativeTensor, timestep: number, sample: NativeTensor): NativeTensor;
  readonly initNoiseSigma: number;
}

export interface NativeBuildInfo {
  torchVersion: string;
  cudaCompiled: boolean;
  cudaAvailable: boolean;
  cudaDeviceCount: number;
  devices: string[];
  numThreads: number;
  /** Whether libtorch may use NNPACK; always false: it is disabled when the addon loads (native/src/core/diagnostics.h). */
  nnpackEnabled: boolean;
}

/** The SHA-256 used to verify module files (native/src/core/sha256.cc). */
export interface NativeSha256Stats {
  /** Picked once per process; BLIPDIFF_SHA256_PORTABLE=1 forces "portable". */
  implementation: "sha-ni" | "portable";
  /** Bytes compressed by each implementation in this process so far. */
  portableBytes: number;
  shaNiBytes: number;
}

/** Counters of the caching CPU allocator (native/src/core/cpu_allocator.cc); zeros when it is off. */
export interface NativeMemoryStats {
  /** Bytes of freed large blocks held for reuse. */
  cpuCachedBytes: number;
  /** Large allocations served from the cache. */
  cpuCacheHits: number;
  /** Large allocations that went to the system allocator. */
  cpuCacheMisses: number;
  /** Bytes of those system allocations advised for transparent huge pages (BLIPDIFF_HUGEPAGES=0: none). */
  cpuHugePageBytes: number;
}

export interface NativeAddon {
  Pipeline: new () => NativePipeline;
  Scheduler: new (kind: NativeSchedulerKind, config: Record<string, unknown>) => NativeScheduler;
  buildInfo(): NativeBuildInfo;
  memoryStats(): NativeMemoryStats;
  sha256Stats(): NativeSha256Stats;
  /**
   * Ends the process at once with `code` (an integer in [0, 255]) via _Exit: no 'exit' handlers, no flushing,
   * and no joining of libuv pool threads (process.exit() waits for a running native step or model load).
   * Remove partial files first.
   */
  exitNow(code: number): never;
}
