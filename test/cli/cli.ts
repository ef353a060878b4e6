// Runs the compiled CLI (node bin/blipdiff.js) for the end-to-end tests; compiles src/ once per process.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync } from "node:fs";
import path from "node:path";
import { expect } from "vitest";
import { exportRoot, repoRoot } from "../helpers/fixtures.js";
import type { GoldenFixture } from "../unit/golden.js";

export { exportRoot, repoRoot };

let built = false;

/** `npx tsc -p tsconfig.json` once, so bin/blipdiff.js runs the current sources. */
export function buildCli(): void {
  if (built) return;
  const r = spawnSync(process.execPath, [path.join(repoRoot, "node_modules", "typescript", "bin", "tsc"), "-p", "tsconfig.json"], {
    cwd: repoRoot,
    encoding: "utf8",
  });
  if (r.status !== 0) throw new Error(`tsc failed:\n${r.stdout}${r.stderr}`);
  built = true;
}

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: string;
}

/** Runs `node bin/blipdiff.js ...args` to completion (CI=1: plain progress lines). */
export function runCli(args: string[], opts: { input?: Buffer; env?: Record<string, string>; timeoutMs?: number } = {}): CliResult {
  buildCli();
  const r = spawnSync(process.execPath, [path.join(repoRoot, "bin", "blipdiff.js"), ...args], {
    cwd: repoRoot,
    input: opts.input,
    env: { ...process.env, CI: "1", ...opts.env },
    timeout: opts.timeoutMs ?? 240_000,
    maxBuffer: 64 << 20,
  });
  return { code: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr.toString("utf8") };
}

export function modelDir(fixture: string, ckpt: "ckpt" | "ckpt-controlnet" = "ckpt"): string {
  return path.join(exportRoot, fixture, ckpt);
}

export function addonBuilt(): boolean {
  return existsSync(process.env.BLIPDIFF_ADDON ?? path.join(repoRoot, "native", "build", "Release", "blipdiff.node"));
}

/** The non-empty lines of a stream. */
export function lines(s: string): string[] {
  return s.split("\n").filter((l) => l.trim() !== "");
}

/** `generate` arguments of one of the fixture's pipeline cases (as the reference was called), without -o. */
export function caseArgs(fx: GoldenFixture, name: string): string[] {
  const k = fx.json.cases.pipeline.cases[name].call_kwargs;
  return [
    "generate",
    "--model", modelDir(fx.name, fx.json.cases.pipeline.cases[name].checkpoint),
    "--subject-image", path.join(fx.dir, k.reference_image),
    "--subject", k.source_subject_category,
    "--target-subject", k.target_subject_category,
    "--prompt", k.prompt,
    "--negative-prompt", k.neg_prompt,
    "--steps", String(k.num_inference_steps),
    "--guidance", String(k.guidance_scale),
    "--width", String(k.width),
    "--height", String(k.height),
    "--prompt-strength", String(k.prompt_strength),
    "--prompt-reps", String(k.prompt_reps),
    "--seed", String(k.latents_seed),
    "--device", "cpu",
    // The reference's own (misspelled) keyword for the ControlNet condition.
    ...(k.condtioning_image ? ["--control-image", path.join(fx.dir, k.condtioning_image)] : []),
  ];
}

/**
 * Runs the CLI with `-o <fresh folder under tmpRoot>/<out>` (or `out` itself when absolute) and checks a failure:
 * the exit code, exactly one stderr line matching `message`, nothing on stdout, nothing left in the folder.
 */
export function expectCliFailure(tmpRoot: string, a: string[], code: number, message: RegExp, out: string): void {
  const dir = mkdtempSync(path.join(tmpRoot, "case-"));
  const target = path.isAbsolute(out) ? out : path.join(dir, out);
  const r = runCli([...a, "-o", target]);
  const errLines = lines(r.stderr);
  expect(errLines, r.stderr).toHaveLength(1);
  expect(errLines[0]).toMatch(message);
  expect(r.code, r.stderr).toBe(code);
  expect(r.stdout.length).toBe(0);
  expect(readdirSync(dir)).toEqual([]);
}

/**
 * Decoded pixels against a golden image: off by at most 1, on at most 1% of the values (the fixtures README: "a
 * handful"). `what` names the image in the messages.
 */
export function expectImageClose(actual: Uint8Array, golden: Uint8Array, what?: string): void {
  expect(actual.length, what).toBe(golden.length);
  let off = 0;
  let worst = 0;
  for (let i = 0; i < golden.length; i++) {
    const d = Math.abs(actual[i] - golden[i]);
    if (d > 0) off++;
    worst = Math.max(worst, d);
  }
  expect(worst, what === undefined ? undefined : `${what}: worst |diff|`).toBeLessThanOrEqual(1);
  expect(off, what === undefined ? undefined : `${what}: values off by 1`).toBeLessThanOrEqual(Math.ceil(golden.length * 0.01));
}
