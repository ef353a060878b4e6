// The addon's finetune against the fine-tuning goldens (finetune.json / finetune.safetensors of each fixture that
// has them): losses, step-0 intermediates and gradients, the trained embedding, UNet and LoRA tensors, and the
// generation with the trained weights (generate's per-call `unet` override). Also: the loaded UNet is unchanged
// after a fine-tune and after an overridden generation, seeds reproduce, abort, and bad draws.
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type {
  NativeFinetuneParams,
  NativeFinetuneProgress,
  NativeFinetuneResult,
  NativePipeline,
  NativeRawTensor,
  NativeTensor,
} from "../../src/bindings/types.js";
import { fixtureNames, readSafetensors, type GoldenTensor } from "../helpers/fixtures.js";
import { addon, caseParams, compare, fixture, specOf } from "./addon.js";

const names = fixtureNames().filter((n) => existsSync(path.join(fixture(n).dir, "finetune.json")));

function f32(raw: NativeRawTensor): Float32Array {
  expect(raw.dtype).toBe("F32");
  return new Float32Array(raw.data.buffer, raw.data.byteOffset, raw.data.byteLength / 4);
}

it("at least one fixture has fine-tuning goldens", () => {
  expect(names.length).toBeGreaterThan(0);
});

for (const name of names) {
  describe(`native finetune (${name})`, () => {
    const f = fixture(name);
    const golden = readSafetensors(path.join(f.dir, "finetune.safetensors"));
    const cfg = (JSON.parse(readFileSync(path.join(f.dir, "finetune.json"), "utf8")) as { config: Record<string, any> }).config;
    const g = (key: string): GoldenTensor => {
      const t = golden.get(key);
      if (!t) throw new Error(`golden ${key} missing`);
      return t;
    };
    const t32 = (key: string): NativeTensor => ({ data: g(key).data as Float32Array, shape: g(key).shape });
    const i32 = (key: string): Int32Array => Int32Array.from(g(key).data as BigInt64Array, (v) => Number(v));
    const loraInit = (): Record<string, NativeTensor> => {
      const out: Record<string, NativeTensor> = {};
      for (const key of golden.keys()) if (key.startsWith("lora.init.")) out[key.slice("lora.init.".length, -".A".length)] = t32(key);
      return out;
    };
    const params = (mode: "full" | "lora", extra: Partial<NativeFinetuneParams> = {}): NativeFinetuneParams => ({
      mode,
      targets: t32("ft.data.targets"),
      captionIds: i32("ft.caption_ids"),
      ctxInit: t32("ft.cache_init"),
      steps: cfg.steps,
      batchSize: cfg.batch,
      lr: cfg.lr,
      weightDecay: cfg.weight_decay,
      loraRank: cfg.lora_rank,
      loraAlpha: cfg.lora_alpha,
      seed: 0,
      saveDtype: "float32",
      record: true,
      draws: {
        index: i32("ft.data.index"),
        timesteps: i32("ft.data.timesteps"),
        epsVae: t32("ft.data.eps_vae"),
        noise: t32("ft.data.noise"),
        ...(mode === "lora" ? { loraInit: loraInit() } : {}),
      },
      ...extra,
    });
    const close = (what: string, a: ArrayLike<number>, b: ArrayLike<number>, atol = 1e-4, rtol = 1e-4): void => {
      const r = compare(a, b, atol, rtol);
      expect(r.ok, `${what}: max |diff| ${r.max}`).toBe(true);
    };
    let pipe: NativePipeline;
    const results: Partial<Record<"full" | "lora", NativeFinetuneResult>> = {};
    let plain: Uint8Array;

    beforeAll(async () => {
      pipe = new (addon().Pipeline)();
      await pipe.load(specOf(f.model()), { device: "cpu", dtype: "float32", verifyChecksums: true });
      plain = (await pipe.generate(caseParams(f, "cfg"))).images[0].data;
    });
    afterAll(async () => {
      await pipe?.dispose();
    });

    it("full: losses, step-0 tensors and gradients, trained cache and every UNet tensor match ft.*", async () => {
      const progress: NativeFinetuneProgress[] = [];
      const r = await pipe.finetune(params("full"), (p) => progress.push(p));
      results.full = r;
      close("ft.losses", r.losses, g("ft.losses").data as Float32Array, 0, 1e-4);
      expect(progress.map((p) => [p.step, p.total, p.loss])).toEqual(r.losses.map((l, i) => [i + 1, cfg.steps, l]));
      for (const k of ["latents", "noisy", "states"] as const) close(`ft.step0.${k}`, r.step0![k].data, g(`ft.step0.${k}`).data as Float32Array);
      close("ft.step0.grad.cache", r.step0!.grads.cache.data, g("ft.step0.grad.cache").data as Float32Array);
      const gradKeys = [...golden.keys()].filter((k) => k.startsWith("ft.step0.grad.unet."));
      expect(gradKeys.length).toBeGreaterThan(0);
      for (const k of gradKeys) close(k, r.step0!.grads[k.slice("ft.step0.grad.".length)].data, g(k).data as Float32Array);
      close("ft.cache_final", r.ctx.data, g("ft.cache_final").data as Float32Array);
      // ft.unet.*: at most 1 value in 10,000 off by more than 1e-4, none by more than 2e-3 (fixtures README).
      const unetKeys = [...golden.keys()].filter((k) => k.startsWith("ft.unet."));
      expect(Object.keys(r.tensors).sort()).toEqual(unetKeys.map((k) => k.slice("ft.unet.".length)).sort());
      let total = 0;
      let off = 0;
      let worst = 0;
      for (const k of unetKeys) {
        const a = f32(r.tensors[k.slice("ft.unet.".length)]);
        const b = g(k).data as Float32Array;
        expect(a.length).toBe(b.length);
        for (let i = 0; i < a.length; i++) {
          const d = Math.abs(a[i] - b[i]);
          worst = Math.max(worst, d);
          if (d > 1e-4) off++;
        }
        total += a.length;
      }
      console.error(`[${name}] ft.unet.*: ${total} values, ${off} off by > 1e-4, max |diff| ${worst.toExponential(2)}`);
      expect(off).toBeLessThanOrEqual(total / 10_000);
      expect(worst).toBeLessThanOrEqual(2e-3);
    });

    it("lora: losses, cache gradient, trained cache and every A and B match lora.*", async () => {
      const r = await pipe.finetune(params("lora"));
      results.lora = r;
      close("lora.losses", r.losses, g("lora.losses").data as Float32Array, 0, 1e-4);
      close("lora.step0.grad.cache", r.step0!.grads.cache.data, g("lora.step0.grad.cache").data as Float32Array);
      close("lora.cache_final", r.ctx.data, g("lora.cache_final").data as Float32Array);
      const keys = [...golden.keys()].filter((k) => k.startsWith("lora.final.unet."));
      expect(Object.keys(r.tensors).sort()).toEqual(keys.map((k) => k.slice("lora.final.unet.".length)).sort());
      for (const k of keys) close(k, f32(r.tensors[k.slice("lora.final.unet.".length)]), g(k).data as Float32Array);
    });

    for (const mode of ["full", "lora"] as const) {
      const pre = mode === "full" ? "ft" : "lora";
      it(`${mode}: generate with the trained weights reproduces ${pre}.gen.*, and the loaded UNet is unchanged`, async () => {
        const r = results[mode];
        expect(r, "the fine-tune test above must run first").toBeDefined();
        const scale = cfg.lora_alpha / cfg.lora_rank;
        const res = await pipe.generate(
          caseParams(f, "cfg", {
            queryEmbeds: r!.ctx,
            width: cfg.gen_hw[1],
            height: cfg.gen_hw[0],
            unet: mode === "full" ? { mode, tensors: r!.tensors } : { mode, scale, tensors: r!.tensors },
          }),
        );
        const steps = res.stepLatents!;
        close(`${pre}.gen.latents_final`, steps[steps.length - 1].data, g(`${pre}.gen.latents_final`).data as Float32Array);
        const want = g(`${pre}.gen.image_u8`).data as Uint8Array;
        const got = res.images[0].data;
        let off = 0;
        for (let i = 0; i < want.length; i++) {
          expect(Math.abs(got[i] - want[i])).toBeLessThanOrEqual(1);
          if (got[i] !== want[i]) off++;
        }
        expect(off).toBeLessThanOrEqual(Math.max(4, want.length / 1000));
        // The same call without the override is the plain generation, bit for bit.
        expect(Buffer.from((await pipe.generate(caseParams(f, "cfg"))).images[0].data).equals(Buffer.from(plain))).toBe(true);
      });
    }

    it("a fine-tune leaves the loaded UNet unchanged, and one seed gives the same result twice", async () => {
      const seeded = (seed: number): NativeFinetuneParams => {
        const p = params("lora", { seed, record: false, steps: 2, batchSize: 2 });
        delete p.draws;
        return p;
      };
      const a = await pipe.finetune(seeded(7));
      const b = await pipe.finetune(seeded(7));
      const c = await pipe.finetune(seeded(8));
      expect(a.losses).toEqual(b.losses);
      for (const k of Object.keys(a.tensors)) expect(Buffer.from(a.tensors[k].data).equals(Buffer.from(b.tensors[k].data))).toBe(true);
      expect(c.losses).not.toEqual(a.losses);
      const full = params("full", { seed: 3, record: false, steps: 1, batchSize: 1 });
      delete full.draws;
      const fr = await pipe.finetune(full);
      expect(fr.losses.length).toBe(1);
      expect(Buffer.from((await pipe.generate(caseParams(f, "cfg"))).images[0].data).equals(Buffer.from(plain))).toBe(true);
    });

    it("float16 output halves the bytes of the float32 output", async () => {
      const r = await pipe.finetune(params("lora", { saveDtype: "float16", record: false }));
      for (const [k, t] of Object.entries(r.tensors)) {
        expect(t.dtype).toBe("F16");
        expect(t.data.byteLength * 2).toBe(results.lora!.tensors[k].data.byteLength);
      }
    });

    it("abort stops between steps with ABORT_ERR and restores the UNet", async () => {
      let call: Promise<unknown> | undefined;
      const settled = new Promise((resolve) => {
        call = pipe.finetune(params("full", { steps: 3, record: false }), (p) => {
          if (p.step === 1) pipe.abort();
        });
        call.then(resolve, resolve);
      });
      const e = (await settled) as { code?: string };
      expect(e.code).toBe("ABORT_ERR");
      expect(Buffer.from((await pipe.generate(caseParams(f, "cfg"))).images[0].data).equals(Buffer.from(plain))).toBe(true);
    });

    it("rejects draws that disagree with the options, naming the tensor", async () => {
      const bad = params("full");
      await expect(pipe.finetune({ ...bad, steps: 2 })).rejects.toThrow(/draws\.index/);
      const d = bad.draws!;
      await expect(pipe.finetune({ ...bad, draws: { ...d, noise: { data: d.noise.data.subarray(1), shape: [d.noise.data.length - 1] } } })).rejects.toThrow(
        /draws\.noise/,
      );
      const index = Int32Array.from(d.index);
      index[0] = g("ft.data.targets").shape[0];
      await expect(pipe.finetune({ ...bad, draws: { ...d, index } })).rejects.toThrow(/number of pictures/);
      await expect(pipe.finetune(params("lora", { loraRank: 100000 }))).rejects.toThrow(/loraRank/);
      await expect(pipe.finetune({ ...bad, lr: 0 })).rejects.toThrow(/lr/);
    });
  });
}
