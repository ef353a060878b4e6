// What a fine-tune is fed, without the addon: LAVIS's target pictures and caption ids against the fixture's goldens,
// and --draws files (reading and validation against the options).
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { checkDraws, numTrainTimesteps, readDrawsFile, type DrawsExpectations } from "../../src/finetune/draws.js";
import { captionIds } from "../../src/finetune/options.js";
import { fromFloat32, int64FromInt32, type RawTensor } from "../../src/io/safetensors.js";
import { decodeRgb } from "../../src/image/decode.js";
import { readManifest } from "../../src/pipeline/manifest.js";
import { preprocessTarget } from "../../src/pipeline/preprocess.js";
import { exportRoot } from "../helpers/fixtures.js";
import { finetuneFixtureNames, loadFinetuneFixture, writeDrawsFile } from "../helpers/finetune.js";

const tmp = mkdtempSync(path.join(os.tmpdir(), "blipdiff-ftdata-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

for (const name of finetuneFixtureNames()) {
  const fx = loadFinetuneFixture(name);
  const manifest = readManifest(path.join(exportRoot, name, "ckpt"));
  const cfg = fx.config;

  describe(`fine-tuning inputs (${name})`, () => {
    it("target pictures equal ft.data.targets exactly (LAVIS resize, centre crop, [-1, 1])", async () => {
      const golden = fx.f32("ft.data.targets");
      const [n, c, s] = fx.raw("ft.data.targets").shape;
      expect(n).toBe(fx.images.length);
      expect(s).toBe(cfg.resolution);
      const per = c * s * s;
      let exercisedCrop = false;
      for (const [i, file] of fx.images.entries()) {
        const img = await decodeRgb(file);
        exercisedCrop ||= img.width !== img.height;
        const t = preprocessTarget(img, cfg.resolution);
        expect(t.shape).toEqual([1, 3, s, s]);
        // Bit-exact: the PIL-exact bicubic, Python's rounding of the crop offsets, and float32 arithmetic as torch.
        const want = golden.subarray(i * per, (i + 1) * per);
        let off = 0;
        for (let j = 0; j < per; j++) if (t.data[j] !== want[j]) off++;
        expect(off, `${path.basename(file)}: ${off} of ${per} values differ`).toBe(0);
      }
      expect(exercisedCrop, "a non-square picture exercises the centre crop").toBe(true);
    });

    it("the caption 'a {subject}' is tokenized without padding as ft.caption_ids", () => {
      const ids = captionIds(manifest, cfg.subject);
      const golden = fx.raw("ft.caption_ids");
      expect(golden.shape).toEqual([1, ids.length]);
      expect(Array.from(ids)).toEqual(Array.from(new BigInt64Array(golden.data.slice().buffer), Number));
    });

    it("a caption longer than the text positions left by the subject tokens is refused", () => {
      const room = manifest.spec.textMaxLength - manifest.spec.numQueryTokens - 2;
      expect(() => captionIds(manifest, Array.from({ length: room - 1 }, () => "dog").join(" "))).not.toThrow();
      expect(() => captionIds(manifest, Array.from({ length: room }, () => "dog").join(" "), "--subject")).toThrow(
        new RegExp(`Expected a subject whose caption "a \\{subject\\}" is at most ${room} CLIP tokens .* for --subject but received "text of ${room + 1} tokens"`),
      );
    });
  });

  describe(`--draws files (${name})`, () => {
    const expectations = (over: Partial<DrawsExpectations> = {}): DrawsExpectations => ({
      mode: "lora",
      steps: cfg.steps,
      batchSize: cfg.batch,
      numPictures: fx.images.length,
      resolution: cfg.resolution,
      loraRank: cfg.lora_rank,
      ...over,
    });
    const NAMES = { steps: "--steps", batchSize: "--batch-size", resolution: "--resolution", loraRank: "--lora-rank", source: "--draws d: " };

    it("reads the fixture's draws as the addon takes them, LoRA initial weights by module", () => {
      const file = writeDrawsFile(fx, path.join(tmp, "ok.safetensors"), { lora: true });
      const { draws, steps, batchSize } = readDrawsFile(file);
      expect([steps, batchSize]).toEqual([cfg.steps, cfg.batch]);
      expect(Array.from(draws.index)).toEqual(Array.from(new BigInt64Array(fx.raw("ft.data.index").data.slice().buffer), Number));
      expect(Array.from(draws.timesteps)).toEqual(Array.from(new BigInt64Array(fx.raw("ft.data.timesteps").data.slice().buffer), Number));
      expect(draws.epsVae.shape).toEqual(fx.raw("ft.data.eps_vae").shape);
      expect(Array.from(draws.noise.data)).toEqual(Array.from(fx.f32("ft.data.noise")));
      expect(Object.keys(draws.loraInit ?? {}).sort()).toEqual([...fx.json.lora_modules].sort());
      const m0 = fx.json.lora_modules[0];
      expect(Array.from(draws.loraInit![m0].data)).toEqual(Array.from(fx.f32(`lora.init.${m0}.A`)));
      // Valid for both modes; full mode drops the LoRA initial weights.
      expect(checkDraws(manifest, draws, expectations(), NAMES, [steps, batchSize]).loraInit).toBeDefined();
      expect(checkDraws(manifest, draws, expectations({ mode: "full", loraRank: undefined }), NAMES).loraInit).toBeUndefined();
      expect(numTrainTimesteps(manifest)).toBe(manifest.spec.scheduler.num_train_timesteps ?? 1000);
    });

    it("refuses draws that disagree with the options, naming the tensor, its shape and what the options need", () => {
      const { draws, steps, batchSize } = readDrawsFile(writeDrawsFile(fx, path.join(tmp, "ok2.safetensors"), { lora: true }));
      const f = manifest.spec.latentScale;
      const C = manifest.spec.latentChannels;
      const h = cfg.resolution / f;
      const check = (x: Partial<DrawsExpectations>, d = draws): (() => unknown) => () => checkDraws(manifest, d, expectations(x), NAMES, [steps, batchSize]);
      expect(check({ steps: steps + 2 })).toThrow(`--draws d: index has shape [${steps}, ${batchSize}], but --steps ${steps + 2} and --batch-size ${batchSize} need [${steps + 2}, ${batchSize}]`);
      expect(check({ batchSize: 1 })).toThrow(/index has shape .* need \[\d+, 1\]/);
      expect(check({ resolution: cfg.resolution * 2 })).toThrow(
        `--draws d: eps_vae has shape [${steps}, ${batchSize}, ${C}, ${h}, ${h}], but --steps ${steps}, --batch-size ${batchSize}, ${C} latent channels and --resolution ${cfg.resolution * 2} (latent scale ${f}) need [${steps}, ${batchSize}, ${C}, ${2 * h}, ${2 * h}]`,
      );
      expect(check({ numPictures: 1 })).toThrow(/--draws d: index holds 1 at \[\d+, \d+\], but there is 1 picture \(indices 0..0\)/);
      expect(check({ loraRank: cfg.lora_rank + 1 })).toThrow(
        new RegExp(`--draws d: unet\\..*\\.lora\\.down\\.weight has shape \\[${cfg.lora_rank}, \\d+\\], but --lora-rank ${cfg.lora_rank + 1} needs \\[${cfg.lora_rank + 1}, in\\]`),
      );
      const late = { ...draws, timesteps: draws.timesteps.map((t, i) => (i === 4 ? numTrainTimesteps(manifest) : t)) };
      expect(check({}, late)).toThrow(new RegExp(`timesteps holds ${numTrainTimesteps(manifest)} at \\[1, 1\\], but the scheduler trains on timesteps 0..${numTrainTimesteps(manifest) - 1}`));
      const neg = { ...draws, index: draws.index.map((v, i) => (i === 0 ? -1 : v)) };
      expect(check({}, neg)).toThrow(/index holds -1 at \[0, 0\]/);
      const nan = { ...draws, noise: { ...draws.noise, data: draws.noise.data.map((v, i) => (i === 10 ? Number.NaN : v)) } };
      expect(check({}, nan)).toThrow(/noise holds NaN at flat index 10, but draws must be finite/);
      const notProj = { ...draws, loraInit: { "mid_block.resnets.0.conv1": draws.loraInit![fx.json.lora_modules[0]] } };
      expect(check({}, notProj)).toThrow(/unet\.mid_block\.resnets\.0\.conv1\.lora\.down\.weight is not an attention projection/);
      for (const fn of [check({ steps: 1 }), check({ numPictures: 1 })]) expect(fn).toThrow(RangeError);
    });

    it("refuses malformed draws files with an InputError that names the problem", () => {
      const bad = (edit: (t: Map<string, RawTensor>) => void, why: RegExp): void => {
        const file = writeDrawsFile(fx, path.join(tmp, `bad-${Math.random().toString(36).slice(2)}.safetensors`), { lora: true, edit });
        let err: unknown;
        try {
          readDrawsFile(file);
        } catch (e) {
          err = e;
        }
        expect((err as Error)?.name, String(err)).toBe("InputError");
        expect((err as Error).message).toMatch(why);
        expect((err as Error).message).toMatch(/^--draws .* is not a usable draws file: /);
      };
      bad((t) => t.delete("noise"), /no noise tensor/);
      bad((t) => t.set("index", fromFloat32(Float32Array.of(0, 1), [1, 2])), /index has dtype F32, expected I64 or I32/);
      bad((t) => t.set("timesteps", int64FromInt32([1, 2, 3], [3])), /timesteps has shape \[3\], expected 2 dimensions/);
      bad((t) => t.set("timesteps", int64FromInt32([1, 2], [1, 2])), /timesteps has shape \[1, 2\] but index has \[\d+, \d+\]/);
      bad((t) => t.set("eps_vae", fromFloat32(new Float32Array(4), [1, 1, 1, 2, 2])), /eps_vae has shape \[1, 1, 1, 2, 2\] but index has/);
      bad((t) => t.set("unet.x.to_q.lora.up.weight", fromFloat32(new Float32Array(4), [2, 2])), /unexpected tensor unet\.x\.to_q\.lora\.up\.weight/);
      bad((t) => t.set("extra", fromFloat32(new Float32Array(1), [1])), /unexpected tensor extra/);
      const big = { dtype: "I64", shape: [1, 1], data: new Uint8Array(BigInt64Array.of(2n ** 40n).buffer) };
      bad((t) => {
        for (const k of ["index", "timesteps"]) t.set(k, big);
        t.set("eps_vae", fromFloat32(new Float32Array(4), [1, 1, 1, 2, 2]));
        t.set("noise", fromFloat32(new Float32Array(4), [1, 1, 1, 2, 2]));
      }, /tensor index holds 1099511627776 at index 0, outside the int32 range/);
      const junk = path.join(tmp, "junk.safetensors");
      writeFileSync(junk, "not a tensor file");
      expect(() => readDrawsFile(junk)).toThrow(/--draws .*junk\.safetensors is not a usable draws file: the header length/);
      expect(() => readDrawsFile(path.join(tmp, "none.safetensors"))).toThrow(/^--draws file not found: .*none\.safetensors$/);
    });
  });
}
