// blipdiff generate: subject-driven generation, zero-shot or with a fine-tuned subject.
import { Command, Option } from "commander";
import { loadAddon } from "../bindings/index.js";
import { AbortError } from "../errors.js";
import { stdinIsTerminal } from "../image/decode.js";
import { readManifest } from "../pipeline/manifest.js";
import { loadSubjectFile } from "../finetune/file.js";
import { DEFAULTS, SCHEDULERS, parseDType, parseDevice, parseScheduler } from "../pipeline/options.js";
import { resolveDevice } from "../pipeline/pipeline.js";
import { preflightGenerate } from "../pipeline/preflight.js";
import { SUBJECT_CROPS, parseSubjectCrop } from "../pipeline/preprocess.js";
import { UsageError, asUsage } from "./errors.js";
import { planOutput, writeImages } from "./output.js";
import { Progress } from "./progress.js";
import { ENV_HELP, addModelOptions, collect, defaultModelDir, loadPipeline, parseFloatArg, parseIntArg, readPictures } from "./shared.js";

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
  force?: boolean;
  output: string;
}

export function generateCommand(signal: AbortSignal): Command {
  return addModelOptions(new Command("generate"))
    .description("generate images of a subject from a picture of it, its category word and a prompt")
    .requiredOption("-o, --output <file|dir|->", "output file (.png/.jpg/.webp), folder (seed-named PNGs) or - for PNG on stdout")
    .option("--subject-image <file|->", "picture of the subject (- reads stdin); repeat to average several", collect)
    .option("--subject <text>", "category word of the subject in the picture, e.g. dog")
    .option("--target-subject <text>", "category word in the output (default: --subject)")
    .option("--subject-embedding <file>", "a subject saved by `blipdiff encode`, `blipdiff blend` or `blipdiff finetune` (instead of --subject-image; --subject defaults to the file's)")
    .requiredOption("--prompt <text>", "what the subject does, e.g. 'swimming in a pool'")
    .option("--negative-prompt <text>", "negative prompt (used when guidance > 1)", DEFAULTS.negativePrompt)
    .option("--steps <n>", "denoising steps (1-1000)", parseIntArg, DEFAULTS.steps)
    .option("--guidance <g>", "classifier-free guidance scale (<= 1 disables it)", parseFloatArg, DEFAULTS.guidance)
    .option("--seed <n>", "seed of the first image; image i uses seed + i (default: random, printed)", parseIntArg)
    .option("--width <px>", "image width, a multiple of the model's latent scale", parseIntArg, DEFAULTS.width)
    .option("--height <px>", "image height, a multiple of the model's latent scale", parseIntArg, DEFAULTS.height)
    .option("--prompt-strength <s>", "prompt repetition strength", parseFloatArg, DEFAULTS.promptStrength)
    .option("--prompt-reps <n>", "prompt repetitions (int(strength * reps) copies)", parseIntArg, DEFAULTS.promptReps)
    .option("--scheduler <name>", `${SCHEDULERS.join(", ")} (case-insensitive; plms = pndm)`, DEFAULTS.scheduler)
    .option("-n, --n <count>", "number of images", parseIntArg, DEFAULTS.n)
    .addOption(new Option("--subject-crop <mode>", "squash (reference) or center (LAVIS)").choices(SUBJECT_CROPS).default(DEFAULTS.subjectCrop))
    .option("--control-image <file>", "ControlNet condition picture (model exported --with-controlnet)")
    .option("--optimize", "freeze and optimize the modules at load (torch::jit::optimize_for_inference; slower load, see docs/benchmarks.md)")
    .option("--json", "print one JSON document (outputs, seeds, parameters, timings) on stdout")
    .option("-f, --force", "overwrite existing output files (default: refuse, and change nothing)")
    .option("-q, --quiet", "no progress or warnings on stderr (errors still go there)")
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
  if (images.includes("-") && process.stdin.isTTY)
    throw new UsageError(stdinIsTerminal("--subject-image"));
  const device = asUsage(() => parseDevice(f.device));
  const dtype = asUsage(() => parseDType(f.dtype));
  const subjectCrop = asUsage(() => parseSubjectCrop(f.subjectCrop));
  const scheduler = asUsage(() => parseScheduler(f.scheduler));

  // Everything that can be checked without the modules is checked before the (slow) load.
  const modelDir = f.model ?? defaultModelDir();
  const manifest = readManifest(modelDir);
  const embedding = f.subjectEmbedding ? loadSubjectFile(f.subjectEmbedding) : undefined;
  const pre = asUsage(() =>
    preflightGenerate(manifest, {
      ...f,
      scheduler,
      subject: f.subject ?? embedding?.subject,
      subjectEmbedding: embedding,
      embeddingSource: f.subjectEmbedding,
      hasSubjectImage: images.length > 0,
      hasControlImage: f.controlImage !== undefined,
    }),
  );
  const sampling = pre.sampling;
  const plan = planOutput(f.output, { n: sampling.n, seed: sampling.seed, json: f.json === true, force: f.force === true });
  const pictures = await readPictures(images, "subject image");
  const [control] = f.controlImage ? await readPictures([f.controlImage], "control image") : [];
  asUsage(() => resolveDevice(loadAddon(), device, dtype));
  for (const w of pre.warnings) progress.warn(w);
  if (signal.aborted) throw new AbortError();

  const pipe = await loadPipeline(manifest, { device, dtype, verifyChecksums: f.verifyChecksums, optimize: f.optimize === true }, progress, signal);
  try {
    progress.phase(pictures.length > 0 ? "encoding the subject" : "encoding the prompt");
    const res = await pipe.generate({
      ...f,
      ...sampling,
      subject: pre.subject,
      subjectImage: pictures.length > 0 ? pictures : undefined,
      subjectEmbedding: embedding,
      subjectCrop,
      controlImage: control,
      signal,
      onProgress: (p) => progress.step(p, sampling.n),
    });
    if (signal.aborted) throw new AbortError();
    for (const w of res.warnings) progress.warn(w);
    const outputs = await writeImages(plan, res.images, res.parameters, signal);
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
