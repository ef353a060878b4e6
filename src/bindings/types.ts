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

/** What the native pipeline needs from a manifest (src/ parses manifest.json and fills this). */
export interface NativeModelSpec {
  /** Absolute paths and expected sha256 (hex) of each module file; `controlnet` is optional. */
  modules: Record<"qformer" | "text_encoder" | "unet" | "vae_decoder" | "vae_encoder", { path: string; sha256: string }> & {
    controlnet?: { path: string; sha256: string };
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
}

export interface NativeProgress {
  phase: "text" | "denoise" | "decode";
  /** Image index, 0-based. */
  image: number;
  /** 1-based step within the phase. */
  step: number;
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
  /** With recordSteps: latents after each scheduler step, image 0. */
  stepLatents?: NativeTensor[];
  /** With recordSteps: latents / scaling factor as given to the VAE decoder, image 0. */
  vaeInput?: NativeTensor;
}

export interface NativePipeline {
  load(spec: NativeModelSpec, options: NativeLoadOptions): Promise<void>;
  /** pixels [B,3,S,S] normalized; ids/mask [B,T] (row-major). Returns [B,Q,D]. */
  encodeSubject(pixels: NativeTensor, ids: Int32Array, mask: Int32Array, shape: [number, number]): Promise<NativeTensor>;
  generate(params: NativeGenerateParams, onProgress?: (p: NativeProgress) => void): Promise<NativeGenerateResult>;
  /** Cancels the running generate() between steps; it rejects with an Error whose `code` is "ABORT_ERR". */
  abort(): void;
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
}

/** Counters of the caching CPU allocator (native/src/core/cpu_allocator.cc); zeros when it is off. */
export interface NativeMemoryStats {
  /** Bytes of freed large blocks held for reuse. */
  cpuCachedBytes: number;
  /** Large allocations served from the cache. */
  cpuCacheHits: number;
  /** Large allocations that went to the system allocator. */
  cpuCacheMisses: number;
}

export interface NativeAddon {
  Pipeline: new () => NativePipeline;
  Scheduler: new (kind: NativeSchedulerKind, config: Record<string, unknown>) => NativeScheduler;
  buildInfo(): NativeBuildInfo;
  memoryStats(): NativeMemoryStats;
  /** Ends the process at once with `code` (_exit: no thread joins, no exit handlers). */
  exitNow?(code: number): never;
}
