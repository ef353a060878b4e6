// blipdiff encode: subject embeddings of one or more pictures, saved for `generate --subject-embedding`.
import { Command, Option } from "commander";
import path from "node:path";
import { decodeRgb } from "../image/decode.js";
import { saveSubjectEmbedding } from "../pipeline/embedding.js";
import { readManifest } from "../pipeline/manifest.js";
import { DEFAULTS, parseDType, parseDevice } from "../pipeline/options.js";
import { BlipDiffusionPipeline } from "../pipeline/pipeline.js";
import { SUBJECT_CROPS, parseSubjectCrop } from "../pipeline/preprocess.js";
import { UsageError, asUsage, asUsageAsync } from "./errors.js";
import { Progress } from "./progress.js";
import { ENV_HELP, addModelOptions, collect, defaultModelDir } from "./shared.js";
import { accessSync, constants, existsSync } from "node:fs";

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
}

export function encodeCommand(): Command {
  return addModelOptions(new Command("encode"))
    .description("save the subject embeddings of one or more pictures (several are averaged)")
    .requiredOption("--subject-image <file|->", "picture of the subject; repeat to average several", collect)
    .requiredOption("--subject <text>", "category word of the subject, e.g. dog")
    .requiredOption("-o, --output <file.safetensors>", "where to write the embeddings")
    .addOption(new Option("--subject-crop <mode>", "squash (reference) or center (LAVIS)").choices(SUBJECT_CROPS).default(DEFAULTS.subjectCrop))
    .option("--json", "print a JSON document instead of the path")
    .option("-q, --quiet", "no progress on stderr")
    .addHelpText("after", ENV_HELP)
    .action(async (f: EncodeFlags) => {
      const progress = new Progress(f.quiet === true);
      if (f.subjectImage.filter((s) => s === "-").length > 1) throw new UsageError("only one --subject-image can read stdin");
      if (!f.output.toLowerCase().endsWith(".safetensors")) throw new UsageError(`Expected a .safetensors file for --output but received ${JSON.stringify(f.output)}`);
      const device = asUsage(() => parseDevice(f.device));
      const dtype = asUsage(() => parseDType(f.dtype));
      const crop = asUsage(() => parseSubjectCrop(f.subjectCrop));
      const out = path.resolve(f.output);
      if (!existsSync(path.dirname(out))) throw new Error(`cannot write ${out}: the folder ${path.dirname(out)} does not exist`);
      try {
        accessSync(path.dirname(out), constants.W_OK);
      } catch {
        throw new Error(`cannot write ${out}: permission denied`);
      }
      const modelDir = f.model ?? defaultModelDir();
      readManifest(modelDir);
      for (const src of f.subjectImage) await decodeRgb(src, { label: "subject image" });
      progress.phase("loading the model");
      const pipe = await asUsageAsync(() => BlipDiffusionPipeline.load(modelDir, { device, dtype, verifyChecksums: f.verifyChecksums, subjectOnly: true }));
      try {
        progress.phase("encoding the subject");
        const emb = await pipe.encodeSubject({ images: f.subjectImage, subject: f.subject, crop });
        saveSubjectEmbedding(out, emb);
        progress.succeed(`subject embeddings of ${emb.sourceImages.length} picture(s) saved`);
        if (f.json) process.stdout.write(`${JSON.stringify({ output: out, subject: emb.subject, sourceImages: emb.sourceImages, shape: emb.queryEmbeds.shape }, null, 2)}\n`);
        else process.stdout.write(`${out}\n`);
      } finally {
        progress.stop();
        await pipe.dispose();
      }
    });
}
