// Editing options (edit.json spec sections 2-4, 8-10): the defaults live here and nowhere else; validation against the
// model before it loads; the prompts, their CLIP ids and the token alignment the addon needs.
//
// Defaults follow LAVIS's editing: 50 steps (and 50 inversion steps), guidance 7.5, cross-attention replacement over
// 0.8 of the steps, self-attention replacement over 0.4, LocalBlend threshold 0.3. A generated source is 512x512 (as
// generate); a photo keeps its own size, rounded down to the latent scale.
import { InputError, invalid } from "../errors.js";
import type { ModelManifest } from "../pipeline/manifest.js";
import { DEFAULTS, LIMITS, checkInt, maxStepsFor, randomSeed } from "../pipeline/options.js";
import { maxLatentTokens, tokenizersFor } from "../pipeline/preflight.js";
import { SUBJECT_START, subjectPositions, tokenAlignment } from "./align.js";

/** Every default of an edit. */
export const EDIT_DEFAULTS = {
  steps: 50,
  guidance: 7.5,
  crossReplace: 0.8,
  selfReplace: 0.4,
  blendThreshold: 0.3,
  negativePrompt: DEFAULTS.negativePrompt,
  /** Size of a generated source (a photo keeps its own). */
  width: DEFAULTS.width,
  height: DEFAULTS.height,
} as const;

/** The largest guidance accepted (as generate). */
export const MAX_GUIDANCE = 1000;

export interface EditSettings {
  /** Editing steps (PNDM for a generated source, DDIM for a photo), 1 to the scheduler's last timestep. Defaults to `50`. */
  steps?: number;
  /** DDIM inversion steps of a photo (with `image` only). Defaults to `steps`. */
  inversionSteps?: number;
  /** Classifier-free guidance of the edit, > 1 (the edit needs the unconditional branch). Defaults to `7.5`. */
  guidance?: number;
  /** Fraction of the steps with cross-attention replacement, in [0, 1]. Defaults to `0.8`. */
  crossReplace?: number;
  /** Fraction of the steps with self-attention replacement, in [0, 1]. Defaults to `0.4`. */
  selfReplace?: number;
  /** LocalBlend threshold on the normalized subject map, in [0, 1]. Defaults to `0.3`. */
  blendThreshold?: number;
  /** Seed of the generated source's initial latents, 0..2^53-1 (without `image` only). Defaults to a random seed. */
  seed?: number;
  /**
   * Width in pixels, a multiple of the model's latent scale. Defaults to `512` for a generated source, and to the
   * photo's own width rounded down to the latent scale for a photo (which is resized and centre-cropped to the size).
   */
  width?: number;
  /** Height in pixels, as `width`. */
  height?: number;
}

export interface EditPromptOptions {
  /** What the picture shows besides the subject, e.g. "sit on a sofa"; used as given. Required. */
  prompt: string;
  /** The category word of what the source image shows, e.g. "cat". Required. */
  sourceSubject: string;
  /** The category word of the edited subject. Defaults to the subject's own word (`subject`). */
  targetSubject?: string;
  /** Negative prompt of both unconditional branches, at most the text window. Defaults to `""`. */
  negativePrompt?: string;
}

/** How each option is called in messages: the library's names, or the CLI's flags. */
export type EditNames = Record<keyof EditSettings | keyof EditPromptOptions | "image", string>;

export const EDIT_LIBRARY_NAMES: EditNames = {
  steps: "steps",
  inversionSteps: "inversionSteps",
  guidance: "guidance",
  crossReplace: "crossReplace",
  selfReplace: "selfReplace",
  blendThreshold: "blendThreshold",
  seed: "seed",
  width: "width",
  height: "height",
  prompt: "prompt",
  sourceSubject: "sourceSubject",
  targetSubject: "targetSubject",
  negativePrompt: "negativePrompt",
  image: "image",
};

export const EDIT_CLI_NAMES: EditNames = {
  steps: "--steps",
  inversionSteps: "--inversion-steps",
  guidance: "--guidance",
  crossReplace: "--cross-replace",
  selfReplace: "--self-replace",
  blendThreshold: "--blend-threshold",
  seed: "--seed",
  width: "--width",
  height: "--height",
  prompt: "--prompt",
  sourceSubject: "--source-subject",
  targetSubject: "--target-subject",
  negativePrompt: "--negative-prompt",
  image: "--image",
};

/** The settings with every default applied and validated. */
export interface ResolvedEditSettings {
  /** "generated": the source is generated from `seed` (PNDM); "photo": a photo is inverted and edited (DDIM). */
  source: "generated" | "photo";
  steps: number;
  /** With a photo only. */
  inversionSteps?: number;
  guidance: number;
  crossReplace: number;
  selfReplace: number;
  blendThreshold: number;
  /** With a generated source only. */
  seed?: number;
  width: number;
  height: number;
}

/** The pixel size of the photo to edit, and its name for messages. */
export interface PhotoSize {
  width: number;
  height: number;
  name: string;
}

