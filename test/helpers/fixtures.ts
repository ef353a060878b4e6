// Test helpers: fixture discovery, golden tensors (safetensors reader), exported tiny models.
import { existsSync, readFileSync, readdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseJsonLenient } from "../../src/pipeline/manifest.js";

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
export const fixturesRoot = path.resolve(process.env.BLIPDIFF_FIXTURES ?? path.join(repoRoot, "..", "shared", "fixtures"));
/** Where test/global-setup.ts exports each fixture's checkpoints: <cache>/<fixture>/{ckpt,ckpt-controlnet}. */
export const exportRoot = path.join(repoRoot, ".test-cache", "models");

/** Every fixture folder (tiny-a, and any other with a golden.json): tests run once per fixture. */
export function fixtureNames(): string[] {
  if (!existsSync(fixturesRoot)) throw new Error(`no fixtures at ${fixturesRoot}: set BLIPDIFF_FIXTURES`);
  const names = readdirSync(fixturesRoot)
    .filter((d) => existsSync(path.join(fixturesRoot, d, "golden.json")))
    .sort();
  // A per-fixture suite over no fixtures would pass without checking anything.
  if (names.length === 0) throw new Error(`no fixtures (folders with golden.json) in ${fixturesRoot}: set BLIPDIFF_FIXTURES`);
  return names;
}

export interface GoldenTensor {
  dtype: string;
  shape: number[];
  data: Float32Array | BigInt64Array | Uint8Array | Int32Array;
}

const DTYPES: Record<string, { bytes: number; make: (b: ArrayBuffer, o: number, n: number) => GoldenTensor["data"] }> = {
  F32: { bytes: 4, make: (b, o, n) => new Float32Array(b, o, n) },
  I64: { bytes: 8, make: (b, o, n) => new BigInt64Array(b, o, n) },
  I32: { bytes: 4, make: (b, o, n) => new Int32Array(b, o, n) },
  U8: { bytes: 1, make: (b, o, n) => new Uint8Array(b, o, n) },
};

/** Reads a .safetensors file (8-byte little-endian header length, JSON header, raw data). */
export function readSafetensors(file: string): Map<string, GoldenTensor> {
  const buf = readFileSync(file);
  const headerLen = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + headerLen).toString("utf8")) as Record<
    string,
    { dtype: string; shape: number[]; data_offsets: [number, number] }
  >;
  const base = 8 + headerLen;
  const out = new Map<string, GoldenTensor>();
  for (const [name, t] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const kind = DTYPES[t.dtype];
    if (!kind) throw new Error(`unsupported dtype ${t.dtype} for ${name}`);
    const [start, end] = t.data_offsets;
    // Copy into an aligned buffer: typed arrays need offsets that are multiples of the element size.
    const bytes = new Uint8Array(end - start);
    bytes.set(buf.subarray(base + start, base + end));
    out.set(name, { dtype: t.dtype, shape: t.shape, data: kind.make(bytes.buffer, 0, (end - start) / kind.bytes) });
  }
  return out;
}

export class Fixture {
  readonly dir: string;
  readonly json: Record<string, any>;
  private tensors?: Map<string, GoldenTensor>;

  constructor(readonly name: string) {
    this.dir = path.join(fixturesRoot, name);
    // golden.json holds bare -Infinity/NaN as Python writes them, which JSON.parse rejects.
    this.json = parseJsonLenient(readFileSync(path.join(this.dir, "golden.json"), "utf8")) as Record<string, any>;
  }

  tensor(name: string): GoldenTensor {
    this.tensors ??= readSafetensors(path.join(this.dir, "golden.safetensors"));
    const t = this.tensors.get(name);
    if (!t) throw new Error(`golden tensor ${name} missing in ${this.name}`);
    return t;
  }

  f32(name: string): Float32Array {
    const t = this.tensor(name);
    if (!(t.data instanceof Float32Array)) throw new Error(`${name} is ${t.dtype}, not F32`);
    return t.data;
  }

  input(name: string): string {
    return path.join(this.dir, "inputs", name);
  }

  /** The exported model folder for `ckpt` or `ckpt-controlnet` (written by test/global-setup.ts). */
  model(ckpt: "ckpt" | "ckpt-controlnet" = "ckpt"): string {
    return path.join(exportRoot, this.name, ckpt);
  }
}

/** Max |a - b| over two equally long arrays. */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** True when every |a-b| <= atol + rtol*|b| (numpy.allclose semantics). */
export function allClose(a: ArrayLike<number>, b: ArrayLike<number>, atol = 1e-4, rtol = 1e-4): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (!(Math.abs(a[i] - b[i]) <= atol + rtol * Math.abs(b[i]))) return false;
  return true;
}
