// Subject embeddings on disk: a safetensors file with one F32 tensor `query_embeds` [1, Q, D] and string
// metadata (format, subject, source images, model) in `__metadata__`.
import { readFileSync } from "node:fs";
import type { NativeTensor } from "../bindings/types.js";
import { InputError, messageOf } from "../errors.js";
import { writeFileAtomic } from "../image/encode.js";

export const EMBEDDING_FORMAT = "blipdiff-subject-embedding";
export const EMBEDDING_VERSION = "1";
const REDO = "make it again with `blipdiff encode`";

/** Subject ("ctx") embeddings and where they came from. */
export interface SubjectEmbedding {
  /** Projected Q-Former query embeddings [1, Q, D] (averaged over the source images). */
  queryEmbeds: NativeTensor;
  /** The source subject category the Q-Former saw (e.g. "dog"). */
  subject: string;
  /** Names of the source pictures. */
  sourceImages: string[];
  /** Identifies the model that made it: manifest source and the Q-Former module's sha256. */
  model: { checkpoint?: string; qformerSha256?: string };
}

/** Serializes to safetensors bytes. */
export function serializeSubjectEmbedding(e: SubjectEmbedding): Buffer {
  const { data, shape } = e.queryEmbeds;
  if (data.length !== shape.reduce((a, b) => a * b, 1)) throw new RangeError("queryEmbeds: data length does not match its shape");
  const header = {
    __metadata__: {
      format: EMBEDDING_FORMAT,
      format_version: EMBEDDING_VERSION,
      subject: e.subject,
      source_images: JSON.stringify(e.sourceImages),
      model: JSON.stringify(e.model),
    },
    query_embeds: { dtype: "F32", shape, data_offsets: [0, data.byteLength] },
  };
  let json = Buffer.from(JSON.stringify(header), "utf8");
  const pad = (8 - (json.length % 8)) % 8;
  json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  const bytes = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  return Buffer.concat([len, json, bytes]);
}

/** Saves subject embeddings to a `.safetensors` file (atomically). */
export function saveSubjectEmbedding(file: string, e: SubjectEmbedding): void {
  writeFileAtomic(file, serializeSubjectEmbedding(e));
}

/** Bytes per element of the safetensors dtypes (only F32 is accepted for `query_embeds`). */
const DTYPE_BYTES: Record<string, number> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U64: 8, U32: 4, U16: 2, U8: 1, BOOL: 1,
};

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
const isCount = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;

/** Index of the first NaN or ±Inf value, or -1. */
function firstNonFinite(data: Float32Array): number {
  for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i])) return i;
  return -1;
}

/**
 * Loads a file written by {@link saveSubjectEmbedding}; one-line errors for anything else. The safetensors
 * header is checked as the format requires (offsets inside the data, tensors neither overlapping nor leaving
 * gaps, sizes matching shapes) and the values must be finite.
 */
