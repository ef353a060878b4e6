// The photo an edit starts from (src/pipeline/edit.ts): decoded, resized to cover the size and centre-cropped
// (LAVIS's shorter-side resize and centre crop), and scaled to [-1, 1] exactly as the editing goldens' real.image_in;
// and preflightEdit's refusals that need no addon.
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { decodeRgb } from "../../src/image/decode.js";
import { cropImage, resizeBicubic } from "../../src/image/resample.js";
import { preflightEdit, preprocessPhoto, resizePhoto } from "../../src/pipeline/edit.js";
import { readManifest } from "../../src/pipeline/manifest.js";
import { resizeSubject } from "../../src/pipeline/preprocess.js";
import { exportRoot, fixtureNames, fixturesRoot, readSafetensors } from "../helpers/fixtures.js";

const editFixtures = fixtureNames().filter((n) => existsSync(path.join(fixturesRoot, n, "edit.json")));

for (const name of editFixtures) {
  const dir = path.join(fixturesRoot, name);
  const json = JSON.parse(readFileSync(path.join(dir, "edit.json"), "utf8"));
  const golden = readSafetensors(path.join(dir, "edit.safetensors"));
  const m = readManifest(path.join(exportRoot, name, "ckpt"));

  describe(`the photo to edit (${name})`, () => {
    it("real.png as the p2p_real case uses it: pixels and the [-1, 1] tensor equal the goldens exactly", async () => {
      const c = json.cases.p2p_real;
      const img = await decodeRgb(path.join(dir, c.real_image.file));
      expect([img.width, img.height]).toEqual(c.real_image.size_wh);
      const u8 = golden.get("real.image_in_u8")!;
      expect(Array.from(img.data)).toEqual(Array.from(u8.data as Uint8Array));
      const t = preprocessPhoto(img, c.params.width, c.params.height);
      const want = golden.get("real.image_in")!;
      expect(t.shape).toEqual(want.shape);
      expect(Array.from(t.data)).toEqual(Array.from(want.data as Float32Array));
    });

    it("resizes to cover the size, then centre-crops", async () => {
      const img = await decodeRgb(path.join(dir, "inputs", "reference_large.png"));
      const { width: pw, height: ph } = img;
      // A square target: torchvision's Resize(size) + CenterCrop(size), as the fine-tuning targets and LAVIS's centre crop.
      for (const s of [16, 40, 224]) expect(resizePhoto(img, s, s)).toEqual(resizeSubject(img, s, "center"));
      // Wider than the photo's aspect: the width limits the scale.
      const w = 2 * pw;
      const h = 8;
      const nh = Math.trunc((w * ph) / pw);
      expect(resizePhoto(img, w, h)).toEqual(cropImage(resizeBicubic(img, w, nh), 0, Math.round((nh - h) / 2), w, h));
      // Taller: the height limits it.
      const tall = resizePhoto(img, 8, ph);
      expect(tall).toEqual(cropImage(img, Math.round((pw - 8) / 2), 0, 8, ph));
      // The photo's own size: unchanged.
      expect(resizePhoto(img, pw, ph)).toEqual(img);
    });

    it("preflightEdit refuses a model without attention control, both or neither subject inputs, a bad embedding", () => {
      const p = json.cases.p2p_generated.params;
      const base = { prompt: p.prompt, sourceSubject: p.src_subject, subject: p.cond_subject, width: p.width, height: p.height, seed: 1, hasSubjectImage: true };
      expect(preflightEdit(m, base).tokens.srcIds.length).toBe(m.spec.textMaxLength);
      expect(() => preflightEdit({ ...m, capabilities: [] }, base)).toThrow(/^edit needs a model exported with "attention_control", .*re-convert the model with `blipdiff convert`$/);
      const q = m.spec.numQueryTokens;
      const d = m.crossAttentionDim;
      const e = { queryEmbeds: { data: new Float32Array(q * d), shape: [1, q, d] }, subject: "dog", sourceImages: [], model: {} };
      expect(() => preflightEdit(m, { ...base, subjectEmbedding: e })).toThrow(/either subjectImage or subjectEmbedding/);
      expect(() => preflightEdit(m, { ...base, hasSubjectImage: false })).toThrow(/a subject image or a subject embedding/);
      expect(preflightEdit(m, { ...base, subject: undefined, hasSubjectImage: false, subjectEmbedding: e }).prompt.targetSubject).toBe("dog");
      const wrong = { ...e, queryEmbeds: { data: new Float32Array((q + 1) * d), shape: [1, q + 1, d] } };
      expect(() => preflightEdit(m, { ...base, hasSubjectImage: false, subjectEmbedding: wrong, embeddingSource: "w.safetensors" })).toThrow(
        new RegExp(`^w.safetensors has shape \\[1, ${q + 1}, ${d}\\], this model needs \\[1, ${q}, ${d}\\]`),
      );
      const other = { ...e, model: { qformerSha256: "f".repeat(64) } };
      expect(preflightEdit(m, { ...base, hasSubjectImage: false, subjectEmbedding: other }).warnings).toEqual([
        "the subject embedding was made with a different Q-Former than this model's",
      ]);
    });
  });
}
