// Subject interpolation through the library: blendSubjects then generate() with the blend case's parameters
// reproduces the blend goldens (diffusers' BlipDiffusionPipeline run with the blended embedding), step by step.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BlipDiffusionPipeline, blendSubjects, type GenerateOptions, type NativeTensor, type SubjectEmbedding } from "../../src/index.js";
import { blendFixtureNames, blendInputs, loadBlendFixture, type BlendFixture } from "../helpers/blend.js";

/** The case's tolerance for latents: |a - b| <= 1e-4 + 2e-5 * max|b| (edit.json suggested_tolerances_float32_cpu). */
function latentsReport(a: Float32Array, b: Float32Array): { max: number; bound: number } {
  expect(a.length).toBe(b.length);
  let max = 0;
  let scale = 0;
  for (let i = 0; i < b.length; i++) {
    max = Math.max(max, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return { max, bound: 1e-4 + 2e-5 * scale };
}

function options(fx: BlendFixture, embedding: SubjectEmbedding, latents?: NativeTensor): GenerateOptions {
  const p = fx.params;
  return {
    subjectEmbedding: embedding,
    targetSubject: p.tgt_subject,
    prompt: p.prompt,
    negativePrompt: p.neg_prompt,
    steps: p.num_inference_steps,
    guidance: p.guidance_scale,
    width: p.width,
    height: p.height,
    promptStrength: p.prompt_strength,
    promptReps: p.prompt_reps,
    seed: p.latents_seed,
    ...(latents ? { latents } : {}),
  };
}

for (const name of blendFixtureNames()) {
  describe(`blend then generate through the library (${name})`, () => {
    const fx = loadBlendFixture(name);
    const blended = blendSubjects(blendInputs(fx), fx.params.ratio);
    let pipe: BlipDiffusionPipeline;
    beforeAll(async () => {
      pipe = await BlipDiffusionPipeline.load(fx.model, { device: "cpu" });
    });
    afterAll(async () => pipe?.dispose());

    it("reproduces blend.step*.latents, blend.latents_final and blend.image_u8 from blend.latents_init", async () => {
      const res = await pipe.generate({ ...options(fx, blended, fx.f32("blend.latents_init")), recordSteps: true });
      const stepNames = fx.tensors.filter((t) => /^blend\.step\d+\.latents$/.test(t));
      // PNDM: one recorded latent per UNet call, steps + 1.
      expect(stepNames.length).toBe(fx.params.num_inference_steps + 1);
      const steps = res.stepLatents ?? [];
      expect(steps.length).toBe(stepNames.length);
      steps.forEach((s, i) => {
        const g = fx.f32(`blend.step${i}.latents`);
        expect(s.shape).toEqual(g.shape);
        const r = latentsReport(s.data, g.data);
        expect(r.max, `step ${i}: max |diff| ${r.max} > ${r.bound}`).toBeLessThanOrEqual(r.bound);
      });
      const final = latentsReport(steps[steps.length - 1].data, fx.f32("blend.latents_final").data);
      expect(final.max, `latents_final: max |diff| ${final.max}`).toBeLessThanOrEqual(final.bound);

      const golden = fx.tensor("blend.image_u8");
      const img = res.images[0];
      expect([1, img.height, img.width, img.channels]).toEqual(golden.shape);
      let worst = 0;
      for (let i = 0; i < img.data.length; i++) worst = Math.max(worst, Math.abs(img.data[i] - (golden.data as Uint8Array)[i]));
      expect(worst).toBeLessThanOrEqual(1);
      console.error(`[${name}] blend: latents_final max |diff| ${final.max.toExponential(2)}, image_u8 max off ${worst}`);

      // The seed alone draws blend.latents_init: the same image.
      const seeded = await pipe.generate(options(fx, blended));
      expect(Buffer.from(seeded.images[0].data).equals(Buffer.from(img.data))).toBe(true);
    });

    it("the blend matters: either input alone ends far from blend.latents_final", async () => {
      const golden = fx.f32("blend.latents_final").data;
      for (const input of blendInputs(fx)) {
        const res = await pipe.generate({ ...options(fx, input, fx.f32("blend.latents_init")), recordSteps: true });
        const steps = res.stepLatents ?? [];
        const r = latentsReport(steps[steps.length - 1].data, golden);
        expect(r.max).toBeGreaterThan(10 * r.bound);
      }
    });
  });
}
