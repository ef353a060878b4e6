// BlipDiffusionPipeline.finetune: the TypeScript half of per-subject fine-tuning (reference §3). Pictures are
// decoded once; the initial subject embedding is the mean Q-Former output over them (the same encoding as
// encodeSubject), the targets are LAVIS's (preprocessTarget), the caption is "a {subject}" unpadded; the addon
// trains (native/src/core) and returns the losses, the trained embedding and the UNet tensors.
import type {
  NativeDType,
  NativeFinetuneDraws,
  NativeFinetuneParams,
  NativeFinetuneProgress,
  NativeRawTensor,
} from "../bindings/types.js";
import { AbortError, invalid } from "../errors.js";
import type { ImageSource } from "../image/decode.js";
import { baseModelOf, finetunedSubject } from "../finetune/file.js";
import { LIBRARY_DRAWS_NAMES, checkDraws, type DrawsNames } from "../finetune/draws.js";
import {
  ADAMW,
  LIBRARY_NAMES,
  captionIds,
  captionOf,
  resolveFinetune,
  type FinetuneNames,
  type FinetuneSettings,
  type ResolvedFinetune,
} from "../finetune/options.js";
import { abortable, asArray, guardProgress, type PipelineHost } from "./calls.js";
import type { SubjectEmbedding } from "./embedding.js";
import { modelLabel, type ModelManifest } from "./manifest.js";
import { DEFAULTS } from "./options.js";
import { checkSubjectText } from "./preflight.js";
import { parseSubjectCrop, preprocessTarget, stackBatch, type SubjectCrop } from "./preprocess.js";

export type FinetuneProgress = NativeFinetuneProgress;

export interface FinetuneOptions extends FinetuneSettings {
  /** Pictures of the subject (paths, "-" for stdin, or encoded bytes); at least one. */
  images: ImageSource | ImageSource[];
  /** The subject's category word, e.g. "dog"; the caption of every picture is "a {subject}". */
  subject: string;
  /** Subject preprocessing for the initial embedding: "squash" (the reference) or "center" (LAVIS). Defaults to `"squash"`. */
  subjectCrop?: SubjectCrop;
  /**
   * Explicit random draws (picture indices, timesteps, VAE and added noise, LoRA initial A) instead of the seed's;
   * checked against the options. `steps` and `batchSize` default to the draws'.
   */
  draws?: NativeFinetuneDraws;
  /** Refuse pictures with more pixels. Defaults to sharp's limit (about 268 MP). */
  maxPixels?: number;
  /** Cancels between steps; the promise then rejects with an AbortError. */
  signal?: AbortSignal;
  /** Per-step progress (step, total, loss); exceptions thrown by it are ignored. */
  onProgress?: (p: FinetuneProgress) => void;
}

/** Everything that determined a fine-tune, as recorded in the file and printed with --json. */
export interface FinetuneParameters extends ResolvedFinetune {
  subject: string;
  caption: string;
  subjectCrop: SubjectCrop;
  numPictures: number;
  /** Whether explicit draws replaced the seed's. */
  draws: boolean;
  optimizer: "AdamW";
  betas: [number, number];
  eps: number;
  model: string;
  device: string;
  dtype: NativeDType;
}

export interface FinetuneTimings {
  /** Decoding the pictures and the initial subject embedding. */
  subjectMs: number;
  /** The addon's preparation (VAE posteriors, copies of the weights) and training. */
  prepareMs: number;
  trainMs: number;
  /** Each step's time. */
  stepMs: number[];
  totalMs: number;
}

export interface FinetuneResult {
  /** The loss of each step (before its update). */
  losses: number[];
  /**
   * The fine-tuned subject: its trained embedding plus the trained UNet weights (`finetune`). Pass it to generate() as
   * `subjectEmbedding`, or save it with saveFinetunedSubject().
   */
  embedding: SubjectEmbedding;
  /** The trained UNet tensors as the addon returned them (no "unet." prefix), in `saveDtype`. */
  tensors: Record<string, NativeRawTensor>;
  parameters: FinetuneParameters;
  timings: FinetuneTimings;
  warnings: string[];
}

/** What can be checked before the model loads: settings, subject, caption, draws. */
export interface FinetunePreflight {
  settings: ResolvedFinetune;
  captionIds: Int32Array;
  draws?: NativeFinetuneDraws;
}

export interface FinetunePreflightOptions extends FinetuneSettings {
  subject: string;
  /** Known in the CLI before decoding (the number of picture files), checked against the draws' indices. */
  numPictures?: number;
  draws?: NativeFinetuneDraws;
  /** The draws' [steps, batch] index shape, when they came from a file (for messages). */
  drawsIndexShape?: readonly [number, number];
}

