// blipdiff blend: the weighted sum of several subject files (subject interpolation), saved as a subject file for
// `generate --subject-embedding` and `edit --subject-embedding`. Needs no model.
import { Command } from "commander";
import path from "node:path";
import { describe } from "../errors.js";
import { BLEND_MIN_SUBJECTS, blendSubjects, checkBlendRatios, loadBlendInput } from "../pipeline/blend.js";
import { serializeSubjectEmbedding } from "../pipeline/embedding.js";
import { UsageError, asUsage } from "./errors.js";
import { checkOutputFile, writeOutputFile } from "./output.js";
import { Progress } from "./progress.js";

interface BlendFlags {
  subject?: string;
  output: string;
  json?: boolean;
  quiet?: boolean;
  force?: boolean;
}

/** One `FILE:WEIGHT` argument. */
export interface BlendArg {
  file: string;
  ratio: number;
}

const DECIMAL = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i;
const NON_FINITE = /^[+-]?(inf|infinity|nan)$/i;

/**
 * Splits `FILE:WEIGHT` at its last colon (so folders with colons still work). The weight must be a decimal number;
 * its range is checked with the others' by checkBlendRatios. Throws a UsageError.
 */
export function parseBlendArg(arg: string): BlendArg {
  const at = arg.lastIndexOf(":");
  const file = at > 0 ? arg.slice(0, at) : "";
  const weight = at > 0 ? arg.slice(at + 1).trim() : "";
  if (file !== "" && NON_FINITE.test(weight))
    throw new UsageError(`Expected a finite number for the weight of ${file} but received ${JSON.stringify(weight)}`);
  if (file === "" || !DECIMAL.test(weight))
    throw new UsageError(`Expected FILE:WEIGHT with a number as WEIGHT (e.g. dog.safetensors:0.3) for each subject but received ${describe(arg)}`);
  return { file, ratio: Number(weight) };
}

export function blendCommand(): Command {
  return new Command("blend")
    .description("blend subjects: save the weighted sum of subject files (from `blipdiff encode` or an earlier blend)")
    .argument("<file:weight...>", "subject files with their weights, e.g. dog.safetensors:0.3 cat.safetensors:0.7 (at least 2; weights >= 0 summing to 1)")
    .requiredOption("-o, --output <file.safetensors>", "where to write the blended subject")
    .option("--subject <text>", "subject word recorded in the output, generate's default --subject (default: the first file's)")
    .option("--json", "print a JSON document instead of the path")
    .option("-f, --force", "overwrite an existing output file (default: refuse, and change nothing)")
    .option("-q, --quiet", "no progress on stderr (errors still go there)")
    .action((specs: string[], f: BlendFlags) => runBlend(specs, f));
}

function runBlend(specs: string[], f: BlendFlags): void {
  const progress = new Progress(f.quiet === true);
  if (specs.length < BLEND_MIN_SUBJECTS)
    throw new UsageError(
      `blend needs at least ${BLEND_MIN_SUBJECTS} subject files (FILE:WEIGHT each); to use one subject as it is, give its file to generate --subject-embedding`,
    );
  const inputs = specs.map(parseBlendArg);
  const files = inputs.map((a) => a.file);
  const ratios = asUsage(() => checkBlendRatios(inputs.map((a) => a.ratio), files));
  if (f.subject !== undefined && f.subject.trim() === "") throw new UsageError("--subject must not be empty (the category word, e.g. dog)");
  if (f.output === "-") throw new UsageError("blend writes a file: give --output a path ending in .safetensors");
  if (!f.output.toLowerCase().endsWith(".safetensors"))
    throw new UsageError(`Expected a .safetensors file for --output but received ${JSON.stringify(f.output)}`);
  const out = path.resolve(f.output);
  checkOutputFile(out, f.force === true);

  const embeddings = files.map(loadBlendInput);
  const blend = asUsage(() => blendSubjects(embeddings, ratios, { subject: f.subject, names: files }));
  writeOutputFile(out, serializeSubjectEmbedding(blend), f.force === true);
  progress.succeed(`blend of ${files.length} subjects saved (subject "${blend.subject}")`);
  if (f.json) {
    const sources = files.map((file, i) => ({ file: path.resolve(file), subject: embeddings[i].subject, ratio: ratios[i] }));
    process.stdout.write(`${JSON.stringify({ output: out, subject: blend.subject, shape: blend.queryEmbeds.shape, sources }, null, 2)}\n`);
  } else process.stdout.write(`${out}\n`);
}
