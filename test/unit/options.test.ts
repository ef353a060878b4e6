import { describe, expect, it } from "vitest";
import { DEFAULTS, parseDType, parseDevice, parseScheduler, randomSeed, resolvePrompt, resolveSampling } from "../../src/pipeline/options.js";
import { resolveDevice } from "../../src/pipeline/pipeline.js";
import type { NativeAddon, NativeBuildInfo } from "../../src/bindings/types.js";

describe("generation options", () => {
  it("has the documented defaults", () => {
    const s = resolveSampling({ seed: 1 }, 8);
    expect(s).toEqual({ steps: 50, guidance: 7.5, width: 512, height: 512, seed: 1, n: 1, scheduler: "pndm" });
    expect(DEFAULTS.promptStrength).toBe(1);
    expect(DEFAULTS.promptReps).toBe(20);
    expect(DEFAULTS.negativePrompt).toBe("");
    expect(DEFAULTS.device).toBe("auto");
    expect(DEFAULTS.dtype).toBe("auto");
  });

  it("always resolves a seed in 0..2^53-1", () => {
    for (let i = 0; i < 100; i++) {
      const s = randomSeed();
      expect(Number.isSafeInteger(s) && s >= 0).toBe(true);
    }
    expect(Number.isSafeInteger(resolveSampling({}, 8).seed)).toBe(true);
  });

  const cases: Array<[object, RegExp, ErrorConstructor]> = [
    [{ steps: 0 }, /Expected an integer between 1 and 1000 for steps but received 0/, RangeError],
    [{ steps: 1001 }, /for steps but received 1001/, RangeError],
    [{ steps: 2.5 }, /for steps but received 2.5/, RangeError],
    [{ steps: "5" }, /Expected an integer for steps but received "5"/, TypeError],
    [{ guidance: -1 }, /Expected a number between 0 and 1000 for guidance but received -1/, RangeError],
    [{ width: 100 }, /Expected a multiple of 8 \(the model's latent scale\) for width but received 100/, RangeError],
    [{ height: 0 }, /for height but received 0/, RangeError],
    [{ width: 8192 }, /for width but received 8192/, RangeError],
    [{ n: 0 }, /for n but received 0/, RangeError],
    [{ seed: -1 }, /for seed but received -1/, RangeError],
    [{ seed: 2 ** 53 }, /for seed but received 9007199254740992/, RangeError],
    [{ seed: 2 ** 53 - 1, n: 2 }, /for seed but received 9007199254740991/, RangeError],
    [{ scheduler: "euler" }, /Expected one of pndm, ddim, dpmpp-2m for scheduler but received "euler"/, RangeError],
  ];
  for (const [opts, message, type] of cases) {
    it(`rejects ${JSON.stringify(opts)}`, () => {
      expect(() => resolveSampling(opts, 8)).toThrow(message);
      expect(() => resolveSampling(opts, 8)).toThrow(type);
    });
  }

  it("limits steps by the scheduler's steps_offset", () => {
    expect(() => resolveSampling({ steps: 1000 }, 8, { num_train_timesteps: 1000, steps_offset: 1 })).toThrow(
      /Expected an integer between 1 and 999 for steps but received 1000/,
    );
    expect(resolveSampling({ steps: 1000, seed: 0 }, 8, { num_train_timesteps: 1000, steps_offset: 0 }).steps).toBe(1000);
  });

  it("accepts guidance <= 1 (no CFG) and sizes that are multiples of the latent scale", () => {
    expect(resolveSampling({ guidance: 1, width: 32, height: 48, seed: 0 }, 2).guidance).toBe(1);
    expect(resolveSampling({ guidance: 0, seed: 0 }, 8).guidance).toBe(0);
  });

  it("converts scheduler, device and dtype strings", () => {
    expect(parseScheduler("DPMPP-2M")).toBe("dpmpp-2m");
    expect(parseScheduler("plms")).toBe("pndm");
    expect(parseDevice("cuda:1")).toBe("cuda:1");
    expect(() => parseDevice("gpu")).toThrow(/Expected auto, cpu, cuda or cuda:N for device but received "gpu"/);
    expect(() => parseDType("int8")).toThrow(/for dtype but received "int8"/);
  });

  it("validates prompt options", () => {
    expect(resolvePrompt({ prompt: "x" }, "dog").targetSubject).toBe("dog");
    expect(() => resolvePrompt({ prompt: "x", promptStrength: 0.01 }, "dog")).toThrow(/promptStrength \* promptReps >= 1/);
    expect(() => resolvePrompt({ prompt: 1 as unknown as string }, "dog")).toThrow(TypeError);
  });
});

describe("device resolution", () => {
  const addon = (info: Partial<NativeBuildInfo>): NativeAddon =>
    ({
      buildInfo: () => ({ torchVersion: "2.x", cudaCompiled: false, cudaAvailable: false, cudaDeviceCount: 0, devices: ["cpu"], numThreads: 2, ...info }),
    }) as unknown as NativeAddon;

  it("auto picks cuda+float16 when available, else cpu+float32", () => {
    expect(resolveDevice(addon({}), "auto", "auto")).toEqual({ device: "cpu", dtype: "float32" });
    expect(resolveDevice(addon({ cudaCompiled: true, cudaAvailable: true, cudaDeviceCount: 1 }), "auto", "auto")).toEqual({
      device: "cuda",
      dtype: "float16",
    });
  });

  it("refuses CUDA on a CPU build, missing devices, and half precision on CPU", () => {
    expect(() => resolveDevice(addon({}), "cuda", "auto")).toThrow(/built without CUDA/);
    expect(() => resolveDevice(addon({ cudaCompiled: true, cudaAvailable: true, cudaDeviceCount: 1 }), "cuda:1", "auto")).toThrow(
      /does not exist/,
    );
    expect(() => resolveDevice(addon({}), "cpu", "float16")).toThrow(/Expected float32 on the cpu device for dtype but received "float16"/);
  });
});
