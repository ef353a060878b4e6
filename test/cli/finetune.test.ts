// End to end: `blipdiff finetune` with --draws on the fixture's fine-tuning goldens (both modes: losses, the written
// file), `generate --subject-embedding` with the written files (the goldens' images), --seed reproducibility, a
// folder of pictures, --json, Ctrl-C; and the library's pipe.finetune (a generation after it is unchanged).
import { spawn } from "node:child_process";
import { copyFileSync, existsSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadAddon } from "../../src/bindings/index.js";
import { AbortError, BlipDiffusionPipeline, readDrawsFile, type FinetuneResult } from "../../src/index.js";
import { readSafetensors, toFloat32 } from "../../src/io/safetensors.js";
import { allClose, maxAbsDiff } from "../helpers/fixtures.js";
import { finetuneFixtureNames, loadFinetuneFixture, writeDrawsFile, type FinetuneFixture } from "../helpers/finetune.js";
import { loadFixture } from "../unit/golden.js";
import { buildCli, caseArgs, expectImageClose, lines, modelDir, repoRoot, runCli } from "./cli.js";

const tmp = mkdtempSync(path.join(os.tmpdir(), "blipdiff-ft-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Decoded RGB pixels of an image file. */
async function pixels(src: string): Promise<Buffer> {
  return (await sharp(src).removeAlpha().raw().toBuffer({ resolveWithObject: true })).data;
}

/** rtol 1e-4 (the README's tolerance for losses). */
function expectLosses(actual: number[], golden: ArrayLike<number>): void {
  expect(actual.length).toBe(golden.length);
  actual.forEach((l, i) => expect(Math.abs(l - golden[i]), `loss ${i}: ${l} vs ${golden[i]}`).toBeLessThanOrEqual(1e-4 * Math.abs(golden[i])));
}

/** ft.unet.*: at most 1 value in 10,000 off by more than 1e-4, none by more than 2e-3 (fixtures README). */
function unetStats(actual: Float32Array, golden: Float32Array): { over: number; worst: number } {
  let over = 0;
  let worst = 0;
  for (let i = 0; i < golden.length; i++) {
    const d = Math.abs(actual[i] - golden[i]);
    if (d > 1e-4) over++;
    worst = Math.max(worst, d);
  }
  return { over, worst };
}

/** `finetune` arguments for a parity run with the fixture's settings and --draws. */
function parityArgs(fx: FinetuneFixture, model: string, draws: string, pictures: string[]): string[] {
  const c = fx.config;
  return [
    "finetune", "--model", model, ...pictures.flatMap((p) => ["--subject-image", p]), "--subject", c.subject,
    "--resolution", String(c.resolution), "--lr", String(c.lr), "--weight-decay", String(c.weight_decay),
    "--draws", draws, "--device", "cpu",
  ];
}

/** `generate` with a fine-tuned file: the golden pipeline's cfg case (same prompt, guidance, PNDM, seed = its latents). */
function generateArgs(fx: FinetuneFixture, file: string): string[] {
  const args = caseArgs(loadFixture(fx.name), "cfg");
  const i = args.indexOf("--subject-image");
  args.splice(i, 2, "--subject-embedding", file);
  const j = args.indexOf("--subject");
  args.splice(j, 2); // --subject defaults to the file's
  args[args.indexOf("--height") + 1] = String(fx.config.gen_hw[0]);
  args[args.indexOf("--width") + 1] = String(fx.config.gen_hw[1]);
  return args;
}

it("the addon has finetune (a missing prerequisite fails, it does not skip)", () => {
  const p = new (loadAddon().Pipeline)();
  expect(typeof p.finetune, "native finetune: rebuild the addon").toBe("function");
});

for (const name of finetuneFixtureNames()) {
  describe(`blipdiff finetune (${name})`, () => {
    const fx = loadFinetuneFixture(name);
    const model = modelDir(name);
    const draws = path.join(tmp, `${name}-draws.safetensors`);
    const fullFile = path.join(tmp, `${name}-full.safetensors`);
    const loraFile = path.join(tmp, `${name}-lora.safetensors`);
    beforeAll(() => {
      buildCli();
      writeDrawsFile(fx, draws, { lora: true });
    });

    it("full mode with --draws: losses, trained embedding and every UNet tensor match the goldens; --json", () => {
      const r = runCli([...parityArgs(fx, model, draws, fx.images), "--save-dtype", "float32", "--json", "-o", fullFile]);
      expect(r.code, r.stderr).toBe(0);
      expect(lines(r.stderr).filter((l) => /^fine-tuning step \d+\/\d+, loss /.test(l))).toHaveLength(fx.config.steps);
      const doc = JSON.parse(r.stdout.toString());
      expect(doc.output).toBe(fullFile);
      expectLosses(doc.losses, fx.f32("ft.losses"));
      expect(doc.parameters).toMatchObject({ mode: "full", steps: fx.config.steps, batchSize: fx.config.batch, lr: fx.config.lr, weightDecay: fx.config.weight_decay, resolution: fx.config.resolution, draws: true, subject: fx.config.subject, numPictures: fx.images.length });
      expect(doc.timings.stepMs).toHaveLength(fx.config.steps);
      expect(doc.timings.totalMs).toBeGreaterThan(0);
      expect(doc.bytes).toBe(statSync(fullFile).size);

      const { metadata, tensors } = readSafetensors(fullFile);
      expect(metadata).toMatchObject({ format: "blipdiff-finetune", format_version: "1", mode: "full", subject: fx.config.subject, save_dtype: "float32" });
      expect(JSON.parse(metadata.losses)).toEqual(doc.losses);
      expect(JSON.parse(metadata.source_images)).toEqual(fx.images.map((p) => path.basename(p)));
      const manifest = JSON.parse(readFileSync(path.join(model, "manifest.json"), "utf8"));
      expect(JSON.parse(metadata.base_model).sha256.unet).toBe(manifest.modules.unet.weights.sha256);
      const ctx = toFloat32(tensors.get("ctx_embeddings_cache")!, "ctx");
      const cache = fx.f32("ft.cache_final");
      expect(allClose(ctx, cache, 1e-4, 1e-4), `ctx max |diff| ${maxAbsDiff(ctx, cache)}`).toBe(true);
      // Every golden UNet tensor is in the file, and nothing else.
      const goldenUnet = fx.names().filter((n) => n.startsWith("ft.unet."));
      expect([...tensors.keys()].filter((k) => k !== "ctx_embeddings_cache").sort()).toEqual(goldenUnet.map((n) => n.slice("ft.".length)).sort());
      let over = 0;
      let total = 0;
      let worst = 0;
      for (const g of goldenUnet) {
        const t = tensors.get(g.slice("ft.".length))!;
        expect(t.dtype).toBe("F32");
        const s = unetStats(toFloat32(t, g), fx.f32(g));
        over += s.over;
        worst = Math.max(worst, s.worst);
        total += t.data.byteLength / 4;
      }
      expect(worst, "no UNet value off by more than 2e-3").toBeLessThanOrEqual(2e-3);
      expect(over, `UNet values off by more than 1e-4 (of ${total})`).toBeLessThanOrEqual(Math.ceil(total / 10_000));
    });

    it("LoRA mode with --draws and a folder of pictures: losses, embedding and every LoRA tensor match the goldens", () => {
      // A folder: its pictures in name order, which is the fixture's training order; other files are ignored.
      const folder = mkdtempSync(path.join(tmp, "pictures-"));
      for (const p of fx.images) copyFileSync(p, path.join(folder, path.basename(p)));
      writeFileSync(path.join(folder, "notes.txt"), "not a picture");
      expect(readdirSync(folder).filter((f) => f !== "notes.txt").sort()).toEqual(fx.images.map((p) => path.basename(p)));
      const r = runCli([...parityArgs(fx, model, draws, [folder]), "--mode", "lora", "--lora-rank", String(fx.config.lora_rank), "--json", "-q", "-o", loraFile]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).toBe("");
      const doc = JSON.parse(r.stdout.toString());
      expectLosses(doc.losses, fx.f32("lora.losses"));
      expect(doc.sourceImages).toEqual(fx.images.map((p) => path.basename(p)));
      expect(doc.parameters).toMatchObject({ mode: "lora", loraRank: fx.config.lora_rank, loraAlpha: fx.config.lora_alpha, saveDtype: "float32" });

      const { metadata, tensors } = readSafetensors(loraFile);
      expect(metadata).toMatchObject({ mode: "lora", lora_rank: String(fx.config.lora_rank), lora_alpha: String(fx.config.lora_alpha), save_dtype: "float32" });
      const ctx = toFloat32(tensors.get("ctx_embeddings_cache")!, "ctx");
      expect(allClose(ctx, fx.f32("lora.cache_final"), 1e-4, 1e-4), `ctx max |diff| ${maxAbsDiff(ctx, fx.f32("lora.cache_final"))}`).toBe(true);
      const goldenLora = fx.names().filter((n) => n.startsWith("lora.final."));
      expect(goldenLora.length).toBe(2 * fx.json.lora_modules.length);
      expect([...tensors.keys()].filter((k) => k !== "ctx_embeddings_cache").sort()).toEqual(goldenLora.map((n) => n.slice("lora.final.".length)).sort());
      for (const g of goldenLora) {
        const a = toFloat32(tensors.get(g.slice("lora.final.".length))!, g);
        expect(allClose(a, fx.f32(g), 1e-4, 1e-4), `${g}: max |diff| ${maxAbsDiff(a, fx.f32(g))}`).toBe(true);
      }
      // Adapters only: far smaller than the full fine-tune.
      expect(statSync(loraFile).size).toBeLessThan(statSync(fullFile).size / 10);
    });

    for (const mode of ["full", "lora"] as const) {
      it(`generate --subject-embedding with the ${mode} file reproduces ${mode === "full" ? "ft" : "lora"}.gen.image_u8`, async () => {
        const file = mode === "full" ? fullFile : loraFile;
        expect(existsSync(file), "made by the parity test above").toBe(true);
        const out = path.join(tmp, `${name}-${mode}.png`);
        const r = runCli([...generateArgs(fx, file), "--quiet", "-o", out]);
        expect(r.stderr).toBe("");
        expect(r.code).toBe(0);
        const golden = fx.raw(`${mode === "full" ? "ft" : "lora"}.gen.image_u8`);
        expect(golden.shape).toEqual([1, ...fx.config.gen_hw, 3]);
        expectImageClose(await pixels(out), golden.data, `${mode} image`);
        // The full fine-tune shows in the image: the zero-shot image of the same case differs. (The 3-step LoRA moves the
        // latents, not the uint8 image; the library test below checks its final latents.)
        if (mode === "full") expect(maxAbsDiff(await pixels(out), loadFixture(name).tensor("pipe.cfg.image_u8").data as Uint8Array)).toBeGreaterThan(1);
      });
    }

    it("--seed fixes every draw: two runs write identical files, another seed another file (both modes)", () => {
      for (const mode of ["full", "lora"] as const) {
        const run = (seed: number, out: string): Buffer => {
          const r = runCli([
            "finetune", "--model", model, "--subject-image", fx.images[0], "--subject-image", fx.images[1], "--subject", fx.config.subject,
            "--resolution", String(fx.config.resolution), "--steps", "2", "--batch-size", "2", "--mode", mode, "--seed", String(seed),
            "--device", "cpu", "-q", "-o", out,
          ]);
          expect(r.code, r.stderr).toBe(0);
          return readFileSync(out);
        };
        const a = run(7, path.join(tmp, `${name}-${mode}-seed7a.safetensors`));
        const b = run(7, path.join(tmp, `${name}-${mode}-seed7b.safetensors`));
        expect(a.equals(b), `${mode}: same seed, same bytes`).toBe(true);
        const c = run(8, path.join(tmp, `${name}-${mode}-seed8.safetensors`));
        expect(a.equals(c), `${mode}: another seed`).toBe(false);
        const meta = readSafetensors(path.join(tmp, `${name}-${mode}-seed7a.safetensors`)).metadata;
        expect(JSON.parse(meta.hyperparameters)).toMatchObject({ seed: 7, steps: 2, batchSize: 2, draws: false });
        expect(meta.save_dtype).toBe(mode === "full" ? "float16" : "float32");
      }
    });

    it("a default (float16) full file generates, and its --subject can be overridden", async () => {
      const f16 = path.join(tmp, `${name}-full-f16.safetensors`);
      const r = runCli([...parityArgs(fx, model, draws, fx.images), "-q", "-o", f16]);
      expect(r.code, r.stderr).toBe(0);
      const { tensors, metadata } = readSafetensors(f16);
      expect(metadata.save_dtype).toBe("float16");
      expect([...tensors.entries()].filter(([k]) => k !== "ctx_embeddings_cache").every(([, t]) => t.dtype === "F16")).toBe(true);
      expect(tensors.get("ctx_embeddings_cache")!.dtype).toBe("F32");
      const out = path.join(tmp, `${name}-f16.png`);
      const g = runCli([...generateArgs(fx, f16), "--subject", "puppy", "--json", "-o", out]);
      expect(g.code, g.stderr).toBe(0);
      const doc = JSON.parse(g.stdout.toString());
      expect(doc.parameters).toMatchObject({ subject: "puppy", finetuned: "full" });
      // float16 weights barely move the float32 run's image (measured: at most 1 level, on 19 of 3072 values).
      expect(maxAbsDiff(await pixels(out), fx.raw("ft.gen.image_u8").data)).toBeLessThanOrEqual(2);
    });

    it("Ctrl-C during fine-tuning exits 130 within a step and leaves no file", async () => {
      const dir = mkdtempSync(path.join(tmp, "sigint-"));
      const child = spawn(
        process.execPath,
        [path.join(repoRoot, "bin", "blipdiff.js"), "finetune", "--model", model, "--subject-image", fx.images[0], "--subject", fx.config.subject,
          "--resolution", String(fx.config.resolution), "--steps", "100000", "--batch-size", "1", "--device", "cpu", "-o", path.join(dir, "ft.safetensors")],
        { cwd: repoRoot, env: { ...process.env, CI: "1" } },
      );
      let stderr = "";
      let stdout = "";
      let sentAt = 0;
      child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
      const code = await new Promise<number | null>((resolve) => {
        child.stderr.on("data", (d: Buffer) => {
          stderr += d.toString();
          if (!sentAt && /fine-tuning step 2\//.test(stderr)) {
            sentAt = performance.now();
            child.kill("SIGINT");
          }
        });
        child.on("close", (c) => resolve(c));
      });
      expect(stderr).toMatch(/interrupted: stopping/);
      expect(code, stderr).toBe(130);
      expect(stdout).toBe("");
      expect(stderr).not.toMatch(/saved|^\s+at /m);
      expect(readdirSync(dir)).toEqual([]);
      // Within one step (a tiny step takes well under the CLI's 5 s grace period).
      expect(performance.now() - sentAt).toBeLessThan(4_000);
    });

    it("running out of host memory is one error naming what to reduce, exit 1, and no file", () => {
      // The allocator's memory guard (native/src/core/cpu_allocator.h) refuses a block that would leave too little of
      // the system's memory; the test hook caps "the system" at 2 MiB so that the first large activation trips it.
      const dir = mkdtempSync(path.join(tmp, "oom-"));
      const out = path.join(dir, "ft.safetensors");
      const r = runCli(
        ["finetune", "--model", model, "--subject-image", fx.images[0], "--subject", fx.config.subject, "--resolution", "64",
          "--steps", "2", "--batch-size", "3", "--device", "cpu", "-q", "-o", out],
        { env: { BLIPDIFF_TEST_CPU_MEMORY_LIMIT_MB: "2" } },
      );
      expect(r.code, r.stderr).toBe(1);
      expect(lines(r.stderr)).toHaveLength(1);
      expect(r.stderr).toMatch(/out of memory while fine-tuning on cpu/);
      expect(r.stderr).toMatch(/--batch-size \(now 3\)/);
      expect(r.stderr).toMatch(/--resolution \(now 64\)/);
      expect(r.stderr).toMatch(/--mode lora/);
      expect(r.stdout.toString()).toBe("");
      expect(readdirSync(dir)).toEqual([]);
      // The same run without the cap trains (so the error above came from the guard, not from the options).
      const ok = runCli(
        ["finetune", "--model", model, "--subject-image", fx.images[0], "--subject", fx.config.subject, "--resolution", "64",
          "--steps", "1", "--batch-size", "3", "--device", "cpu", "-q", "-o", out],
      );
      expect(ok.code, ok.stderr).toBe(0);
      expect(existsSync(out)).toBe(true);
    });
  });

  describe(`pipe.finetune (${name})`, () => {
    const fx = loadFinetuneFixture(name);
    let pipe: BlipDiffusionPipeline;
    beforeAll(async () => {
      pipe = await BlipDiffusionPipeline.load(modelDir(name), { device: "cpu" });
    });
    afterAll(async () => pipe?.dispose());

    const genOptions = (): Parameters<BlipDiffusionPipeline["generate"]>[0] => {
      const k = loadFixture(name).json.cases.pipeline.cases.cfg.call_kwargs;
      return {
        prompt: k.prompt, negativePrompt: k.neg_prompt, steps: k.num_inference_steps, guidance: k.guidance_scale,
        height: fx.config.gen_hw[0], width: fx.config.gen_hw[1], promptStrength: k.prompt_strength, promptReps: k.prompt_reps, seed: k.latents_seed,
      };
    };

    it("matches the LoRA goldens, and leaves generation without it unchanged", async () => {
      const before = await pipe.generate({ ...genOptions(), subjectImage: fx.images[0], subject: fx.config.subject });
      const { draws } = readDrawsFile(writeDrawsFile(fx, path.join(tmp, `${name}-lib-draws.safetensors`), { lora: true }));
      const steps: number[] = [];
      const res: FinetuneResult = await pipe.finetune({
        images: fx.images, subject: fx.config.subject, mode: "lora", loraRank: fx.config.lora_rank, resolution: fx.config.resolution,
        lr: fx.config.lr, weightDecay: fx.config.weight_decay, draws,
        onProgress: (p) => {
          steps.push(p.step);
          if (p.step === 1) throw new Error("a throwing progress callback is ignored");
        },
      });
      expect(steps).toEqual(Array.from({ length: fx.config.steps }, (_, i) => i + 1));
      expectLosses(res.losses, fx.f32("lora.losses"));
      expect(res.parameters).toMatchObject({ steps: fx.config.steps, batchSize: fx.config.batch, draws: true });
      expect(res.embedding.finetune?.unet).toMatchObject({ mode: "lora", scale: fx.config.lora_alpha / fx.config.lora_rank });
      const tuned = await pipe.generate({ ...genOptions(), subjectEmbedding: res.embedding, recordSteps: true });
      expectImageClose(tuned.images[0].data, fx.raw("lora.gen.image_u8").data, "library LoRA image");
      const final = tuned.stepLatents!.at(-1)!.data;
      const golden = fx.f32("lora.gen.latents_final");
      expect(allClose(final, golden, 1e-4, 1e-4), `final latents: max |diff| ${maxAbsDiff(final, golden)}`).toBe(true);
      // The adapters matter: the trained embedding without them lands elsewhere.
      const plain = await pipe.generate({ ...genOptions(), subjectEmbedding: { ...res.embedding, finetune: undefined }, recordSteps: true });
      expect(maxAbsDiff(plain.stepLatents!.at(-1)!.data, golden)).toBeGreaterThan(1e-3);
      const after = await pipe.generate({ ...genOptions(), subjectImage: fx.images[0], subject: fx.config.subject });
      expect(Buffer.from(after.images[0].data).equals(Buffer.from(before.images[0].data)), "zero-shot image unchanged after finetune and a LoRA generation").toBe(true);
    });

    it("full mode leaves generation without it unchanged too", async () => {
      const before = await pipe.generate({ ...genOptions(), subjectImage: fx.images[0], subject: fx.config.subject });
      const res = await pipe.finetune({ images: fx.images, subject: fx.config.subject, resolution: fx.config.resolution, steps: 2, batchSize: 2, seed: 3, lr: fx.config.lr });
      expect(res.losses).toHaveLength(2);
      expect(res.embedding.finetune?.saveDtype).toBe("float16");
      const tuned = await pipe.generate({ ...genOptions(), subjectEmbedding: res.embedding });
      expect(tuned.parameters.finetuned).toBe("full");
      const after = await pipe.generate({ ...genOptions(), subjectImage: fx.images[0], subject: fx.config.subject });
      expect(Buffer.from(after.images[0].data).equals(Buffer.from(before.images[0].data))).toBe(true);
      expect(Buffer.from(tuned.images[0].data).equals(Buffer.from(before.images[0].data))).toBe(false);
    });

    it("aborts with an AbortError between steps; the pipeline still works", async () => {
      const controller = new AbortController();
      let last = 0;
      const run = pipe.finetune({
        images: fx.images[0], subject: fx.config.subject, resolution: fx.config.resolution, steps: 100000, batchSize: 1, seed: 1,
        signal: controller.signal,
        onProgress: (p) => {
          last = p.step;
          if (p.step === 2) controller.abort();
        },
      });
      await expect(run).rejects.toThrow(AbortError);
      expect(last).toBeLessThan(5);
      const pre = new AbortController();
      pre.abort();
      await expect(pipe.finetune({ images: fx.images[0], subject: "dog", resolution: fx.config.resolution, signal: pre.signal })).rejects.toThrow(AbortError);
      const ok = await pipe.finetune({ images: fx.images[0], subject: "dog", resolution: fx.config.resolution, steps: 1, batchSize: 1, mode: "lora", seed: 2 });
      expect(ok.losses).toHaveLength(1);
    });

    it("refuses bad options before any native work, as RangeError / TypeError", async () => {
      await expect(pipe.finetune({ images: [], subject: "dog" })).rejects.toThrow(/Expected at least one image for images/);
      await expect(pipe.finetune({ images: fx.images[0], subject: "" })).rejects.toThrow(TypeError);
      await expect(pipe.finetune({ images: fx.images[0], subject: "dog", resolution: fx.config.resolution, steps: 0 })).rejects.toThrow(/for steps but received 0/);
      await expect(pipe.finetune({ images: fx.images[0], subject: "dog", resolution: fx.config.resolution + 1 })).rejects.toThrow(RangeError);
    });
  });
}
