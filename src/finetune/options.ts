// Fine-tuning options: the defaults live here and nowhere else; validation against the model before it loads.
//
// Full mode follows LAVIS's BLIP-Diffusion fine-tuning configs (finetune-db-*.yaml): AdamW lr 5e-6, weight decay
// 0.01, batch 3, 40 steps, 512x512 targets. LoRA mode follows SD-1.5 DreamBooth-LoRA practice (diffusers'
// train_dreambooth_lora.py: rank 4, lr 1e-4), with 80 steps rather than DreamBooth's 500 or more because training
// starts from the zero-shot subject embedding, not from a rare token (README.md, "Fine-tune").
import { invalid } from "../errors.js";
import type { ModelManifest } from "../pipeline/manifest.js";
import { LIMITS, checkInt, randomSeed } from "../pipeline/options.js";
import { maxLatentTokens, tokenizersFor } from "../pipeline/preflight.js";
import type { FinetuneMode, SaveDType } from "./file.js";

export const FINETUNE_MODES: readonly FinetuneMode[] = ["full", "lora"];
export const SAVE_DTYPES: readonly SaveDType[] = ["float16", "float32"];

/** Every default of a fine-tune, per mode. */
export const FINETUNE_DEFAULTS = {
  mode: "full" as FinetuneMode,
  resolution: 512,
  full: { steps: 40, batchSize: 3, lr: 5e-6, weightDecay: 0.01, saveDtype: "float16" as SaveDType },
  lora: { steps: 80, batchSize: 3, lr: 1e-4, weightDecay: 0.01, rank: 4, saveDtype: "float32" as SaveDType },
} as const;

/** Bounds that catch typos and absurd requests before any work. */
export const FINETUNE_LIMITS = {
  maxSteps: 100_000,
  maxBatchSize: 64,
  /** lr must lie in (0, maxLr]. */
  maxLr: 1,
  /** weight decay must lie in [0, maxWeightDecay). */
  maxWeightDecay: 10,
} as const;

/** The AdamW settings LAVIS uses (torch's defaults); not options. */
export const ADAMW = { betas: [0.9, 0.999] as [number, number], eps: 1e-8 } as const;

export interface FinetuneSettings {
  /** "full" (the whole UNet and the embedding train, as LAVIS does) or "lora". Defaults to `"full"`. */
  mode?: FinetuneMode;
  /** Optimizer steps, 1..100000. Defaults to `40` (full) or `80` (LoRA); with draws, the draws' step count. */
  steps?: number;
  /** Samples per step, 1..64. Defaults to `3`; with draws, the draws' batch size. */
  batchSize?: number;
  /** Constant AdamW learning rate in (0, 1]. Defaults to `5e-6` (full) or `1e-4` (LoRA). */
  lr?: number;
  /** AdamW weight decay in [0, 10), on weights with 2+ dimensions (and the embedding). Defaults to `0.01`. */
  weightDecay?: number;
  /** LoRA rank, 1..the model's narrowest attention width (mode "lora" only). Defaults to `4`. */
  loraRank?: number;
  /** LoRA alpha: the update is scaled by alpha / rank (mode "lora" only). Defaults to the rank. */
  loraAlpha?: number;
  /** Side of the square training pictures, a multiple of the latent scale. Defaults to `512`. */
  resolution?: number;
  /** Seeds every random draw, 0..2^53-1. Defaults to a random seed (always reported). */
  seed?: number;
  /** dtype of the saved UNet tensors. Defaults to `"float16"` (full) or `"float32"` (LoRA). */
  saveDtype?: SaveDType;
}

/** The settings with every default applied and validated. */
export interface ResolvedFinetune {
  mode: FinetuneMode;
  steps: number;
  batchSize: number;
  lr: number;
  weightDecay: number;
  loraRank?: number;
  loraAlpha?: number;
  resolution: number;
  seed: number;
  saveDtype: SaveDType;
}

/** How each option is called in messages: the library's names, or the CLI's flags. */
export type FinetuneNames = Record<keyof FinetuneSettings, string>;

export const LIBRARY_NAMES: FinetuneNames = {
  mode: "mode",
  steps: "steps",
  batchSize: "batchSize",
  lr: "lr",
  weightDecay: "weightDecay",
  loraRank: "loraRank",
  loraAlpha: "loraAlpha",
  resolution: "resolution",
  seed: "seed",
  saveDtype: "saveDtype",
};

export const CLI_NAMES: FinetuneNames = {
  mode: "--mode",
  steps: "--steps",
  batchSize: "--batch-size",
  lr: "--lr",
  weightDecay: "--weight-decay",
  loraRank: "--lora-rank",
  loraAlpha: "loraAlpha",
  resolution: "--resolution",
  seed: "--seed",
  saveDtype: "--save-dtype",
};

export function parseFinetuneMode(value: unknown, name = "mode"): FinetuneMode {
  if (typeof value === "string" && (FINETUNE_MODES as readonly string[]).includes(value)) return value as FinetuneMode;
  throw invalid(`one of ${FINETUNE_MODES.join(", ")}`, name, value);
}

