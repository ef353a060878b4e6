// The addon's edit() against the editing goldens (edit.json / edit.safetensors of each fixture that has them), fed
// with the goldens' own ids, token alignment and subject embeddings, so that only the native side is under test
// (the TypeScript side's alignment and prompts are tested in test/unit and through the CLI): text states, every
// step's UNet output, noise prediction, latents before and after LocalBlend, LocalBlend maps and masks, the
// controlled attention probabilities at step 0, DDIM inversion, final latents and images, the loop with every
// control off, seeds, abort and the native argument backstops.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { NativeEditParams, NativeEditProgress, NativeEditResult, NativePipeline } from "../../src/bindings/types.js";
import { editFixtureNames, loadEditGoldens, shortName } from "../helpers/edit.js";
import { addon, fixture, specOf } from "./addon.js";

const names = editFixtureNames();

it("at least one fixture has editing goldens", () => {
  expect(names.length).toBeGreaterThan(0);
});

for (const name of names) {
  describe(`native edit (${name})`, () => {
    const f = fixture(name);
    const { json, tensors: golden, g, f32, t32, i32, latentClose, relClose, imageClose } = loadEditGoldens(name);
    const params = (prefix: "gen" | "real", extra: Partial<NativeEditParams> = {}): NativeEditParams => {
      const c = json.cases[prefix === "gen" ? "p2p_generated" : "p2p_real"].params;
      return {
        queryEmbeds: t32(`${prefix}.query_embeds`),
        uncondIds: i32(`${prefix}.uncond_ids`),
        srcIds: i32(`${prefix}.src_ids`),
        editIds: i32(`${prefix}.edit_ids`),
        mapper: i32(`${prefix}.mapper`),
        alphas: f32(`${prefix}.alphas`),
        subjectAlpha: f32(`${prefix}.subject_alpha`),
        width: c.width,
        height: c.height,
        steps: c.num_inference_steps,
        guidance: c.guidance_scale,
        crossReplace: c.cross_replace_steps,
        selfReplace: c.self_replace_steps,
        blendThreshold: c.lb_threshold,
        seed: c.latents_seed ?? 0,
        ...(prefix === "gen"
          ? { latents: t32("gen.latents_init") }
          : { image: t32("real.image_in"), inversionIds: i32("real.inv_ids"), inversionSteps: c.num_inversion_steps }),
        record: true,
        ...extra,
      };
    };
    // The real-image case amplifies float32 rounding (CFG x7.5 through DDIM from the inverted latents; edit.json
    // measured up to 9.3e-5 between two batchings of the same code). Convolutions with channels-last weights (the
    // CPU default, native/src/core/model.cc) round differently enough to take some of its steps past the fixture's
    // tolerance (2.0e-4 against 1.8e-4 at step 2 on this machine's CPU), so its step-by-step checks run on
    // contiguous weights (BLIPDIFF_CHANNELS_LAST=0, read at load), and the default weights are checked on the
    // final latents and the images below.
    let pipe: NativePipeline;
    let contiguous: NativePipeline;
    const runs: Partial<Record<"gen" | "real" | "realDefault", NativeEditResult>> = {};
    const events: Partial<Record<"gen" | "real", NativeEditProgress[]>> = {};

    beforeAll(async () => {
      pipe = new (addon().Pipeline)();
      await pipe.load(specOf(f.model()), { device: "cpu", dtype: "float32", verifyChecksums: true });
      contiguous = new (addon().Pipeline)();
      process.env.BLIPDIFF_CHANNELS_LAST = "0";
      try {
        await contiguous.load(specOf(f.model()), { device: "cpu", dtype: "float32", verifyChecksums: true });
      } finally {
        delete process.env.BLIPDIFF_CHANNELS_LAST;
      }
      for (const p of ["gen", "real"] as const) {
        const ev: NativeEditProgress[] = [];
        runs[p] = await (p === "real" ? contiguous : pipe).edit(params(p), (e) => ev.push(e));
        events[p] = ev;
      }
      runs.realDefault = await pipe.edit(params("real"));
    }, 120_000);
    afterAll(async () => {
      await pipe?.dispose();
      await contiguous?.dispose();
    });

    it("p2p_real on the default (channels-last) weights: final latents within 2x the fixture tolerance, images within 1 level", () => {
      const res = runs.realDefault!;
      const b = f32("real.latents_final");
      let maxB = 0;
      for (const v of b) maxB = Math.max(maxB, Math.abs(v));
      let max = 0;
      for (let i = 0; i < b.length; i++) max = Math.max(max, Math.abs(res.record!.latentsFinal.data[i] - b[i]));
      expect(max).toBeLessThanOrEqual(2 * (1e-4 + 2e-5 * maxB));
      const u8 = g("real.image_u8").data as Uint8Array;
      const n = u8.length / 2;
      for (let row = 0; row < 2; row++) {
        let worst = 0;
        for (let i = 0; i < n; i++) worst = Math.max(worst, Math.abs(res.images[row].data[i] - u8[row * n + i]));
        expect(worst, `row ${row}`).toBeLessThanOrEqual(1);
      }
    });

    for (const p of ["gen", "real"] as const) {
      const caseName = p === "gen" ? "p2p_generated" : "p2p_real";
      it(`${caseName}: text states and initial latents`, () => {
        const rec = runs[p]!.record!;
        relClose("text states", rec.textStates, `${p}.text_states`, 1e-4, 1e-4);
        if (p === "real") {
          relClose("inversion text states", rec.invTextStates!, "real.inv_text_states", 1e-4, 1e-4);
          latentClose("x0", rec.latentsX0!, "real.latents_x0");
        } else {
          latentClose("latents_init", rec.latentsInit, "gen.latents_init");
        }
      });

      if (p === "real") {
        it("p2p_real: every DDIM inversion step (noise and latents)", () => {
          const inv = runs.real!.record!.inversion!;
          const n = json.cases.p2p_real.params.num_inversion_steps as number;
          expect(inv.length).toBe(n);
          for (let k = 0; k < n; k++) {
            latentClose(`inversion ${k} noise`, inv[k].noisePred, `real.inv.step${k}.noise_pred`);
            latentClose(`inversion ${k} latents`, inv[k].latents, `real.inv.step${k}.latents`);
          }
          latentClose("edit's initial latents = the inverted ones", runs.real!.record!.latentsInit, `real.inv.step${n - 1}.latents`);
        });
      }

      it(`${caseName}: every controller step (UNet output, noise, latents, LocalBlend map, norm and mask)`, () => {
        const steps = runs[p]!.record!.steps;
        expect(steps.length).toBe(json.cases[caseName].controller_steps);
        for (let k = 0; k < steps.length; k++) {
          const s = steps[k];
          latentClose(`step ${k} unet_out`, s.unetOut, `${p}.step${k}.unet_out`);
          latentClose(`step ${k} noise_pred`, s.noisePred, `${p}.step${k}.noise_pred`);
          latentClose(`step ${k} latents_pre_blend`, s.latentsPreBlend, `${p}.step${k}.latents_pre_blend`);
          relClose(`step ${k} lb_map`, s.lbMap!, `${p}.step${k}.lb_map`, 0, 1e-4);
          relClose(`step ${k} lb_norm`, s.lbNorm!, `${p}.step${k}.lb_norm`, 0, 1e-4);
          const mask = g(`${p}.step${k}.lb_mask`).data as Uint8Array;
          expect(Array.from(s.lbMask!.data), `step ${k} lb_mask`).toEqual(Array.from(mask));
          latentClose(`step ${k} latents`, s.latents, `${p}.step${k}.latents`);
        }
        latentClose("final latents", runs[p]!.record!.latentsFinal, `${p}.latents_final`);
      });

      it(`${caseName}: controlled attention probabilities at step 0`, () => {
        const attn = runs[p]!.record!.attnStep0;
        const keys = [...golden.keys()].filter((k) => k.startsWith(`${p}.attn_step0.`));
        expect(keys.length).toBeGreaterThan(0);
        const byShort = new Map(Object.entries(attn).map(([n, t]) => [shortName(n), t]));
        expect(byShort.size, "every attention layer recorded").toBe(json.attention_layers.layers.length);
        for (const key of keys) {
          const t = byShort.get(key.slice(`${p}.attn_step0.`.length));
          expect(t, key).toBeDefined();
          relClose(key, t!, key, 1e-5, 0);
        }
      });

      it(`${caseName}: images [source, edited]`, () => {
        const imgs = runs[p]!.images;
        expect(imgs.length).toBe(2);
        for (let row = 0; row < 2; row++) imageClose(`row ${row}`, imgs[row], p, row);
      });

      it(`${caseName}: with every control off, the loop reproduces nocontrol.latents_final`, async () => {
        const res = await (p === "real" ? contiguous : pipe).edit(params(p, { noControl: true }));
        latentClose("nocontrol final latents", res.record!.latentsFinal, `${p}.nocontrol.latents_final`);
        expect(res.record!.steps[0].lbMask).toBeUndefined();
      });

      it(`${caseName}: progress reports the phases in order`, () => {
        const ev = events[p]!;
        const phases = [...new Set(ev.map((e) => e.phase))];
        expect(phases).toEqual(p === "gen" ? ["text", "edit", "decode"] : ["text", "encode", "inversion", "edit", "decode"]);
        const edit = ev.filter((e) => e.phase === "edit");
        const n = json.cases[caseName].params.num_inference_steps as number;
        expect(edit.map((e) => e.step)).toEqual(Array.from({ length: n }, (_, i) => i + 1));
        expect(edit.every((e) => e.total === n)).toBe(true);
      });
    }

    it("p2p_generated: the seed's draw equals the golden initial latents (as generate draws them)", async () => {
      const { latents: _unused, ...rest } = params("gen", { steps: 1 });
      const res = await pipe.edit({ ...rest, seed: json.cases.p2p_generated.params.latents_seed });
      latentClose("seeded latents_init", res.record!.latentsInit, "gen.latents_init");
    });

    it("refuses guidance <= 1 and fractions outside [0, 1] (RangeError naming the field)", async () => {
      await expect(pipe.edit(params("gen", { guidance: 1 }))).rejects.toThrow(/guidance.*received 1|> 1.*guidance/);
      await expect(pipe.edit(params("gen", { crossReplace: 1.5 }))).rejects.toThrow(/crossReplace/);
      await expect(pipe.edit(params("gen", { selfReplace: -0.1 }))).rejects.toThrow(/selfReplace/);
      await expect(pipe.edit(params("gen", { editIds: new Int32Array(3) }))).rejects.toThrow(/editIds/);
    });

    it("abort() cancels an edit between UNet calls (ABORT_ERR) and the pipeline still works", async () => {
      const run = pipe.edit(params("gen"), (e) => {
        if (e.phase === "edit") pipe.abort();
      });
      await expect(run).rejects.toMatchObject({ code: "ABORT_ERR" });
      const again = await pipe.edit(params("gen"));
      expect(Array.from(again.images[1].data)).toEqual(Array.from(runs.gen!.images[1].data));
    });
  });
}
