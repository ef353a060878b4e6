// Subject embeddings on disk: a safetensors file with one F32 tensor `query_embeds` [1, Q, D] and string
// metadata (format, subject, source images, model, and for a blend its inputs) in `__metadata__`. (Fine-tuned subjects, which carry UNet
// weights too, have their own format: src/finetune/file.ts.)
import type { NativeTensor } from "../bindings/types.js";
import type { FinetuneInfo } from "../finetune/file.js";
import { InputError, messageOf } from "../errors.js";
import { writeFileAtomic } from "../io/atomic.js";
import { SafetensorsError, SafetensorsReader, firstNonFinite, fromFloat32, serializeSafetensors, toFloat32 } from "../io/safetensors.js";

export const EMBEDDING_FORMAT = "blipdiff-subject-embedding";
export const EMBEDDING_VERSION = "1";
export const REDO_ENCODE = "make it again with `blipdiff encode`";
const REDO = REDO_ENCODE;

/** One input of a blend (`blipdiff blend`, blendSubjects in src/pipeline/blend.ts), as recorded in its file. */
export interface BlendComponent {
  /** The input's file name (base name), or how the caller named it. */
  source: string;
  /** The input's subject word. */
  subject: string;
  /** Its weight, as given (the blend multiplies by it rounded to float32). */
  ratio: number;
  /** The input's own source pictures. */
  sourceImages: string[];
  /** Set when the input was itself a blend. */
  blend?: BlendComponent[];
}

/** Subject ("ctx") embeddings and where they came from. */
export interface SubjectEmbedding {
  /** Projected Q-Former query embeddings [1, Q, D] (averaged over the source images). */
  queryEmbeds: NativeTensor;
  /** The source subject category the Q-Former saw (e.g. "dog"). */
  subject: string;
  /** Names of the source pictures. */
  sourceImages: string[];
  /** Identifies the model that made it: manifest source and the sha256 identifying the Q-Former (ModelManifest.identity). */
  model: { checkpoint?: string; qformerSha256?: string };
  /**
   * Set for a fine-tuned subject (`blipdiff finetune`, {@link BlipDiffusionPipeline.finetune}): the UNet weights that
   * generate() uses with this embedding, and the base model they belong to.
   */
  finetune?: FinetuneInfo;
  /** Set for a blend of several subjects: its inputs and their weights, in order. */
  blend?: BlendComponent[];
}

/** The safetensors metadata of an encode file. */
function embeddingMetadata(e: SubjectEmbedding): Record<string, string> {
  return {
    format: EMBEDDING_FORMAT,
    format_version: EMBEDDING_VERSION,
    subject: e.subject,
    source_images: JSON.stringify(e.sourceImages),
    model: JSON.stringify(e.model),
    ...(e.blend ? { blend: JSON.stringify(e.blend) } : {}),
  };
}

/** Serializes to safetensors bytes. */
export function serializeSubjectEmbedding(e: SubjectEmbedding): Buffer {
  const { data, shape } = e.queryEmbeds;
  if (data.length !== shape.reduce((a, b) => a * b, 1)) throw new RangeError("queryEmbeds: data length does not match its shape");
  return serializeSafetensors({ query_embeds: fromFloat32(data, shape) }, embeddingMetadata(e));
}

/** Saves subject embeddings to a `.safetensors` file (atomically). */
export function saveSubjectEmbedding(file: string, e: SubjectEmbedding): void {
  writeFileAtomic(file, serializeSubjectEmbedding(e));
}

/** The one-line error for a subject file that cannot be read at all (missing, a folder, no permission). */
export function unreadableSubjectFile(file: string, err: unknown, what = "subject embedding"): InputError {
  const code = (err as NodeJS.ErrnoException).code;
  return new InputError(code === "ENOENT" ? `${what} not found: ${file}` : `cannot read ${file}: ${messageOf(err)}`);
}

/** Parses a metadata value written with JSON.stringify, or `fallback`. */
export function parseMetadataJson<T>(s: string | undefined, fallback: T): T {
  try {
    return s === undefined ? fallback : (JSON.parse(s) as T);
  } catch {
    return fallback;
  }
}

/**
 * The subject embedding of an opened encode file (format already checked by the caller). `bad(why)` makes the
 * caller's error for a malformed file.
 */
