// blipdiff finetune: fine-tunes a subject on a few pictures of it and saves the result for
// `generate --subject-embedding`.
import { readdirSync, statSync } from "node:fs";
import path from "node:path";
import { Command, Option } from "commander";
import { loadAddon } from "../bindings/index.js";
import { AbortError, InputError, messageOf } from "../errors.js";
import { stdinIsTerminal } from "../image/decode.js";
import { saveFinetunedSubject } from "../finetune/file.js";
import { readDrawsFile, type LoadedDraws } from "../finetune/draws.js";
import { CLI_NAMES, FINETUNE_DEFAULTS, FINETUNE_LIMITS, FINETUNE_MODES, SAVE_DTYPES, parseFinetuneMode, parseSaveDType } from "../finetune/options.js";
import { readManifest } from "../pipeline/manifest.js";
import { DEFAULTS, parseDType, parseDevice } from "../pipeline/options.js";
import { preflightFinetune } from "../pipeline/finetune.js";
import { resolveDevice } from "../pipeline/pipeline.js";
import { SUBJECT_CROPS, parseSubjectCrop } from "../pipeline/preprocess.js";
import { UsageError, asUsage } from "./errors.js";
import { checkOutputFile } from "./output.js";
import { Progress, formatLoss } from "./progress.js";
import { ENV_HELP, addModelOptions, collect, defaultModelDir, loadPipeline, parseFloatArg, parseIntArg, readPictures } from "./shared.js";

interface FinetuneFlags {
  model?: string;
  subjectImage: string[];
  subject: string;
  output: string;
  mode: string;
  loraRank?: number;
  steps?: number;
  batchSize?: number;
  lr?: number;
  weightDecay?: number;
  resolution: number;
  subjectCrop: string;
  seed?: number;
  draws?: string;
  saveDtype?: string;
  device: string;
  dtype: string;
  verifyChecksums: boolean;
  json?: boolean;
  quiet?: boolean;
  force?: boolean;
}

const full = FINETUNE_DEFAULTS.full;
const lora = FINETUNE_DEFAULTS.lora;

export function finetuneCommand(signal: AbortSignal): Command {
  return addModelOptions(new Command("finetune"))
    .description("fine-tune a subject on a few pictures of it; `generate --subject-embedding` takes the result")
    .requiredOption("--subject-image <file|dir|->", "picture of the subject, or a folder of them (every jpg, jpeg, png, webp); repeat for more", collect)
    .requiredOption("--subject <text>", "category word of the subject, e.g. dog (the caption is \"a <subject>\")")
    .requiredOption("-o, --output <file.safetensors>", "where to write the fine-tuned subject")
    .addOption(new Option("--mode <mode>", "full: the whole UNet and the embedding (LAVIS); lora: LoRA adapters and the embedding (a file of a few MB)").choices(FINETUNE_MODES).default(FINETUNE_DEFAULTS.mode))
    .option("--lora-rank <n>", `LoRA rank, up to the model's narrowest attention width (default ${lora.rank})`, parseIntArg)
    .option("--steps <n>", `optimizer steps, 1-${FINETUNE_LIMITS.maxSteps} (default ${full.steps} full, ${lora.steps} lora; with --draws, the file's)`, parseIntArg)
    .option("--batch-size <n>", `pictures per step, 1-${FINETUNE_LIMITS.maxBatchSize} (default ${full.batchSize}; with --draws, the file's)`, parseIntArg)
    .option("--lr <x>", `AdamW learning rate, in (0, ${FINETUNE_LIMITS.maxLr}] (default ${full.lr.toExponential()} full, ${lora.lr.toExponential()} lora)`, parseFloatArg)
    .option("--weight-decay <x>", `AdamW weight decay, in [0, ${FINETUNE_LIMITS.maxWeightDecay}) (default ${full.weightDecay})`, parseFloatArg)
    .option("--resolution <px>", "side of the square training pictures, a multiple of the model's latent scale", parseIntArg, FINETUNE_DEFAULTS.resolution)
    .addOption(new Option("--subject-crop <mode>", "subject preprocessing of the initial embedding: squash (reference) or center (LAVIS)").choices(SUBJECT_CROPS).default(DEFAULTS.subjectCrop))
    .option("--seed <n>", "seed of every random draw (default: random, printed); two CPU runs with one seed write identical files", parseIntArg)
    .option("--draws <file.safetensors>", "replay explicit draws instead of the seed's: index and timesteps [steps, batch] int64, eps_vae and noise [steps, batch, C, h, w] float32, optionally unet.<module>.lora.down.weight")
    .addOption(new Option("--save-dtype <dtype>", `dtype of the saved UNet tensors (default ${full.saveDtype} full, ${lora.saveDtype} lora)`).choices(SAVE_DTYPES))
    .option("--json", "print one JSON document (output, losses, parameters, timings) on stdout")
    .option("-f, --force", "overwrite an existing output file (default: refuse, and change nothing)")
    .option("-q, --quiet", "no progress or warnings on stderr (errors still go there)")
    .addHelpText("after", ENV_HELP)
    .action(async (f: FinetuneFlags) => runFinetuneCommand(f, signal));
}

const PICTURE = /\.(jpe?g|png|webp)$/i;

