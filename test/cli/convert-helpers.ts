// Runs `blipdiff convert` as a terminal would and interrupts it at a known point of the export.
import { spawn } from "node:child_process";
import path from "node:path";
import { repoRoot } from "./cli.js";

/**
 * The exporter sleeps a minute after writing this module and printing its progress line
 * (BLIPDIFF_TEST_PAUSE_AFTER, models/blipdiff_export/__main__.py), so a signal sent once that line
 * appears always lands in a running export, never after it finished.
 */
export const PAUSE_AFTER = "qformer";

export interface ConvertRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Milliseconds from the last signal sent to the moment every holder of the CLI's stdout/stderr had exited. */
  afterLastSignalMs: number;
}

/**
 * Starts `node bin/blipdiff.js convert ...args` in its own process group and, once the paused
 * module's progress line appears on stderr, sends `signals` (100 ms apart) to that group, as a
 * terminal's Ctrl-C does. Resolves when the CLI's stdout and stderr are closed: that is, when the
 * CLI and the exporter it started (which inherits them) have both exited.
 */
export function convertAndSignal(args: string[], signals: NodeJS.Signals[], timeoutMs = 120_000): Promise<ConvertRun> {
  const child = spawn(process.execPath, [path.join(repoRoot, "bin", "blipdiff.js"), "convert", ...args], {
    cwd: repoRoot,
    env: { ...process.env, CI: "1", BLIPDIFF_TEST_PAUSE_AFTER: PAUSE_AFTER },
    detached: true,
  });
  const progress = new RegExp(`^${PAUSE_AFTER}: `, "m");
  let stdout = "";
  let stderr = "";
  let sent = false;
  let last = 0;
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  return new Promise((resolve) => {
    const killer = setTimeout(() => {
      try {
        process.kill(-child.pid!, "SIGKILL");
      } catch {
        // already gone
      }
    }, timeoutMs);
    child.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
      if (sent || !progress.test(stderr)) return;
      sent = true;
      signals.forEach((sig, i) =>
        setTimeout(() => {
          last = performance.now();
          try {
            process.kill(-child.pid!, sig);
          } catch {
            // already gone
          }
        }, i * 100),
      );
    });
    child.on("close", (code, signal) => {
      clearTimeout(killer);
      resolve({ code, signal, stdout, stderr, afterLastSignalMs: performance.now() - last });
    });
  });
}

/** The lines of `stderr` that mention an interrupt. */
export function interruptLines(stderr: string): string[] {
  return stderr.split("\n").filter((l) => /interrupt/i.test(l));
}
