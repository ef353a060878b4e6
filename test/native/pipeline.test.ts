// The native pipeline through the addon against the pipe.* and qformer.* goldens, plus its behaviour
// (event loop, abort, dispose) and bad-input errors. Needs the exported tiny models (test/global-setup.ts).
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { NativeGenerateParams, NativePipeline, NativeProgress } from "../../src/bindings/types.js";
import { fixtureNames } from "../helpers/fixtures.js";
import { addon, compare, fixture, ids, nt, specOf } from "./addon.js";

function padIds(f: ReturnType<typeof fixture>, text: string, length: number): Int32Array {
  const check = (f.json.tokenizer_checks.clip as Array<{ text: string; ids: number[] }>).find((c) => c.text === text);
  if (!check) throw new Error(`no tokenizer check for ${text}`);
  const out = new Int32Array(length).fill(check.ids[check.ids.length - 1]);
  out.set(check.ids);
  return out;
}

function u8Report(a: Uint8Array, b: Uint8Array): { maxOff: number; offFraction: number } {
  let maxOff = 0;
  let off = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    maxOff = Math.max(maxOff, d);
    if (d > 0) off++;
  }
  return { maxOff, offFraction: off / a.length };
}

/** Native parameters of a golden pipeline case, with the golden initial latents and ids. */
function caseParams(
  f: ReturnType<typeof fixture>,
  caseName: "cfg" | "nocfg" | "cn",
  extra: Partial<NativeGenerateParams> = {},
): NativeGenerateParams {
  const kw = f.json.cases.pipeline.cases[caseName].call_kwargs;
  const spec = specOf(f.model(caseName === "cn" ? "ckpt-controlnet" : "ckpt"));
  return {
    condIds: ids(f, "text.dog.input_ids"),
    uncondIds: padIds(f, kw.neg_prompt, spec.textMaxLength),
    queryEmbeds: nt(f, `pipe.${caseName}.query_embeds`),
    width: kw.width,
    height: kw.height,
    steps: kw.num_inference_steps,
    guidance: kw.guidance_scale,
    seed: kw.latents_seed,
    numImages: 1,
    scheduler: "pndm",
    latents: nt(f, "pipe.latents"),
    recordSteps: true,
    ...extra,
  };
}

