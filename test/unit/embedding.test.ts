import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  checkSubjectEmbedding,
  loadSubjectEmbedding,
  saveSubjectEmbedding,
  serializeSubjectEmbedding,
  type SubjectEmbedding,
} from "../../src/pipeline/embedding.js";
import { readSafetensors } from "../helpers/fixtures.js";
import { AddonNotFoundError, loadAddon } from "../../src/bindings/index.js";

const dir = mkdtempSync(path.join(os.tmpdir(), "blipdiff-emb-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("subject embedding files", () => {
  it("round-trips tensor and metadata as standard safetensors", () => {
    const data = Float32Array.from({ length: 8 * 16 }, (_, i) => Math.sin(i) * 3);
    const file = path.join(dir, "dog.safetensors");
    saveSubjectEmbedding(file, {
      queryEmbeds: { data, shape: [1, 8, 16] },
      subject: "dog",
      sourceImages: ["a.png", "b.jpg"],
      model: { checkpoint: "tiny-a/ckpt", qformerSha256: "ab" },
    });
    const back = loadSubjectEmbedding(file);
    expect(back.subject).toBe("dog");
    expect(back.sourceImages).toEqual(["a.png", "b.jpg"]);
    expect(back.model).toEqual({ checkpoint: "tiny-a/ckpt", qformerSha256: "ab" });
    expect(back.queryEmbeds.shape).toEqual([1, 8, 16]);
    expect(Array.from(back.queryEmbeds.data)).toEqual(Array.from(data));
    const st = readSafetensors(file).get("query_embeds");
    expect(st?.shape).toEqual([1, 8, 16]);
  });

  it("gives one-line errors for missing and foreign files", () => {
    expect(() => loadSubjectEmbedding(path.join(dir, "none.safetensors"))).toThrow(/subject embedding not found/);
    const junk = path.join(dir, "junk.safetensors");
    writeFileSync(junk, "hello world, not a tensor file");
    expect(() => loadSubjectEmbedding(junk)).toThrow(/is not a blipdiff subject embedding/);
  });
});

const good: SubjectEmbedding = {
  queryEmbeds: { data: Float32Array.from({ length: 2 * 4 }, (_, i) => i - 3.5), shape: [1, 2, 4] },
  subject: "dog",
  sourceImages: ["a.png"],
  model: {},
};

/** A safetensors file from a header object and raw data bytes (header padded to 8 bytes as the format does). */
function rawFile(name: string, header: unknown, data: Buffer, headerLength?: bigint): string {
  let json = Buffer.from(JSON.stringify(header), "utf8");
  json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(headerLength ?? BigInt(json.length));
  const file = path.join(dir, name);
  writeFileSync(file, Buffer.concat([len, json, data]));
  return file;
}

const meta = { format: "blipdiff-subject-embedding", format_version: "1", subject: "dog" };
const f32 = (values: number[]) => Buffer.from(Float32Array.from(values).buffer);
const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
/** The error of a file that is refused: names the file, the problem and the fix. */
const refused = (file: string, why: RegExp) =>
  expect(() => loadSubjectEmbedding(file)).toThrow(
    new RegExp(`^${esc(file)} (is not a blipdiff subject embedding: )?.*${why.source}.*; make it again with \`blipdiff encode\`$`),
  );

