// Where generated images go: a file (name-i.ext when n > 1), a folder (seed-named files) or stdout ("-").
import { accessSync, constants, existsSync, mkdirSync, statSync } from "node:fs";
import path from "node:path";
import { encodeImage, formatFromPath, writeFileAtomic, type ImageFormat } from "../image/encode.js";
import type { GeneratedImage, GenerationParameters } from "../pipeline/pipeline.js";
import { UsageError, asUsage } from "./errors.js";

export interface OutputPlan {
  kind: "file" | "dir" | "stdout";
  /** The file path (file), the folder (dir). */
  target: string;
  format: ImageFormat;
}

/** Checks the output location before any work is done, so a bad path fails fast. */
export function planOutput(output: string, n: number, json: boolean): OutputPlan {
  if (output === "-") {
    if (n > 1) throw new UsageError("-o - writes one PNG to stdout; use a file or folder with -n > 1");
    if (json) throw new UsageError("--json and -o - both write to stdout; pick one");
    return { kind: "stdout", target: "-", format: "png" };
  }
  const abs = path.resolve(output);
  const isDir = (existsSync(abs) && statSync(abs).isDirectory()) || /[\\/]$/.test(output);
  if (isDir) {
    try {
      mkdirSync(abs, { recursive: true });
      accessSync(abs, constants.W_OK);
    } catch (err) {
      throw new Error(`cannot write to the output folder ${abs}: ${(err as NodeJS.ErrnoException).code ?? err}`);
    }
    return { kind: "dir", target: abs, format: "png" };
  }
  const format = asUsage(() => formatFromPath(abs));
  const dir = path.dirname(abs);
  if (!existsSync(dir)) throw new Error(`cannot write ${abs}: the folder ${dir} does not exist`);
  if (!statSync(dir).isDirectory()) throw new Error(`cannot write ${abs}: ${dir} is not a folder`);
  try {
    accessSync(dir, constants.W_OK);
  } catch {
    throw new Error(`cannot write ${abs}: permission denied`);
  }
  return { kind: "file", target: abs, format };
}

/** The path of image i. */
export function outputPath(plan: OutputPlan, i: number, n: number, seed: number): string {
  if (plan.kind === "dir") return path.join(plan.target, `${seed}.png`);
  if (n === 1) return plan.target;
  const ext = path.extname(plan.target);
  return `${plan.target.slice(0, plan.target.length - ext.length)}-${i}${ext}`;
}

/** A1111-style one-paragraph description (PNG tEXt "parameters"). */
export function parametersText(p: GenerationParameters, seed: number): string {
  const lines = [p.prompt];
  if (p.negativePrompt) lines.push(`Negative prompt: ${p.negativePrompt}`);
  lines.push(
    [
      `Steps: ${p.steps}`,
      `Sampler: ${p.scheduler}`,
      `CFG scale: ${p.guidance}`,
      `Seed: ${seed}`,
      `Size: ${p.width}x${p.height}`,
      `Subject: ${p.subject}`,
      `Target subject: ${p.targetSubject}`,
      `Prompt strength: ${p.promptStrength}`,
      `Prompt reps: ${p.promptReps}`,
      `Model: ${p.model}`,
    ].join(", "),
  );
  return lines.join("\n");
}

/** Encodes and writes every image; returns the written paths ("-" for stdout). */
export async function writeImages(plan: OutputPlan, images: GeneratedImage[], params: GenerationParameters): Promise<string[]> {
  const written: string[] = [];
  for (let i = 0; i < images.length; i++) {
    const img = images[i];
    const meta = { parameters: parametersText(params, img.seed), json: { ...params, seed: img.seed, generator: "blipdiff" } };
    const file = plan.kind === "stdout" ? "-" : outputPath(plan, i, images.length, img.seed);
    const data = await encodeImage(img, plan.kind === "stdout" ? "png" : formatFromPath(file), meta);
    if (plan.kind === "stdout") {
      await new Promise<void>((resolve, reject) => process.stdout.write(data, (err) => (err ? reject(err) : resolve())));
    } else {
      try {
        writeFileAtomic(file, data);
      } catch (err) {
        throw new Error(`cannot write ${file}: ${(err as NodeJS.ErrnoException).code ?? err}`);
      }
    }
    written.push(file);
  }
  return written;
}
