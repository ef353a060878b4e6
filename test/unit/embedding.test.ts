import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { loadSubjectEmbedding, saveSubjectEmbedding } from "../../src/pipeline/embedding.js";
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