describe("subject embedding files: malformed safetensors are refused", () => {
  const data = f32([1, 2, 3, 4, 5, 6, 7, 8]);
  const tensor = (data_offsets: unknown, extra: Record<string, unknown> = {}) => ({
    __metadata__: meta,
    query_embeds: { dtype: "F32", shape: [1, 2, 4], data_offsets, ...extra },
  });

  it("accepts the hand-built well-formed file (the builder is sound)", () => {
    const e = loadSubjectEmbedding(rawFile("ok.safetensors", tensor([0, 32]), data));
    expect(Array.from(e.queryEmbeds.data)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
  });

  it("refuses negative data_offsets (which used to read header bytes as floats)", () => {
    refused(rawFile("neg.safetensors", tensor([-16, 16]), data), /data_offsets \[-16,16\] outside the 32 data bytes/);
  });

  it("refuses data_offsets beyond the data, reversed or not integers", () => {
    refused(rawFile("far.safetensors", tensor([32, 64]), data), /data_offsets \[32,64\] outside/);
    refused(rawFile("rev.safetensors", tensor([32, 0]), data), /data_offsets \[32,0\] outside/);
    refused(rawFile("frac.safetensors", tensor([0.5, 32.5]), data), /data_offsets \[0.5,32.5\] outside/);
    refused(rawFile("str.safetensors", tensor(["0", "32"]), data), /data_offsets \["0","32"\] outside/);
    refused(rawFile("one.safetensors", tensor([0]), data), /data_offsets \[0\] outside/);
  });

  it("refuses data_offsets whose size does not match dtype and shape", () => {
    refused(rawFile("short.safetensors", tensor([0, 28]), data), /\(28 bytes\) but F32 \[1,2,4\] needs 32/);
    refused(rawFile("shape.safetensors", tensor([0, 32], { shape: [1, 2, 3] }), data), /but F32 \[1,2,3\] needs 24/);
  });

  it("refuses overlapping tensors and bytes that belong to no tensor", () => {
    const two = { ...tensor([0, 32]), other: { dtype: "F32", shape: [2], data_offsets: [24, 32] } };
    refused(rawFile("overlap.safetensors", two, Buffer.concat([data, f32([0, 0])])), /overlaps another tensor's/);
    refused(rawFile("gap.safetensors", tensor([8, 40]), Buffer.concat([f32([0, 0]), data])), /bytes 0..8 of the data belong to no tensor/);
    refused(rawFile("tail.safetensors", tensor([0, 32]), Buffer.concat([data, f32([9])])), /4 bytes after the last tensor/);
  });

  it("refuses an unsupported dtype and a header length beyond the file", () => {
    refused(rawFile("f16.safetensors", tensor([0, 16], { dtype: "F16" }), data.subarray(0, 16)), /query_embeds has dtype "F16", expected "F32"/);
    refused(rawFile("q8.safetensors", tensor([0, 32], { dtype: "Q8_K" }), data), /unsupported dtype "Q8_K"/);
    refused(rawFile("hlen.safetensors", tensor([0, 32]), data, 1n << 40n), /header length 1099511627776 does not fit in the file/);
    refused(rawFile("hlen0.safetensors", tensor([0, 32]), data, 0n), /header length 0 is too small/);
    refused(rawFile("hlen64.safetensors", tensor([0, 32]), data, (1n << 64n) - 1n), /header length 18446744073709551615 does not fit/);
  });

  it("refuses NaN and Inf values, naming where", () => {
    refused(rawFile("nan.safetensors", tensor([0, 32]), f32([1, 2, NaN, 4, 5, 6, 7, 8])), /contains non-finite values \(NaN at index 2\)/);
    refused(rawFile("inf.safetensors", tensor([0, 32]), f32([1, 2, 3, 4, 5, 6, 7, -Infinity])), /\(-Infinity at index 7\)/);
  });

  it("refuses a file that its own writer made from non-finite values", () => {
    const file = path.join(dir, "written-nan.safetensors");
    writeFileSync(file, serializeSubjectEmbedding({ ...good, queryEmbeds: { data: Float32Array.of(0, 0, 0, Infinity, 0, 0, 0, 0), shape: [1, 2, 4] } }));
    refused(file, /non-finite values \(Infinity at index 3\)/);
  });
});

describe("checkSubjectEmbedding", () => {
  const model = { numQueryTokens: 2, dim: 4 };

  it("accepts embeddings of the model's shape", () => {
    expect(() => checkSubjectEmbedding(good, model)).not.toThrow();
  });

  it("names the expected and the actual shape, and the source", () => {
    expect(() => checkSubjectEmbedding(good, { numQueryTokens: 16, dim: 768 }, "dog.safetensors")).toThrow(
      "dog.safetensors has shape [1, 2, 4], this model needs [1, 16, 768]; re-run `blipdiff encode` with this model",
    );
    const batch = { ...good, queryEmbeds: { data: new Float32Array(16), shape: [2, 2, 4] } };
    expect(() => checkSubjectEmbedding(batch, model)).toThrow(/^the subject embedding has shape \[2, 2, 4\], this model needs \[1, 2, 4\]/);
    const flat = { ...good, queryEmbeds: { data: new Float32Array(8), shape: [8] } };
    expect(() => checkSubjectEmbedding(flat, model)).toThrow(/has shape \[8\], this model needs \[1, 2, 4\]/);
  });

  it("refuses data that does not fill the shape, and non-finite values", () => {
    const short = { ...good, queryEmbeds: { data: new Float32Array(7), shape: [1, 2, 4] } };
    expect(() => checkSubjectEmbedding(short, model, "x")).toThrow(/^x holds 7 values, its shape \[1, 2, 4\] needs 8/);
    const nan = { ...good, queryEmbeds: { data: Float32Array.of(0, 0, 0, 0, 0, NaN, 0, 0), shape: [1, 2, 4] } };
    expect(() => checkSubjectEmbedding(nan, model, "x")).toThrow(/^x contains non-finite values \(NaN at index 5\); make it again with `blipdiff encode`$/);
  });
});

describe("addon loader", () => {
  it("says how to build a missing addon", () => {
    const old = process.env.BLIPDIFF_ADDON;
    process.env.BLIPDIFF_ADDON = path.join(dir, "missing.node");
    try {
      expect(() => loadAddon()).toThrow(AddonNotFoundError);
      expect(() => loadAddon()).toThrow(/the native addon is not built: run `npm run build:native`/);
    } finally {
      if (old === undefined) delete process.env.BLIPDIFF_ADDON;
      else process.env.BLIPDIFF_ADDON = old;
    }
  });
});
