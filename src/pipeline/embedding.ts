// Subject embeddings on disk: a safetensors file with one F32 tensor `query_embeds` [1, Q, D] and string
// metadata (format, subject, source images, model) in `__metadata__`.
import { readFileSync } from "node:fs";
import type { NativeTensor } from "../bindings/types.js";
import { InputError, messageOf } from "../errors.js";
import { writeFileAtomic } from "../image/encode.js";

export const EMBEDDING_FORMAT = "blipdiff-subject-embedding";
export const EMBEDDING_VERSION = "1";

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

/** Loads a file written by {@link saveSubjectEmbedding}; one-line errors for anything else. */
export function loadSubjectEmbedding(file: string): SubjectEmbedding {
  let buf: Buffer;
  try {
    buf = readFileSync(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new InputError(code === "ENOENT" ? `subject embedding not found: ${file}` : `cannot read ${file}: ${messageOf(err)}`);
  }
  const bad = (why: string): InputError => new InputError(`${file} is not a blipdiff subject embedding: ${why}`);
  if (buf.length < 8) throw bad("too short");
  const n = Number(buf.readBigUInt64LE(0));
  if (n <= 0 || 8 + n > buf.length) throw bad("bad header length");
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(buf.toString("utf8", 8, 8 + n)) as Record<string, unknown>;
  } catch {
    throw bad("unreadable header");
  }
  const meta = (header.__metadata__ ?? {}) as Record<string, string>;
  if (meta.format !== EMBEDDING_FORMAT) throw bad(`format is ${JSON.stringify(meta.format)}`);
  const t = header.query_embeds as { dtype?: string; shape?: number[]; data_offsets?: [number, number] } | undefined;
  if (!t || t.dtype !== "F32" || !Array.isArray(t.shape) || t.shape.length !== 3 || !Array.isArray(t.data_offsets))
    throw bad("no F32 query_embeds tensor [1, Q, D]");
  const [start, end] = t.data_offsets;
  const count = t.shape.reduce((a, b) => a * b, 1);
  if (end - start !== count * 4 || 8 + n + end > buf.length) throw bad("truncated tensor data");
  const data = new Float32Array(count);
  Buffer.from(data.buffer).set(buf.subarray(8 + n + start, 8 + n + end));
  const parse = <T>(s: string | undefined, fallback: T): T => {
    try {
      return s === undefined ? fallback : (JSON.parse(s) as T);
    } catch {
      return fallback;
    }
  };
  return {
    queryEmbeds: { data, shape: t.shape },
    subject: meta.subject ?? "",
    sourceImages: parse<string[]>(meta.source_images, []),
    model: parse<SubjectEmbedding["model"]>(meta.model, {}),
  };
}