function checkFraction(value: unknown, name: string): number {
  if (typeof value !== "number" || Number.isNaN(value)) throw invalid("a number", name, value, "type");
  if (!(value >= 0 && value <= 1)) throw invalid("a number in [0, 1]", name, value);
  return value;
}

/**
 * Applies the defaults and validates every setting against the model: steps and inversion steps within the
 * scheduler's timesteps, guidance in (1, 1000], fractions in [0, 1], sizes multiples of the latent scale within the
 * model's latent-token bound, the seed only for a generated source. `photo` is the photo to edit (undefined for a
 * generated source). TypeError / RangeError for bad values (usage errors in the CLI); InputError for a photo smaller
 * than the latent scale.
 */
export function resolveEditSettings(m: ModelManifest, o: EditSettings, photo: PhotoSize | undefined, names: EditNames = EDIT_LIBRARY_NAMES): ResolvedEditSettings {
  const maxSteps = maxStepsFor(m.spec.scheduler);
  const steps = checkInt(o.steps ?? EDIT_DEFAULTS.steps, names.steps, 1, maxSteps);
  if (!photo && o.inversionSteps !== undefined)
    throw new RangeError(`${names.inversionSteps} applies to editing a photo (${names.image}) only; a generated source is not inverted`);
  if (photo && o.seed !== undefined)
    throw new RangeError(`${names.seed} applies to a generated source only (without ${names.image}); editing a photo draws nothing at random`);
  const inversionSteps = photo ? checkInt(o.inversionSteps ?? steps, names.inversionSteps, 1, maxSteps) : undefined;
  const guidance = o.guidance ?? EDIT_DEFAULTS.guidance;
  if (typeof guidance !== "number" || Number.isNaN(guidance)) throw invalid("a number", names.guidance, guidance, "type");
  if (!(guidance > 1 && guidance <= MAX_GUIDANCE))
    throw invalid(`a number > 1 and <= ${MAX_GUIDANCE} (editing needs classifier-free guidance)`, names.guidance, guidance);
  const crossReplace = checkFraction(o.crossReplace ?? EDIT_DEFAULTS.crossReplace, names.crossReplace);
  const selfReplace = checkFraction(o.selfReplace ?? EDIT_DEFAULTS.selfReplace, names.selfReplace);
  const blendThreshold = checkFraction(o.blendThreshold ?? EDIT_DEFAULTS.blendThreshold, names.blendThreshold);

  const f = m.spec.latentScale;
  if (photo && (o.width === undefined || o.height === undefined) && (photo.width < f || photo.height < f))
    throw new InputError(
      `${names.image}: ${photo.name} is ${photo.width}x${photo.height} pixels, smaller than the model's latent scale ${f}; give ${names.width} and ${names.height} to enlarge it`,
    );
  const size = (v: unknown, name: string): number => {
    const s = checkInt(v, name, f, LIMITS.maxSize);
    if (s % f !== 0) throw invalid(`a multiple of ${f} (the model's latent scale)`, name, s);
    return s;
  };
  const own = (v: number): number => Math.floor(v / f) * f;
  const width = size(o.width ?? (photo ? Math.min(own(photo.width), LIMITS.maxSize) : EDIT_DEFAULTS.width), names.width);
  const height = size(o.height ?? (photo ? Math.min(own(photo.height), LIMITS.maxSize) : EDIT_DEFAULTS.height), names.height);
  const max = maxLatentTokens(m);
  const tokens = (width / f) * (height / f);
  if (max !== undefined && tokens > max) {
    const side = Math.floor(Math.sqrt(max)) * f;
    const fromPhoto = photo && (o.width === undefined || o.height === undefined);
    throw invalid(
      `at most ${max} latent tokens for this model (width/${f} x height/${f}; e.g. ${side}x${side}) but ${width}x${height} is ${tokens}${
        fromPhoto ? ` (the photo's own size, rounded down to the latent scale): give ${names.width} and ${names.height}; the photo is resized and centre-cropped to them` : `: use a smaller ${names.width}/${names.height}`
      }`,
      "size",
      `${width}x${height}`,
    );
  }
  const seed = photo ? undefined : o.seed === undefined ? randomSeed() : checkInt(o.seed, names.seed, 0, LIMITS.maxSeed);
  return {
    source: photo ? "photo" : "generated",
    steps,
    ...(photo ? { inversionSteps } : {}),
    guidance,
    crossReplace,
    selfReplace,
    blendThreshold,
    ...(photo ? {} : { seed }),
    width,
    height,
  };
}

/** The prompts of an edit, as resolved. */
export interface ResolvedEditPrompt {
  prompt: string;
  sourceSubject: string;
  targetSubject: string;
  negativePrompt: string;
  /** "a {source subject} {prompt}": the source branch (no subject embedding). */
  sourcePrompt: string;
  /** "a {target subject} {prompt}": the edited branch, with the subject embedding spliced after "a". */
  editPrompt: string;
  /** "a {source subject} {prompt.trim()}": the DDIM inversion of a photo. */
  inversionPrompt: string;
}

/** The three prompts of spec sections 2 and 10 (the prompt as given; no repetition in editing). */
export function editPrompts(prompt: string, sourceSubject: string, targetSubject: string): Pick<ResolvedEditPrompt, "sourcePrompt" | "editPrompt" | "inversionPrompt"> {
  return {
    sourcePrompt: `a ${sourceSubject} ${prompt}`,
    editPrompt: `a ${targetSubject} ${prompt}`,
    inversionPrompt: `a ${sourceSubject} ${prompt.trim()}`,
  };
}

/** Checks the prompt options (types, non-empty subjects) and builds the prompts; `defaultTarget` is the subject's word. */
export function resolveEditPrompt(o: EditPromptOptions, defaultTarget: string | undefined, names: EditNames = EDIT_LIBRARY_NAMES): ResolvedEditPrompt {
  if (typeof o.prompt !== "string") throw invalid("a string", names.prompt, o.prompt, "type");
  const word = (v: unknown, name: string): string => {
    if (typeof v !== "string" || v.trim() === "") throw invalid("a non-empty string", name, v, "type");
    return v;
  };
  const sourceSubject = word(o.sourceSubject, names.sourceSubject);
  const targetSubject = word(o.targetSubject ?? defaultTarget, names.targetSubject);
  const negativePrompt = o.negativePrompt ?? EDIT_DEFAULTS.negativePrompt;
  if (typeof negativePrompt !== "string") throw invalid("a string", names.negativePrompt, negativePrompt, "type");
  return { prompt: o.prompt, sourceSubject, targetSubject, negativePrompt, ...editPrompts(o.prompt, sourceSubject, targetSubject) };
}

/** What the addon needs of the prompts: ids, the token alignment, the source subject's positions. */
export interface EditTokens {
  /** Negative prompt, textMaxLength ids. */
  uncondIds: Int32Array;
  /** Source prompt, textMaxLength ids. */
  srcIds: Int32Array;
  /** Edit prompt, textMaxLength - numQueryTokens ids (the subject embedding takes the rest). */
  editIds: Int32Array;
  /** Inversion prompt, textMaxLength ids. */
  inversionIds: Int32Array;
  mapper: Int32Array;
  alphas: Float32Array;
  subjectAlpha: Float32Array;
  /** The source subject's token positions in the source prompt (LocalBlend). */
  subjectPositions: number[];
}

/**
 * Tokenizes the prompts with the model's CLIP tokenizer and aligns them. Refuses (RangeError) what does not fit the
 * text window without truncation (spec section 2): the source prompt in textMaxLength positions, the edit prompt in
 * textMaxLength - numQueryTokens, the negative prompt in textMaxLength.
 */
export function tokenizeEdit(m: ModelManifest, p: ResolvedEditPrompt, names: EditNames = EDIT_LIBRARY_NAMES): EditTokens {
  const clip = tokenizersFor(m).clip;
  const P = m.spec.textMaxLength;
  const nq = m.spec.numQueryTokens;
  const fit = (text: string, length: number, what: string, name: string): void => {
    const n = clip.contentIds(text).length;
    const room = length === P ? `${P} text positions less 2 markers` : `${P} text positions less ${nq} subject tokens and 2 markers`;
    if (n > length - 2) throw new RangeError(`Expected ${what} at most ${length - 2} CLIP tokens (${room}) for ${name} but received text of ${n} tokens`);
  };
  fit(p.sourcePrompt, P, `a prompt whose source prompt "a {source subject} {prompt}" is`, names.prompt);
  fit(p.editPrompt, P - nq, `a prompt whose edited prompt "a {target subject} {prompt}" is`, names.prompt);
  fit(p.negativePrompt, P, "a negative prompt of", names.negativePrompt);

  const subject = clip.contentIds(p.sourceSubject);
  if (subject.length === 0) throw invalid("a source subject with at least one CLIP token", names.sourceSubject, p.sourceSubject);
  const srcIds = clip.encodeFixed(p.sourcePrompt, P).ids;
  // The subject's tokens must be those of the prompt from SUBJECT_START on (CLIP splits at spaces, so they are).
  if (subject.some((id, k) => srcIds[SUBJECT_START + k] !== id))
    throw invalid("a source subject that keeps its CLIP tokens inside the prompt", names.sourceSubject, p.sourceSubject);
  const unpadded = (text: string): number[] => [clip.special.bos, ...clip.contentIds(text), clip.special.eos];
  const align = tokenAlignment(unpadded(p.sourcePrompt), unpadded(p.editPrompt), m.spec.ctxBeginPos, nq, P);
  const { positions, subjectAlpha } = subjectPositions(subject.length, P);
  return {
    uncondIds: clip.encodeFixed(p.negativePrompt, P).ids,
    srcIds,
    editIds: clip.encodeFixed(p.editPrompt, P - nq).ids,
    inversionIds: clip.encodeFixed(p.inversionPrompt, P).ids,
    mapper: align.mapper,
    alphas: align.alphas,
    subjectAlpha,
    subjectPositions: positions,
  };
}
