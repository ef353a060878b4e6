// blipdiff generate: zero-shot subject-driven generation.
import { Command, Option } from "commander";
import { decodeRgb } from "../image/decode.js";
import { readManifest } from "../pipeline/manifest.js";
import { loadSubjectEmbedding } from "../pipeline/embedding.js";
import { DEFAULTS, SCHEDULERS, parseDType, parseDevice, resolvePrompt, resolveSampling } from "../pipeline/options.js";
import { BlipDiffusionPipeline } from "../pipeline/pipeline.js";
import { SUBJECT_CROPS, parseSubjectCrop } from "../pipeline/preprocess.js";
import { UsageError, asUsage, asUsageAsync } from "./errors.js";
import { planOutput, writeImages } from "./output.js";
import { Progress } from "./progress.js";
import { ENV_HELP, addModelOptions, collect, defaultModelDir, parseFloatArg, parseIntArg } from "./shared.js";

interface GenerateFlags {
  model?: string;
  subjectImage?: string[];
  subject?: string;
  targetSubject?: string;
  prompt: string;
  negativePrompt: string;
  steps: number;
  guidance: number;
  seed?: number;
  width: number;
  height: number;
  promptStrength: number;
  promptReps: number;
  scheduler: string;
  n: number;
  device: string;
  dtype: string;
  subjectCrop: string;
  subjectEmbedding?: string;
  controlImage?: string;
  verifyChecksums: boolean;
  optimize?: boolean;
  json?: boolean;
  quiet?: boolean;
  output: string;
}

export function generateCommand(signal: AbortSignal): Command {
  return addModelOptions(new Command("generate"))
    .description("generate images of a subject from a picture of it, its category word and a prompt")
    .requiredOption("-o, --output <file|dir|->", "output file (.png/.jpg/.webp), folder (seed-named PNGs) or - for PNG on stdout")
    .option("--subject-image <file|->", "picture of the subject (- reads stdin); repeat to average several", collect)
    .option("--subject <text>", "category word of the subject in the picture, e.g. dog")
    .option("--target-subject <text>", "category word in the output (default: --subject)")
    .option("--subject-embedding <file>", "subject embeddings saved by `blipdiff encode` (instead of --subject-image)")
    .requiredOption("--prompt <text>", "what the subject does, e.g. 'swimming in a pool'")
    .option("--negative-prompt <text>", "negative prompt (used when guidance > 1)", DEFAULTS.negativePrompt)
    .option("--steps <n>", "denoising steps (1-1000)", parseIntArg, DEFAULTS.steps)
    .option("--guidance <g>", "classifier-free guidance scale (<= 1 disables it)", parseFloatArg, DEFAULTS.guidance)
    .option("--seed <n>", "seed of the first image; image i uses seed + i (default: random, printed)", parseIntArg)
    .option("--width <px>", "image width, a multiple of the model's latent scale", parseIntArg, DEFAULTS.width)
    .option("--height <px>", "image height, a multiple of the model's latent scale", parseIntArg, DEFAULTS.height)
    .option("--prompt-strength <s>", "prompt repetition strength", parseFloatArg, DEFAULTS.promptStrength)
    .option("--prompt-reps <n>", "prompt repetitions (int(strength * reps) copies)", parseIntArg, DEFAULTS.promptReps)
    .addOption(new Option("--scheduler <name>", "scheduler").choices(SCHEDULERS).default(DEFAULTS.scheduler))
    .option("-n, --n <count>", "number of images", parseIntArg, DEFAULTS.n)
    .addOption(new Option("--subject-crop <mode>", "squash (reference) or center (LAVIS)").choices(SUBJECT_CROPS).default(DEFAULTS.subjectCrop))
    .option("--control-image <file>", "ControlNet condition picture (model exported --with-controlnet)")
    .option("--optimize", "freeze and optimize the modules at load (torch::jit::optimize_for_inference; slower load, see docs/benchmarks.md)")
    .option("--json", "print one JSON document (outputs, seeds, parameters, timings) on stdout")
    .option("-q, --quiet", "no progress on stderr")
    .addHelpText("after", ENV_HELP)
    .action(async (flags: GenerateFlags) => runGenerate(flags, signal));
}

async function runGenerate(f: GenerateFlags, signal: AbortSignal): Promise<void> {
  const progress = new Progress(f.quiet === true);
  const images = f.subjectImage ?? [];
  if (images.length > 0 && f.subjectEmbedding) throw new UsageError("give either --subject-image or --subject-embedding, not both");
  if (images.length === 0 && !f.subjectEmbedding) throw new UsageError("missing --subject-image (or --subject-embedding)");
  if (images.length > 0 && !f.subject) throw new UsageError("--subject is required with --subject-image (the category word, e.g. dog)");
  if (images.filter((s) => s === "-").length > 1) throw new UsageError("only one --subject-image can read stdin");
  const device = asUsage(() => parseDevice(f.device));
  const dtype = asUsage(() => parseDType(f.dtype));
  const subjectCrop = asUsage(() => parseSubjectCrop(f.subjectCrop));

  const modelDir = f.model ?? defaultModelDir();
  const manifest = readManifest(modelDir);
  const sampling = asUsage(() => resolveSampling({ ...f, scheduler: f.scheduler as never }, manifest.spec.latentScale, manifest.spec.scheduler));
  const embedding = f.subjectEmbedding ? loadSubjectEmbedding(f.subjectEmbedding) : undefined;
  const subject = f.subject ?? embedding?.subject ?? "";
  asUsage(() => resolvePrompt(f, subject));
  const plan = planOutput(f.output, sampling.n, f.json === true);
  // Check the pictures before the (slow) model load, so bad input fails fast.
  for (const src of images) await decodeRgb(src, { label: "subject image" });
  if (f.controlImage) await decodeRgb(f.controlImage, { label: "control image" });

  progress.phase("loading the model");
  const pipe = await asUsageAsync(() => BlipDiffusionPipeline.load(modelDir, { device, dtype, verifyChecksums: f.verifyChecksums, optimize: f.optimize === true }));
  try {
    progress.phase("encoding the subject");
    const res = await pipe.generate({
      ...f,
      ...sampling,
      subject,
      subjectImage: images.length > 0 ? images : undefined,
      subjectEmbedding: embedding,
      subjectCrop,
      signal,
      onProgress: (p) => progress.step(p, sampling.n),
    });
    for (const w of res.warnings) progress.warn(w);
    const outputs = await writeImages(plan, res.images, res.parameters);
    progress.succeed(`${outputs.length} image(s), seed${res.seeds.length > 1 ? "s" : ""} ${res.seeds.join(", ")}`);
    if (f.json) {
      const doc = { outputs, seeds: res.seeds, parameters: res.parameters, timings: res.timings, warnings: res.warnings };
      process.stdout.write(`${JSON.stringify(doc, null, 2)}\n`);
    } else if (plan.kind !== "stdout") process.stdout.write(outputs.map((o) => `${o}\n`).join(""));
  } finally {
    progress.stop();
    await pipe.dispose();
  }
}