export function embeddingFromReader(file: string, r: SafetensorsReader, bad: (why: string) => InputError): SubjectEmbedding {
  const t = r.entries.get("query_embeds");
  if (!t) throw bad("no query_embeds tensor");
  if (t.dtype !== "F32") throw bad(`query_embeds has dtype ${JSON.stringify(t.dtype)}, expected "F32"`);
  if (t.shape.length !== 3 || t.shape.some((d) => d === 0)) throw bad(`query_embeds has shape ${JSON.stringify(t.shape)}, expected [1, Q, D]`);
  const data = toFloat32(r.read("query_embeds"), "query_embeds");
  const at = firstNonFinite(data);
  if (at >= 0) throw new InputError(`${file} contains non-finite values (${data[at]} at index ${at}) in query_embeds; ${REDO}`);
  const meta = r.metadata;
  const blend = parseMetadataJson<unknown>(meta.blend, undefined);
  return {
    queryEmbeds: { data, shape: t.shape },
    subject: meta.subject ?? "",
    sourceImages: parseMetadataJson<string[]>(meta.source_images, []),
    model: parseMetadataJson<SubjectEmbedding["model"]>(meta.model, {}),
    // Provenance only: kept when it is a list, never used in computation.
    ...(Array.isArray(blend) ? { blend: blend as BlendComponent[] } : {}),
  };
}

/**
 * Loads a file written by {@link saveSubjectEmbedding}; one-line errors for anything else. The safetensors
 * header is checked as the format requires (offsets inside the data, tensors neither overlapping nor leaving
 * gaps, sizes matching shapes) and the values must be finite. (`generate --subject-embedding` also takes
 * fine-tuned files: see loadSubjectFile in src/finetune/file.ts.)
 */
export function loadSubjectEmbedding(file: string): SubjectEmbedding {
  const bad = (why: string): InputError => new InputError(`${file} is not a blipdiff subject embedding: ${why}; ${REDO}`);
  let r: SafetensorsReader;
  try {
    r = SafetensorsReader.open(file);
  } catch (err) {
    if (err instanceof SafetensorsError) throw bad(err.reason);
    throw unreadableSubjectFile(file, err);
  }
  try {
    if (r.metadata.format !== EMBEDDING_FORMAT) throw bad(`format is ${JSON.stringify(r.metadata.format)}`);
    return embeddingFromReader(file, r, bad);
  } catch (err) {
    if (err instanceof SafetensorsError) throw bad(err.reason);
    if (err instanceof InputError) throw err;
    throw unreadableSubjectFile(file, err);
  } finally {
    r.close();
  }
}

/** What a model expects of subject embeddings: [1, numQueryTokens, dim]. */
export interface EmbeddingShape {
  /** The Q-Former's query-token count (manifest `config.num_query_tokens`). */
  numQueryTokens: number;
  /** The embedding width (manifest `config.cross_attention_dim`). */
  dim: number;
}

/**
 * Checks subject embeddings against a model before it loads: shape [1, Q, D], data length, finite values.
 * `source` names the file (or other origin) in the message. Throws an InputError.
 */
export function checkSubjectEmbedding(e: SubjectEmbedding, expected: EmbeddingShape, source = "the subject embedding"): void {
  const { data, shape } = e.queryEmbeds;
  const want = [1, expected.numQueryTokens, expected.dim];
  const command = e.finetune ? "blipdiff finetune" : "blipdiff encode";
  if (!Array.isArray(shape) || shape.length !== 3 || shape.some((d, i) => d !== want[i]))
    throw new InputError(
      `${source} has shape [${Array.isArray(shape) ? shape.join(", ") : String(shape)}], this model needs [${want.join(", ")}]; re-run \`${command}\` with this model`,
    );
  const redo = `make it again with \`${command}\``;
  if (data.length !== want[0] * want[1] * want[2])
    throw new InputError(`${source} holds ${data.length} values, its shape [${want.join(", ")}] needs ${want[1] * want[2]}; ${redo}`);
  const at = firstNonFinite(data);
  if (at >= 0) throw new InputError(`${source} contains non-finite values (${data[at]} at index ${at}); ${redo}`);
}
