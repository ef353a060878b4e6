// blipdiff convert: runs the Python exporter (models/blipdiff_export) in the project venv.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { constants as osConstants } from "node:os";
import path from "node:path";
import { Command } from "commander";
import { packageRoot } from "../bindings/index.js";
import { EXIT, UsageError } from "./errors.js";

interface ConvertFlags {
  out: string;
  qformerVocab?: string;
  randomWeights?: boolean;
  tokenizerDir?: string;
  withControlnet?: boolean;
  force?: boolean;
}

/** The Python interpreter: $BLIPDIFF_PYTHON, else <package root>/.venv/bin/python. */
export function pythonPath(): string {
  return process.env.BLIPDIFF_PYTHON ?? path.join(packageRoot, ".venv", process.platform === "win32" ? "Scripts" : "bin", "python");
}

/** The exit code of the exporter, which the CLI passes through. */
export class ChildExit extends Error {
  constructor(readonly code: number) {
    super(`the exporter exited with code ${code}`);
  }
}

/**
 * Runs the exporter to its end and returns its exit code (128 + n when a signal n ended it).
 *
 * The child gets its own process group (POSIX), so a terminal's Ctrl-C reaches only this process;
 * an abort forwards exactly one SIGINT, and the exporter removes its staging folder, prints
 * `interrupted: nothing was written` and exits 130. If this process exits first (a second Ctrl-C,
 * SIGTERM), the child gets SIGTERM; if it dies without running exit handlers
 * (SIGKILL), the exporter's watchdog sees BLIPDIFF_PARENT_PID go away and stops itself.
 */
export function runExporter(python: string, args: string[], env: NodeJS.ProcessEnv, signal: AbortSignal): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    if (signal.aborted) return resolve(EXIT.aborted); // interrupted before the exporter started: nothing to stop
    const child = spawn(python, args, {
      env: { ...env, BLIPDIFF_PARENT_PID: String(process.pid) },
      stdio: ["ignore", "inherit", "inherit"],
      // On Windows `detached` gives the child its own console window; there Ctrl-C goes to the console's processes.
      detached: process.platform !== "win32",
    });
    const running = (): boolean => child.exitCode === null && child.signalCode === null;
    const onAbort = (): void => {
      if (running()) child.kill("SIGINT");
    };
    const onExit = (): void => {
      if (running()) child.kill("SIGTERM");
    };
    const done = (): void => {
      signal.removeEventListener("abort", onAbort);
      process.off("exit", onExit);
    };
    signal.addEventListener("abort", onAbort, { once: true });
    process.on("exit", onExit);
    child.on("error", (err) => {
      done();
      reject(new Error(`cannot run ${python}: ${err.message}`));
    });
    child.on("close", (c, sig) => {
      done();
      resolve(c ?? (sig ? 128 + osConstants.signals[sig] : EXIT.error));
    });
  });
}

export function convertCommand(signal: AbortSignal): Command {
  return new Command("convert")
    .description("export a diffusers BLIP-Diffusion checkpoint (folder or hub id) to a blipdiff model folder")
    .argument("[checkpoint]", "checkpoint folder (save_pretrained layout) or a hub id such as Salesforce/blipdiffusion (optional with --random-weights: the published full-size configs)")
    .requiredOption("--out <dir>", "output model folder")
    .option("--qformer-vocab <file>", "bert-base-uncased vocab.txt when the checkpoint has no qformer_tokenizer/")
    .option("--tokenizer-dir <dir>", "take the CLIP tokenizer from this folder")
    .option("--random-weights", "build the full-size model from the shipped configs with random weights")
    .option("--with-controlnet", "also export the checkpoint's ControlNet")
    .option("--force", "overwrite an existing output folder")
    .addHelpText("after", "\nEnvironment:\n  BLIPDIFF_PYTHON   Python interpreter to use (default <package>/.venv/bin/python)")
    .action(async (checkpoint: string | undefined, f: ConvertFlags) => {
      if (!checkpoint && !f.randomWeights) throw new UsageError("missing <checkpoint> (a folder or hub id; only --random-weights can do without)");
      const python = pythonPath();
      if (!existsSync(python)) throw new Error(`the Python environment is missing (${python}): run \`npm run setup\``);
      const args = ["-m", "blipdiff_export", "convert", ...(checkpoint ? [checkpoint] : []), "--out", f.out];
      if (f.qformerVocab) args.push("--qformer-vocab", f.qformerVocab);
      if (f.tokenizerDir) args.push("--tokenizer-dir", f.tokenizerDir);
      if (f.randomWeights) args.push("--random-weights");
      if (f.withControlnet) args.push("--with-controlnet");
      if (f.force) args.push("--force");
      const models = path.join(packageRoot, "models");
      const env = { ...process.env, PYTHONPATH: process.env.PYTHONPATH ? `${models}${path.delimiter}${process.env.PYTHONPATH}` : models };
      const code = await runExporter(python, args, env, signal);
      if (code !== 0) throw new ChildExit(code);
    });
}
