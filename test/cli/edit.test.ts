// Editing end to end against each fixture's editing goldens (edit.json / edit.safetensors), through the library
// (BlipDiffusionPipeline.edit: the TypeScript prompts, ids, alignment, subject encoding and photo preparation, then the
// addon) and through the CLI (`blipdiff edit`): every recorded step, LocalBlend maps and masks, attention at step 0,
// DDIM inversion, final latents, the loop without control, the seed's draw, and the written images [source, edited].
// Sizes and parameters come from edit.json; tolerances from its suggested_tolerances_float32_cpu.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { NativeEditProgress, NativeUnetOverride } from "../../src/bindings/types.js";
import { finetunedSubject, saveFinetunedSubject, baseModelOf, loadSubjectFile } from "../../src/finetune/file.js";
import { readPngText } from "../../src/image/png-text.js";
import { BlipDiffusionPipeline, type EditOptions, type EditResult } from "../../src/index.js";
import { saveSubjectEmbedding } from "../../src/pipeline/embedding.js";
import { readManifest } from "../../src/pipeline/manifest.js";
import { editFixtureNames, loadEditGoldens, shortName } from "../helpers/edit.js";
import { loadFinetuneFixture } from "../helpers/finetune.js";
import { addonBuilt, buildCli, lines, modelDir, runCli } from "./cli.js";