for (const name of fixtureNames()) {
  describe(`native pipeline (${name})`, () => {
    const f = fixture(name);
    const cases = f.json.cases.pipeline.cases;
    const cfgCase = cases.cfg.call_kwargs;
    let pipe: NativePipeline;

    const params = (caseName: "cfg" | "nocfg" | "cn", extra: Partial<NativeGenerateParams> = {}): NativeGenerateParams =>
      caseParams(f, caseName, extra);

    beforeAll(async () => {
      pipe = new (addon().Pipeline)();
      expect(pipe.loaded).toBe(false);
      await pipe.load(specOf(f.model()), { device: "cpu", dtype: "float32", verifyChecksums: true });
      expect(pipe.loaded).toBe(true);
      expect(pipe.device).toBe("cpu");
      expect(pipe.dtype).toBe("float32");
    });
    afterAll(async () => {
      await pipe?.dispose();
    });

    it("encodeSubject reproduces qformer.*.query_embeds", async () => {
      for (const key of ["dog", "batch2"]) {
        const idsT = f.tensor(`qformer.${key}.input_ids`);
        // batch2 = [reference, reference_large]
        const ref = nt(f, "pre.ref.pixel_values");
        const pixels =
          key === "batch2"
            ? { data: Float32Array.from([...ref.data, ...f.f32("pre.large.pixel_values")]), shape: [2, ...ref.shape.slice(1)] }
            : ref;
        const out = await pipe.encodeSubject(pixels, ids(f, `qformer.${key}.input_ids`), ids(f, `qformer.${key}.attention_mask`), [
          idsT.shape[0],
          idsT.shape[1],
        ]);
        expect(out.shape).toEqual(f.tensor(`qformer.${key}.query_embeds`).shape);
        const r = compare(out.data, f.f32(`qformer.${key}.query_embeds`));
        console.error(`[${name}] qformer.${key}.query_embeds max |diff| ${r.max.toExponential(2)}`);
        expect(r.ok).toBe(true);
      }
    });

    for (const caseName of ["cfg", "nocfg"] as const) {
      it(`${caseName}: per-step latents, vae input and image match pipe.${caseName}.*`, async () => {
        const progress: NativeProgress[] = [];
        const res = await pipe.generate(params(caseName), (p) => progress.push(p));
        const timesteps: number[] = cases[caseName].timesteps;
        expect(res.stepLatents?.length).toBe(timesteps.length);
        let max = 0;
        res.stepLatents!.forEach((s, i) => {
          const r = compare(s.data, f.f32(`pipe.${caseName}.step${i}.latents`));
          max = Math.max(max, r.max);
          expect(r.ok, `step ${i}: max diff ${r.max}`).toBe(true);
        });
        const vae = compare(res.vaeInput!.data, f.f32(`pipe.${caseName}.vae_in`));
        expect(vae.ok, `vae_in max diff ${vae.max}`).toBe(true);
        const img = res.images[0];
        const golden = f.tensor(`pipe.${caseName}.image_u8`);
        expect([img.height, img.width, img.channels]).toEqual(golden.shape.slice(1));
        const u8 = u8Report(img.data, golden.data as Uint8Array);
        console.error(`[${name}] ${caseName}: latents max ${max.toExponential(2)}, vae_in max ${vae.max.toExponential(2)}, u8 max off ${u8.maxOff} on ${(u8.offFraction * 100).toFixed(3)}%`);
        expect(u8.maxOff).toBeLessThanOrEqual(1);
        expect(u8.offFraction).toBeLessThanOrEqual(0.01);
        // progress: text (1 or 2), then one per denoising step, then decode, in order.
        const textCalls = caseName === "cfg" ? 2 : 1;
        expect(progress.map((p) => p.phase)).toEqual([
          ...Array(textCalls).fill("text"),
          ...Array(timesteps.length).fill("denoise"),
          "decode",
        ]);
        expect(progress.filter((p) => p.phase === "denoise").map((p) => p.step)).toEqual(timesteps.map((_, i) => i + 1));
        expect(res.seeds).toEqual([cfgCase.latents_seed]);
      });
    }

    it("the seed alone reproduces the explicit-latents images (torch CPU generator)", async () => {
      const explicit = await pipe.generate(params("cfg", { recordSteps: false }));
      const seeded = await pipe.generate(params("cfg", { latents: undefined, recordSteps: false }));
      expect(Buffer.from(seeded.images[0].data).equals(Buffer.from(explicit.images[0].data))).toBe(true);
      const two = await pipe.generate(params("cfg", { latents: undefined, recordSteps: false, numImages: 2, seed: cfgCase.latents_seed - 1 }));
      expect(two.seeds).toEqual([cfgCase.latents_seed - 1, cfgCase.latents_seed]);
      expect(Buffer.from(two.images[1].data).equals(Buffer.from(explicit.images[0].data))).toBe(true);
    });

    it("a throwing progress callback does not break generate", async () => {
      const res = await pipe.generate(params("nocfg", { recordSteps: false }), () => {
        throw new Error("callback failure");
      });
      expect(res.images.length).toBe(1);
    });

    it("the event loop keeps turning during generate", async () => {
      let ticks = 0;
      const timer = setInterval(() => ticks++, 1);
      const started = Date.now();
      await pipe.generate(params("cfg", { steps: 20, recordSteps: false, latents: undefined }));
      clearInterval(timer);
      const elapsed = Date.now() - started;
      expect(ticks).toBeGreaterThan(Math.min(3, elapsed / 20));
    });

    it("abort() mid-run rejects with code ABORT_ERR", async () => {
      let aborted = false;
      const run = pipe.generate(params("cfg", { steps: 200, recordSteps: false, latents: undefined }), (p) => {
        if (p.phase === "denoise" && p.step === 2 && !aborted) {
          aborted = true;
          pipe.abort();
        }
      });
      await expect(run).rejects.toMatchObject({ code: "ABORT_ERR", name: "AbortError" });
      // The pipeline is usable afterwards and a later run is not affected by the earlier abort.
      pipe.abort();
      const res = await pipe.generate(params("nocfg", { recordSteps: false }));
      expect(res.images.length).toBe(1);
    });

    it("rejects bad inputs with clear errors", async () => {
      await expect(pipe.generate(params("cfg", { condIds: new Int32Array(10) }))).rejects.toThrow(/condIds/);
      await expect(pipe.generate(params("cfg", { uncondIds: new Int32Array(10) }))).rejects.toThrow(/uncondIds/);
      await expect(pipe.generate(params("cfg", { width: 33 }))).rejects.toThrow(/multiple of the latent scale/);
      await expect(pipe.generate(params("cfg", { steps: 0 }))).rejects.toThrow(/steps/);
      await expect(pipe.generate(params("cfg", { queryEmbeds: { data: new Float32Array(5), shape: [1, 5] } }))).rejects.toThrow(
        /queryEmbeds/,
      );
      await expect(pipe.generate(params("cfg", { latents: { data: new Float32Array(4), shape: [2, 2] } }))).rejects.toThrow(/latents/);
      await expect(pipe.generate(params("cfg", { scheduler: "euler" as never }))).rejects.toThrow(/scheduler/);
      await expect(pipe.generate(params("cfg", { controlImage: { data: new Float32Array(3 * 32 * 32), shape: [1, 3, 32, 32] } }))).rejects.toThrow(
        /controlnet/,
      );
      await expect(pipe.generate({} as NativeGenerateParams)).rejects.toBeInstanceOf(TypeError);
      await expect(pipe.encodeSubject({ data: new Float32Array(3), shape: [1, 3] }, new Int32Array(3), new Int32Array(3), [1, 3])).rejects.toThrow(
        /pixels/,
      );
    });

    it("rejects bad load options: device string, float16 on CPU, CUDA on a CPU machine, checksum mismatch", async () => {
      const spec = specOf(f.model());
      const p = new (addon().Pipeline)();
      await expect(p.load(spec, { device: "gpu", dtype: "float32", verifyChecksums: true })).rejects.toThrow(/device/);
      await expect(p.load(spec, { device: "cpu", dtype: "float16", verifyChecksums: true })).rejects.toThrow(/float16 is only supported on CUDA/);
      if (!addon().buildInfo().cudaAvailable) {
        await expect(p.load(spec, { device: "cuda", dtype: "float32", verifyChecksums: true })).rejects.toThrow(/--device cpu/);
      }
      const dir = mkdtempSync(path.join(os.tmpdir(), "blipdiff-bad-"));
      try {
        cpSync(f.model(), dir, { recursive: true });
        const unet = path.join(dir, "unet.pt");
        const bytes = readFileSync(unet);
        bytes[bytes.length >> 1] ^= 0xff;
        writeFileSync(unet, bytes);
        const err = await p.load(specOf(dir), { device: "cpu", dtype: "float32", verifyChecksums: true }).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(Error);
        expect((err as Error).message).toContain(unet);
        expect((err as Error).message).toContain("blipdiff convert");
        expect((err as { code?: string }).code).toBe("ERR_BLIPDIFF_CHECKSUM");
        rmSync(path.join(dir, "vae_decoder.pt"));
        await expect(p.load(specOf(dir), { device: "cpu", dtype: "float32", verifyChecksums: false })).rejects.toThrow(/vae_decoder/);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
      expect(p.loaded).toBe(false);
      await expect(p.generate(params("cfg"))).rejects.toThrow(/load\(\)/);
    });

    it("optimize: true (freeze + optimize_for_inference at load) keeps the cfg latents within tolerance", async () => {
      const p = new (addon().Pipeline)();
      await p.load(specOf(f.model()), { device: "cpu", dtype: "float32", verifyChecksums: false, optimize: true });
      try {
        const res = await p.generate(params("cfg"));
        res.stepLatents!.forEach((s, i) => {
          const r = compare(s.data, f.f32(`pipe.cfg.step${i}.latents`));
          expect(r.ok, `step ${i}: max diff ${r.max}`).toBe(true);
        });
      } finally {
        await p.dispose();
      }
    });

    it("dispose during a run waits for it, then refuses new calls", async () => {
      const p = new (addon().Pipeline)();
      await p.load(specOf(f.model()), { device: "cpu", dtype: "float32", verifyChecksums: false });
      const order: string[] = [];
      const run = p.generate(params("cfg", { steps: 20, recordSteps: false })).then(() => order.push("generate"));
      const disposed = p.dispose().then(() => order.push("dispose"));
      const again = p.dispose().then(() => order.push("dispose2"));
      await Promise.all([run, disposed, again]);
      expect(order[0]).toBe("generate");
      expect(p.loaded).toBe(false);
      await expect(p.generate(params("cfg"))).rejects.toThrow(/disposed/);
      await expect(p.load(specOf(f.model()), { device: "cpu", dtype: "float32", verifyChecksums: false })).rejects.toThrow(/disposed/);
      await p.dispose();
    });
  });

  const cn = fixture(name);
  // Only a fixture without a ControlNet checkpoint has no cn case.
  describe.skipIf(!existsSync(path.join(cn.dir, "ckpt-controlnet")))(`controlnet (${name})`, () => {
    it("cn: per-step latents and image match pipe.cn.*", async () => {
      const f = cn;
      const spec = specOf(f.model("ckpt-controlnet"));
      const p = new (addon().Pipeline)();
      await p.load(spec, { device: "cpu", dtype: "float32", verifyChecksums: true });
      try {
        // The golden condition is duplicated for CFG; the addon takes one copy.
        const c = nt(f, "pipe.cn.controlnet_cond");
        const controlImage = { data: c.data.slice(0, c.data.length / 2), shape: [1, ...c.shape.slice(1)] };
        const res = await p.generate(caseParams(f, "cn", { controlImage }));
        let max = 0;
        res.stepLatents!.forEach((s, i) => {
          const r = compare(s.data, f.f32(`pipe.cn.step${i}.latents`));
          max = Math.max(max, r.max);
          expect(r.ok, `step ${i}: max diff ${r.max}`).toBe(true);
        });
        const u8 = u8Report(res.images[0].data, f.tensor("pipe.cn.image_u8").data as Uint8Array);
        console.error(`[${name}] cn: latents max ${max.toExponential(2)}, u8 max off ${u8.maxOff} on ${(u8.offFraction * 100).toFixed(3)}%`);
        expect(u8.maxOff).toBeLessThanOrEqual(1);
        expect(u8.offFraction).toBeLessThanOrEqual(0.01);
      } finally {
        await p.dispose();
      }
    });
  });
}
