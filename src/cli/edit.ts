// blipdiff edit: subject-driven prompt-to-prompt editing of a generated source or of a photo.
import { unlinkSync } from "node:fs";
import path from "node:path";
import { Command, Option } from "commander";
import { loadAddon } from "../bindings/index.js";
import { AbortError, messageOf } from "../errors.js";
import { EDIT_CLI_NAMES, EDIT_DEFAULTS } from "../edit/options.js";
import { loadSubjectFile } from "../finetune/file.js";
import { decodeRgb, readSource, stdinIsTerminal, type NamedBytes } from "../image/decode.js";
import { encodeImage, formatFromPath, type ImageFormat } from "../image/encode.js";
import type { NativeImage } from "../bindings/types.js";
import { preflightEdit, type EditParameters } from "../pipeline/edit.js";
import { ATTENTION_CONTROL, readManifest, requireCapability } from "../pipeline/manifest.js";
import { DEFAULTS, parseDType, parseDevice } from "../pipeline/options.js";
import { resolveDevice } from "../pipeline/pipeline.js";
import { SUBJECT_CROPS, parseSubjectCrop } from "../pipeline/preprocess.js";
import { UsageError, asUsage } from "./errors.js";
import { checkOutputFile, writeOutputFile } from "./output.js";
import { Progress } from "./progress.js";
import { ENV_HELP, addModelOptions, collect, defaultModelDir, loadPipeline, parseFloatArg, parseIntArg, readPictures } from "./shared.js";

interface EditFlags {
  model?: string;
  subjectImage?: string[];
  subject?: string;
  subjectEmbedding?: string;
  sourceSubject: string;
  targetSubject?: string;
  prompt: string;
  image?: string;
  steps: number;
  inversionSteps?: number;
  guidance: number;
  negativePrompt: string;
  seed?: number;
  width?: number;
  height?: number;
  crossReplace: number;
  selfReplace: number;
  blendThreshold: number;
  subjectCrop: string;
  device: string;
  dtype: string;
  verifyChecksums: boolean;
  output: string;
  sourceOutput?: string;
  json?: boolean;
  quiet?: boolean;
  force?: boolean;
}

const D = EDIT_DEFAULTS;

export function editCommand(signal: AbortSignal): Command {
  return addModelOptions(new Command("edit"))
    .description("edit a generated or real picture so that its subject becomes yours, keeping the rest (prompt-to-prompt)")
    .requiredOption("-o, --output <file|->", "the edited image (.png/.jpg/.webp), or - for PNG on stdout")
    .option("--source-output <file>", "also write the source image (generated, or the photo as reconstructed)")
    .option("--subject-image <file|->", "picture of your subject (- reads stdin); repeat to average several", collect)
    .option("--subject <text>", "category word of your subject, e.g. dog (required with --subject-image)")
    .option("--subject-embedding <file>", "a subject saved by `blipdiff encode`, `blend` or `finetune` (instead of --subject-image)")
    .requiredOption("--source-subject <text>", "category word of what the source shows, e.g. cat")
    .option("--target-subject <text>", "category word of the edited subject (default: --subject)")
    .requiredOption("--prompt <text>", "the rest of the scene, e.g. 'sitting on a sofa' (source: \"a <source-subject> <prompt>\")")
    .option("--image <file|->", "a photo to edit (resized on its shorter side and centre-cropped to the size, then inverted); default: generate the source from --seed")
    .option("--steps <n>", "editing steps", parseIntArg, D.steps)
    .option("--inversion-steps <n>", "DDIM inversion steps of --image (default: --steps)", parseIntArg)
    .option("--guidance <g>", "classifier-free guidance scale, > 1", parseFloatArg, D.guidance)
    .option("--negative-prompt <text>", "negative prompt", D.negativePrompt)
    .option("--seed <n>", "seed of the generated source (without --image; default: random, printed)", parseIntArg)
    .option("--width <px>", `width, a multiple of the model's latent scale (default: ${D.width}, or the photo's own width rounded down)`, parseIntArg)
    .option("--height <px>", `height, a multiple of the model's latent scale (default: ${D.height}, or the photo's own height rounded down)`, parseIntArg)
    .option("--cross-replace <f>", "fraction of the steps whose cross-attention follows the source, in [0, 1]", parseFloatArg, D.crossReplace)
    .option("--self-replace <f>", "fraction of the steps whose self-attention follows the source, in [0, 1]", parseFloatArg, D.selfReplace)
    .option("--blend-threshold <f>", "LocalBlend threshold: where the source subject's attention map exceeds it, the edit applies, in [0, 1]", parseFloatArg, D.blendThreshold)
    .addOption(new Option("--subject-crop <mode>", "squash (reference) or center (LAVIS) for --subject-image").choices(SUBJECT_CROPS).default(DEFAULTS.subjectCrop))
    .option("--json", "print one JSON document (outputs, seed, parameters, timings) on stdout")
    .option("-f, --force", "overwrite existing output files (default: refuse, and change nothing)")
    .option("-q, --quiet", "no progress or warnings on stderr (errors still go there)")
    .addHelpText("after", ENV_HELP)
    .action(async (f: EditFlags) => runEditCommand(f, signal));
}

