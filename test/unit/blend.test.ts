// Subject interpolation (src/pipeline/blend.ts): the float32 weighted sum against the blend goldens, the weights'
// rules, the refusals, and the provenance a blend file records.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { finetunedSubject, loadSubjectFile, saveFinetunedSubject } from "../../src/finetune/file.js";
import { fromFloat32, serializeSafetensors } from "../../src/io/safetensors.js";
import { BLEND_RATIO_TOLERANCE, blendSubjects, checkBlendRatios, loadBlendInput } from "../../src/pipeline/blend.js";
import { loadSubjectEmbedding, saveSubjectEmbedding, type SubjectEmbedding } from "../../src/pipeline/embedding.js";
import { blendFixtureNames, blendInputs, loadBlendFixture } from "../helpers/blend.js";
import { maxAbsDiff } from "../helpers/fixtures.js";
import type { NativeRawTensor } from "../../src/bindings/types.js";

const dir = mkdtempSync(path.join(os.tmpdir(), "blipdiff-blend-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The same sum in double precision, rounded once: what a careless implementation computes. */
function doubleBlend(inputs: SubjectEmbedding[], ratios: number[]): Float32Array {
  const n = inputs[0].queryEmbeds.data.length;
  return Float32Array.from({ length: n }, (_, j) => inputs.reduce((acc, e, i) => acc + ratios[i] * e.queryEmbeds.data[j], 0));
}

for (const name of blendFixtureNames()) {
  describe(`blendSubjects against the blend goldens (${name})`, () => {
    const fx = loadBlendFixture(name);
    const inputs = blendInputs(fx);
    const ratios = fx.params.ratio;

    it("blend.query_embeds.<i> with the case's ratios equal blend.query_embeds bit for bit", () => {
      const golden = fx.f32("blend.query_embeds");
      const out = blendSubjects(inputs, ratios);
      expect(out.queryEmbeds.shape).toEqual(golden.shape);
      const diff = [...out.queryEmbeds.data].filter((v, j) => v !== golden.data[j]).length;
      expect(diff, `max |diff| ${maxAbsDiff(out.queryEmbeds.data, golden.data)}`).toBe(0);
      // The goldens tell float32 step-by-step arithmetic from a double sum rounded once (which differs here), so
      // exact equality above checks the arithmetic, not just the formula.
      const dbl = doubleBlend(inputs, ratios);
      expect([...dbl].some((v, j) => v !== golden.data[j])).toBe(true);
    });

    it("records the subject, the sources, the ratios and the Q-Former; the order of inputs is the order of sums", () => {
      const out = blendSubjects(inputs, ratios, { names: inputs.map((_, i) => path.join("some", `in${i}.safetensors`)) });
      expect(out.subject).toBe(fx.params.subjects[0][1]);
      expect(out.model.qformerSha256).toBe(inputs[0].model.qformerSha256);
      expect(out.sourceImages).toEqual(fx.params.subjects.map(([p]) => path.basename(p)));
      expect(out.blend).toEqual(
        inputs.map((e, i) => ({ source: `in${i}.safetensors`, subject: e.subject, ratio: ratios[i], sourceImages: e.sourceImages })),
      );
      expect(out.finetune).toBeUndefined();
      expect(blendSubjects(inputs, ratios, { subject: "cat" }).subject).toBe("cat");
      // Reversed inputs and weights: the same sum up to float32 rounding.
      const rev = blendSubjects([...inputs].reverse(), [...ratios].reverse());
      expect(maxAbsDiff(rev.queryEmbeds.data, out.queryEmbeds.data)).toBeLessThan(1e-5);
      expect(rev.subject).toBe(inputs[inputs.length - 1].subject);
    });

    it("weight 1 on one input and 0 on the others gives that input exactly (the ends of a sweep)", () => {
      inputs.forEach((e, i) => {
        const w = inputs.map((_, k) => (k === i ? 1 : 0));
        expect(Array.from(blendSubjects(inputs, w).queryEmbeds.data)).toEqual(Array.from(e.queryEmbeds.data));
      });
    });

    it("a blend file round-trips through loadSubjectEmbedding and generate's loadSubjectFile, and blends again", () => {
      const out = blendSubjects(inputs, ratios, { names: ["a.safetensors", "b.safetensors"] });
      const file = path.join(dir, `${name}-ab.safetensors`);
      saveSubjectEmbedding(file, out);
      for (const back of [loadSubjectEmbedding(file), loadSubjectFile(file), loadBlendInput(file)]) {
        expect(Array.from(back.queryEmbeds.data)).toEqual(Array.from(out.queryEmbeds.data));
        expect(back.subject).toBe(out.subject);
        expect(back.blend).toEqual(out.blend);
        expect(back.model).toEqual(out.model);
        expect(back.finetune).toBeUndefined();
      }
      const again = blendSubjects([loadBlendInput(file), inputs[0]], [0.5, 0.5], { names: [file, "c.safetensors"] });
      expect(again.blend?.[0].blend).toEqual(out.blend);
      expect(again.blend?.[0].source).toBe(path.basename(file));
    });
  });
}

const Q = 3;
const D = 4;
const SHA = "a".repeat(64);
function emb(seed: number, over: Partial<SubjectEmbedding> = {}): SubjectEmbedding {
  return {
    queryEmbeds: { data: Float32Array.from({ length: Q * D }, (_, i) => Math.sin(i * seed + seed) * 2), shape: [1, Q, D] },
    subject: `s${seed}`,
    sourceImages: [`p${seed}.png`],
    model: { checkpoint: "m", qformerSha256: SHA },
    ...over,
  };
}

describe("blend weights", () => {
  it("accepts weights >= 0 summing to 1 within the tolerance, as given", () => {
    expect(checkBlendRatios([0.3, 0.7])).toEqual([0.3, 0.7]);
    expect(checkBlendRatios([0.333333, 0.333333, 0.333333])).toHaveLength(3);
    expect(checkBlendRatios([0.1, 0.2, 0.3, 0.4])).toHaveLength(4); // 0.1 + 0.2 + ... is not exactly 1 in binary
    expect(checkBlendRatios([0, 1])).toEqual([0, 1]);
    expect(checkBlendRatios([0.5, 0.5 + BLEND_RATIO_TOLERANCE])).toHaveLength(2);
  });

  it("refuses fewer than 2, negative, non-finite and non-number weights, naming the input", () => {
    expect(() => checkBlendRatios([1])).toThrow(RangeError);
    expect(() => checkBlendRatios([1])).toThrow(/at least 2 weights/);
    expect(() => checkBlendRatios([])).toThrow(/at least 2/);
    expect(() => checkBlendRatios([1.3, -0.3], ["a.st", "b.st"])).toThrow(/Expected a number >= 0 for the weight of b\.st but received -0\.3/);
    expect(() => checkBlendRatios([Number.NaN, 1], ["a.st", "b.st"])).toThrow(/finite number for the weight of a\.st but received NaN/);
    expect(() => checkBlendRatios([Number.POSITIVE_INFINITY, 1])).toThrow(/finite number for the weight of subject 1/);
    expect(() => checkBlendRatios(["0.5", 0.5])).toThrow(TypeError);
  });

  it("refuses weights whose sum is off by more than the tolerance, naming the sum", () => {
    expect(() => checkBlendRatios([0.3, 0.6])).toThrow("Expected weights that sum to 1 (within 1e-6) but received 0.3 + 0.6 = 0.9");
    expect(() => checkBlendRatios([0.5, 0.5 + 3 * BLEND_RATIO_TOLERANCE])).toThrow(/sum to 1.*= 1\.000003/);
    expect(() => checkBlendRatios([0.33333, 0.33333, 0.33333])).toThrow(/0\.99999$/);
  });
});

describe("blendSubjects refusals", () => {
  it("takes weights one per input, and the subject word must not be empty", () => {
    expect(() => blendSubjects([emb(1), emb(2)], [1])).toThrow(/one weight per subject embedding \(2\)/);
    expect(() => blendSubjects([emb(1)], [1])).toThrow(/at least 2/);
    expect(() => blendSubjects([emb(1), emb(2)], [0.5, 0.5], { subject: " " })).toThrow(TypeError);
    expect(() => blendSubjects([emb(1, { subject: "" }), emb(2)], [0.5, 0.5])).toThrow(/non-empty subject/);
  });

  it("refuses fine-tuned subjects: their UNet weights belong to their own embedding", () => {
    const ft = finetunedSubject(emb(2).queryEmbeds, {}, {
      mode: "full",
      subject: "dog",
      sourceImages: [],
      baseModel: { sha256: { unet: SHA, text_encoder: SHA, qformer: SHA, vae_encoder: SHA } },
      hyperparameters: {},
      losses: [],
      saveDtype: "float16",
    });
    expect(() => blendSubjects([emb(1), ft], [0.5, 0.5], { names: ["a.st", "ft.st"] })).toThrow(
      /^ft\.st is a fine-tuned subject \(blipdiff finetune\).*not defined by the method; blend subjects made with `blipdiff encode`$/,
    );
  });

  it("refuses other shapes, naming both", () => {
    const wide = emb(2, { queryEmbeds: { data: new Float32Array(Q * (D + 1)), shape: [1, Q, D + 1] } });
    expect(() => blendSubjects([emb(1), wide], [0.5, 0.5], { names: ["a.st", "b.st"] })).toThrow(
      `b.st has shape [1, ${Q}, ${D + 1}] but a.st has [1, ${Q}, ${D}]`,
    );
    const flat = emb(2, { queryEmbeds: { data: new Float32Array(Q * D), shape: [Q, D] } });
    expect(() => blendSubjects([emb(1), flat], [0.5, 0.5], { names: ["a.st", "b.st"] })).toThrow(/b\.st has shape \[3, 4\], expected \[1, Q, D\]/);
    const short = emb(2, { queryEmbeds: { data: new Float32Array(Q * D - 1), shape: [1, Q, D] } });
    expect(() => blendSubjects([emb(1), short], [0.5, 0.5])).toThrow(/holds 11 values/);
  });

  it("refuses different Q-Formers, and inputs that do not record theirs", () => {
    const other = emb(2, { model: { qformerSha256: "b".repeat(64) } });
    expect(() => blendSubjects([emb(1), other], [0.5, 0.5], { names: ["a.st", "b.st"] })).toThrow(
      "b.st was made with Q-Former sha256 bbbbbbbbbbbb but a.st with aaaaaaaaaaaa; blend subjects encoded with the same model",
    );
    expect(() => blendSubjects([emb(1), emb(2, { model: {} })], [0.5, 0.5], { names: ["a.st", "b.st"] })).toThrow(
      /^b\.st does not record the Q-Former that made it/,
    );
    expect(() => blendSubjects([emb(1, { model: { checkpoint: "m" } }), emb(2)], [0.5, 0.5], { names: ["a.st", "b.st"] })).toThrow(
      /^a\.st does not record the Q-Former/,
    );
    // Upper-case hex names the same file.
    expect(() => blendSubjects([emb(1), emb(2, { model: { qformerSha256: SHA.toUpperCase() } })], [0.5, 0.5])).not.toThrow();
  });

  it("refuses non-finite values", () => {
    const bad = emb(2);
    bad.queryEmbeds.data[5] = Number.NaN;
    expect(() => blendSubjects([emb(1), bad], [0.5, 0.5], { names: ["a.st", "b.st"] })).toThrow(/b\.st contains non-finite values \(NaN at index 5\)/);
  });

  it("records the checkpoint only when every input has the same", () => {
    expect(blendSubjects([emb(1), emb(2)], [0.5, 0.5]).model).toEqual({ checkpoint: "m", qformerSha256: SHA });
    expect(blendSubjects([emb(1), emb(2, { model: { checkpoint: "n", qformerSha256: SHA } })], [0.5, 0.5]).model).toEqual({ qformerSha256: SHA });
  });
});

describe("loadBlendInput", () => {
  it("refuses a fine-tuned file from its header, before its UNet tensors are read", () => {
    const file = path.join(dir, "ft.safetensors");
    // A full fine-tune with a LoRA-named tensor: generate's loader refuses it for that, reading its UNet names;
    // the blend refuses it for being a fine-tune at all.
    const tensors = { "x.lora.down.weight": fromFloat32(new Float32Array(4), [2, 2]) as NativeRawTensor };
    saveFinetunedSubject(
      file,
      finetunedSubject(emb(1).queryEmbeds, tensors, {
        mode: "full",
        subject: "dog",
        sourceImages: [],
        baseModel: { sha256: { unet: SHA, text_encoder: SHA, qformer: SHA, vae_encoder: SHA } },
        hyperparameters: {},
        losses: [],
        saveDtype: "float32",
      }),
    );
    expect(() => loadSubjectFile(file)).toThrow(/LoRA tensor in a full fine-tune/);
    expect(() => loadBlendInput(file)).toThrow(/is a fine-tuned subject \(blipdiff finetune\)/);
  });

  it("words missing and foreign files as the subject loader does", () => {
    expect(() => loadBlendInput(path.join(dir, "none.safetensors"))).toThrow(/^subject embedding not found: /);
    expect(() => loadBlendInput(dir)).toThrow(/^cannot read /);
    const foreign = path.join(dir, "foreign.safetensors");
    writeFileSync(foreign, serializeSafetensors({ query_embeds: fromFloat32(new Float32Array(Q * D), [1, Q, D]) }, { format: "other" }));
    expect(() => loadBlendInput(foreign)).toThrow(/foreign\.safetensors is not a blipdiff subject embedding: format is "other"/);
    const junk = path.join(dir, "junk.safetensors");
    writeFileSync(junk, "not a tensor file at all");
    expect(() => loadBlendInput(junk)).toThrow(/junk\.safetensors is not a blipdiff subject embedding/);
  });
});
