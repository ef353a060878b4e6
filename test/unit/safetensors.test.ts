// src/io/safetensors.ts: the reader and the streaming writer, checked against the safetensors library itself
// (Python, in the project venv) and against malformed files.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { removePartialFiles, writeFileAtomicWith } from "../../src/io/atomic.js";
import {
  SafetensorsError,
  SafetensorsReader,
  floatToHalf,
  fromFloat32,
  int64FromInt32,
  readSafetensors,
  serializeSafetensors,
  toFloat32,
  toInt32,
  writeSafetensors,
  type RawTensor,
} from "../../src/io/safetensors.js";
import { fixturesRoot, readSafetensors as readGolden, repoRoot } from "../helpers/fixtures.js";

const dir = mkdtempSync(path.join(os.tmpdir(), "blipdiff-st-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const python = process.env.BLIPDIFF_PYTHON ?? path.join(repoRoot, ".venv", "bin", "python");

function py(code: string, input?: string): string {
  const r = spawnSync(python, ["-c", code], { input, encoding: "utf8", maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`python failed: ${r.stderr}`);
  return r.stdout;
}

const bytesOf = (a: ArrayBufferView): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength).slice();

/** A set of every kind of tensor the project writes, plus odd sizes that would misalign later tensors. */
function sample(): Record<string, RawTensor> {
  return {
    half_odd: fromFloat32(Float32Array.from({ length: 5 }, (_, i) => i / 3), [5], "F16"),
    bytes: { dtype: "U8", shape: [3], data: Uint8Array.of(1, 2, 255) },
    "unet.mid_block.attn1.to_q.lora.down.weight": fromFloat32(Float32Array.from({ length: 6 }, (_, i) => Math.sin(i)), [2, 3]),
    index: int64FromInt32([0, 1, -7, 2147483647], [2, 2]),
    scalar: fromFloat32(Float32Array.of(3.5), []),
    empty: fromFloat32(new Float32Array(0), [0, 4]),
    ints: { dtype: "I32", shape: [2], data: bytesOf(Int32Array.of(-1, 5)) },
  };
}

describe("safetensors writer and reader", () => {
  it("round-trips dtypes, shapes and metadata, and the safetensors library reads the file back equal", () => {
    const file = path.join(dir, "all.safetensors");
    const tensors = sample();
    const metadata = { format: "test", note: "ünïcode ✓", json: JSON.stringify({ a: [1, 2] }) };
    writeSafetensors(file, tensors, metadata);
    const back = readSafetensors(file);
    expect(back.metadata).toEqual(metadata);
    expect([...back.tensors.keys()].sort()).toEqual(Object.keys(tensors).sort());
    for (const [name, t] of Object.entries(tensors)) {
      const b = back.tensors.get(name)!;
      expect(b.dtype).toBe(t.dtype);
      expect(b.shape).toEqual(t.shape);
      expect(Buffer.from(b.data).equals(Buffer.from(t.data)), name).toBe(true);
    }
    // The same bytes as the in-memory serializer.
    expect(readFileSync(file).equals(serializeSafetensors(tensors, metadata))).toBe(true);
    const out = py(
      `
import json, sys
from safetensors import safe_open
with safe_open(sys.argv[1] if len(sys.argv) > 1 else ${JSON.stringify(file)}, "pt") as f:
    print(json.dumps({"meta": f.metadata(), "t": {k: {"dtype": str(f.get_tensor(k).dtype), "shape": list(f.get_tensor(k).shape), "v": f.get_tensor(k).double().flatten().tolist()} for k in f.keys()}}))
`,
    );
    const doc = JSON.parse(out);
    expect(doc.meta).toEqual(metadata);
    expect(doc.t.index).toEqual({ dtype: "torch.int64", shape: [2, 2], v: [0, 1, -7, 2147483647] });
    expect(doc.t.ints.v).toEqual([-1, 5]);
    expect(doc.t.bytes.v).toEqual([1, 2, 255]);
    expect(doc.t.scalar).toEqual({ dtype: "torch.float32", shape: [], v: [3.5] });
    expect(doc.t.empty.shape).toEqual([0, 4]);
    expect(doc.t.half_odd.dtype).toBe("torch.float16");
    expect(doc.t.half_odd.v).toEqual(Array.from(toFloat32(tensors.half_odd, "half_odd")));
    expect(doc.t["unet.mid_block.attn1.to_q.lora.down.weight"].v).toEqual(Array.from(toFloat32(tensors["unet.mid_block.attn1.to_q.lora.down.weight"], "x")));
  });

  it("starts the data 8-byte aligned and every tensor at a multiple of its element size", () => {
    const file = path.join(dir, "aligned.safetensors");
    writeSafetensors(file, sample());
    const buf = readFileSync(file);
    const n = Number(buf.readBigUInt64LE(0));
    expect((8 + n) % 8).toBe(0);
    const header = JSON.parse(buf.toString("utf8", 8, 8 + n));
    const size: Record<string, number> = { F32: 4, F16: 2, I64: 8, I32: 4, U8: 1 };
    for (const [name, t] of Object.entries(header) as [string, { dtype: string; data_offsets: number[] }][]) {
      if (name === "__metadata__") continue;
      expect(t.data_offsets[0] % size[t.dtype], name).toBe(0);
    }
  });

  it("reads files the safetensors library wrote (the fixture's goldens) as the test helper does", () => {
    const file = path.join(fixturesRoot, "tiny-a", "finetune.safetensors");
    const r = SafetensorsReader.open(file);
    try {
      const golden = readGolden(file);
      expect(r.entries.size).toBe(golden.size);
      for (const name of ["ft.data.index", "ft.data.eps_vae", "ft.cache_init", "ft.gen.image_u8"]) {
        const t = r.read(name);
        const g = golden.get(name)!;
        expect(t.shape).toEqual(g.shape);
        expect(Buffer.from(t.data).equals(Buffer.from(g.data.buffer, g.data.byteOffset, g.data.byteLength))).toBe(true);
      }
      expect(Array.from(toInt32(r.read("ft.data.index"), "index"))).toEqual(Array.from(golden.get("ft.data.index")!.data as BigInt64Array, Number));
    } finally {
      r.close();
    }
  });

  it("the writer refuses inconsistent tensors and leaves no file", () => {
    const file = path.join(dir, "refused.safetensors");
    const f = fromFloat32(Float32Array.of(1, 2), [2]);
    expect(() => writeSafetensors(file, { a: { ...f, shape: [3] } })).toThrow(/tensor a: 8 bytes of data, but F32 \[3\] needs 12/);
    expect(() => writeSafetensors(file, { a: { ...f, dtype: "Q4" } })).toThrow(/unsupported dtype "Q4"/);
    expect(() => writeSafetensors(file, [["a", f], ["a", f]])).toThrow(/tensor a is given twice/);
    expect(() => writeSafetensors(file, { __metadata__: f })).toThrow(/tensor name other than "__metadata__"/);
    expect(existsSync(file)).toBe(false);
    expect(readdirSync(dir).filter((x) => x.includes("refused"))).toEqual([]);
  });

  it("without overwrite an existing file is kept (EEXIST); with it, replaced", () => {
    const file = path.join(dir, "kept.safetensors");
    writeFileSync(file, "precious");
    expect(() => writeSafetensors(file, sample(), {}, { overwrite: false })).toThrow(expect.objectContaining({ code: "EEXIST" }));
    expect(readFileSync(file, "utf8")).toBe("precious");
    writeSafetensors(file, sample(), {}, { overwrite: true });
    expect(readSafetensors(file).tensors.size).toBe(Object.keys(sample()).length);
    expect(readdirSync(dir).filter((x) => x.endsWith(".tmp"))).toEqual([]);
  });

  it("a write in flight is a partial file that removePartialFiles deletes (what Ctrl-C does)", () => {
    const file = path.join(dir, "interrupted.safetensors");
    let seen: string[] = [];
    expect(() =>
      writeFileAtomicWith(file, () => {
        seen = readdirSync(dir).filter((x) => x.startsWith(".interrupted.safetensors.") && x.endsWith(".tmp"));
        removePartialFiles();
      }),
    ).toThrow(/ENOENT/);
    expect(seen).toHaveLength(1);
    expect(readdirSync(dir).filter((x) => x.includes("interrupted"))).toEqual([]);
  });
});

/** A safetensors file from a header object and raw data bytes (header padded to 8 bytes as the format does). */
function rawFile(header: unknown, data: Buffer, headerLength?: bigint): Buffer {
  let json = Buffer.from(JSON.stringify(header), "utf8");
  json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(headerLength ?? BigInt(json.length));
  return Buffer.concat([len, json, data]);
}

describe("safetensors reader: malformed headers", () => {
  const data = Buffer.from(Float32Array.of(1, 2, 3, 4).buffer);
  const t = (data_offsets: unknown, extra: Record<string, unknown> = {}) => ({ x: { dtype: "F32", shape: [4], data_offsets, ...extra } });
  const refused = (bytes: Buffer, why: RegExp): void => {
    let err: unknown;
    try {
      SafetensorsReader.fromBytes(bytes);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(SafetensorsError);
    expect((err as SafetensorsError).reason).toMatch(why);
  };

  it("accepts the well-formed file, with or without metadata", () => {
    const r = SafetensorsReader.fromBytes(rawFile(t([0, 16]), data));
    expect(Array.from(toFloat32(r.read("x"), "x"))).toEqual([1, 2, 3, 4]);
    expect(r.metadata).toEqual({});
    const m = SafetensorsReader.fromBytes(rawFile({ __metadata__: { a: "b", n: 5 }, ...t([0, 16]) }, data));
    expect(m.metadata).toEqual({ a: "b" });
  });

  it("refuses bad lengths, JSON and offsets with the reason", () => {
    refused(Buffer.alloc(5), /too short/);
    refused(rawFile(t([0, 16]), data, 1n), /header length 1 is too small/);
    refused(rawFile(t([0, 16]), data, 1n << 40n), /header length 1099511627776 does not fit in the file/);
    refused(rawFile(t([0, 16]), data, 1n << 63n), /does not fit in the file/);
    refused(Buffer.concat([Buffer.from([4, 0, 0, 0, 0, 0, 0, 0]), Buffer.from("{{{{")]), /unreadable header/);
    refused(rawFile([1, 2], Buffer.alloc(0)), /the header is not a JSON object/);
    refused(rawFile({ x: 5 }, data), /tensor x has no dtype, shape and data_offsets/);
    refused(rawFile(t([0, 16], { dtype: "Q8_K" }), data), /unsupported dtype "Q8_K"/);
    refused(rawFile(t([0, 16], { shape: [-4] }), data), /invalid shape \[-4\]/);
    refused(rawFile(t([0, 16], { shape: [2 ** 40, 2 ** 40] }), data), /invalid shape/);
    refused(rawFile(t([-16, 16]), data), /data_offsets \[-16,16\] outside the 16 data bytes/);
    refused(rawFile(t([16, 0]), data), /data_offsets \[16,0\] outside/);
    refused(rawFile(t([0, 32]), data), /data_offsets \[0,32\] outside/);
    refused(rawFile(t([0, 12]), data), /\(12 bytes\) but F32 \[4\] needs 16/);
  });

  it("refuses overlaps, gaps and trailing bytes", () => {
    const two = { ...t([0, 16]), y: { dtype: "F32", shape: [1], data_offsets: [12, 16] } };
    refused(rawFile(two, data), /overlaps another tensor's/);
    refused(rawFile(t([4, 20]), Buffer.concat([Buffer.alloc(4), data])), /bytes 0..4 of the data belong to no tensor/);
    refused(rawFile(t([0, 16]), Buffer.concat([data, Buffer.alloc(4)])), /4 bytes after the last tensor/);
  });

  it("read() of an unknown name says so", () => {
    const r = SafetensorsReader.fromBytes(rawFile(t([0, 16]), data));
    expect(() => r.read("nope")).toThrow(/no tensor nope/);
  });
});

describe("safetensors values", () => {
  it("float16 decoding is exact and encoding rounds to nearest even, as numpy's astype(float16)", () => {
    // Every half value decodes and re-encodes to itself (NaNs to a NaN).
    const all = new Uint16Array(65536).map((_, i) => i);
    const decoded = toFloat32({ dtype: "F16", shape: [65536], data: new Uint8Array(all.buffer) }, "all");
    for (let h = 0; h < 65536; h++) {
      if (Number.isNaN(decoded[h])) expect(Number.isNaN(toFloat32({ dtype: "F16", shape: [1], data: new Uint8Array(Uint16Array.of(floatToHalf(decoded[h])).buffer) }, "h")[0])).toBe(true);
      else expect(floatToHalf(decoded[h]), `half ${h}`).toBe(h);
    }
    // Values between halves, ties, subnormals, overflow: numpy decides.
    const xs = new Float32Array(4000);
    let seed = 12345;
    const rnd = (): number => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    for (let i = 0; i < xs.length; i++) xs[i] = (rnd() - 0.5) * 2 ** Math.floor(rnd() * 44 - 28);
    xs.set([65504, 65519.99, 65520, 1e6, -1e6, 2 ** -25, 2 ** -24 * 1.5, 2 ** -26, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 0, -0, Infinity, -Infinity], 0);
    const ref = py(
      "import sys, numpy as np; a = np.frombuffer(bytes.fromhex(sys.stdin.read()), dtype=np.float32); print(' '.join(str(int(v)) for v in a.astype(np.float16).view(np.uint16)))",
      Buffer.from(xs.buffer).toString("hex"),
    )
      .trim()
      .split(" ")
      .map(Number);
    const ours = Array.from(xs, (x) => floatToHalf(x));
    expect(ours).toEqual(ref);
    expect(Array.from(new Uint16Array(fromFloat32(xs, [xs.length], "F16").data.buffer))).toEqual(ref);
  });

  it("BF16 and F64 decode to float32; integer dtypes are refused as floats and vice versa", () => {
    const bf = Uint16Array.of(0x3f80, 0xc000, 0x7f80);
    expect(Array.from(toFloat32({ dtype: "BF16", shape: [3], data: new Uint8Array(bf.buffer) }, "b"))).toEqual([1, -2, Infinity]);
    expect(Array.from(toFloat32({ dtype: "F64", shape: [2], data: bytesOf(Float64Array.of(0.1, -3)) }, "d"))).toEqual([Math.fround(0.1), -3]);
    expect(() => toFloat32(int64FromInt32([1], [1]), "idx")).toThrow(/tensor idx has dtype I64, expected a floating-point dtype/);
    expect(() => toInt32(fromFloat32(Float32Array.of(1), [1]), "t")).toThrow(/tensor t has dtype F32, expected an integer dtype/);
  });

  it("int64 values outside int32 are refused, naming the tensor and the index", () => {
    const big = { dtype: "I64", shape: [3], data: bytesOf(BigInt64Array.of(1n, -2n, 2n ** 31n)) };
    expect(() => toInt32(big, "timesteps")).toThrow(/tensor timesteps holds 2147483648 at index 2, outside the int32 range/);
    const small = { dtype: "I64", shape: [2], data: bytesOf(BigInt64Array.of(-(2n ** 31n), 2n ** 31n - 1n)) };
    expect(Array.from(toInt32(small, "ok"))).toEqual([-(2 ** 31), 2 ** 31 - 1]);
    expect(() => toInt32({ dtype: "U32", shape: [1], data: bytesOf(Uint32Array.of(2 ** 31)) }, "u")).toThrow(/outside the int32 range/);
    expect(() => toInt32({ dtype: "I64", shape: [2], data: new Uint8Array(8) }, "short")).toThrow(/8 bytes do not hold I64 \[2\]/);
  });
});