/** One line of A1111 parameters text: newlines would start new fields, so they become spaces. */
function oneLine(text: string): string {
  return text.replace(/\s*[\r\n]+\s*/g, " ");
}

/** A1111-style description of an edit (PNG tEXt "parameters"): the image's prompt, then every setting. */
export function editParametersText(p: EditParameters, role: "source" | "edited"): string {
  const lines = [oneLine(role === "edited" ? p.editPrompt : p.sourcePrompt)];
  if (p.negativePrompt) lines.push(`Negative prompt: ${oneLine(p.negativePrompt)}`);
  lines.push(
    [
      `Edit: ${role}`,
      `Steps: ${p.steps}`,
      ...(p.inversionSteps !== undefined ? [`Inversion steps: ${p.inversionSteps}`] : []),
      `Sampler: ${p.scheduler}`,
      `CFG scale: ${p.guidance}`,
      p.seed !== undefined ? `Seed: ${p.seed}` : `Image: ${oneLine(p.image ?? "")}`,
      `Size: ${p.width}x${p.height}`,
      `Subject: ${oneLine(p.subject)}`,
      `Source subject: ${oneLine(p.sourceSubject)}`,
      `Target subject: ${oneLine(p.targetSubject)}`,
      `Cross replace: ${p.crossReplace}`,
      `Self replace: ${p.selfReplace}`,
      `Blend threshold: ${p.blendThreshold}`,
      `Model: ${p.model}`,
    ].join(", "),
  );
  return lines.join("\n");
}

interface Target {
  /** Absolute path, or "-" for stdout. */
  file: string;
  format: ImageFormat;
}

function planTarget(output: string, flag: string, force: boolean): Target {
  if (output === "-") return { file: "-", format: "png" };
  if (/[\\/]$/.test(output)) throw new UsageError(`edit writes one file: give ${flag} a file name ending in .png, .jpg or .webp, not a folder`);
  const file = path.resolve(output);
  const format = asUsage(() => formatFromPath(file));
  checkOutputFile(file, force);
  return { file, format };
}

