// Checks of a generation request against a model that need no native code: run before the model loads
// (the CLI) and again at the start of every generate() (the library), so bad input fails fast and clearly.
import { ModelError, invalid } from "../errors.js";
import { checkBaseModel } from "../finetune/file.js";
import { checkSubjectEmbedding, type SubjectEmbedding } from "./embedding.js";
import type { ModelManifest } from "./manifest.js";
import { resolvePrompt, resolveSampling, type PromptOptions, type ResolvedPrompt, type ResolvedSampling, type SamplingOptions } from "./options.js";
import { ClipTokenizer, WordPieceTokenizer } from "./tokenize.js";

/**
 * How far past its training size a model may be asked to go, in latent tokens: 4 x sample_size^2, i.e. twice
 * the trained side (1024x1024 for Stable Diffusion 1.5, trained at 512x512 with 64x64 latents). The UNet's
 * self-attention grows with the square of the token count, so this bounds time and memory, not just pixels.
 */
export const LATENT_TOKEN_FACTOR = 4;

/** The tokenizers of a model, built once per manifest (the CLI checks prompts before loading, the pipeline reuses them). */
export interface ModelTokenizers {
  clip: ClipTokenizer;
  wordpiece: WordPieceTokenizer;
}

const tokenizerCache = new WeakMap<ModelManifest, ModelTokenizers>();

export function tokenizersFor(m: ModelManifest): ModelTokenizers {
  let t = tokenizerCache.get(m);
  if (!t) {
    const spec = m.tokenizers;
    t = { clip: new ClipTokenizer(spec.clip.file, spec.clip), wordpiece: new WordPieceTokenizer(spec.qformer.file, spec.qformer) };
    tokenizerCache.set(m, t);
  }
  return t;
}

function rawConfig(m: ModelManifest): Record<string, unknown> {
  const c = m.raw.config;
  return typeof c === "object" && c !== null ? (c as Record<string, unknown>) : {};
}

/** The most latent tokens (H/f * W/f) this model accepts, or undefined when the manifest does not give its sample size. */
export function maxLatentTokens(m: ModelManifest): number | undefined {
  const s = rawConfig(m).unet_sample_size;
  return typeof s === "number" && Number.isInteger(s) && s > 0 ? LATENT_TOKEN_FACTOR * s * s : undefined;
}

/** The longest Q-Former text (WordPiece ids with [CLS] and [SEP]); undefined for exports that predate the field. */
export function qformerMaxTextLength(m: ModelManifest): number | undefined {
  return m.qformerMaxTextLength;
}

/** resolveSampling plus the model's bound on latent tokens. */
export function resolveSamplingFor(m: ModelManifest, o: SamplingOptions): ResolvedSampling {
  const s = resolveSampling(o, m.spec.latentScale, m.spec.scheduler);
  const max = maxLatentTokens(m);
  const f = m.spec.latentScale;
  const tokens = (s.width / f) * (s.height / f);
  if (max !== undefined && tokens > max) {
    const side = Math.sqrt(max) * f;
    throw invalid(
      `at most ${max} latent tokens for this model (width/${f} x height/${f}; e.g. ${side}x${side}) but ${s.width}x${s.height} is ${tokens}: use a smaller --width/--height`,
      "size",
      `${s.width}x${s.height}`,
    );
  }
  return s;
}

/** Refuses a subject whose WordPiece ids do not fit the Q-Former's text positions (it would fail inside TorchScript). */
export function checkSubjectText(m: ModelManifest, subject: string, name = "subject"): void {
  const max = qformerMaxTextLength(m);
  if (max === undefined) return;
  const n = tokenizersFor(m).wordpiece.encode(subject).length;
  if (n > max)
    throw invalid(`a subject of at most ${max - 2} word pieces (the Q-Former's text limit)`, name, `text of ${n - 2} word pieces`);
}

/**
 * Refuses an embedding of the wrong shape for this model, or with NaN/Inf values, and a fine-tuned subject made from
 * another base model.
 */
export function checkEmbeddingFor(m: ModelManifest, e: SubjectEmbedding, source = "the subject embedding"): void {
  checkBaseModel(m, e, source);
  checkSubjectEmbedding(e, { numQueryTokens: m.spec.numQueryTokens, dim: m.crossAttentionDim }, source);
}

/**
 * A warning when one "a {target} {prompt}" does not fit the text window: the prompt is repeated to fill the window
 * (the reference's prompt strength), so only a single copy that overflows loses words.
 */
export function promptWindowWarning(m: ModelManifest, prompt: ResolvedPrompt): string | undefined {
  const window = m.spec.textMaxLength - m.spec.numQueryTokens - 2;
  const one = `a ${prompt.targetSubject} ${prompt.prompt.trim()}`;
  const n = tokenizersFor(m).clip.contentIds(one).length;
  if (n <= window) return undefined;
  return `the prompt "a ${prompt.targetSubject} ..." is ${n} tokens, only the first ${window} fit in the text window (${m.spec.textMaxLength} less ${m.spec.numQueryTokens} subject tokens and 2 markers); the rest was cut`;
}

/** How a request names its subject: picture(s) with a subject word, or an embedding (whose word is the default). */
export interface SubjectInputOptions {
  subject?: string;
  subjectEmbedding?: SubjectEmbedding;
  /** Names the embedding in messages (e.g. its file). */
  embeddingSource?: string;
  hasSubjectImage: boolean;
}

/**
 * Checks the subject input of a generation or an edit: either pictures or an embedding (not both, not neither), a
 * non-empty subject word (the embedding's own by default) that fits the Q-Former's text, and an embedding usable with
 * this model. Returns the subject word.
 */
export function resolveSubjectInput(m: ModelManifest, o: SubjectInputOptions): string {
  if (o.subjectEmbedding && o.hasSubjectImage) throw invalid("either subjectImage or subjectEmbedding", "subject input", "both");
  if (!o.subjectEmbedding && !o.hasSubjectImage) throw invalid("a subject image or a subject embedding", "subjectImage", undefined, "type");
  const subject = o.subject ?? o.subjectEmbedding?.subject;
  if (typeof subject !== "string" || subject.trim() === "") throw invalid("a non-empty string", "subject", subject, "type");
  if (o.hasSubjectImage) checkSubjectText(m, subject);
  if (o.subjectEmbedding) checkEmbeddingFor(m, o.subjectEmbedding, o.embeddingSource);
  return subject;
}

export interface PreflightOptions extends PromptOptions, SamplingOptions, SubjectInputOptions {
  hasControlImage: boolean;
}

export interface Preflight {
  sampling: ResolvedSampling;
  prompt: ResolvedPrompt;
  subject: string;
  warnings: string[];
}

/** Everything about a generation that can be checked without the modules. */
export function preflightGenerate(m: ModelManifest, o: PreflightOptions): Preflight {
  const sampling = resolveSamplingFor(m, o);
  const subject = resolveSubjectInput(m, o);
  const prompt = resolvePrompt(o, subject);
  if (o.hasControlImage && !m.hasControlnet)
    throw new ModelError(`--control-image needs a model exported with a ControlNet (blipdiff convert --with-controlnet); ${m.dir} has none`);
  const warnings: string[] = [];
  const sha = o.subjectEmbedding?.model.qformerSha256;
  if (sha && sha !== m.identity.qformer) warnings.push("the subject embedding was made with a different Q-Former than this model's");
  const cut = promptWindowWarning(m, prompt);
  if (cut) warnings.push(cut);
  return { sampling, prompt, subject, warnings };
}
