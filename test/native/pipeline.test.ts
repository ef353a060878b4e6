// The native pipeline through the addon against the pipe.* and qformer.* goldens, plus its behaviour
// (event loop, progress, abort of generate/load/encodeSubject, dispose), bad-input and non-finite errors,
// and error messages from inside TorchScript. Needs the exported tiny models (test/global-setup.ts).
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { NativeGenerateParams, NativePipeline, NativeProgress } from "../../src/bindings/types.js";
import { fixtureNames } from "../helpers/fixtures.js";
import { addon, caseParams, compare, fixture, ids, nt, specOf } from "./addon.js";

/**
 * Runs `start()` with the test hook BLIPDIFF_TEST_PAUSE_AT=<checkpoint> (native/src/core/diagnostics.h):
 * waits until the native call is held at that checkpoint (its marker file appears), aborts it, and returns
 * how the call settled. The hook only holds the call; the abort must be noticed by the call's own check.
 */
async function abortAt<T>(checkpoint: string, pipe: NativePipeline, start: () => Promise<T>): Promise<unknown> {
  const dir = mkdtempSync(path.join(os.tmpdir(), "blipdiff-pause-"));
  const marker = path.join(dir, "paused");
  process.env.BLIPDIFF_TEST_PAUSE_AT = checkpoint;
  process.env.BLIPDIFF_TEST_PAUSE_MARKER = marker;
  try {
    const settled = start().then(
      () => "resolved",
      (e: unknown) => e,
    );
    const deadline = Date.now() + 30_000;
    while (!existsSync(marker) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    expect(existsSync(marker), `the call never reached checkpoint ${checkpoint}`).toBe(true);
    pipe.abort();
    return await settled;
  } finally {
    delete process.env.BLIPDIFF_TEST_PAUSE_AT;
    delete process.env.BLIPDIFF_TEST_PAUSE_MARKER;
    rmSync(dir, { recursive: true, force: true });
  }
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
        // progress: text (1 or 2), then one per denoising step asked for (PNDM's first step makes two UNet
        // calls and reports once), then decode, in order.
        const textCalls = caseName === "cfg" ? 2 : 1;
        const steps: number = cases[caseName].call_kwargs.num_inference_steps;
        expect(timesteps.length).toBe(steps + 1);
        expect(progress.map((p) => p.phase)).toEqual([...Array(textCalls).fill("text"), ...Array(steps).fill("denoise"), "decode"]);
        const denoise = progress.filter((p) => p.phase === "denoise");
        expect(denoise.map((p) => p.step)).toEqual(Array.from({ length: steps }, (_, i) => i + 1));
        expect(denoise.every((p) => p.total === steps)).toBe(true);
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

    it("progress counts the steps asked for: PNDM with 3 steps reads 1/3, 2/3, 3/3 (4 UNet calls)", async () => {
      for (const scheduler of ["pndm", "ddim", "dpmpp-2m"] as const) {
        const progress: NativeProgress[] = [];
        const res = await pipe.generate(params("nocfg", { steps: 3, scheduler }), (p) => progress.push(p));
        const denoise = progress.filter((p) => p.phase === "denoise");
        expect(denoise.map((p) => [p.step, p.total]), scheduler).toEqual([
          [1, 3],
          [2, 3],
          [3, 3],
        ]);
        // stepLatents stay one per UNet call.
        expect(res.stepLatents!.length, scheduler).toBe(scheduler === "pndm" ? 4 : 3);
      }
      const one: NativeProgress[] = [];
      await pipe.generate(params("nocfg", { steps: 1, recordSteps: false }), (p) => one.push(p));
      expect(one.filter((p) => p.phase === "denoise").map((p) => [p.step, p.total])).toEqual([[1, 1]]);
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

    it("abort() cancels a running load: between checksum chunks, between modules, and right away", async () => {
      const copy = mkdtempSync(path.join(os.tmpdir(), "blipdiff-abort-load-"));
      try {
        cpSync(f.model(), copy, { recursive: true });
        rmSync(path.join(copy, ".blipdiff-verified"), { force: true }); // every file gets hashed
        const spec = specOf(copy);
        const p = new (addon().Pipeline)();
        const hashing = await abortAt("checksum", p, () => p.load(spec, { device: "cpu", dtype: "float32", verifyChecksums: true }));
        expect(hashing).toMatchObject({ code: "ABORT_ERR", name: "AbortError" });
        expect(p.loaded).toBe(false);
        expect(existsSync(path.join(copy, ".blipdiff-verified"))).toBe(false); // nothing hashed to the end
        const modules = await abortAt("module", p, () => p.load(spec, { device: "cpu", dtype: "float32", verifyChecksums: false }));
        expect(modules).toMatchObject({ code: "ABORT_ERR" });
        expect(p.loaded).toBe(false);
        await expect(p.generate(params("nocfg"))).rejects.toMatchObject({ code: "ERR_BLIPDIFF_NOT_LOADED" });
        const now = p.load(spec, { device: "cpu", dtype: "float32", verifyChecksums: true });
        p.abort();
        await expect(now).rejects.toMatchObject({ code: "ABORT_ERR" });
        expect(p.loaded).toBe(false);

        // Usable afterwards; an aborted reload keeps the models loaded before.
        await p.load(spec, { device: "cpu", dtype: "float32", verifyChecksums: true });
        expect(p.loaded).toBe(true);
        const reload = await abortAt("module", p, () => p.load(spec, { device: "cpu", dtype: "float32", verifyChecksums: false }));
        expect(reload).toMatchObject({ code: "ABORT_ERR" });
        expect(p.loaded).toBe(true);
        const res = await p.generate(params("nocfg", { recordSteps: false }));
        expect(res.images.length).toBe(1);
        await p.dispose();
      } finally {
        rmSync(copy, { recursive: true, force: true });
      }
    });

    it("abort() cancels a running encodeSubject", async () => {
      const pixels = nt(f, "pre.ref.pixel_values");
      const idsT = f.tensor("qformer.dog.input_ids");
      const call = () => pipe.encodeSubject(pixels, ids(f, "qformer.dog.input_ids"), ids(f, "qformer.dog.attention_mask"), [idsT.shape[0], idsT.shape[1]]);
      expect(await abortAt("encode", pipe, call)).toMatchObject({ code: "ABORT_ERR", name: "AbortError" });
      const now = call();
      pipe.abort();
      await expect(now).rejects.toMatchObject({ code: "ABORT_ERR" });
      expect((await call()).shape).toEqual(f.tensor("qformer.dog.query_embeds").shape);
    });

    it("an error inside TorchScript leads with its root cause, not the interpreter's header", async () => {
      const pixels = nt(f, "pre.ref.pixel_values");
      const encodeIds = async (tokens: Int32Array): Promise<Error & { code?: string }> =>
        (await pipe
          .encodeSubject(pixels, tokens, new Int32Array(tokens.length).fill(1), [1, tokens.length])
          .catch((e: unknown) => e)) as Error & { code?: string };
      // A subject text longer than the Q-Former's position table (the model's own check, a ValueError in
      // TorchScript), and a token id past the vocabulary (a RuntimeError from the embedding lookup).
      const qformer = JSON.parse(readFileSync(path.join(f.dir, "ckpt", "qformer", "config.json"), "utf8"));
      const tooLong: number = qformer.qformer_config.max_position_embeddings + 88;
      const cases: Array<[Int32Array, RegExp]> = [
        [new Int32Array(tooLong).fill(4), new RegExp(`: ValueError: Q-Former text has ${tooLong} tokens`)],
        [Int32Array.from([4, 1_000_000, 5]), /: RuntimeError: index out of range/],
      ];
      for (const [tokens, cause] of cases) {
        const err = await encodeIds(tokens);
        expect(err).toBeInstanceOf(Error);
        const first = err.message.split("\n")[0];
        expect(first).toMatch(/^while encoding the subject with the Q-Former: /);
        expect(first).toMatch(cause);
        expect(first).toMatch(/ \(in TorchScript: \w+, .+:\d+\)$/);
        expect(err.message).not.toContain("The following operation failed in the TorchScript interpreter");
        expect(err.message).not.toContain("Traceback of TorchScript");
        expect(err.code).toBe("ERR_BLIPDIFF_RUNTIME");
      }
    });

    it("refuses non-finite inputs and stops non-finite latents before decoding (ERR_BLIPDIFF_NONFINITE)", async () => {
      const q = nt(f, "pipe.cfg.query_embeds");
      const nanEmbeds = { data: Float32Array.from(q.data), shape: q.shape };
      nanEmbeds.data[1] = Number.NaN;
      const embedErr = await pipe.generate(params("cfg", { queryEmbeds: nanEmbeds })).catch((e: unknown) => e);
      expect(embedErr).toMatchObject({ code: "ERR_BLIPDIFF_NONFINITE" });
      expect((embedErr as Error).message).toMatch(/queryEmbeds.*subject embedding/);

      const l = nt(f, "pipe.latents");
      const infLatents = { data: Float32Array.from(l.data), shape: l.shape };
      infLatents.data[0] = Number.POSITIVE_INFINITY;
      const latentErr = await pipe.generate(params("cfg", { latents: infLatents })).catch((e: unknown) => e);
      expect(latentErr).toMatchObject({ code: "ERR_BLIPDIFF_NONFINITE" });
      expect((latentErr as Error).message).toMatch(/latents/);

      // Finite inputs whose guidance overflows float32 during denoising: caught before the VAE runs.
      const progress: NativeProgress[] = [];
      const overflow = await pipe.generate(params("cfg", { guidance: 1e30 }), (p) => progress.push(p)).catch((e: unknown) => e);
      expect(overflow).toMatchObject({ code: "ERR_BLIPDIFF_NONFINITE" });
      expect((overflow as Error).message).toMatch(/non-finite .* during denoising and were not decoded: likely/);
      expect(progress.some((p) => p.phase === "decode")).toBe(false);
      expect(progress.filter((p) => p.phase === "denoise").length).toBe(cfgCase.num_inference_steps);
      expect((overflow as Error).message).not.toMatch(/float16/);

      // In float16 (on CUDA; here on the CPU through the developer switch BLIPDIFF_CPU_HALF=1) the message
      // names the overflow and the dtypes to try.
      process.env.BLIPDIFF_CPU_HALF = "1";
      const half = new (addon().Pipeline)();
      try {
        await half.load(specOf(f.model()), { device: "cpu", dtype: "float16", verifyChecksums: false });
        const err = await half.generate(params("cfg", { guidance: 1e30, recordSteps: false })).catch((e: unknown) => e);
        expect(err).toMatchObject({ code: "ERR_BLIPDIFF_NONFINITE" });
        expect((err as Error).message).toMatch(/float16 overflow .*--dtype bfloat16.*--dtype float32/);
      } finally {
        delete process.env.BLIPDIFF_CPU_HALF;
        await half.dispose();
      }
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
      // A CUDA device this machine does not have: any CUDA on a CPU machine, one index past the last otherwise.
      const info = addon().buildInfo();
      if (info.cudaAvailable) {
        const missing = `cuda:${info.cudaDeviceCount}`;
        await expect(p.load(spec, { device: missing, dtype: "float32", verifyChecksums: true })).rejects.toThrow(/does not exist/);
      } else {
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

    it("the CPU's unoptimized TorchScript graphs and libtorch's optimized ones (BLIPDIFF_JIT_OPTIMIZE=1) give the same latents", async () => {
      // Read at every call; the second and third calls with optimization on are its profiled and optimized runs.
      const p = new (addon().Pipeline)();
      await p.load(specOf(f.model()), { device: "cpu", dtype: "float32", verifyChecksums: false });
      try {
        const plain = await p.generate(params("cfg"));
        process.env.BLIPDIFF_JIT_OPTIMIZE = "1";
        try {
          for (let run = 0; run < 3; run++) {
            const optimized = await p.generate(params("cfg"));
            optimized.stepLatents!.forEach((s, i) => {
              const r = compare(s.data, plain.stepLatents![i].data);
              expect(r.ok, `run ${run}, step ${i}: max diff ${r.max}`).toBe(true);
              expect(compare(s.data, f.f32(`pipe.cfg.step${i}.latents`)).ok, `run ${run}, step ${i} vs golden`).toBe(true);
            });
          }
        } finally {
          delete process.env.BLIPDIFF_JIT_OPTIMIZE;
        }
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
  // Every fixture has a ControlNet checkpoint and a cn case (shared/fixtures/README.md); a missing one fails.
  describe(`controlnet (${name})`, () => {
    it("cn: per-step latents and image match pipe.cn.*", async () => {
      const f = cn;
      expect(existsSync(path.join(cn.dir, "ckpt-controlnet")), `${cn.dir}/ckpt-controlnet`).toBe(true);
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

        const nanControl = { data: Float32Array.from(controlImage.data), shape: controlImage.shape };
        nanControl.data[7] = Number.NaN;
        const err = await p.generate(caseParams(f, "cn", { controlImage: nanControl })).catch((e: unknown) => e);
        expect(err).toMatchObject({ code: "ERR_BLIPDIFF_NONFINITE" });
        expect((err as Error).message).toMatch(/controlImage/);
      } finally {
        await p.dispose();
      }
    });
  });
}