export function loadSubjectEmbedding(file: string): SubjectEmbedding {
  let buf: Buffer;
  try {
    buf = readFileSync(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new InputError(code === "ENOENT" ? `subject embedding not found: ${file}` : `cannot read ${file}: ${messageOf(err)}`);
  }
  const bad = (why: string): InputError => new InputError(`${file} is not a blipdiff subject embedding: ${why}; ${REDO}`);
  if (buf.length < 8) throw bad("too short");
  const n = buf.readBigUInt64LE(0);
  if (n < 2n) throw bad(`the header length ${n} is too small for a JSON header`);
  if (n > BigInt(buf.length - 8)) throw bad(`the header length ${n} does not fit in the file (${buf.length} bytes)`);
  const dataStart = 8 + Number(n);
  const dataLength = buf.length - dataStart;
  let header: unknown;
  try {
    header = JSON.parse(buf.toString("utf8", 8, dataStart));
  } catch {
    throw bad("unreadable header");
  }
  if (!isObj(header)) throw bad("the header is not a JSON object");
  const meta = isObj(header.__metadata__) ? header.__metadata__ : {};
  if (meta.format !== EMBEDDING_FORMAT) throw bad(`format is ${JSON.stringify(meta.format)}`);

  // Every tensor's byte range, checked against its dtype and shape, then for overlaps and gaps.
  const ranges: { name: string; start: number; end: number }[] = [];
  for (const [name, t] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    if (!isObj(t)) throw bad(`tensor ${name} has no dtype, shape and data_offsets`);
    const bytes = typeof t.dtype === "string" ? DTYPE_BYTES[t.dtype] : undefined;
    if (bytes === undefined) throw bad(`tensor ${name} has the unsupported dtype ${JSON.stringify(t.dtype)}`);
    if (!Array.isArray(t.shape) || !t.shape.every(isCount)) throw bad(`tensor ${name} has an invalid shape ${JSON.stringify(t.shape)}`);
    const o = t.data_offsets;
    if (!Array.isArray(o) || o.length !== 2 || !o.every(isCount) || o[0] > o[1] || o[1] > dataLength)
      throw bad(`tensor ${name} has data_offsets ${JSON.stringify(o)} outside the ${dataLength} data bytes`);
    const expected = (t.shape as number[]).reduce((a, b) => a * b, 1) * bytes;
    if (o[1] - o[0] !== expected)
      throw bad(`tensor ${name} has data_offsets ${JSON.stringify(o)} (${o[1] - o[0]} bytes) but ${t.dtype} ${JSON.stringify(t.shape)} needs ${expected}`);
    ranges.push({ name, start: o[0], end: o[1] });
  }
  ranges.sort((a, b) => a.start - b.start || a.end - b.end);
  let covered = 0;
  for (const r of ranges) {
    if (r.start < covered) throw bad(`the data of tensor ${r.name} overlaps another tensor's`);
    if (r.start > covered) throw bad(`bytes ${covered}..${r.start} of the data belong to no tensor`);
    covered = r.end;
  }
  if (covered !== dataLength) throw bad(`the file has ${dataLength - covered} bytes after the last tensor`);

  const t = header.query_embeds;
  if (!isObj(t)) throw bad("no query_embeds tensor");
  if (t.dtype !== "F32") throw bad(`query_embeds has dtype ${JSON.stringify(t.dtype)}, expected "F32"`);
  const shape = t.shape as number[];
  if (shape.length !== 3 || shape.some((d) => d === 0))
    throw bad(`query_embeds has shape ${JSON.stringify(shape)}, expected [1, Q, D]`);
  const [start, end] = t.data_offsets as [number, number];
  const data = new Float32Array((end - start) / 4);
  // Copied, not viewed: the data section need not be 4-byte aligned in the file buffer.
  Buffer.from(data.buffer).set(buf.subarray(dataStart + start, dataStart + end));
  const at = firstNonFinite(data);
  if (at >= 0) throw new InputError(`${file} contains non-finite values (${data[at]} at index ${at}) in query_embeds; ${REDO}`);
  const parse = <T>(s: string | undefined, fallback: T): T => {
    try {
      return s === undefined ? fallback : (JSON.parse(s) as T);
    } catch {
      return fallback;
    }
  };
  const str = (v: unknown): string | undefined => (typeof v === "string" ? v : undefined);
  return {
    queryEmbeds: { data, shape },
    subject: str(meta.subject) ?? "",
    sourceImages: parse<string[]>(str(meta.source_images), []),
    model: parse<SubjectEmbedding["model"]>(str(meta.model), {}),
  };
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
  if (!Array.isArray(shape) || shape.length !== 3 || shape.some((d, i) => d !== want[i]))
    throw new InputError(
      `${source} has shape [${Array.isArray(shape) ? shape.join(", ") : String(shape)}], this model needs [${want.join(", ")}]; re-run \`blipdiff encode\` with this model`,
    );
  if (data.length !== want[0] * want[1] * want[2])
    throw new InputError(`${source} holds ${data.length} values, its shape [${want.join(", ")}] needs ${want[1] * want[2]}; ${REDO}`);
  const at = firstNonFinite(data);
  if (at >= 0) throw new InputError(`${source} contains non-finite values (${data[at]} at index ${at}); ${REDO}`);
}
