// blipdiff convert: runs the Python exporter (models/blipdiff_export) in the project venv.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { Command } from "commander";
import { packageRoot } from "../bindings/index.js";
import { UsageError } from "./errors.js";

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
      const code = await new Promise<number>((resolve, reject) => {
        const child = spawn(python, args, { env, stdio: ["ignore", "inherit", "inherit"] });
        const onAbort = (): void => void child.kill("SIGINT");
        signal.addEventListener("abort", onAbort, { once: true });
        child.on("error", (err) => reject(new Error(`cannot run ${python}: ${err.message}`)));
        child.on("close", (c, sig) => {
          signal.removeEventListener("abort", onAbort);
          resolve(c ?? (sig === "SIGINT" ? 130 : 1));
        });
      });
      if (code !== 0) throw new ChildExit(code);
    });
}
