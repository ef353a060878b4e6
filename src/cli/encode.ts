// blipdiff encode: subject embeddings of one or more pictures, saved for `generate --subject-embedding`.
import { Command, Option } from "commander";
import path from "node:path";
import { loadAddon } from "../bindings/index.js";
import { AbortError } from "../errors.js";
import { stdinIsTerminal } from "../image/decode.js";
import { serializeSubjectEmbedding } from "../pipeline/embedding.js";
import { readManifest } from "../pipeline/manifest.js";
import { DEFAULTS, parseDType, parseDevice } from "../pipeline/options.js";
import { resolveDevice } from "../pipeline/pipeline.js";
import { checkSubjectText } from "../pipeline/preflight.js";
import { SUBJECT_CROPS, parseSubjectCrop } from "../pipeline/preprocess.js";
import { UsageError, asUsage } from "./errors.js";
import { checkOutputFile, writeOutputFile } from "./output.js";
import { Progress } from "./progress.js";
import { ENV_HELP, addModelOptions, collect, defaultModelDir, loadPipeline, readPictures } from "./shared.js";

interface EncodeFlags {
  model?: string;
  subjectImage: string[];
  subject: string;
  output: string;
  device: string;
  dtype: string;
  subjectCrop: string;
  verifyChecksums: boolean;
  json?: boolean;
  quiet?: boolean;
  force?: boolean;
}

export function encodeCommand(signal: AbortSignal): Command {
  return addModelOptions(new Command("encode"))
    .description("save the subject embeddings of one or more pictures (several are averaged)")
    .requiredOption("--subject-image <file|->", "picture of the subject; repeat to average several", collect)
    .requiredOption("--subject <text>", "category word of the subject, e.g. dog")
    .requiredOption("-o, --output <file.safetensors>", "where to write the embeddings")
    .addOption(new Option("--subject-crop <mode>", "squash (reference) or center (LAVIS)").choices(SUBJECT_CROPS).default(DEFAULTS.subjectCrop))
    .option("--json", "print a JSON document instead of the path")
    .option("-f, --force", "overwrite an existing output file (default: refuse, and change nothing)")
    .option("-q, --quiet", "no progress or warnings on stderr (errors still go there)")
    .addHelpText("after", ENV_HELP)
    .action(async (f: EncodeFlags) => runEncode(f, signal));
}

async function runEncode(f: EncodeFlags, signal: AbortSignal): Promise<void> {
  const progress = new Progress(f.quiet === true);
  if (f.subjectImage.filter((s) => s === "-").length > 1) throw new UsageError("only one --subject-image can read stdin");
  if (f.subjectImage.includes("-") && process.stdin.isTTY)
    throw new UsageError(stdinIsTerminal("--subject-image"));
  if (f.output === "-") throw new UsageError("encode writes a file: give --output a path ending in .safetensors");
  if (!f.output.toLowerCase().endsWith(".safetensors"))
    throw new UsageError(`Expected a .safetensors file for --output but received ${JSON.stringify(f.output)}`);
  const device = asUsage(() => parseDevice(f.device));
  const dtype = asUsage(() => parseDType(f.dtype));
  const crop = asUsage(() => parseSubjectCrop(f.subjectCrop));
  if (f.subject.trim() === "") throw new UsageError("--subject must not be empty (the category word, e.g. dog)");
  const out = path.resolve(f.output);
  checkOutputFile(out, f.force === true);
  const manifest = readManifest(f.model ?? defaultModelDir());
  asUsage(() => checkSubjectText(manifest, f.subject));
  const pictures = await readPictures(f.subjectImage, "subject image");
  asUsage(() => resolveDevice(loadAddon(), device, dtype));
  if (signal.aborted) throw new AbortError();

  const pipe = await loadPipeline(manifest, { device, dtype, verifyChecksums: f.verifyChecksums, subjectOnly: true }, progress, signal);
  try {
    progress.phase("encoding the subject");
    const emb = await pipe.encodeSubject({ images: pictures, subject: f.subject, crop, signal });
    if (signal.aborted) throw new AbortError();
    writeOutputFile(out, serializeSubjectEmbedding(emb), f.force === true);
    progress.succeed(`subject embeddings of ${emb.sourceImages.length} picture(s) saved`);
    if (f.json) process.stdout.write(`${JSON.stringify({ output: out, subject: emb.subject, sourceImages: emb.sourceImages, shape: emb.queryEmbeds.shape }, null, 2)}\n`);
    else process.stdout.write(`${out}\n`);
  } finally {
    progress.stop();
    await pipe.dispose();
  }
}
