// Fine-tuning options (src/finetune/options.ts): the documented defaults per mode and every refusal.
import path from "node:path";
import { describe, expect, it } from "vitest";
import {
  CLI_NAMES,
  FINETUNE_DEFAULTS,
  FINETUNE_LIMITS,
  maxLoraRank,
  resolveFinetune,
  type FinetuneSettings,
} from "../../src/finetune/options.js";
import { readManifest } from "../../src/pipeline/manifest.js";
import { maxLatentTokens } from "../../src/pipeline/preflight.js";
import { exportRoot, fixtureNames } from "../helpers/fixtures.js";

const manifest = readManifest(path.join(exportRoot, fixtureNames()[0], "ckpt"));
const f = manifest.spec.latentScale;
/** The largest side generate's latent-token bound allows (the defaults' 512 is too large for a tiny model). */
const maxSide = Math.floor(Math.sqrt(maxLatentTokens(manifest)!)) * f;
const res = { resolution: Math.min(maxSide, 8 * f) };

describe("fine-tuning options", () => {
  it("has LAVIS's defaults in full mode", () => {
    expect(FINETUNE_DEFAULTS.mode).toBe("full");
    expect(FINETUNE_DEFAULTS.resolution).toBe(512);
    const r = resolveFinetune(manifest, { ...res, seed: 7 });
    expect(r).toEqual({ mode: "full", steps: 40, batchSize: 3, lr: 5e-6, weightDecay: 0.01, resolution: res.resolution, seed: 7, saveDtype: "float16" });
  });

  it("has DreamBooth-LoRA's rank and learning rate in LoRA mode, alpha = rank, float32 files", () => {
    const r = resolveFinetune(manifest, { ...res, mode: "lora", seed: 1 });
    expect(r).toEqual({ mode: "lora", steps: 80, batchSize: 3, lr: 1e-4, weightDecay: 0.01, loraRank: 4, loraAlpha: 4, resolution: res.resolution, seed: 1, saveDtype: "float32" });
    expect(resolveFinetune(manifest, { ...res, mode: "lora", loraRank: 2 }).loraAlpha).toBe(2);
    expect(resolveFinetune(manifest, { ...res, mode: "lora", loraRank: 2, loraAlpha: 1 }).loraAlpha).toBe(1);
  });

  it("resolves a random seed when none is given", () => {
    const s = resolveFinetune(manifest, res).seed;
    expect(Number.isSafeInteger(s) && s >= 0).toBe(true);
  });

  it("bounds the LoRA rank by the model's narrowest attention width (manifest)", () => {
    const widths = [manifest.crossAttentionDim, ...(manifest.unetBlockOutChannels ?? [])];
    expect(manifest.unetBlockOutChannels, "the exporter records unet_block_out_channels").toBeDefined();
    expect(maxLoraRank(manifest)).toBe(Math.min(...widths));
    expect(resolveFinetune(manifest, { ...res, mode: "lora", loraRank: maxLoraRank(manifest) }).loraRank).toBe(maxLoraRank(manifest));
    // Exports made before the field: the cross-attention width alone.
    expect(maxLoraRank({ ...manifest, unetBlockOutChannels: undefined })).toBe(manifest.crossAttentionDim);
  });

  const bad: Array<[FinetuneSettings, RegExp, ErrorConstructor]> = [
    [{ steps: 0 }, /^Expected an integer between 1 and 100000 for --steps but received 0$/, RangeError],
    [{ steps: -3 }, /for --steps but received -3/, RangeError],
    [{ steps: 2.5 }, /for --steps but received 2.5/, RangeError],
    [{ steps: FINETUNE_LIMITS.maxSteps + 1 }, /for --steps but received 100001/, RangeError],
    [{ batchSize: 0 }, /^Expected an integer between 1 and 64 for --batch-size but received 0$/, RangeError],
    [{ batchSize: -1 }, /for --batch-size but received -1/, RangeError],
    [{ batchSize: 65 }, /for --batch-size but received 65/, RangeError],
    [{ lr: 0 }, /^Expected a number in \(0, 1\] for --lr but received 0$/, RangeError],
    [{ lr: -1e-4 }, /for --lr but received -0.0001/, RangeError],
    [{ lr: 5 }, /for --lr but received 5/, RangeError],
    [{ lr: Number.NaN }, /^Expected a number for --lr but received NaN$/, TypeError],
    [{ weightDecay: -0.1 }, /^Expected a number in \[0, 10\) for --weight-decay but received -0.1$/, RangeError],
    [{ weightDecay: 10 }, /for --weight-decay but received 10/, RangeError],
    [{ resolution: 0 }, new RegExp(`^Expected an integer between ${f} and 4096 for --resolution but received 0$`), RangeError],
    [{ resolution: -64 }, /for --resolution but received -64/, RangeError],
    [{ resolution: f * 4 + 1 }, new RegExp(`^Expected a multiple of ${f} \\(the model's latent scale\\) for --resolution but received ${f * 4 + 1}$`), RangeError],
    [{ resolution: maxSide + f }, new RegExp(`^Expected at most ${maxSide} for this model .* for --resolution but received ${maxSide + f}$`), RangeError],
    [{ resolution: 100000 }, /for --resolution but received 100000/, RangeError],
    [{ seed: -1 }, /for --seed but received -1/, RangeError],
    [{ mode: "half" as never }, /^Expected one of full, lora for --mode but received "half"$/, RangeError],
    [{ saveDtype: "bfloat16" as never }, /^Expected one of float16, float32 for --save-dtype but received "bfloat16"$/, RangeError],
    [{ loraRank: 4 }, /^--lora-rank applies to --mode lora only \(--mode is full\)$/, RangeError],
    [{ mode: "lora", loraRank: 0 }, /^Expected an integer between 1 and \d+ \(the model's narrowest attention width\) for --lora-rank but received 0$/, RangeError],
    [{ mode: "lora", loraRank: -2 }, /for --lora-rank but received -2/, RangeError],
    [{ mode: "lora", loraRank: 1.5 }, /for --lora-rank but received 1.5/, RangeError],
    [{ mode: "lora", loraRank: 100000 }, /for --lora-rank but received 100000/, RangeError],
    [{ mode: "lora", loraAlpha: 0 }, /for loraAlpha but received 0/, RangeError],
  ];
  for (const [opts, message, type] of bad) {
    it(`refuses ${JSON.stringify(opts)}`, () => {
      const run = (): unknown => resolveFinetune(manifest, { ...res, ...opts }, CLI_NAMES);
      expect(run).toThrow(message);
      expect(run).toThrow(type);
    });
  }

  it("rejects a rank one past the bound", () => {
    expect(() => resolveFinetune(manifest, { ...res, mode: "lora", loraRank: maxLoraRank(manifest) + 1 })).toThrow(/for loraRank but received/);
  });
});

describe("out of memory (CLI message)", () => {
  it("names what ran out and every option that uses less memory, in one line", async () => {
    const { outOfMemory } = await import("../../src/cli/finetune.js");
    const native = Object.assign(new Error("CUDA out of memory. Tried to allocate 2.00 GiB\n  (root cause) ..."), { code: "ERR_BLIPDIFF_OOM" });
    const full = outOfMemory(native, { mode: "full", batchSize: 3, resolution: 512 }, "cuda:0");
    expect(full.message).toBe(
      "out of memory while fine-tuning on cuda:0: CUDA out of memory. Tried to allocate 2.00 GiB; to use less memory lower --batch-size (now 3) or --resolution (now 512), use --mode lora, or use another --device",
    );
    expect((full as { code?: string }).code).toBe("ERR_BLIPDIFF_OOM");
    const lora = outOfMemory(native, { mode: "lora", batchSize: 1, resolution: 256 }, "cpu");
    expect(lora.message).toMatch(/on cpu: .*lower --batch-size \(now 1\) or --resolution \(now 256\), or use another --device$/);
    expect(lora.message).not.toMatch(/--mode lora/);
  });
});
