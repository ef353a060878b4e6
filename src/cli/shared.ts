// Helpers shared by the commands: option parsers, the default model folder, environment defaults.
import { type Command, InvalidArgumentError } from "commander";
import os from "node:os";
import path from "node:path";
import { decodeRgb, readSource, type NamedBytes } from "../image/decode.js";
import type { ModelManifest } from "../pipeline/manifest.js";
import { DEFAULTS } from "../pipeline/options.js";
import { BlipDiffusionPipeline, type LoadOptions } from "../pipeline/pipeline.js";
import { asUsageAsync } from "./errors.js";
import type { Progress } from "./progress.js";

/** The model folder used when --model is not given: $BLIPDIFF_MODEL, else ~/.cache/blipdiff/models/blipdiffusion. */
export function defaultModelDir(): string {
  if (process.env.BLIPDIFF_MODEL) return process.env.BLIPDIFF_MODEL;
  const cache = process.env.XDG_CACHE_HOME || path.join(os.homedir(), ".cache");
  return path.join(cache, "blipdiff", "models", "blipdiffusion");
}

export const ENV_HELP = `
Environment:
  BLIPDIFF_MODEL    default for --model (else ${path.join("~", ".cache", "blipdiff", "models", "blipdiffusion")})
  BLIPDIFF_DEVICE   default for --device (auto, cpu, cuda, cuda:N)
  BLIPDIFF_DTYPE    default for --dtype (auto, float32, float16, bfloat16)
  BLIPDIFF_ADDON    path of the native addon (default native/build/Release/blipdiff.node)
  CI                plain progress lines instead of a spinner`;

export function parseIntArg(value: string): number {
  if (!/^[+-]?\d+$/.test(value.trim())) throw new InvalidArgumentError("Expected an integer.");
  const n = Number(value);
  if (!Number.isSafeInteger(n)) throw new InvalidArgumentError("Expected an integer below 2^53.");
  return n;
}

export function parseFloatArg(value: string): number {
  const n = Number(value);
  if (value.trim() === "" || !Number.isFinite(n)) throw new InvalidArgumentError("Expected a number.");
  return n;
}

export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/** The options of every command that loads a model: --model, --device, --dtype, --no-verify-checksums. */
export function addModelOptions(cmd: Command): Command {
  return cmd
    .option("--model <dir>", "exported model folder (blipdiff convert) (default: $BLIPDIFF_MODEL, else ~/.cache/blipdiff/models/blipdiffusion)")
    .option("--device <device>", "auto, cpu, cuda or cuda:N (env BLIPDIFF_DEVICE)", process.env.BLIPDIFF_DEVICE ?? DEFAULTS.device)
    .option("--dtype <dtype>", "auto, float32, float16 or bfloat16 (env BLIPDIFF_DTYPE)", process.env.BLIPDIFF_DTYPE ?? DEFAULTS.dtype)
    .option("--no-verify-checksums", "skip the sha256 check of the module files");
}

/** Reads each picture once (stdin, a FIFO) and checks that it decodes; the pipeline decodes the same bytes later. */
export async function readPictures(sources: string[], label: string): Promise<NamedBytes[]> {
  const pictures: NamedBytes[] = [];
  for (const src of sources) {
    const bytes = await readSource(src, label);
    await decodeRgb(bytes, { label });
    pictures.push(bytes);
  }
  return pictures;
}

/** The model load of every command: progress, Ctrl-C and libtorch's warnings wired to the CLI. */
export function loadPipeline(
  manifest: ModelManifest,
  options: LoadOptions,
  progress: Progress,
  signal: AbortSignal,
): Promise<BlipDiffusionPipeline> {
  progress.phase("loading the model");
  return asUsageAsync(() => BlipDiffusionPipeline.load(manifest, { ...options, signal, onWarning: (w) => progress.warn(w) }));
}
