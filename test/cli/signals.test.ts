// Ctrl-C through the CLI, as a terminal sends it: during the model load, during a denoising step and during
// `encode`. Each ends with exit 130, no output file, no temporary file, nothing on stdout and no stack trace.
// (convert: test/cli/convert.test.ts.)
import { spawn, spawnSync } from "node:child_process";
import { closeSync, constants, cpSync, mkdtempSync, openSync, readdirSync, rmSync, unlinkSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import sharp from "sharp";
import { afterAll, describe, expect, it } from "vitest";
import { fixtureNames, loadFixture } from "../unit/golden.js";
import { buildCli, modelDir, repoRoot } from "./cli.js";

const tmp = mkdtempSync(path.join(os.tmpdir(), "blipdiff-sig-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** The CLI's grace period after the first Ctrl-C (src/cli/main.ts GRACE_MS). */
const GRACE_MS = 5_000;

interface Interrupted {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Milliseconds from the last SIGINT to the exit. */
  afterLastSignalMs: number;
}

/**
 * Runs the CLI and sends `count` SIGINTs (100 ms apart) once stderr matches `when` (and `ready()` holds, polled).
 * The CLI runs in its own process group and the signal goes to the group, as a terminal's Ctrl-C does.
 */
function interrupt(args: string[], when: RegExp, count = 1, ready: () => boolean = () => true): Promise<Interrupted> {
  const child = spawn(process.execPath, [path.join(repoRoot, "bin", "blipdiff.js"), ...args], {
    cwd: repoRoot,
    env: { ...process.env, CI: "1" },
    detached: true,
  });
  let stdout = "";
  let stderr = "";
  let last = 0;
  let sent = false;
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  return new Promise((resolve) => {
    const killer = setTimeout(() => child.kill("SIGKILL"), 120_000);
    child.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
      if (sent || !when.test(stderr)) return;
      sent = true;
      const fire = (): void => {
        for (let i = 0; i < count; i++)
          setTimeout(() => {
            last = performance.now();
            try {
              process.kill(-child.pid!, "SIGINT");
            } catch {
              // already gone
            }
          }, i * 100);
      };
      const poll = (): void => void (ready() ? fire() : setTimeout(poll, 20));
      poll();
    });
    child.on("close", (code, signal) => {
      clearTimeout(killer);
      resolve({ code, signal, stdout, stderr, afterLastSignalMs: performance.now() - last });
    });
  });
}

function expectCleanInterrupt(r: Interrupted, outDir: string): void {
  expect(r.signal, r.stderr).toBeNull();
  expect(r.code, r.stderr).toBe(130);
  expect(r.stdout).toBe("");
  expect(r.stderr).toMatch(/interrupted: stopping/);
  expect(r.stderr).not.toMatch(/^\s+at |Traceback|Error:/m);
  expect(readdirSync(outDir)).toEqual([]);
}

const name = fixtureNames()[0];
const fx = loadFixture(name);
const k = fx.json.cases.pipeline.cases.cfg.call_kwargs;

function generateArgs(model: string, out: string, steps = 2): string[] {
  return [
    "generate", "--model", model, "--subject-image", path.join(fx.dir, k.reference_image), "--subject", k.source_subject_category,
    "--prompt", k.prompt, "--steps", String(steps), "--width", String(k.width), "--height", String(k.height),
    "--seed", "1", "--device", "cpu", "-o", out,
  ];
}

/**
 * A copy of the model whose UNet file is a FIFO: the load blocks in a read that no abort can interrupt, like a
 * minutes-long load. `stuck()` is true once the native load has opened it: opening the write end without
 * blocking succeeds only when a reader is there; the write end is then held open with nothing written, so the
 * reader waits for data for good. `release()` closes it.
 */
function stuckModel(): { dir: string; stuck: () => boolean; release: () => void } {
  const dir = mkdtempSync(path.join(tmp, "stuck-"));
  cpSync(modelDir(name), dir, { recursive: true });
  const fifo = path.join(dir, "unet.pt");
  unlinkSync(fifo);
  const r = spawnSync("mkfifo", [fifo]);
  expect(r.status, "mkfifo").toBe(0);
  let fd: number | undefined;
  return {
    dir,
    stuck: () => {
      try {
        fd ??= openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
        return true;
      } catch {
        return false; // ENXIO: nobody is reading yet
      }
    },
    release: () => {
      if (fd !== undefined) closeSync(fd);
    },
  };
}

describe("Ctrl-C (CLI)", () => {
  buildCli();

  it("during a load that cannot stop: the first Ctrl-C ends the process after the grace period", async () => {
    const out = mkdtempSync(path.join(tmp, "out-"));
    const m = stuckModel();
    const r = await interrupt(generateArgs(m.dir, path.join(out, "x.png")), /loading the model/, 1, m.stuck);
    m.release();
    expectCleanInterrupt(r, out);
    expect(r.stderr).toMatch(/press Ctrl-C again to quit at once/);
    expect(r.afterLastSignalMs).toBeGreaterThanOrEqual(GRACE_MS - 500);
  });

  it("during a load that cannot stop: a second Ctrl-C ends the process at once", async () => {
    const out = mkdtempSync(path.join(tmp, "out-"));
    const m = stuckModel();
    const r = await interrupt(generateArgs(m.dir, path.join(out, "x.png")), /loading the model/, 2, m.stuck);
    m.release();
    expectCleanInterrupt(r, out);
    // Without the second signal it would wait out the grace period (the previous test).
    expect(r.afterLastSignalMs).toBeLessThan(GRACE_MS - 1000);
  });

  it("during a denoising step", async () => {
    const out = mkdtempSync(path.join(tmp, "out-"));
    const r = await interrupt(generateArgs(modelDir(name), path.join(out, "x.png"), 900), /denoising step [2-9]/);
    expectCleanInterrupt(r, out);
    expect(r.stderr).not.toMatch(/image\(s\), seed/);
  });

  it("during encode: no file is written and nothing is printed", async () => {
    const out = mkdtempSync(path.join(tmp, "out-"));
    // A large picture keeps "encoding the subject" busy (decode and resize) long enough to be interrupted.
    const big = path.join(tmp, "big.jpg");
    await sharp({ create: { width: 8000, height: 6000, channels: 3, background: "#808080", noise: { type: "gaussian", mean: 128, sigma: 40 } } })
      .jpeg({ quality: 90 })
      .toFile(big);
    const r = await interrupt(
      ["encode", "--model", modelDir(name), "--subject-image", big, "--subject", "dog", "--device", "cpu", "-o", path.join(out, "e.safetensors")],
      /encoding the subject/,
    );
    expectCleanInterrupt(r, out);
    expect(r.stderr).not.toMatch(/saved/);
  });
});
