// Generation options: the defaults live here and nowhere else; validation with sharp-style messages.
import { randomInt } from "node:crypto";
import type { NativeDType, NativeSchedulerKind } from "../bindings/types.js";
import { invalid } from "../errors.js";
import { parseSubjectCrop, type SubjectCrop } from "./preprocess.js";

export type SchedulerKind = NativeSchedulerKind;
export type DeviceOption = "auto" | "cpu" | "cuda" | `cuda:${number}`;
export type DTypeOption = "auto" | NativeDType;

export const SCHEDULERS: readonly SchedulerKind[] = ["pndm", "ddim", "dpmpp-2m"];
export const DTYPES: readonly DTypeOption[] = ["auto", "float32", "float16", "bfloat16"];

/** Every default of a generation, in one place. */
export const DEFAULTS = {
  steps: 50,
  guidance: 7.5,
  width: 512,
  height: 512,
  promptStrength: 1,
  promptReps: 20,
  scheduler: "pndm" as SchedulerKind,
  n: 1,
  negativePrompt: "",
  device: "auto" as DeviceOption,
  dtype: "auto" as DTypeOption,
  subjectCrop: "squash" as SubjectCrop,
  conditioningScale: 1,
} as const;

export const LIMITS = {
  maxSteps: 1000,
  /** Largest width/height accepted (pixels). */
  maxSize: 4096,
  maxImages: 1000,
  maxSeed: Number.MAX_SAFE_INTEGER,
} as const;

/** The one string converter for scheduler names (CLI, manifest, API). Accepts a few aliases. */
export function parseScheduler(value: unknown): SchedulerKind {
  const aliases: Record<string, SchedulerKind> = {
    pndm: "pndm",
    plms: "pndm",
    ddim: "ddim",
    "dpmpp-2m": "dpmpp-2m",
    dpmpp2m: "dpmpp-2m",
    "dpm++2m": "dpmpp-2m",
  };
  const kind = typeof value === "string" ? aliases[value.toLowerCase()] : undefined;
  if (!kind) throw invalid(`one of ${SCHEDULERS.join(", ")}`, "scheduler", value);
  return kind;
}

export function parseDevice(value: unknown): DeviceOption {
  if (typeof value === "string" && /^(auto|cpu|cuda(:\d+)?)$/.test(value)) return value as DeviceOption;
  throw invalid("auto, cpu, cuda or cuda:N", "device", value);
}

export function parseDType(value: unknown): DTypeOption {
  if (typeof value === "string" && (DTYPES as readonly string[]).includes(value)) return value as DTypeOption;
  throw invalid(`one of ${DTYPES.join(", ")}`, "dtype", value);
}

export function checkInt(value: unknown, name: string, min: number, max: number): number {
  if (typeof value !== "number" || !Number.isFinite(value)) throw invalid(`an integer`, name, value, "type");
  if (!Number.isInteger(value) || value < min || value > max) throw invalid(`an integer between ${min} and ${max}`, name, value);
  return value;
}

export function checkNumber(value: unknown, name: string, min: number, max = Infinity): number {
  if (typeof value !== "number" || Number.isNaN(value)) throw invalid("a number", name, value, "type");
  if (!Number.isFinite(value) || value < min || value > max)
    throw invalid(max === Infinity ? `a finite number >= ${min}` : `a number between ${min} and ${max}`, name, value);
  return value;
}

/** A random seed in 0..2^53-1 (used when none is given; always reported back). */
export function randomSeed(): number {
  return randomInt(0, 2 ** 24) * 2 ** 29 + randomInt(0, 2 ** 29);
}

export interface PromptOptions {
  /** The prompt, e.g. "swimming in a pool". Required. */
  prompt: string;
  /** Category word of the subject in the output. Defaults to the source subject. */
  targetSubject?: string;
  /** Negative prompt (used only when guidance > 1). Defaults to `""`. */
  negativePrompt?: string;
  /** Prompt repetition strength. Defaults to `1`. */
  promptStrength?: number;
  /** Prompt repetitions: the prompt is repeated int(promptStrength * promptReps) times. Defaults to `20`. */
  promptReps?: number;
}