export function parseSaveDType(value: unknown, name = "saveDtype"): SaveDType {
  if (typeof value === "string" && (SAVE_DTYPES as readonly string[]).includes(value)) return value as SaveDType;
  throw invalid(`one of ${SAVE_DTYPES.join(", ")}`, name, value);
}

/**
 * The largest LoRA rank for this model: its narrowest attention projection (the smallest UNet level width or the
 * cross-attention width; a rank past it adds parameters and no capacity).
 */
export function maxLoraRank(m: ModelManifest): number {
  return Math.min(m.crossAttentionDim, ...(m.unetBlockOutChannels ?? []));
}

function checkReal(value: unknown, name: string, lo: number, hi: number, loOpen: boolean, hiOpen: boolean): number {
  if (typeof value !== "number" || Number.isNaN(value)) throw invalid("a number", name, value, "type");
  const ok = Number.isFinite(value) && (loOpen ? value > lo : value >= lo) && (hiOpen ? value < hi : value <= hi);
  if (!ok) throw invalid(`a number in ${loOpen ? "(" : "["}${lo}, ${hi}${hiOpen ? ")" : "]"}`, name, value);
  return value;
}

/** The side in pixels: a multiple of the latent scale, within generate's bound on latent tokens. */
export function checkResolution(m: ModelManifest, value: unknown, name = "resolution"): number {
  const f = m.spec.latentScale;
  const s = checkInt(value, name, f, LIMITS.maxSize);
  if (s % f !== 0) throw invalid(`a multiple of ${f} (the model's latent scale)`, name, s);
  const max = maxLatentTokens(m);
  const tokens = (s / f) ** 2;
  if (max !== undefined && tokens > max) {
    const side = Math.floor(Math.sqrt(max)) * f;
    throw invalid(`at most ${side} for this model (${max} latent tokens, (resolution/${f})^2; ${s} is ${tokens})`, name, s);
  }
  return s;
}

/** Applies the defaults of the mode and validates every setting against the model. */
export function resolveFinetune(m: ModelManifest, o: FinetuneSettings, names: FinetuneNames = LIBRARY_NAMES): ResolvedFinetune {
  const mode = parseFinetuneMode(o.mode ?? FINETUNE_DEFAULTS.mode, names.mode);
  const d = FINETUNE_DEFAULTS[mode];
  const steps = checkInt(o.steps ?? d.steps, names.steps, 1, FINETUNE_LIMITS.maxSteps);
  const batchSize = checkInt(o.batchSize ?? d.batchSize, names.batchSize, 1, FINETUNE_LIMITS.maxBatchSize);
  const lr = checkReal(o.lr ?? d.lr, names.lr, 0, FINETUNE_LIMITS.maxLr, true, false);
  const weightDecay = checkReal(o.weightDecay ?? d.weightDecay, names.weightDecay, 0, FINETUNE_LIMITS.maxWeightDecay, false, true);
  const resolution = checkResolution(m, o.resolution ?? FINETUNE_DEFAULTS.resolution, names.resolution);
  const seed = o.seed === undefined ? randomSeed() : checkInt(o.seed, names.seed, 0, LIMITS.maxSeed);
  const saveDtype = parseSaveDType(o.saveDtype ?? d.saveDtype, names.saveDtype);
  if (mode === "full") {
    for (const k of ["loraRank", "loraAlpha"] as const)
      if (o[k] !== undefined) throw new RangeError(`${names[k]} applies to ${names.mode} lora only (${names.mode} is full)`);
    return { mode, steps, batchSize, lr, weightDecay, resolution, seed, saveDtype };
  }
  const maxRank = maxLoraRank(m);
  const rank = o.loraRank ?? Math.min(FINETUNE_DEFAULTS.lora.rank, maxRank);
  if (typeof rank !== "number" || !Number.isFinite(rank)) throw invalid("an integer", names.loraRank, rank, "type");
  if (!Number.isInteger(rank) || rank < 1 || rank > maxRank)
    throw invalid(`an integer between 1 and ${maxRank} (the model's narrowest attention width)`, names.loraRank, rank);
  const loraAlpha = checkReal(o.loraAlpha ?? rank, names.loraAlpha, 0, 1e6, true, false);
  return { mode, steps, batchSize, lr, weightDecay, loraRank: rank, loraAlpha, resolution, seed, saveDtype };
}

/** "a " + subject: LAVIS's caption for every training picture. */
export function captionOf(subject: string): string {
  return `a ${subject}`;
}

/**
 * CLIP ids of the caption without padding (BOS ... EOS), as LAVIS tokenizes it for training. The text encoder sees
 * these plus the Q subject tokens, so they must fit the text positions together; a longer subject is refused.
 */
export function captionIds(m: ModelManifest, subject: string, name = "subject"): Int32Array {
  const { clip } = tokenizersFor(m);
  const content = clip.contentIds(captionOf(subject));
  const room = m.spec.textMaxLength - m.spec.numQueryTokens - 2;
  if (content.length > room)
    throw invalid(
      `a subject whose caption "a {subject}" is at most ${room} CLIP tokens (${m.spec.textMaxLength} text positions less ${m.spec.numQueryTokens} subject tokens and 2 markers)`,
      name,
      `text of ${content.length} tokens`,
    );
  return Int32Array.from([clip.special.bos, ...content, clip.special.eos]);
}