/**
 * Checks a fine-tune against a model without the modules: the settings (defaults per mode; steps and batch size from
 * the draws when not given), the subject text (Q-Former and caption limits) and the draws. TypeError / RangeError
 * for bad values (usage errors in the CLI).
 */
export function preflightFinetune(
  m: ModelManifest,
  o: FinetunePreflightOptions,
  names: FinetuneNames = LIBRARY_NAMES,
  drawsNames: DrawsNames = LIBRARY_DRAWS_NAMES,
): FinetunePreflight {
  if (typeof o.subject !== "string" || o.subject.trim() === "") throw invalid("a non-empty string", "subject", o.subject, "type");
  const fromDraws = o.draws?.epsVae?.shape;
  const settings = resolveFinetune(
    m,
    {
      ...o,
      steps: o.steps ?? (Array.isArray(fromDraws) ? fromDraws[0] : undefined),
      batchSize: o.batchSize ?? (Array.isArray(fromDraws) ? fromDraws[1] : undefined),
    },
    names,
  );
  checkSubjectText(m, o.subject);
  const ids = captionIds(m, o.subject);
  const draws =
    o.draws &&
    checkDraws(
      m,
      o.draws,
      { mode: settings.mode, steps: settings.steps, batchSize: settings.batchSize, numPictures: o.numPictures ?? Number.MAX_SAFE_INTEGER, resolution: settings.resolution, loraRank: settings.loraRank },
      drawsNames,
      o.drawsIndexShape,
    );
  return { settings, captionIds: ids, ...(draws ? { draws } : {}) };
}

/** What finetune needs from the pipeline object: the shared host, nothing more. */
export type FinetuneHost = PipelineHost;

/** Runs one fine-tune on a loaded pipeline (serialized by the caller). */
export async function runFinetune(host: FinetuneHost, o: FinetuneOptions): Promise<FinetuneResult> {
  const t0 = performance.now();
  const m = host.manifest;
  const sources = asArray(o.images);
  if (sources.length === 0) throw invalid("at least one image", "images", sources);
  const crop = parseSubjectCrop(o.subjectCrop ?? DEFAULTS.subjectCrop);
  const pre = preflightFinetune(m, { ...o, numPictures: sources.length });
  const s = pre.settings;

  const { images, names } = await host.decode(sources, o.maxPixels, o.signal);
  const initial = await host.encode(images, names, o.subject, crop, o.signal);
  const targets = stackBatch(images.map((img) => preprocessTarget(img, s.resolution)));
  const subjectMs = performance.now() - t0;
  if (o.signal?.aborted) throw new AbortError();

  const params: NativeFinetuneParams = {
    mode: s.mode,
    targets,
    captionIds: pre.captionIds,
    ctxInit: initial.queryEmbeds,
    steps: s.steps,
    batchSize: s.batchSize,
    lr: s.lr,
    weightDecay: s.weightDecay,
    ...(s.mode === "lora" ? { loraRank: s.loraRank, loraAlpha: s.loraAlpha } : {}),
    seed: s.seed,
    ...(pre.draws ? { draws: pre.draws } : {}),
    saveDtype: s.saveDtype,
  };
  const warnings: string[] = [];
  let res;
  try {
    res = await abortable(host.native, o.signal, () => host.native.finetune(params, guardProgress(o.onProgress)));
  } finally {
    warnings.push(...host.nativeWarnings());
  }
  if (o.signal?.aborted) throw new AbortError();

  const parameters: FinetuneParameters = {
    ...s,
    subject: o.subject,
    caption: captionOf(o.subject),
    subjectCrop: crop,
    numPictures: images.length,
    draws: pre.draws !== undefined,
    optimizer: "AdamW",
    betas: [...ADAMW.betas],
    eps: ADAMW.eps,
    model: modelLabel(m),
    device: host.device,
    dtype: host.dtype,
  };
  const embedding = finetunedSubject(res.ctx, res.tensors, {
    mode: s.mode,
    subject: o.subject,
    sourceImages: names,
    baseModel: baseModelOf(m),
    hyperparameters: { ...parameters },
    losses: res.losses,
    loraRank: s.loraRank,
    loraAlpha: s.loraAlpha,
    saveDtype: s.saveDtype,
  });
  return {
    losses: res.losses,
    embedding,
    tensors: res.tensors,
    parameters,
    timings: { subjectMs, prepareMs: res.timings.prepareMs, trainMs: res.timings.trainMs, stepMs: res.timings.stepMs ?? [], totalMs: performance.now() - t0 },
    warnings,
  };
}
