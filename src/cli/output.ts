// Where generated images go: a file (name-i.ext when n > 1), a folder (seed-named files) or stdout ("-").
import { accessSync, constants, existsSync, mkdirSync, statSync } from "node:fs";
import path from "node:path";
import { encodeImage, formatFromPath, type ImageFormat } from "../image/encode.js";
import { writeFileAtomic } from "../io/atomic.js";
import type { GeneratedImage, GenerationParameters } from "../pipeline/pipeline.js";
import { AbortError } from "../errors.js";
import { UsageError, asUsage } from "./errors.js";

export interface OutputPlan {
  kind: "file" | "dir" | "stdout";
  /** The file path (file), the folder (dir). */
  target: string;
  format: ImageFormat;
  /** Replace existing files (--force); otherwise an existing output is an error. */
  force: boolean;
}

export interface PlanOptions {
  /** Number of images. */
  n: number;
  /** Seed of image 0 (folder outputs are named by seed). */
  seed: number;
  json: boolean;
  force: boolean;
}

function errnoOf(err: unknown): string {
  return (err as NodeJS.ErrnoException).code ?? String(err);
}

/** The nearest existing ancestor of a path that does not exist (what `mkdir -p` would start from). */
function existingAncestor(p: string): string {
  let dir = p;
  while (!existsSync(dir)) {
    const up = path.dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  return dir;
}

function checkWritableFolder(dir: string, what: string): void {
  if (!statSync(dir).isDirectory()) throw new Error(`cannot write ${what}: ${dir} is not a folder`);
  try {
    accessSync(dir, constants.W_OK);
  } catch {
    throw new Error(`cannot write ${what}: permission denied in ${dir}`);
  }
}

/**
 * Checks one output file before any work: its folder exists and is writable, it is not a folder itself, and it does
 * not exist unless `force` (the no-clobber policy). Nothing is created.
 */
export function checkOutputFile(file: string, force: boolean): void {
  const dir = path.dirname(file);
  if (!existsSync(dir)) throw new Error(`cannot write ${file}: the folder ${dir} does not exist`);
  checkWritableFolder(dir, file);
  if (existsSync(file)) {
    if (statSync(file).isDirectory()) throw new UsageError(`cannot write ${file}: it is a folder`);
    if (!force) throw new Error(`${file} already exists; use --force to overwrite it, or choose another --output`);
  }
}

/** Checks the output location before any work is done, so a bad path fails fast. Creates nothing. */
export function planOutput(output: string, o: PlanOptions): OutputPlan {
  if (output === "-") {
    if (o.n > 1) throw new UsageError("-o - writes one PNG to stdout; use a file or folder with -n > 1");
    if (o.json) throw new UsageError("--json and -o - both write to stdout; pick one");
    return { kind: "stdout", target: "-", format: "png", force: o.force };
  }
  const abs = path.resolve(output);
  const exists = existsSync(abs);
  const isFolder = exists && statSync(abs).isDirectory();
  const slash = /[\\/]$/.test(output);
  const hasImageExt = /\.(png|jpe?g|webp)$/i.test(abs);
  if (isFolder && !slash && hasImageExt)
    throw new UsageError(`${output} is a folder; to write seed-named PNGs into it, end the name with a slash (-o ${output}/)`);
  if (exists && !isFolder && slash) throw new Error(`cannot write to the output folder ${abs}: it is a file`);
  if (isFolder || slash) {
    // The folder is created only when the images are written, so a failed run leaves nothing behind.
    checkWritableFolder(existingAncestor(abs), `to the output folder ${abs}`);
    const plan: OutputPlan = { kind: "dir", target: abs, format: "png", force: o.force };
    if (isFolder) for (let i = 0; i < o.n; i++) checkOutputFile(outputPath(plan, i, o.n, o.seed + i), o.force);
    return plan;
  }
  const format = asUsage(() => formatFromPath(abs));
  const plan: OutputPlan = { kind: "file", target: abs, format, force: o.force };
  for (let i = 0; i < o.n; i++) checkOutputFile(outputPath(plan, i, o.n, o.seed + i), o.force);
  return plan;
}

/** The path of image i. */
export function outputPath(plan: OutputPlan, i: number, n: number, seed: number): string {
  if (plan.kind === "dir") return path.join(plan.target, `${seed}.png`);
  if (n === 1) return plan.target;
  const ext = path.extname(plan.target);
  return `${plan.target.slice(0, plan.target.length - ext.length)}-${i}${ext}`;
}

/** Writes one result file atomically under the plan's overwrite policy, with one-line errors. */
export function writeOutputFile(file: string, data: Uint8Array, force: boolean): void {
  try {
    writeFileAtomic(file, data, { overwrite: force });
  } catch (err) {
    if (errnoOf(err) === "EEXIST") throw new Error(`${file} appeared while blipdiff was working; it was not overwritten (use --force to overwrite)`);
    throw new Error(`cannot write ${file}: ${errnoOf(err)}`);
  }
}

/** One line of A1111 parameters text: newlines would start new fields, so they become spaces. */
function oneLine(text: string): string {
  return text.replace(/\s*[\r\n]+\s*/g, " ");
}

/** A1111-style one-paragraph description (PNG tEXt "parameters"). */
export function parametersText(p: GenerationParameters, seed: number): string {
  const lines = [oneLine(p.prompt)];
  if (p.negativePrompt) lines.push(`Negative prompt: ${oneLine(p.negativePrompt)}`);
  lines.push(
    [
      `Steps: ${p.steps}`,
      `Sampler: ${p.scheduler}`,
      `CFG scale: ${p.guidance}`,
      `Seed: ${seed}`,
      `Size: ${p.width}x${p.height}`,
      `Subject: ${oneLine(p.subject)}`,
      `Target subject: ${oneLine(p.targetSubject)}`,
      `Prompt strength: ${p.promptStrength}`,
      `Prompt reps: ${p.promptReps}`,
      `Model: ${p.model}`,
    ].join(", "),
  );
  return lines.join("\n");
}

/** Encodes and writes every image; returns the written paths ("-" for stdout). Nothing is written once `signal` aborts. */
export async function writeImages(plan: OutputPlan, images: GeneratedImage[], params: GenerationParameters, signal?: AbortSignal): Promise<string[]> {
  const written: string[] = [];
  if (plan.kind === "dir" && !signal?.aborted) {
    try {
      mkdirSync(plan.target, { recursive: true });
    } catch (err) {
      throw new Error(`cannot create the output folder ${plan.target}: ${errnoOf(err)}`);
    }
  }
  for (let i = 0; i < images.length; i++) {
    const img = images[i];
    const meta = { parameters: parametersText(params, img.seed), json: { ...params, seed: img.seed, generator: "blipdiff" } };
    const file = plan.kind === "stdout" ? "-" : outputPath(plan, i, images.length, img.seed);
    const data = await encodeImage(img, plan.kind === "stdout" ? "png" : formatFromPath(file), meta);
    if (signal?.aborted) throw new AbortError();
    if (plan.kind === "stdout") {
      await new Promise<void>((resolve, reject) => process.stdout.write(data, (err) => (err ? reject(err) : resolve())));
    } else writeOutputFile(file, data, plan.force);
    written.push(file);
  }
  return written;
}
