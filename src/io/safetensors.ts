// safetensors files (https://github.com/huggingface/safetensors): an 8-byte little-endian header length, a JSON
// header { name: { dtype, shape, data_offsets: [begin, end] }, "__metadata__": { string: string } }, then the
// raw little-endian tensor bytes. The reader validates the header as the format requires before it reads any
// tensor (offsets inside the data, tensors neither overlapping nor leaving gaps, sizes matching dtype and
// shape) and reads each tensor on its own, so a file of gigabytes never sits in one Buffer. The writer streams
// the header and then each tensor to a temporary file that is renamed into place (src/io/atomic.ts).
import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { writeAll, writeFileAtomicWith, type AtomicWriteOptions } from "./atomic.js";

/** Bytes per element of every safetensors dtype. */
export const DTYPE_BYTES: Readonly<Record<string, number>> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, F8_E4M3: 1, F8_E5M2: 1,
  I64: 8, I32: 4, I16: 2, I8: 1, U64: 8, U32: 4, U16: 2, U8: 1, BOOL: 1,
};

/** The safetensors library's bound on the JSON header (a larger one is refused before it is read). */
export const MAX_HEADER_BYTES = 100_000_000;

/** A file that is not valid safetensors; `reason` says why, without naming the file (callers add it). */
export class SafetensorsError extends Error {
  override readonly name = "SafetensorsError";
  constructor(readonly reason: string) {
    super(reason);
  }
}

/** A tensor as raw little-endian bytes in a safetensors dtype (the addon's NativeRawTensor for F32/F16). */
export interface RawTensor {
  dtype: string;
  shape: number[];
  data: Uint8Array;
}

/** One tensor of a header: dtype, shape and its byte range in the data section. */
export interface TensorEntry {
  dtype: string;
  shape: number[];
  begin: number;
  end: number;
}

interface ByteSource {
  readonly size: number;
  /** Exactly `length` bytes from `position`, in a new buffer. */
  read(position: number, length: number): Uint8Array;
  close(): void;
}

function fileSource(file: string): ByteSource {
  const fd = openSync(file, "r");
  let size: number;
  try {
    size = fstatSync(fd).size;
  } catch (err) {
    closeSync(fd);
    throw err;
  }
  return {
    size,
    read(position, length) {
      const out = new Uint8Array(length);
      for (let off = 0; off < length; ) {
        const n = readSync(fd, out, off, length - off, position + off);
        if (n === 0) throw new SafetensorsError(`the file ended at byte ${position + off} while reading ${length} bytes at ${position}`);
        off += n;
      }
      return out;
    },
    close: () => closeSync(fd),
  };
}