/** Each --subject-image as given, a folder replaced by its pictures (sorted by name); an empty folder is an error. */
export function expandPictureArgs(args: string[]): string[] {
  const out: string[] = [];
  for (const a of args) {
    let isDir = false;
    try {
      isDir = a !== "-" && statSync(a).isDirectory();
    } catch {
      // Not there or unreadable: readPictures says which, with the usual message.
    }
    if (!isDir) {
      out.push(a);
      continue;
    }
    let names: string[];
    try {
      names = readdirSync(a, { withFileTypes: true })
        .filter((e) => !e.isDirectory() && PICTURE.test(e.name))
        .map((e) => e.name)
        .sort();
    } catch (err) {
      throw new InputError(`subject image: cannot list the folder ${a}: ${messageOf(err)}`);
    }
    if (names.length === 0) throw new InputError(`subject image: the folder ${a} has no jpg, jpeg, png or webp pictures`);
    out.push(...names.map((n) => path.join(a, n)));
  }
  return out;
}

/** The one-line error for an out-of-memory rejection (ERR_BLIPDIFF_OOM): what ran out, and the options that use less. */
export function outOfMemory(err: unknown, s: { mode: string; batchSize: number; resolution: number }, device: string): Error {
  const fewer = [`--batch-size (now ${s.batchSize})`, `--resolution (now ${s.resolution})`];
  const hint = `lower ${fewer.join(" or ")}${s.mode === "full" ? ", use --mode lora" : ""}, or use another --device`;
  const e = new Error(`out of memory while fine-tuning on ${device}: ${messageOf(err).split("\n")[0]}; to use less memory ${hint}`);
  (e as { code?: string }).code = "ERR_BLIPDIFF_OOM";
  return e;
}

async function runFinetuneCommand(f: FinetuneFlags, signal: AbortSignal): Promise<void> {
  const progress = new Progress(f.quiet === true);
  if (f.subjectImage.filter((s) => s === "-").length > 1) throw new UsageError("only one --subject-image can read stdin");
  if (f.subjectImage.includes("-") && process.stdin.isTTY) throw new UsageError(stdinIsTerminal("--subject-image"));
  if (f.output === "-") throw new UsageError("finetune writes a file: give --output a path ending in .safetensors");
  if (!f.output.toLowerCase().endsWith(".safetensors"))
    throw new UsageError(`Expected a .safetensors file for --output but received ${JSON.stringify(f.output)}`);
  if (f.subject.trim() === "") throw new UsageError("--subject must not be empty (the category word, e.g. dog)");
  const device = asUsage(() => parseDevice(f.device));
  const dtype = asUsage(() => parseDType(f.dtype));
  const crop = asUsage(() => parseSubjectCrop(f.subjectCrop));
  const mode = asUsage(() => parseFinetuneMode(f.mode, "--mode"));
  const saveDtype = f.saveDtype === undefined ? undefined : asUsage(() => parseSaveDType(f.saveDtype, "--save-dtype"));

  // Everything that can be checked without the modules is checked before the (slow) load.
  const manifest = readManifest(f.model ?? defaultModelDir());
  const sources = expandPictureArgs(f.subjectImage);
  const loaded: LoadedDraws | undefined = f.draws ? readDrawsFile(f.draws) : undefined;
  const pre = asUsage(() =>
    preflightFinetune(
      manifest,
      {
        mode,
        steps: f.steps,
        batchSize: f.batchSize,
        lr: f.lr,
        weightDecay: f.weightDecay,
        loraRank: f.loraRank,
        resolution: f.resolution,
        seed: f.seed,
        saveDtype,
        subject: f.subject,
        numPictures: sources.length,
        draws: loaded?.draws,
        drawsIndexShape: loaded ? [loaded.steps, loaded.batchSize] : undefined,
      },
      CLI_NAMES,
      { steps: "--steps", batchSize: "--batch-size", resolution: "--resolution", loraRank: "--lora-rank", source: `--draws ${f.draws}: ` },
    ),
  );
  const s = pre.settings;
  const out = path.resolve(f.output);
  checkOutputFile(out, f.force === true);
  const pictures = await readPictures(sources, "subject image");
  asUsage(() => resolveDevice(loadAddon(), device, dtype));
  if (signal.aborted) throw new AbortError();

  const pipe = await loadPipeline(manifest, { device, dtype, verifyChecksums: f.verifyChecksums }, progress, signal);
  try {
    progress.phase(`encoding the subject (${pictures.length} picture${pictures.length > 1 ? "s" : ""})`);
    let res;
    try {
      res = await pipe.finetune({ ...s, subject: f.subject, images: pictures, subjectCrop: crop, draws: pre.draws, signal, onProgress: (p) => progress.trainStep(p) });
    } catch (err) {
      throw (err as { code?: string }).code === "ERR_BLIPDIFF_OOM" ? outOfMemory(err, s, pipe.device) : err;
    }
    for (const w of res.warnings) progress.warn(w);
    if (signal.aborted) throw new AbortError();
    try {
      saveFinetunedSubject(out, res.embedding, { overwrite: f.force === true });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "EEXIST") throw new Error(`${out} appeared while blipdiff was working; it was not overwritten (use --force to overwrite)`);
      throw new Error(`cannot write ${out}: ${code ?? messageOf(err)}`);
    }
    const first = res.losses[0];
    const last = res.losses[res.losses.length - 1];
    progress.succeed(`fine-tuned "${f.subject}" (${s.mode}, ${s.steps} steps, seed ${s.seed}): loss ${formatLoss(first)} -> ${formatLoss(last)}, saved`);
    if (f.json) {
      const doc = { output: out, mode: s.mode, subject: f.subject, sourceImages: res.embedding.sourceImages, losses: res.losses, parameters: res.parameters, timings: res.timings, bytes: statSync(out).size, warnings: res.warnings };
      process.stdout.write(`${JSON.stringify(doc, null, 2)}\n`);
    } else process.stdout.write(`${out}\n`);
  } finally {
    progress.stop();
    await pipe.dispose();
  }
}
