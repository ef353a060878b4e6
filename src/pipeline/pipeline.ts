// BlipDiffusionPipeline: the library API over the native pipeline. Calls on one pipeline are serialized.
import path from "node:path";
import { loadAddon } from "../bindings/index.js";
import type {
  NativeAddon,
  NativeDType,
  NativeGenerateResult,
  NativeImage,
  NativePipeline,
  NativeProgress,
  NativeTensor,
  NativeTimings,
} from "../bindings/types.js";
import { AbortError, ModelError, invalid, messageOf } from "../errors.js";
import { abortable, asArray, guardProgress, isAbort, withCallerStack, type PipelineHost } from "./calls.js";
import { runEdit, type EditHost, type EditOptions, type EditResult } from "./edit.js";
import { runFinetune, type FinetuneOptions, type FinetuneResult } from "./finetune.js";
import { decodeRgb, sourceName, type DecodeOptions, type ImageSource } from "../image/decode.js";
import type { RawImage } from "../image/resample.js";
import type { FinetuneMode } from "../finetune/file.js";
import type { SubjectEmbedding } from "./embedding.js";
import { modelLabel, readManifest, verifyTokenizerChecksums, type ModelManifest } from "./manifest.js";
import {
  DEFAULTS,
  parseDType,
  parseDevice,
  type DTypeOption,
  type DeviceOption,
  type PromptOptions,
  type ResolvedPrompt,
  type ResolvedSampling,
  type SamplingOptions,
} from "./options.js";
import { checkSubjectText, preflightGenerate, tokenizersFor } from "./preflight.js";
import { parseSubjectCrop, preprocessCondition, preprocessSubject, stackBatch, type SubjectCrop } from "./preprocess.js";
import { buildPrompt } from "./prompt.js";
import { tokenizePrompts } from "./tokenize.js";

export interface LoadOptions {
  /** "auto" (CUDA when the addon sees a GPU, else CPU), "cpu", "cuda" or "cuda:N". Defaults to `"auto"`. */
  device?: DeviceOption;
  /** "auto" (float16 on CUDA, float32 on CPU), "float32", "float16" or "bfloat16" (CUDA only). Defaults to `"auto"`. */
  dtype?: DTypeOption;
  /** Check each module's sha256 against the manifest before loading. Defaults to `true`. */
  verifyChecksums?: boolean;
  /**
   * Freeze and optimize the modules for inference at load (torch::jit::optimize_for_inference): about 12 s
   * more load at full size; on the CPU it no longer speeds up steps (docs/benchmarks.md), on CUDA it is
   * unmeasured. Defaults to `false`.
   */
  optimize?: boolean;
  /** Load only the subject encoder (the Q-Former): for {@link BlipDiffusionPipeline.encodeSubject} alone, with a third
   * of the memory; generate() then rejects. Defaults to `false`. */
  subjectOnly?: boolean;
  /** Cancels the load (between checksum chunks and between modules); the promise then rejects with an AbortError. */
  signal?: AbortSignal;
  /**
   * Receives libtorch's own diagnostics (c10 warnings), which blipdiff never writes to the host's stderr, from the
   * load and from every later call on the pipeline. Without it they are dropped (BLIPDIFF_DEBUG=1 lets libtorch
   * print them itself). {@link GenerateResult.warnings} carries them too, for generate().
   */
  onWarning?: (message: string) => void;
}

export interface EncodeSubjectOptions {
  /** One or more pictures of the subject (paths, "-" for stdin, or encoded bytes); embeddings are averaged. */
  images: ImageSource | ImageSource[];
  /** The subject's category word, e.g. "dog". */
  subject: string;
  /** "squash" (the reference) or "center" (LAVIS). Defaults to `"squash"`. */
  crop?: SubjectCrop;
  /** Refuse pictures with more pixels. Defaults to sharp's limit (about 268 MP). */
  maxPixels?: number;
  signal?: AbortSignal;
}