const names = editFixtureNames();
const tmp = mkdtempSync(path.join(os.tmpdir(), "blipdiff-edit-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

it("at least one fixture has editing goldens, and the addon is built (a missing prerequisite fails, it does not skip)", () => {
  expect(names.length).toBeGreaterThan(0);
  expect(addonBuilt(), "native/build/Release/blipdiff.node: run `npm run build:native`").toBe(true);
});

for (const name of names) {
  describe(`edit end to end (${name})`, () => {
    const { dir, json, tensors: golden, g, t32, latentClose, relClose, imageClose } = loadEditGoldens(name);
    const model = modelDir(name);

    const gen = json.cases.p2p_generated;
    const real = json.cases.p2p_real;
    /** Library options of a golden case, the subject from its reference picture and word. */
    const options = (c: typeof gen, extra: Partial<EditOptions> = {}): EditOptions => ({
      subjectImage: path.join(dir, c.reference_image),
      subject: c.params.cond_subject,
      sourceSubject: c.params.src_subject,
      targetSubject: c.params.tgt_subject,
      prompt: c.params.prompt,
      negativePrompt: c.params.neg_prompt,
      steps: c.params.num_inference_steps,
      guidance: c.params.guidance_scale,
      crossReplace: c.params.cross_replace_steps,
      selfReplace: c.params.self_replace_steps,
      blendThreshold: c.params.lb_threshold,
      ...extra,
    });
    const genOptions = (extra: Partial<EditOptions> = {}): EditOptions =>
      options(gen, { width: gen.params.width, height: gen.params.height, latents: t32("gen.latents_init"), record: true, ...extra });
    // A photo of exactly the golden size: width/height default to the photo's own.
    const realOptions = (extra: Partial<EditOptions> = {}): EditOptions =>
      options(real, { image: path.join(dir, real.real_image.file), inversionSteps: real.params.num_inversion_steps, record: true, ...extra });

    // The real-image case amplifies float32 rounding (CFG through DDIM from inverted latents): its step-by-step checks
    // run on contiguous convolution weights (BLIPDIFF_CHANNELS_LAST=0, read at load), as test/native/edit-core.test.ts
    // explains; the default weights are checked on the final latents and the images.
    let pipe: BlipDiffusionPipeline;
    let contiguous: BlipDiffusionPipeline;
    const runs: Partial<Record<"gen" | "real" | "realDefault", EditResult>> = {};
    const events: Partial<Record<"gen" | "real", NativeEditProgress[]>> = {};

    beforeAll(async () => {
      pipe = await BlipDiffusionPipeline.load(model, { device: "cpu" });
      process.env.BLIPDIFF_CHANNELS_LAST = "0";
      try {
        contiguous = await BlipDiffusionPipeline.load(model, { device: "cpu" });
      } finally {
        delete process.env.BLIPDIFF_CHANNELS_LAST;
      }
      const ev: Record<"gen" | "real", NativeEditProgress[]> = { gen: [], real: [] };
      runs.gen = await pipe.edit(genOptions({ onProgress: (e) => ev.gen.push(e) }));
      runs.real = await contiguous.edit(realOptions({ onProgress: (e) => ev.real.push(e) }));
      runs.realDefault = await pipe.edit(realOptions({ record: false }));
      Object.assign(events, ev);
    }, 240_000);
    afterAll(async () => {
      await pipe?.dispose();
      await contiguous?.dispose();
    });

    for (const p of ["gen", "real"] as const) {
      const c = p === "gen" ? gen : real;
      const caseName = p === "gen" ? "p2p_generated" : "p2p_real";

      it(`${caseName}: text states (the TypeScript ids and the subject's Q-Former embedding) and initial latents`, () => {
        const rec = runs[p]!.record!;
        relClose("text states", rec.textStates, `${p}.text_states`, 1e-4, 1e-4);
        if (p === "gen") latentClose("latents_init", rec.latentsInit, "gen.latents_init");
        else {
          relClose("inversion text states", rec.invTextStates!, "real.inv_text_states", 1e-4, 1e-4);
          latentClose("x0 (the prepared photo, encoded)", rec.latentsX0!, "real.latents_x0");
          const inv = rec.inversion!;
          expect(inv.length).toBe(c.params.num_inversion_steps);
          inv.forEach((s, k) => {
            latentClose(`inversion ${k} noise`, s.noisePred, `real.inv.step${k}.noise_pred`);
            latentClose(`inversion ${k} latents`, s.latents, `real.inv.step${k}.latents`);
          });
        }
      });

      it(`${caseName}: every controller step (UNet output, noise, latents before and after LocalBlend, map, norm, mask)`, () => {
        const steps = runs[p]!.record!.steps;
        expect(steps.length).toBe(c.controller_steps);
        steps.forEach((s, k) => {
          latentClose(`step ${k} unet_out`, s.unetOut, `${p}.step${k}.unet_out`);
          latentClose(`step ${k} noise_pred`, s.noisePred, `${p}.step${k}.noise_pred`);
          latentClose(`step ${k} latents_pre_blend`, s.latentsPreBlend, `${p}.step${k}.latents_pre_blend`);
          relClose(`step ${k} lb_map`, s.lbMap!, `${p}.step${k}.lb_map`, 0, 1e-4);
          relClose(`step ${k} lb_norm`, s.lbNorm!, `${p}.step${k}.lb_norm`, 0, 1e-4);
          expect(Array.from(s.lbMask!.data), `step ${k} lb_mask`).toEqual(Array.from(g(`${p}.step${k}.lb_mask`).data as Uint8Array));
          latentClose(`step ${k} latents`, s.latents, `${p}.step${k}.latents`);
        });
        latentClose("final latents", runs[p]!.record!.latentsFinal, `${p}.latents_final`);
      });

      it(`${caseName}: controlled attention probabilities at step 0`, () => {
        const byShort = new Map(Object.entries(runs[p]!.record!.attnStep0).map(([n, t]) => [shortName(n), t]));
        const keys = [...golden.keys()].filter((k) => k.startsWith(`${p}.attn_step0.`));
        expect(keys.length).toBeGreaterThan(0);
        for (const key of keys) {
          const t = byShort.get(key.slice(`${p}.attn_step0.`.length));
          expect(t, key).toBeDefined();
          relClose(key, t!, key, 1e-5, 0);
        }
      });

      it(`${caseName}: images [source, edited] within one level of the goldens`, () => {
        imageClose("source", runs[p]!.source, p, 0);
        imageClose("edited", runs[p]!.edited, p, 1);
      });

      it(`${caseName}: with every control off, the loop reproduces nocontrol.latents_final`, async () => {
        const res = await (p === "gen" ? pipe : contiguous).edit(p === "gen" ? genOptions({ noControl: true }) : realOptions({ noControl: true }));
        latentClose("nocontrol final latents", res.record!.latentsFinal, `${p}.nocontrol.latents_final`);
      });

      it(`${caseName}: progress shows each phase in order, the edit's steps counted`, () => {
        const ev = events[p]!;
        expect([...new Set(ev.map((e) => e.phase))]).toEqual(p === "gen" ? ["text", "edit", "decode"] : ["text", "encode", "inversion", "edit", "decode"]);
        const n = c.params.num_inference_steps;
        expect(ev.filter((e) => e.phase === "edit").map((e) => `${e.step}/${e.total}`)).toEqual(Array.from({ length: n }, (_, i) => `${i + 1}/${n}`));
        if (p === "real") expect(ev.filter((e) => e.phase === "inversion").length).toBe(c.params.num_inversion_steps);
      });
    }

    it("p2p_real on the default (channels-last) weights: images within one level", () => {
      const res = runs.realDefault!;
      expect(res.record).toBeUndefined();
      imageClose("source", res.source, "real", 0);
      imageClose("edited", res.edited, "real", 1);
    });

    it("records every parameter", () => {
      const a = runs.gen!.parameters;
      expect(a).toMatchObject({
        source: "generated",
        scheduler: "pndm",
        steps: gen.params.num_inference_steps,
        guidance: gen.params.guidance_scale,
        crossReplace: gen.params.cross_replace_steps,
        selfReplace: gen.params.self_replace_steps,
        blendThreshold: gen.params.lb_threshold,
        width: gen.params.width,
        height: gen.params.height,
        subject: gen.params.cond_subject,
        sourceSubject: gen.params.src_subject,
        targetSubject: gen.params.tgt_subject,
        negativePrompt: gen.params.neg_prompt,
        sourcePrompt: gen.src_prompt,
        editPrompt: gen.edit_prompt,
        device: "cpu",
        dtype: "float32",
      });
      expect(a.inversionPrompt).toBeUndefined();
      const b = runs.real!.parameters;
      expect(b).toMatchObject({ source: "photo", scheduler: "ddim", image: path.basename(real.real_image.file), inversionSteps: real.params.num_inversion_steps, inversionPrompt: real.inversion_prompt });
      expect([b.width, b.height]).toEqual(real.real_image.size_wh);
      expect(b.seed).toBeUndefined();
      expect(runs.gen!.timings.editMs).toBeGreaterThan(0);
      expect(runs.real!.timings.inversionMs).toBeGreaterThan(0);
    });

    it("p2p_generated: the seed's draw is the golden initial latents and gives the same images", async () => {
      const res = await pipe.edit(genOptions({ latents: undefined, seed: gen.params.latents_seed }));
      latentClose("seeded latents_init", res.record!.latentsInit, "gen.latents_init");
      expect(res.parameters.seed).toBe(gen.params.latents_seed);
      expect(Buffer.from(res.edited.data).equals(Buffer.from(runs.gen!.edited.data))).toBe(true);
      expect(Buffer.from(res.source.data).equals(Buffer.from(runs.gen!.source.data))).toBe(true);
    });

    it("a fine-tuned subject's UNet weights are applied for the call only (a LoRA with B = 0 changes nothing)", async () => {
      const ft = loadFinetuneFixture(name);
      const m = readManifest(model);
      const tensors: Record<string, { dtype: "F32"; shape: number[]; data: Uint8Array }> = {};
      const zeroB: typeof tensors = {};
      for (const n of ft.names().filter((k) => k.startsWith("lora.final.unet."))) {
        const raw = ft.raw(n);
        const key = n.slice("lora.final.unet.".length);
        tensors[key] = { dtype: "F32", shape: raw.shape, data: raw.data };
        zeroB[key] = key.endsWith(".lora.up.weight") ? { dtype: "F32", shape: raw.shape, data: new Uint8Array(raw.data.length) } : tensors[key];
      }
      const rank = ft.config.lora_rank;
      const make = (t: typeof tensors, file: string): string => {
        const e = finetunedSubject(t32("gen.query_embeds"), t as Record<string, NativeUnetOverride["tensors"][string]>, {
          mode: "lora", subject: gen.params.cond_subject, sourceImages: [], baseModel: baseModelOf(m), hyperparameters: {}, losses: [], loraRank: rank, loraAlpha: ft.config.lora_alpha, saveDtype: "float32",
        });
        saveFinetunedSubject(file, e);
        return file;
      };
      const plain = await pipe.edit(genOptions({ subjectImage: undefined, subject: undefined, subjectEmbedding: { queryEmbeds: t32("gen.query_embeds"), subject: gen.params.cond_subject, sourceImages: [], model: {} }, record: false }));
      imageClose("edited, golden query_embeds", plain.edited, "gen", 1);
      const zero = await pipe.edit(genOptions({ subjectImage: undefined, subject: undefined, subjectEmbedding: loadSubjectFile(make(zeroB, path.join(tmp, "zero.safetensors"))), record: false }));
      expect(zero.parameters.finetuned).toBe("lora");
      expect(Buffer.from(zero.edited.data).equals(Buffer.from(plain.edited.data))).toBe(true);
      const tuned = await pipe.edit(genOptions({ subjectImage: undefined, subject: undefined, subjectEmbedding: loadSubjectFile(make(tensors, path.join(tmp, "lora.safetensors"))), record: false }));
      expect(Buffer.from(tuned.edited.data).equals(Buffer.from(plain.edited.data)), "the trained LoRA changes the edited image").toBe(false);
      const again = await pipe.edit(genOptions({ subjectImage: undefined, subject: undefined, subjectEmbedding: { queryEmbeds: t32("gen.query_embeds"), subject: gen.params.cond_subject, sourceImages: [], model: {} }, record: false }));
      expect(Buffer.from(again.edited.data).equals(Buffer.from(plain.edited.data)), "the loaded UNet is unchanged afterwards").toBe(true);
    });

    it("an AbortSignal stops an edit between UNet calls (AbortError, no result) and the pipeline still works", async () => {
      const controller = new AbortController();
      const run = pipe.edit(genOptions({ record: false, signal: controller.signal, onProgress: (e) => e.phase === "edit" && e.step === 1 && controller.abort() }));
      await expect(run).rejects.toMatchObject({ name: "AbortError" });
      const again = await pipe.edit(genOptions({ record: false }));
      expect(Buffer.from(again.edited.data).equals(Buffer.from(runs.gen!.edited.data))).toBe(true);
    });

    describe("through the CLI", () => {
      buildCli();
      /** CLI arguments of a golden case. */
      const cliArgs = (c: typeof gen): string[] => [
        "edit",
        "--model", model,
        "--subject-image", path.join(dir, c.reference_image),
        "--subject", c.params.cond_subject,
        "--source-subject", c.params.src_subject,
        "--target-subject", c.params.tgt_subject,
        "--prompt", c.params.prompt,
        "--negative-prompt", c.params.neg_prompt,
        "--steps", String(c.params.num_inference_steps),
        "--guidance", String(c.params.guidance_scale),
        "--cross-replace", String(c.params.cross_replace_steps),
        "--self-replace", String(c.params.self_replace_steps),
        "--blend-threshold", String(c.params.lb_threshold),
        "--device", "cpu",
      ];
      const decoded = async (file: string): Promise<{ data: Uint8Array; width: number; height: number; channels: number }> => {
        const { data, info } = await sharp(file).raw().toBuffer({ resolveWithObject: true });
        return { data, width: info.width, height: info.height, channels: info.channels };
      };

      it("p2p_generated with --seed: both images within one level, every parameter in the PNGs and the JSON", async () => {
        const out = mkdtempSync(path.join(tmp, "cli-gen-"));
        const edited = path.join(out, "edited.png");
        const source = path.join(out, "source.png");
        const args = [...cliArgs(gen), "--seed", String(gen.params.latents_seed), "--width", String(gen.params.width), "--height", String(gen.params.height)];
        const r = runCli([...args, "-o", edited, "--source-output", source, "--json"]);
        expect(r.code, r.stderr).toBe(0);
        const doc = JSON.parse(r.stdout.toString());
        expect(doc).toMatchObject({ output: edited, sourceOutput: source, seed: gen.params.latents_seed });
        expect(doc.parameters).toMatchObject({ sourcePrompt: gen.src_prompt, editPrompt: gen.edit_prompt, blendThreshold: gen.params.lb_threshold, seed: gen.params.latents_seed });
        imageClose("CLI source", await decoded(source), "gen", 0);
        imageClose("CLI edited", await decoded(edited), "gen", 1);
        const text = readPngText(readFileSync(edited));
        expect(JSON.parse(text.blipdiff)).toMatchObject({ ...doc.parameters, role: "edited", generator: "blipdiff" });
        expect(text.parameters).toContain(`Seed: ${gen.params.latents_seed}`);
        expect(text.parameters.split("\n")[0]).toBe(gen.edit_prompt);
        expect(JSON.parse(readPngText(readFileSync(source)).blipdiff).role).toBe("source");
        // Progress on stderr: the phases, each edit step.
        const err = lines(r.stderr);
        expect(err).toContain("loading the model");
        expect(err).toContain(`editing step ${gen.params.num_inference_steps}/${gen.params.num_inference_steps}`);
      });

      it("p2p_real with --image: the photo at its own size, both images within one level; paths on stdout", async () => {
        const out = mkdtempSync(path.join(tmp, "cli-real-"));
        const edited = path.join(out, "edited.png");
        const source = path.join(out, "source.png");
        const r = runCli([...cliArgs(real), "--image", path.join(dir, real.real_image.file), "--inversion-steps", String(real.params.num_inversion_steps), "-o", edited, "--source-output", source]);
        expect(r.code, r.stderr).toBe(0);
        expect(r.stdout.toString()).toBe(`${edited}\n${source}\n`);
        imageClose("CLI source", await decoded(source), "real", 0);
        imageClose("CLI edited", await decoded(edited), "real", 1);
        const err = lines(r.stderr);
        const n = real.params.num_inversion_steps;
        expect(err.indexOf(`inverting the photo: step ${n}/${n}`)).toBeLessThan(err.indexOf("editing step 1/" + real.params.num_inference_steps));
        expect(err.indexOf("inverting the photo: step 1/" + n)).toBeGreaterThan(-1);
        const meta = JSON.parse(readPngText(readFileSync(edited)).blipdiff);
        expect(meta).toMatchObject({ image: path.basename(real.real_image.file), inversionPrompt: real.inversion_prompt, scheduler: "ddim" });
      });

      it("--subject-embedding takes a `blipdiff blend` file: the CLI's images equal the library's with the blended subject", async () => {
        const qformerSha256 = readManifest(model).identity.qformer;
        const parts = [0, 1].map((i) => {
          const file = path.join(tmp, `part${i}.safetensors`);
          saveSubjectEmbedding(file, { queryEmbeds: t32(`blend.query_embeds.${i}`), subject: gen.params.cond_subject, sourceImages: [], model: { qformerSha256 } });
          return file;
        });
        const blended = path.join(tmp, "blended.safetensors");
        const ratios = json.cases.blend.params.ratio as number[];
        const b = runCli(["blend", ...parts.map((p, i) => `${p}:${ratios[i]}`), "-q", "-o", blended]);
        expect(b.code, b.stderr).toBe(0);
        const out = path.join(mkdtempSync(path.join(tmp, "cli-blend-")), "edited.png");
        const args = cliArgs(gen).filter((a, i, all) => !["--subject-image", "--subject"].includes(a) && !["--subject-image", "--subject"].includes(all[i - 1]));
        const size = ["--width", String(gen.params.width), "--height", String(gen.params.height)];
        const r = runCli([...args, "--subject-embedding", blended, "--seed", String(gen.params.latents_seed), ...size, "-q", "-o", out, "--json"]);
        expect(r.code, r.stderr).toBe(0);
        expect(JSON.parse(r.stdout.toString()).parameters.subject).toBe(gen.params.cond_subject);
        const lib = await pipe.edit(genOptions({ subjectImage: undefined, subject: undefined, subjectEmbedding: loadSubjectFile(blended), record: false }));
        const cli = await decoded(out);
        expect(Buffer.from(cli.data).equals(Buffer.from(lib.edited.data))).toBe(true);
        // The blend is not the golden subject: the edit differs from the golden one.
        expect(Buffer.from(lib.edited.data).equals(Buffer.from(runs.gen!.edited.data))).toBe(false);
      });

      it("--subject-embedding (an encode file), -o - writes the edited PNG to stdout", async () => {
        const emb = path.join(tmp, "subject.safetensors");
        saveSubjectEmbedding(emb, { queryEmbeds: t32("gen.query_embeds"), subject: gen.params.cond_subject, sourceImages: ["reference.png"], model: {} });
        const args = cliArgs(gen).filter((a, i, all) => !["--subject-image", "--subject"].includes(a) && !["--subject-image", "--subject"].includes(all[i - 1]));
        const r = runCli([...args, "--subject-embedding", emb, "--seed", String(gen.params.latents_seed), "--width", String(gen.params.width), "--height", String(gen.params.height), "-q", "-o", "-"]);
        expect(r.code, r.stderr).toBe(0);
        expect(r.stderr).toBe("");
        const { data, info } = await sharp(r.stdout).raw().toBuffer({ resolveWithObject: true });
        imageClose("stdout edited", { data, width: info.width, height: info.height, channels: info.channels }, "gen", 1);
      });
    });
  });
}