async function runEditCommand(f: EditFlags, signal: AbortSignal): Promise<void> {
  const progress = new Progress(f.quiet === true);
  const images = f.subjectImage ?? [];
  if (images.length > 0 && f.subjectEmbedding) throw new UsageError("give either --subject-image or --subject-embedding, not both");
  if (images.length === 0 && !f.subjectEmbedding) throw new UsageError("missing --subject-image (or --subject-embedding)");
  if (images.length > 0 && !f.subject) throw new UsageError("--subject is required with --subject-image (the category word, e.g. dog)");
  const stdinUsers = [...images, ...(f.image ? [f.image] : [])].filter((s) => s === "-").length;
  if (stdinUsers > 1) throw new UsageError("only one of --subject-image and --image can read stdin");
  if (stdinUsers > 0 && process.stdin.isTTY) throw new UsageError(stdinIsTerminal(f.image === "-" ? "--image" : "--subject-image"));
  if (f.output === "-" && f.json) throw new UsageError("--json and -o - both write to stdout; pick one");
  if (f.sourceOutput === "-") throw new UsageError("--source-output writes a file: give it a file name (only -o can be -)");
  const force = f.force === true;
  const edited = planTarget(f.output, "--output", force);
  const source = f.sourceOutput === undefined ? undefined : planTarget(f.sourceOutput, "--source-output", force);
  if (source && source.file === edited.file) throw new UsageError("--source-output and --output name the same file");
  const device = asUsage(() => parseDevice(f.device));
  const dtype = asUsage(() => parseDType(f.dtype));
  const subjectCrop = asUsage(() => parseSubjectCrop(f.subjectCrop));

  // Everything that can be checked without the modules is checked before the (slow) load.
  const manifest = readManifest(f.model ?? defaultModelDir());
  requireCapability(manifest, ATTENTION_CONTROL, "edit");
  const embedding = f.subjectEmbedding ? loadSubjectFile(f.subjectEmbedding) : undefined;
  let photo: NamedBytes | undefined;
  let photoSize: { width: number; height: number; name: string } | undefined;
  if (f.image !== undefined) {
    photo = await readSource(f.image, "--image");
    const img = await decodeRgb(photo, { label: "--image" });
    photoSize = { width: img.width, height: img.height, name: photo.name };
  }
  const pre = asUsage(() =>
    preflightEdit(
      manifest,
      {
        ...f,
        subject: f.subject ?? embedding?.subject,
        subjectEmbedding: embedding,
        embeddingSource: f.subjectEmbedding,
        hasSubjectImage: images.length > 0,
        photo: photoSize,
      },
      EDIT_CLI_NAMES,
    ),
  );
  const pictures = await readPictures(images, "subject image");
  asUsage(() => resolveDevice(loadAddon(), device, dtype));
  for (const w of pre.warnings) progress.warn(w);
  if (signal.aborted) throw new AbortError();

  const pipe = await loadPipeline(manifest, { device, dtype, verifyChecksums: f.verifyChecksums }, progress, signal);
  try {
    progress.phase(pictures.length > 0 ? "encoding the subject" : "encoding the prompts");
    const s = pre.settings;
    let res;
    try {
      res = await pipe.edit({
        ...s,
        prompt: f.prompt,
        sourceSubject: f.sourceSubject,
        targetSubject: f.targetSubject,
        negativePrompt: f.negativePrompt,
        subject: pre.subject,
        subjectImage: pictures.length > 0 ? pictures : undefined,
        subjectEmbedding: embedding,
        subjectCrop,
        image: photo,
        signal,
        onProgress: (p) => progress.editStep(p),
      });
    } catch (err) {
      if ((err as { code?: string }).code !== "ERR_BLIPDIFF_OOM") throw err;
      throw new Error(`out of memory while editing on ${pipe.device}: ${messageOf(err).split("\n")[0]}; use a smaller --width/--height, or another --device`);
    }
    if (signal.aborted) throw new AbortError();
    for (const w of res.warnings) progress.warn(w);
    const p = res.parameters;
    const encode = (img: NativeImage, t: Target, role: "source" | "edited"): Promise<Buffer> =>
      encodeImage(img, t.format, { parameters: editParametersText(p, role), json: { ...p, role, generator: "blipdiff" } });
    const editedData = await encode(res.edited, edited, "edited");
    const sourceData = source ? await encode(res.source, source, "source") : undefined;
    if (signal.aborted) throw new AbortError();
    if (edited.file === "-") await new Promise<void>((resolve, reject) => process.stdout.write(editedData, (err) => (err ? reject(err) : resolve())));
    else writeOutputFile(edited.file, editedData, force);
    if (source && sourceData) {
      try {
        writeOutputFile(source.file, sourceData, force);
      } catch (err) {
        // Both or neither: the edited image just written goes too.
        if (edited.file !== "-") unlinkSync(edited.file);
        throw err;
      }
    }
    const what = p.seed !== undefined ? `seed ${p.seed}` : `photo ${p.image}`;
    progress.succeed(`edited "a ${p.sourceSubject} ..." into "a ${p.targetSubject} ...", ${what}`);
    if (f.json) {
      const doc = {
        output: edited.file,
        ...(source ? { sourceOutput: source.file } : {}),
        ...(p.seed !== undefined ? { seed: p.seed } : {}),
        parameters: p,
        timings: res.timings,
        warnings: res.warnings,
      };
      process.stdout.write(`${JSON.stringify(doc, null, 2)}\n`);
    } else if (edited.file !== "-") process.stdout.write([edited.file, ...(source ? [source.file] : [])].map((o) => `${o}\n`).join(""));
  } finally {
    progress.stop();
    await pipe.dispose();
  }
}
