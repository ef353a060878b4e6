// libtorch's diagnostics never reach stderr on their own: the CLI shows each once as "warning: ...", -q
// silences them, and as a library they go to onWarning / result.warnings. BLIPDIFF_TEST_NATIVE_WARNINGS=1
// makes the addon raise a TORCH_WARN and a c10 LOG(WARNING) during load and generate, so this holds on
// every CPU, not only on those where NNPACK complains.
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { fixtureNames, loadFixture } from "../unit/golden.js";
import { buildCli, lines, modelDir, repoRoot, runCli } from "./cli.js";

const name = fixtureNames()[0];
const fx = loadFixture(name);
const k = fx.json.cases.pipeline.cases.nocfg.call_kwargs;
const hook = { BLIPDIFF_TEST_NATIVE_WARNINGS: "1" };
const tmp = mkdtempSync(path.join(os.tmpdir(), "blipdiff-warn-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
let folders = 0;
/** A fresh output folder per run (outputs are never overwritten). */
const tmpdir = (): string => path.join(tmp, String(folders++));

function args(extra: string[] = []): string[] {
  return [
    "generate", "--model", modelDir(name), "--subject-image", path.join(fx.dir, k.reference_image), "--subject", "dog",
    "--prompt", k.prompt, "--steps", "2", "--width", String(k.width), "--height", String(k.height), "--seed", "3",
    "--device", "cpu", ...extra,
  ];
}

describe("libtorch diagnostics (CLI and library)", () => {
  buildCli();

  it("the CLI shows each collected warning once on its warning channel, and nothing of libtorch's own", () => {
    // Two images: each generate-time warning is raised per call and shown once.
    const r = runCli(args(["-n", "2", "--json", "-o", `${tmpdir()}/`]), { env: hook });
    expect(r.code, r.stderr).toBe(0);
    const warnings = lines(r.stderr).filter((l) => l.startsWith("warning:"));
    expect(warnings).toEqual(["warning: blipdiff test warning (load)", "warning: blipdiff test warning (generate)"]);
    expect(r.stderr).not.toMatch(/test log line|\[W\d|NNPACK/);
    // Progress counts the 2 steps asked for, although PNDM makes 3 UNet calls.
    expect(lines(r.stderr).filter((l) => /denoising step/.test(l))).toEqual([
      "image 1/2, denoising step 1/2", "image 1/2, denoising step 2/2", "image 2/2, denoising step 1/2", "image 2/2, denoising step 2/2",
    ]);
    const doc = JSON.parse(r.stdout.toString());
    expect(doc.warnings).toContain("blipdiff test warning (generate)");
  });

  it("-q prints nothing at all", () => {
    const r = runCli(args(["-q", "-o", "-"]), { env: hook });
    expect(r.code).toBe(0);
    expect(r.stderr).toBe("");
    expect(r.stdout.subarray(0, 8).toString("hex")).toBe("89504e470d0a1a0a");
  });

  it("BLIPDIFF_DEBUG=1 keeps libtorch's own log lines", () => {
    const r = runCli(args(["-q", "-o", "-"]), { env: { ...hook, BLIPDIFF_DEBUG: "1" } });
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/blipdiff test log line \(load\)/);
    expect(r.stderr).toMatch(/warning: blipdiff test warning \(generate\)/);
  });

  it("as a library: nothing on the host's stderr; warnings arrive through onWarning and result.warnings", () => {
    const script = `
      const { BlipDiffusionPipeline } = await import(${JSON.stringify(path.join(repoRoot, "dist", "index.js"))});
      const seen = [];
      const pipe = await BlipDiffusionPipeline.load(${JSON.stringify(modelDir(name))}, { device: "cpu", onWarning: (w) => seen.push(w) });
      const res = await pipe.generate({ subjectImage: ${JSON.stringify(path.join(fx.dir, k.reference_image))}, subject: "dog",
        prompt: "on a beach", steps: 2, width: ${k.width}, height: ${k.height}, seed: 1 });
      await pipe.dispose();
      process.stdout.write(JSON.stringify({ seen, result: res.warnings }));`;
    const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8", env: { ...process.env, ...hook }, timeout: 120_000 });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toBe("");
    const out = JSON.parse(r.stdout);
    expect(out.seen).toEqual(["blipdiff test warning (load)", "blipdiff test warning (generate)"]);
    expect(out.result).toContain("blipdiff test warning (generate)");
  });
});