export interface SamplingOptions {
  /** Denoising steps, 1..1000. Defaults to `50`. */
  steps?: number;
  /** Classifier-free guidance scale, >= 0; values <= 1 disable guidance. Defaults to `7.5`. */
  guidance?: number;
  /** Output width in pixels, a multiple of the model's latent scale. Defaults to `512`. */
  width?: number;
  /** Output height in pixels, a multiple of the model's latent scale. Defaults to `512`. */
  height?: number;
  /** Seed of the first image (image i uses seed + i), 0..2^53-1. Defaults to a random seed. */
  seed?: number;
  /** Number of images. Defaults to `1`. */
  n?: number;
  /** Scheduler. Defaults to `"pndm"` (the reference's). */
  scheduler?: SchedulerKind;
}

/** Sampling options with every default applied and validated. */
export interface ResolvedSampling {
  steps: number;
  guidance: number;
  width: number;
  height: number;
  seed: number;
  n: number;
  scheduler: SchedulerKind;
}

export interface ResolvedPrompt {
  prompt: string;
  targetSubject: string;
  negativePrompt: string;
  promptStrength: number;
  promptReps: number;
}

/**
 * The most steps a scheduler config allows: with "leading" spacing the last timestep is
 * (n-1)*(T//n) + steps_offset, which must stay below T (num_train_timesteps).
 */
export function maxStepsFor(scheduler: Record<string, unknown>): number {
  const t = typeof scheduler.num_train_timesteps === "number" ? scheduler.num_train_timesteps : 1000;
  const offset = typeof scheduler.steps_offset === "number" ? scheduler.steps_offset : 0;
  return Math.max(1, Math.min(LIMITS.maxSteps, t - offset));
}

/** Applies defaults and validates; `latentScale` (and the scheduler config) come from the manifest. */
export function resolveSampling(o: SamplingOptions, latentScale: number, schedulerConfig: Record<string, unknown> = {}): ResolvedSampling {
  const steps = checkInt(o.steps ?? DEFAULTS.steps, "steps", 1, maxStepsFor(schedulerConfig));
  const guidance = checkNumber(o.guidance ?? DEFAULTS.guidance, "guidance", 0, 1000);
  const size = (v: unknown, name: string): number => {
    const s = checkInt(v, name, latentScale, LIMITS.maxSize);
    if (s % latentScale !== 0) throw invalid(`a multiple of ${latentScale} (the model's latent scale)`, name, s);
    return s;
  };
  const width = size(o.width ?? DEFAULTS.width, "width");
  const height = size(o.height ?? DEFAULTS.height, "height");
  const seed = o.seed === undefined ? randomSeed() : checkInt(o.seed, "seed", 0, LIMITS.maxSeed);
  const n = checkInt(o.n ?? DEFAULTS.n, "n", 1, LIMITS.maxImages);
  if (seed > LIMITS.maxSeed - (n - 1)) throw invalid(`a seed <= ${LIMITS.maxSeed - n + 1} with n = ${n}`, "seed", seed);
  const scheduler = parseScheduler(o.scheduler ?? DEFAULTS.scheduler);
  return { steps, guidance, width, height, seed, n, scheduler };
}

export function resolvePrompt(o: PromptOptions, sourceSubject: string): ResolvedPrompt {
  if (typeof o.prompt !== "string") throw invalid("a string", "prompt", o.prompt, "type");
  const targetSubject = o.targetSubject ?? sourceSubject;
  if (typeof targetSubject !== "string" || targetSubject.trim() === "")
    throw invalid("a non-empty string", "targetSubject", targetSubject, "type");
  const negativePrompt = o.negativePrompt ?? DEFAULTS.negativePrompt;
  if (typeof negativePrompt !== "string") throw invalid("a string", "negativePrompt", negativePrompt, "type");
  const promptStrength = checkNumber(o.promptStrength ?? DEFAULTS.promptStrength, "promptStrength", 0, 1000);
  const promptReps = checkInt(o.promptReps ?? DEFAULTS.promptReps, "promptReps", 0, 1000);
  if (Math.trunc(promptStrength * promptReps) < 1)
    throw invalid("promptStrength * promptReps >= 1", "promptStrength", promptStrength);
  return { prompt: o.prompt, targetSubject, negativePrompt, promptStrength, promptReps };
}

export { parseSubjectCrop };
