// The library API (src/index.ts) over the addon and the exported tiny model: per-step latents, abort,
// serialized calls, the event loop during generate, dispose.
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AbortError, BlipDiffusionPipeline, type GenerateOptions } from "../../src/index.js";
import { allClose, maxAbsDiff } from "../helpers/fixtures.js";
import { fixtureNames, loadFixture, type GoldenFixture } from "../unit/golden.js";
import { modelDir } from "./cli.js";

function caseOptions(fx: GoldenFixture, name: string): GenerateOptions {
  const k = fx.json.cases.pipeline.cases[name].call_kwargs;
  return {
    subjectImage: path.join(fx.dir, k.reference_image),
    subject: k.source_subject_category,
    targetSubject: k.target_subject_category,
    prompt: k.prompt,
    negativePrompt: k.neg_prompt,
    steps: k.num_inference_steps,
    guidance: k.guidance_scale,
    width: k.width,
    height: k.height,
    promptStrength: k.prompt_strength,
    promptReps: k.prompt_reps,
    seed: k.latents_seed,
  };
}

for (const name of fixtureNames()) {
  describe(`library API (${name})`, () => {
    const fx = loadFixture(name);
    let pipe: BlipDiffusionPipeline;
    beforeAll(async () => {
      pipe = await BlipDiffusionPipeline.load(modelDir(name), { device: "cpu" });
    });
    afterAll(async () => pipe?.dispose());

    for (const c of ["cfg", "nocfg"]) {
      it(`per-step latents of ${c} match pipe.${c}.step*.latents (seed draw) within 1e-4`, async () => {
        const res = await pipe.generate({ ...caseOptions(fx, c), recordSteps: true });
        const steps = res.stepLatents ?? [];
        expect(steps.length).toBe(fx.json.cases.pipeline.cases[c].num_unet_calls);
        steps.forEach((s, i) => {
          const g = fx.tensor(`pipe.${c}.step${i}.latents`).data as Float32Array;
          expect(allClose(s.data, g, 1e-4, 1e-4), `step ${i}: max diff ${maxAbsDiff(s.data, g)}`).toBe(true);
        });
        expect(res.seeds).toEqual([42]);
        expect(res.parameters.seed).toBe(42);
      });
    }

    it("explicit latents give the same result as the seed", async () => {
      const t = fx.tensor("pipe.latents");
      const a = await pipe.generate({ ...caseOptions(fx, "nocfg"), latents: { data: t.data as Float32Array, shape: t.shape } });
      const b = await pipe.generate(caseOptions(fx, "nocfg"));
      expect(Buffer.from(a.images[0].data).equals(Buffer.from(b.images[0].data))).toBe(true);
    });

    it("aborts with an AbortError, keeps the event loop turning, and serializes calls", async () => {
      const controller = new AbortController();
      let ticks = 0;
      const timer = setInterval(() => ticks++, 5);
      let steps = 0;
      const running = pipe.generate({
        ...caseOptions(fx, "cfg"),
        steps: 900,
        signal: controller.signal,
        onProgress: (p) => {
          if (p.phase === "denoise" && ++steps === 3) controller.abort();
          if (steps === 1) throw new Error("a throwing progress callback is ignored");
        },
      });
      const queued = pipe.generate({ ...caseOptions(fx, "nocfg"), steps: 1 });
      const err = await running.catch((e: unknown) => e);
      clearInterval(timer);
      expect(err).toBeInstanceOf(AbortError);
      expect((err as Error).name).toBe("AbortError");
      expect(steps).toBeLessThan(10);
      expect(ticks).toBeGreaterThan(0);
      expect((await queued).images).toHaveLength(1);
      const pre = new AbortController();
      pre.abort();
      await expect(pipe.generate({ ...caseOptions(fx, "nocfg"), signal: pre.signal })).rejects.toThrow(AbortError);
    });

    it("averages the embeddings of several different pictures", async () => {
      const a = await pipe.encodeSubject({ images: fx.input("reference.png"), subject: "dog" });
      const b = await pipe.encodeSubject({ images: fx.input("reference_large.png"), subject: "dog" });
      const both = await pipe.encodeSubject({ images: [fx.input("reference.png"), fx.input("reference_large.png")], subject: "dog" });
      expect(both.queryEmbeds.shape).toEqual(a.queryEmbeds.shape);
      expect(both.sourceImages).toEqual(["reference.png", "reference_large.png"]);
      const mean = a.queryEmbeds.data.map((v, i) => (v + b.queryEmbeds.data[i]) / 2);
      expect(maxAbsDiff(both.queryEmbeds.data, mean)).toBeLessThan(1e-5);
      // The two pictures give clearly different embeddings, so the mean is neither of them.
      expect(maxAbsDiff(a.queryEmbeds.data, b.queryEmbeds.data)).toBeGreaterThan(1e-2);
      expect(maxAbsDiff(both.queryEmbeds.data, a.queryEmbeds.data)).toBeGreaterThan(5e-3);
      expect(maxAbsDiff(both.queryEmbeds.data, b.queryEmbeds.data)).toBeGreaterThan(5e-3);
      const q = fx.tensor("qformer.dog.query_embeds").data as Float32Array;
      expect(allClose(a.queryEmbeds.data, q, 1e-4, 1e-4)).toBe(true);
    });

    it("subjectOnly loads only the Q-Former: encodeSubject still matches, generate is refused", async () => {
      const enc = await BlipDiffusionPipeline.load(modelDir(name), { device: "cpu", subjectOnly: true });
      try {
        const e = await enc.encodeSubject({ images: fx.input("reference.png"), subject: "dog" });
        expect(allClose(e.queryEmbeds.data, fx.tensor("qformer.dog.query_embeds").data as Float32Array, 1e-4, 1e-4)).toBe(true);
        await expect(enc.generate({ ...caseOptions(fx, "nocfg"), steps: 1 })).rejects.toThrow(/subject encoding only/);
      } finally {
        await enc.dispose();
      }
    });

    it("dispose waits for the running call and is idempotent", async () => {
      const p2 = await BlipDiffusionPipeline.load(modelDir(name), { device: "cpu" });
      const run = p2.generate({ ...caseOptions(fx, "nocfg"), steps: 2 });
      const d = p2.dispose();
      await Promise.allSettled([run]);
      await d;
      await p2.dispose();
      await expect(p2.generate(caseOptions(fx, "nocfg"))).rejects.toThrow(/disposed/);
    });
  });
}