export type ProgressEvent = NativeProgress;

export interface GenerateOptions extends PromptOptions, SamplingOptions {
  /** Source subject category (required with `subjectImage`; taken from the embedding otherwise). */
  subject?: string;
  /** Subject picture(s); several are averaged. Either this or `subjectEmbedding`. */
  subjectImage?: ImageSource | ImageSource[];
  /** Precomputed subject embeddings (from {@link BlipDiffusionPipeline.encodeSubject} or a saved file). */
  subjectEmbedding?: SubjectEmbedding;
  /** How a non-square subject picture is made square. Defaults to `"squash"`. */
  subjectCrop?: SubjectCrop;
  /** ControlNet condition picture (requires a model exported with a ControlNet). */
  controlImage?: ImageSource;
  /** ControlNet residual scale. Defaults to `1`. */
  conditioningScale?: number;
  /** Explicit initial latents [1, C, H/f, W/f] for image 0 (overrides the seed's draw). */
  latents?: NativeTensor;
  /** Return the latents after every scheduler step (image 0). Defaults to `false`. */
  recordSteps?: boolean;
  /** Cancels between steps; the promise then rejects with an AbortError. */
  signal?: AbortSignal;
  /** Per-step progress; exceptions thrown by it are ignored. */
  onProgress?: (p: ProgressEvent) => void;
}

/** Everything that determines an image, as embedded in its metadata and printed with --json. */
export interface GenerationParameters extends ResolvedPrompt, ResolvedSampling {
  subject: string;
  subjectCrop: SubjectCrop;
  controlImage: boolean;
  /** Set when the subject was fine-tuned: the UNet weights of that fine-tune were used. */
  finetuned?: FinetuneMode;
  model: string;
  device: string;
  dtype: NativeDType;
}

export interface GeneratedImage extends NativeImage {
  seed: number;
}

export interface GenerateTimings extends NativeTimings {
  subjectMs: number;
}

export interface GenerateResult {
  images: GeneratedImage[];
  seeds: number[];
  parameters: GenerationParameters;
  timings: GenerateTimings;
  /** E.g. a truncated negative prompt. */
  warnings: string[];
  stepLatents?: NativeTensor[];
  vaeInput?: NativeTensor;
}

export class BlipDiffusionPipeline {
  private queue: Promise<unknown> = Promise.resolve();
  private disposed = false;
  private constructor(
    private readonly native: NativePipeline,
    /** The parsed manifest.json of the model folder. */
    readonly manifest: ModelManifest,
    /** The device the modules run on ("cpu", "cuda:0", ...). */
    readonly device: string,
    readonly dtype: NativeDType,
    private readonly onWarning?: (message: string) => void,
  ) {}

  /**
   * Reads and checks `<modelDir>/manifest.json` (or takes a manifest already read with {@link readManifest}),
   * then loads the modules onto the device.
   */
  static async load(model: string | ModelManifest, options: LoadOptions = {}): Promise<BlipDiffusionPipeline> {
    const caller = new Error();
    const manifest = typeof model === "string" ? readManifest(model) : model;
    if (options.verifyChecksums ?? true) verifyTokenizerChecksums(manifest);
    tokenizersFor(manifest);
    const addon = loadAddon();
    const { device, dtype } = resolveDevice(addon, options.device ?? DEFAULTS.device, options.dtype ?? DEFAULTS.dtype);
    const native = new addon.Pipeline();
    const report = (): void => {
      for (const w of native.takeWarnings()) options.onWarning?.(w);
    };
    try {
      await abortable(native, options.signal, () =>
        native.load(manifest.spec, {
          device,
          dtype,
          verifyChecksums: options.verifyChecksums ?? true,
          optimize: options.optimize ?? false,
          subjectOnly: options.subjectOnly ?? false,
        }),
      );
    } catch (err) {
      report();
      await native.dispose().catch(() => undefined);
      if (err instanceof AbortError) throw withCallerStack(err, caller);
      throw withCallerStack(new ModelError(`cannot load the model in ${manifest.dir}: ${messageOf(err)}`), caller);
    }
    report();
    return new BlipDiffusionPipeline(native, manifest, native.device || device, dtype, options.onWarning);
  }

