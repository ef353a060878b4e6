// `blipdiff generate --scheduler ddim` against an independent DDIM reference (test/reference/ddim_pipeline.py):
// the fixture's cfg case with DDIM built from the model's own (PNDM) scheduler config, which does not name
// clip_sample, so x0 must not be clamped (Stable Diffusion 1.5 and LAVIS run DDIM with clip_sample false).
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import sharp from "sharp";
import { afterAll, describe, expect, it } from "vitest";
import { fixtureNames, loadFixture } from "../unit/golden.js";
import { buildCli, caseArgs, modelDir, repoRoot, runCli } from "./cli.js";

const tmp = mkdtempSync(path.join(os.tmpdir(), "blipdiff-ddim-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

interface Reference {
  timesteps: number[];
  shape: number[];
  image: Buffer;
}

function reference(fixtureDir: string, model: string, clipSample: boolean): Reference {
  const python = process.env.BLIPDIFF_PYTHON ?? path.join(repoRoot, ".venv", "bin", "python");
  const args = [path.join(repoRoot, "test", "reference", "ddim_pipeline.py"), "--fixture", fixtureDir, "--model", model];
  const r = spawnSync(python, clipSample ? [...args, "--clip-sample"] : args, { encoding: "utf8", maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`the DDIM reference failed (${r.status ?? r.signal}): ${r.error?.message ?? r.stderr}`);
  const out = JSON.parse(r.stdout) as { timesteps: number[]; shape: number[]; image_u8: string };
  return { timesteps: out.timesteps, shape: out.shape, image: Buffer.from(out.image_u8, "base64") };
}

/** How many values differ at all, by more than 1, and the largest difference. */
function diff(a: Uint8Array, b: Uint8Array): { off: number; over1: number; max: number } {
  expect(a.length).toBe(b.length);
  let off = 0;
  let over1 = 0;
  let max = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (d > 0) off++;
    if (d > 1) over1++;
    max = Math.max(max, d);
  }
  return { off, over1, max };
}

for (const name of fixtureNames()) {
  describe(`blipdiff generate --scheduler ddim (${name})`, () => {
    const fx = loadFixture(name);
    buildCli();

    it("matches a DDIM reference with clip_sample false (the config does not set it)", async () => {
      const k = fx.json.cases.pipeline.cases.cfg.call_kwargs;
      const model = modelDir(name);
      const out = path.join(tmp, `${name}-ddim.png`);
      const r = runCli([...caseArgs(fx, "cfg"), "--scheduler", "ddim", "--quiet", "-o", out]);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);

      const ref = reference(fx.dir, model, false);
      const clipped = reference(fx.dir, model, true);
      expect(ref.timesteps.length).toBe(k.num_inference_steps);
      const { data, info } = await sharp(out).removeAlpha().raw().toBuffer({ resolveWithObject: true });
      expect([1, info.height, info.width, 3]).toEqual(ref.shape);
      // The clamp changes these images: the comparison below can tell the two settings apart.
      expect(diff(clipped.image, ref.image).over1).toBeGreaterThan(ref.image.length / 10);
      const d = diff(data, ref.image);
      console.error(`[${name}] ddim vs reference: max |diff| ${d.max} (uint8), ${d.off} values off`);
      // The suggested uint8 tolerance of the fixtures: at most 1 off, on a handful of values.
      expect(d.max).toBeLessThanOrEqual(1);
      expect(d.off).toBeLessThanOrEqual(Math.ceil(ref.image.length * 0.01));
    });
  });
}