function bytesSource(bytes: Uint8Array): ByteSource {
  return {
    size: bytes.length,
    read(position, length) {
      // A copy (Buffer#slice would be a view into the caller's bytes).
      const out = new Uint8Array(length);
      out.set(bytes.subarray(position, position + length));
      return out;
    },
    close: () => undefined,
  };
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
const isCount = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;

/** Number of elements of a shape (1 for a scalar []). */
export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Parses and checks a header; returns the metadata (string values only) and the entries in header order. */
function parseHeader(json: Uint8Array, dataLength: number): { metadata: Record<string, string>; entries: Map<string, TensorEntry> } {
  let header: unknown;
  try {
    header = JSON.parse(Buffer.from(json.buffer, json.byteOffset, json.byteLength).toString("utf8"));
  } catch {
    throw new SafetensorsError("unreadable header");
  }
  if (!isObj(header)) throw new SafetensorsError("the header is not a JSON object");
  const metadata: Record<string, string> = {};
  if (isObj(header.__metadata__)) for (const [k, v] of Object.entries(header.__metadata__)) if (typeof v === "string") metadata[k] = v;
  const entries = new Map<string, TensorEntry>();
  for (const [name, t] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    if (!isObj(t)) throw new SafetensorsError(`tensor ${name} has no dtype, shape and data_offsets`);
    const bytes = typeof t.dtype === "string" && Object.hasOwn(DTYPE_BYTES, t.dtype) ? DTYPE_BYTES[t.dtype] : undefined;
    if (bytes === undefined) throw new SafetensorsError(`tensor ${name} has the unsupported dtype ${JSON.stringify(t.dtype)}`);
    if (!Array.isArray(t.shape) || !t.shape.every(isCount) || !Number.isSafeInteger(numel(t.shape) * bytes))
      throw new SafetensorsError(`tensor ${name} has an invalid shape ${JSON.stringify(t.shape)}`);
    const o = t.data_offsets;
    if (!Array.isArray(o) || o.length !== 2 || !o.every(isCount) || o[0] > o[1] || o[1] > dataLength)
      throw new SafetensorsError(`tensor ${name} has data_offsets ${JSON.stringify(o)} outside the ${dataLength} data bytes`);
    const expected = numel(t.shape as number[]) * bytes;
    if (o[1] - o[0] !== expected)
      throw new SafetensorsError(
        `tensor ${name} has data_offsets ${JSON.stringify(o)} (${o[1] - o[0]} bytes) but ${t.dtype} ${JSON.stringify(t.shape)} needs ${expected}`,
      );
    entries.set(name, { dtype: t.dtype as string, shape: [...(t.shape as number[])], begin: o[0], end: o[1] });
  }
  const ranges = [...entries].sort(([, a], [, b]) => a.begin - b.begin || a.end - b.end);
  let covered = 0;
  for (const [name, r] of ranges) {
    if (r.begin < covered) throw new SafetensorsError(`the data of tensor ${name} overlaps another tensor's`);
    if (r.begin > covered) throw new SafetensorsError(`bytes ${covered}..${r.begin} of the data belong to no tensor`);
    covered = r.end;
  }
  if (covered !== dataLength) throw new SafetensorsError(`the file has ${dataLength - covered} bytes after the last tensor`);
  return { metadata, entries };
}

/**
 * A validated safetensors file whose tensors are read on demand. Opening reads and checks the header only;
 * {@link read} copies one tensor's bytes. Close it when done (a file descriptor stays open until then).
 */
export class SafetensorsReader {
  private constructor(
    private readonly source: ByteSource,
    private readonly dataStart: number,
    /** `__metadata__` (string values only; others are dropped). */
    readonly metadata: Readonly<Record<string, string>>,
    /** The tensors of the header, in header order. */
    readonly entries: ReadonlyMap<string, TensorEntry>,
  ) {}

  /** Opens and validates a file. Throws a {@link SafetensorsError} for a malformed file, fs errors as they are. */
  static open(file: string): SafetensorsReader {
    return SafetensorsReader.from(fileSource(file));
  }

  /** Validates bytes already in memory. */
  static fromBytes(bytes: Uint8Array): SafetensorsReader {
    return SafetensorsReader.from(bytesSource(bytes));
  }

  private static from(source: ByteSource): SafetensorsReader {
    try {
      if (source.size < 8) throw new SafetensorsError("too short");
      const n = Buffer.from(source.read(0, 8)).readBigUInt64LE(0);
      if (n < 2n) throw new SafetensorsError(`the header length ${n} is too small for a JSON header`);
      if (n > BigInt(source.size - 8)) throw new SafetensorsError(`the header length ${n} does not fit in the file (${source.size} bytes)`);
      if (n > BigInt(MAX_HEADER_BYTES)) throw new SafetensorsError(`the header length ${n} is over the format's limit of ${MAX_HEADER_BYTES} bytes`);
      const dataStart = 8 + Number(n);
      const { metadata, entries } = parseHeader(source.read(8, Number(n)), source.size - dataStart);
      return new SafetensorsReader(source, dataStart, metadata, entries);
    } catch (err) {
      source.close();
      throw err;
    }
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  /** A copy of one tensor's bytes (a fresh, aligned buffer). */
  read(name: string): RawTensor {
    const e = this.entries.get(name);
    if (!e) throw new SafetensorsError(`no tensor ${name}`);
    return { dtype: e.dtype, shape: [...e.shape], data: this.source.read(this.dataStart + e.begin, e.end - e.begin) };
  }

  /** Every tensor (or those `filter` accepts), in header order. */
  readAll(filter: (name: string) => boolean = () => true): Map<string, RawTensor> {
    const out = new Map<string, RawTensor>();
    for (const name of this.entries.keys()) if (filter(name)) out.set(name, this.read(name));
    return out;
  }

  close(): void {
    this.source.close();
  }
}

/** Reads a whole file (or bytes): metadata and every tensor. */
export function readSafetensors(src: string | Uint8Array): { metadata: Record<string, string>; tensors: Map<string, RawTensor> } {
  const r = typeof src === "string" ? SafetensorsReader.open(src) : SafetensorsReader.fromBytes(src);
  try {
    return { metadata: { ...r.metadata }, tensors: r.readAll() };
  } finally {
    r.close();
  }
}

// ---------------------------------------------------------------------------------------------------------
// Writing

export type TensorSet = Iterable<readonly [string, RawTensor]> | Record<string, RawTensor>;

function entriesOf(tensors: TensorSet): (readonly [string, RawTensor])[] {
  return Symbol.iterator in tensors ? [...(tensors as Iterable<readonly [string, RawTensor]>)] : Object.entries(tensors);
}

/**
 * The 8-byte length and the JSON header (space-padded so the data starts 8-byte aligned) of `tensors`, and the
 * order their bytes follow in. Tensors are ordered by element size, largest first, stably: with the data section
 * aligned, every tensor then starts at a multiple of its element size.
 */
function buildHeader(tensors: TensorSet, metadata: Record<string, string>): { head: Buffer; order: (readonly [string, RawTensor])[] } {
  const list = entriesOf(tensors);
  const seen = new Set<string>();
  for (const [name, t] of list) {
    if (name === "" || name === "__metadata__") throw new RangeError(`Expected a tensor name other than ${JSON.stringify(name)}`);
    if (seen.has(name)) throw new RangeError(`tensor ${name} is given twice`);
    seen.add(name);
    const bytes = Object.hasOwn(DTYPE_BYTES, t.dtype) ? DTYPE_BYTES[t.dtype] : undefined;
    if (bytes === undefined) throw new RangeError(`tensor ${name} has the unsupported dtype ${JSON.stringify(t.dtype)}`);
    if (!Array.isArray(t.shape) || !t.shape.every(isCount)) throw new RangeError(`tensor ${name} has an invalid shape ${JSON.stringify(t.shape)}`);
    if (!(t.data instanceof Uint8Array) || t.data.byteLength !== numel(t.shape) * bytes)
      throw new RangeError(`tensor ${name}: ${t.data?.byteLength} bytes of data, but ${t.dtype} ${JSON.stringify(t.shape)} needs ${numel(t.shape) * bytes}`);
  }
  for (const [k, v] of Object.entries(metadata))
    if (typeof v !== "string") throw new TypeError(`Expected a string for metadata ${k} but received ${typeof v}`);
  const order = list
    .map((e, i) => ({ e, i }))
    .sort((a, b) => DTYPE_BYTES[b.e[1].dtype] - DTYPE_BYTES[a.e[1].dtype] || a.i - b.i)
    .map(({ e }) => e);
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let offset = 0;
  for (const [name, t] of order) {
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = Buffer.from(JSON.stringify(header), "utf8");
  json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return { head: Buffer.concat([len, json]), order };
}

/** The bytes of a safetensors file (for small files; {@link writeSafetensors} streams large ones). */
export function serializeSafetensors(tensors: TensorSet, metadata: Record<string, string> = {}): Buffer {
  const { head, order } = buildHeader(tensors, metadata);
  return Buffer.concat([head, ...order.map(([, t]) => t.data)]);
}

/**
 * Writes a safetensors file atomically: the header, then each tensor's bytes in turn, to a temporary sibling that
 * is fsynced and renamed into place (tracked as a partial file until then, so an interrupt removes it). Nothing is
 * concatenated: memory stays at the tensors the caller already holds.
 */
export function writeSafetensors(file: string, tensors: TensorSet, metadata: Record<string, string> = {}, options: AtomicWriteOptions = {}): void {
  const { head, order } = buildHeader(tensors, metadata);
  writeFileAtomicWith(
    file,
    (fd) => {
      writeAll(fd, head);
      for (const [, t] of order) writeAll(fd, t.data);
    },
    options,
  );
}

// ---------------------------------------------------------------------------------------------------------
// Decoding and encoding values

let halfTable: Float32Array | undefined;

/** float16 bits -> float32, exactly (every half is a float32). */
function halfToFloatTable(): Float32Array {
  if (halfTable) return halfTable;
  halfTable = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    halfTable[h] =
      exp === 0 ? sign * frac * 2 ** -24 : exp === 31 ? (frac ? Number.NaN : sign * Infinity) : sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
  return halfTable;
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** float32 -> float16 bits, rounding to nearest even (as torch's .half()); overflow gives ±Inf. */
export function floatToHalf(x: number): number {
  f32Scratch[0] = x;
  const f = u32Scratch[0];
  const sign = (f >>> 16) & 0x8000;
  const exp = (f >>> 23) & 0xff;
  const mant = f & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    const m = mant | 0x800000;
    const shift = 14 - e;
    let h = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && h & 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++;
  return sign | h;
}

/** The bytes in an ArrayBuffer of their own (typed-array views need aligned offsets). */
function aligned(data: Uint8Array): ArrayBuffer {
  return data.byteOffset === 0 && data.byteLength === data.buffer.byteLength && data.buffer instanceof ArrayBuffer
    ? data.buffer
    : new Uint8Array(data).buffer;
}

/** The values of a floating-point tensor (F32, F16, BF16, F64) as float32. `name` is for messages. */
export function toFloat32(t: RawTensor, name: string): Float32Array {
  const n = numel(t.shape);
  const bytes = DTYPE_BYTES[t.dtype];
  if (bytes === undefined || t.data.byteLength !== n * bytes)
    throw new SafetensorsError(`tensor ${name}: ${t.data.byteLength} bytes do not hold ${t.dtype} ${JSON.stringify(t.shape)}`);
  switch (t.dtype) {
    case "F32": {
      const out = new Float32Array(n);
      new Uint8Array(out.buffer).set(t.data);
      return out;
    }
    case "F16": {
      const table = halfToFloatTable();
      const h = new Uint16Array(aligned(t.data), 0, n);
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = table[h[i]];
      return out;
    }
    case "BF16": {
      const h = new Uint16Array(aligned(t.data), 0, n);
      const out = new Float32Array(n);
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) bits[i] = h[i] << 16;
      return out;
    }
    case "F64":
      return Float32Array.from(new Float64Array(aligned(t.data), 0, n));
    default:
      throw new SafetensorsError(`tensor ${name} has dtype ${t.dtype}, expected a floating-point dtype (F32, F16, BF16, F64)`);
  }
}

/** The values of an integer tensor (I64, I32, I16, I8, U32, U16, U8) as int32; values outside int32 are refused. */
export function toInt32(t: RawTensor, name: string): Int32Array {
  const n = numel(t.shape);
  const bytes = DTYPE_BYTES[t.dtype];
  if (bytes === undefined || t.data.byteLength !== n * bytes)
    throw new SafetensorsError(`tensor ${name}: ${t.data.byteLength} bytes do not hold ${t.dtype} ${JSON.stringify(t.shape)}`);
  const outOfRange = (i: number, v: bigint | number): SafetensorsError =>
    new SafetensorsError(`tensor ${name} holds ${v} at index ${i}, outside the int32 range`);
  switch (t.dtype) {
    case "I32": {
      const out = new Int32Array(n);
      new Uint8Array(out.buffer).set(t.data);
      return out;
    }
    case "I64": {
      const src = new BigInt64Array(aligned(t.data), 0, n);
      const out = new Int32Array(n);
      for (let i = 0; i < n; i++) {
        const v = src[i];
        if (v < -2147483648n || v > 2147483647n) throw outOfRange(i, v);
        out[i] = Number(v);
      }
      return out;
    }
    case "U32": {
      const src = new Uint32Array(aligned(t.data), 0, n);
      const out = new Int32Array(n);
      for (let i = 0; i < n; i++) {
        if (src[i] > 2147483647) throw outOfRange(i, src[i]);
        out[i] = src[i];
      }
      return out;
    }
    case "I16":
      return Int32Array.from(new Int16Array(aligned(t.data), 0, n));
    case "U16":
      return Int32Array.from(new Uint16Array(aligned(t.data), 0, n));
    case "I8":
      return Int32Array.from(new Int8Array(aligned(t.data), 0, n));
    case "U8":
      return Int32Array.from(t.data.subarray(0, n));
    default:
      throw new SafetensorsError(`tensor ${name} has dtype ${t.dtype}, expected an integer dtype (I64, I32, ...)`);
  }
}

/** A float32 array as a raw tensor in F32 (a copy) or F16 (rounded to nearest even). */
export function fromFloat32(data: Float32Array, shape: number[], dtype: "F32" | "F16" = "F32"): RawTensor {
  if (data.length !== numel(shape)) throw new RangeError(`${data.length} values do not fill the shape ${JSON.stringify(shape)}`);
  if (dtype === "F32") return { dtype, shape: [...shape], data: new Uint8Array(data.slice().buffer) };
  const h = new Uint16Array(data.length);
  for (let i = 0; i < data.length; i++) h[i] = floatToHalf(data[i]);
  return { dtype, shape: [...shape], data: new Uint8Array(h.buffer) };
}

/** An int32 array as a raw I64 tensor. */
export function int64FromInt32(data: ArrayLike<number>, shape: number[]): RawTensor {
  if (data.length !== numel(shape)) throw new RangeError(`${data.length} values do not fill the shape ${JSON.stringify(shape)}`);
  const out = new BigInt64Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = BigInt(data[i]);
  return { dtype: "I64", shape: [...shape], data: new Uint8Array(out.buffer) };
}

/** Index of the first NaN or ±Inf value, or -1. */
export function firstNonFinite(data: Float32Array): number {
  for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i])) return i;
  return -1;
}