  /** Hands the native warnings of the last call to onWarning (and returns them). */
  private nativeWarnings(): string[] {
    const ws = this.native.takeWarnings();
    for (const w of ws) this.onWarning?.(w);
    return ws;
  }

  private serialize<T>(fn: () => Promise<T>): Promise<T> {
    // Checked at call time: calls made before dispose() still run, later ones reject.
    if (this.disposed) return Promise.reject(new Error("the pipeline was disposed"));
    const run = this.queue.then(
      () => fn(),
      () => fn(),
    );
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Subject embeddings [1, Q, D] of one or more pictures (averaged) with their category word. */
  encodeSubject(options: EncodeSubjectOptions): Promise<SubjectEmbedding> {
    const caller = new Error();
    return this.serialize(async () => {
      try {
        return await this.encodeSubjectNow(options);
      } catch (err) {
        throw withCallerStack(err, caller);
      } finally {
        this.nativeWarnings();
      }
    });
  }

  private async encodeSubjectNow(o: EncodeSubjectOptions): Promise<SubjectEmbedding> {
    if (typeof o.subject !== "string" || o.subject.trim() === "") throw invalid("a non-empty string", "subject", o.subject, "type");
    const images = asArray(o.images);
    if (images.length === 0) throw invalid("at least one image", "images", images);
    const crop = parseSubjectCrop(o.crop ?? DEFAULTS.subjectCrop);
    checkSubjectText(this.manifest, o.subject);
    const decoded = await decodePictures(images, { maxPixels: o.maxPixels, label: "subject image" }, o.signal);
    return this.encodeDecoded(decoded, images.map(pictureName), o.subject, crop, o.signal);
  }

  /** Subject embeddings of decoded pictures (averaged); `names` are recorded as the source images. */
  private async encodeDecoded(images: RawImage[], names: string[], subject: string, crop: SubjectCrop, signal?: AbortSignal): Promise<SubjectEmbedding> {
    const cfg = { size: this.manifest.imageSize, mean: this.manifest.imageMean, std: this.manifest.imageStd, crop };
    const pixels = images.map((img) => preprocessSubject(img, cfg).pixels);
    const batch = tokenizersFor(this.manifest).wordpiece.encodeBatch(images.map(() => subject));
    const out = await abortable(this.native, signal, () => this.native.encodeSubject(stackBatch(pixels), batch.ids, batch.mask, batch.shape));
    const [b, q, d] = out.shape;
    const mean = new Float32Array(q * d);
    for (let i = 0; i < b; i++) for (let j = 0; j < q * d; j++) mean[j] += out.data[i * q * d + j];
    // Sum in float32 then divide: for one image this is exactly the Q-Former output.
    if (b > 1) for (let j = 0; j < q * d; j++) mean[j] = Math.fround(mean[j] / b);
    return {
      queryEmbeds: { data: mean, shape: [1, q, d] },
      subject,
      sourceImages: names,
      model: {
        checkpoint: typeof this.manifest.source.checkpoint === "string" ? this.manifest.source.checkpoint : undefined,
        qformerSha256: this.manifest.identity.qformer,
      },
    };
  }

  /** Generates `n` images of the subject (image i from seed + i). */
  generate(options: GenerateOptions): Promise<GenerateResult> {
    const caller = new Error();
    return this.serialize(async () => {
      try {
        return await this.generateNow(options);
      } catch (err) {
        if (isAbort(err) || options.signal?.aborted) throw withCallerStack(new AbortError(), caller);
        throw withCallerStack(err, caller);
      }
    });
  }

  private async generateNow(o: GenerateOptions): Promise<GenerateResult> {
    const t0 = performance.now();
    const m = this.manifest;
    const { sampling, prompt, subject, warnings } = preflightGenerate(m, {
      ...o,
      hasSubjectImage: o.subjectImage !== undefined,
      hasControlImage: o.controlImage !== undefined,
    });
    const crop = parseSubjectCrop(o.subjectCrop ?? DEFAULTS.subjectCrop);
    const conditioningScale = o.conditioningScale ?? DEFAULTS.conditioningScale;
    if (!Number.isFinite(conditioningScale)) throw invalid("a finite number", "conditioningScale", conditioningScale);
    const controlImage =
      o.controlImage === undefined
        ? undefined
        : preprocessCondition(await decodeRgb(o.controlImage, { label: "control image" }), sampling.width, sampling.height);

    let embedding = o.subjectEmbedding;
    if (!embedding) {
      if (o.subjectImage === undefined) throw invalid("a subject image or a subject embedding", "subjectImage", undefined, "type");
      embedding = await this.encodeSubjectNow({ images: o.subjectImage, subject, crop, signal: o.signal });
    }
    const subjectMs = performance.now() - t0;
    if (o.signal?.aborted) throw new AbortError();

    const built = buildPrompt(prompt.prompt, prompt.targetSubject, prompt.promptStrength, prompt.promptReps);
    const ids = tokenizePrompts(tokenizersFor(m).clip, built, prompt.negativePrompt, m.spec.textMaxLength, m.spec.numQueryTokens);
    warnings.push(...ids.warnings);

    const progress = guardProgress<NativeProgress>(o.onProgress);
    let res: NativeGenerateResult;
    try {
      res = await abortable(this.native, o.signal, () => this.native.generate(
        {
          condIds: ids.condIds,
          uncondIds: ids.uncondIds,
          queryEmbeds: embedding.queryEmbeds,
          width: sampling.width,
          height: sampling.height,
          steps: sampling.steps,
          guidance: sampling.guidance,
          seed: sampling.seed,
          numImages: sampling.n,
          scheduler: sampling.scheduler,
          ...(embedding.finetune ? { unet: embedding.finetune.unet } : {}),
          ...(o.latents ? { latents: o.latents } : {}),
          ...(controlImage ? { controlImage, conditioningScale } : {}),
          ...(o.recordSteps ? { recordSteps: true } : {}),
        },
        progress,
      ));
    } finally {
      warnings.push(...this.nativeWarnings());
    }
    if (o.signal?.aborted) throw new AbortError();
    const parameters: GenerationParameters = {
      ...prompt,
      subject,
      ...sampling,
      subjectCrop: crop,
      controlImage: controlImage !== undefined,
      ...(embedding.finetune ? { finetuned: embedding.finetune.mode } : {}),
      model: modelLabel(m),
      device: this.device,
      dtype: this.dtype,
    };
    return {
      images: res.images.map((img, i) => ({ ...img, seed: res.seeds[i] ?? sampling.seed + i })),
      seeds: res.seeds,
      parameters,
      timings: { ...res.timings, subjectMs, totalMs: performance.now() - t0 },
      warnings,
      ...(res.stepLatents ? { stepLatents: res.stepLatents } : {}),
      ...(res.vaeInput ? { vaeInput: res.vaeInput } : {}),
    };
  }

  /**
   * Fine-tunes the subject on its pictures (reference §3): the whole UNet (mode "full", LAVIS) or LoRA adapters
   * (mode "lora"), and the subject embedding. The loaded modules are unchanged; the result's `embedding` carries the
   * trained weights to generate() and to saveFinetunedSubject().
   */
  finetune(options: FinetuneOptions): Promise<FinetuneResult> {
    const caller = new Error();
    return this.serialize(async () => {
      try {
        return await runFinetune(this.host(), options);
      } catch (err) {
        if (isAbort(err) || options.signal?.aborted) throw withCallerStack(new AbortError(), caller);
        throw withCallerStack(err, caller);
      }
    });
  }

  /** What finetune and edit need from this object. */
  private host(): PipelineHost {
    return {
      native: this.native,
      manifest: this.manifest,
      device: this.device,
      dtype: this.dtype,
      decode: async (images, maxPixels, signal) => ({
        images: await decodePictures(images, { maxPixels, label: "subject image" }, signal),
        names: images.map(pictureName),
      }),
      encode: (images, names, subject, crop, signal) => this.encodeDecoded(images, names, subject, crop, signal),
      nativeWarnings: () => this.nativeWarnings(),
    };
  }

  /**
   * Subject-driven prompt-to-prompt editing (LAVIS's BLIP-Diffusion editing; ../shared/fixtures edit.json "spec"): the
   * source image "a {sourceSubject} {prompt}", generated from `seed` or a photo (`image`, DDIM-inverted), is edited so
   * that the subject becomes the given one ("a {targetSubject} {prompt}" with the subject embedding), keeping the rest.
   * Needs a model exported with attention control (manifest capability "attention_control").
   */
  edit(options: EditOptions): Promise<EditResult> {
    const caller = new Error();
    return this.serialize(async () => {
      try {
        return await runEdit(this.editHost(), options);
      } catch (err) {
        if (isAbort(err) || options.signal?.aborted) throw withCallerStack(new AbortError(), caller);
        throw withCallerStack(err, caller);
      }
    });
  }

  private editHost(): EditHost {
    return { ...this.host(), pictureName };
  }

  /** Frees the modules; idempotent; waits for the running call. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.queue;
    await this.native.dispose();
  }
}

/** Resolves "auto" device/dtype against the addon build and rejects impossible combinations. */
export function resolveDevice(addon: NativeAddon, deviceOpt: unknown, dtypeOpt: unknown): { device: string; dtype: NativeDType } {
  const want = parseDevice(deviceOpt);
  const dt = parseDType(dtypeOpt);
  const info = addon.buildInfo();
  let device: string = want;
  if (want === "auto") device = info.cudaAvailable ? "cuda" : "cpu";
  if (device.startsWith("cuda")) {
    if (!info.cudaCompiled)
      throw new ModelError(
        `CUDA was requested (device ${device}) but this blipdiff addon was built without CUDA (libtorch ${info.torchVersion}); use --device cpu, or rebuild with a CUDA libtorch`,
      );
    if (!info.cudaAvailable || info.cudaDeviceCount === 0) throw new ModelError(`CUDA was requested (device ${device}) but no CUDA device is available`);
    const index = device === "cuda" ? 0 : Number(device.slice(5));
    if (index >= info.cudaDeviceCount)
      throw new ModelError(`device ${device} does not exist: ${info.cudaDeviceCount} CUDA device(s) available`);
  }
  const dtype: NativeDType = dt === "auto" ? (device.startsWith("cuda") ? "float16" : "float32") : dt;
  if (device === "cpu" && dtype !== "float32") throw invalid("float32 on the cpu device", "dtype", dtype);
  return { device, dtype };
}

/** The name a picture is recorded under: a file's base name, or "<stdin>" / "<buffer>". */
export function pictureName(src: ImageSource): string {
  const name = sourceName(src);
  return name.startsWith("<") ? name : path.basename(name);
}

/** Decodes pictures one by one, checking `signal` between them. */
export async function decodePictures(images: ImageSource[], options: DecodeOptions, signal?: AbortSignal): Promise<RawImage[]> {
  const out: RawImage[] = [];
  for (const src of images) {
    if (signal?.aborted) throw new AbortError();
    out.push(await decodeRgb(src, options));
  }
  if (signal?.aborted) throw new AbortError();
  return out;
}
