// Subject interpolation (edit.json spec section 11; LAVIS forward_ctx_embeddings with `ratio`): the weighted sum
// of several subjects' Q-Former embeddings, e = sum_i r_i * e_i, in float32 as torch computes it. The result is an
// ordinary subject embedding (the `encode` format) that generation and editing take as they are.
import path from "node:path";
import { InputError, describe, invalid } from "../errors.js";
import { FINETUNE_FORMAT } from "../finetune/file.js";
import { SafetensorsError, SafetensorsReader, firstNonFinite } from "../io/safetensors.js";
import { loadSubjectEmbedding, unreadableSubjectFile, type BlendComponent, type SubjectEmbedding } from "./embedding.js";

/**
 * How far the weights may sum from 1. The weights are decimals typed by people: thirds written to six places
 * (0.333333 x 3 = 0.999999) pass, 0.3 + 0.6 does not. LAVIS asserts an exact sum of 1, which decimal weights
 * other than halves and quarters rarely give in binary.
 */
export const BLEND_RATIO_TOLERANCE = 1e-6;
/** The fewest subjects a blend takes: a single one with weight 1 is the input itself, so it is refused. */
export const BLEND_MIN_SUBJECTS = 2;

/** The sum as a person reads it ("0.3 + 0.6 = 0.9"), at most 12 significant digits. */
function sumText(ratios: number[], sum: number): string {
  const short = (x: number): string => String(Number(x.toPrecision(12)));
  return `${ratios.map(short).join(" + ")} = ${short(sum)}`;
}

/**
 * Checks blend weights: at least {@link BLEND_MIN_SUBJECTS}, each a finite number >= 0 (0 is allowed: the endpoints
 * of an interpolation sweep), summing to 1 within {@link BLEND_RATIO_TOLERANCE}. `names` label each weight in the
 * messages. Throws a TypeError or RangeError (the CLI's usage errors).
 */
export function checkBlendRatios(ratios: readonly unknown[], names?: readonly string[]): number[] {
  if (!Array.isArray(ratios)) throw invalid("an array of numbers", "ratios", ratios, "type");
  if (ratios.length < BLEND_MIN_SUBJECTS)
    throw invalid(`at least ${BLEND_MIN_SUBJECTS} weights (one per subject; a single subject needs no blend)`, "ratios", ratios);
  ratios.forEach((r, i) => {
    const name = `the weight of ${names?.[i] ?? `subject ${i + 1}`}`;
    if (typeof r !== "number") throw invalid("a number", name, r, "type");
    if (!Number.isFinite(r)) throw invalid("a finite number", name, r);
    if (r < 0) throw invalid("a number >= 0", name, r);
  });
  const nums = ratios as number[];
  const sum = nums.reduce((a, b) => a + b, 0);
  // The slack absorbs the double rounding of the sum itself, so 0.333333 x 3 is not refused by 3e-17.
  if (!(Math.abs(sum - 1) <= BLEND_RATIO_TOLERANCE * (1 + 1e-9)))
    throw new RangeError(`Expected weights that sum to 1 (within ${BLEND_RATIO_TOLERANCE.toExponential()}) but received ${sumText(nums, sum)}`);
  return nums;
}

export interface BlendOptions {
  /** The subject word recorded in the result (generate's default `--subject`). Defaults to the first input's. */
  subject?: string;
  /** Names of the inputs for messages and the recorded provenance (file paths: their base names are recorded). Defaults to `embeddings[i]`. */
  names?: string[];
}

/**
 * Fine-tuned subjects are refused: their UNet weights were trained together with their own embedding, and neither
 * LAVIS nor the paper blends UNets (averaging full fine-tunes or summing LoRA updates would be a new method).
 */
function fineTunedInput(name: string): InputError {
  return new InputError(
    `${name} is a fine-tuned subject (blipdiff finetune): its UNet weights belong to its own embedding and blending fine-tuned UNets is not defined by the method; blend subjects made with \`blipdiff encode\``,
  );
}

const short = (sha: string): string => sha.slice(0, 12);

/**
 * The blend of subject embeddings: ctx = 0; ctx += r_i * e_i for each input in order, every product and sum rounded
 * to float32 with r_i as float32 (what torch does with a Python float times a float32 tensor). Refuses fine-tuned
 * subjects, inputs of different shapes or from different Q-Formers (or without a recorded Q-Former), non-finite
 * values (InputError), and weights {@link checkBlendRatios} refuses (TypeError/RangeError). Pure: reads no file.
 */
export function blendSubjects(embeddings: readonly SubjectEmbedding[], ratios: readonly number[], options: BlendOptions = {}): SubjectEmbedding {
  if (!Array.isArray(embeddings as unknown)) throw invalid("an array of subject embeddings", "embeddings", embeddings, "type");
  const names = embeddings.map((_, i) => options.names?.[i] ?? `embeddings[${i}]`);
  if (ratios.length !== embeddings.length)
    throw invalid(`one weight per subject embedding (${embeddings.length})`, "ratios", ratios);
  const weights = checkBlendRatios(ratios, names);
  const subject = options.subject ?? embeddings[0].subject;
  if (typeof subject !== "string" || subject.trim() === "") throw invalid("a non-empty subject word", "subject", subject, "type");

  const first = embeddings[0];
  embeddings.forEach((e, i) => {
    const name = names[i];
    if (e.finetune) throw fineTunedInput(name);
    const s: unknown = e.queryEmbeds.shape;
    if (!Array.isArray(s) || s.length !== 3 || s[0] !== 1 || s.some((d) => !Number.isInteger(d) || d < 1))
      throw new InputError(`${name} has shape ${Array.isArray(s) ? `[${s.join(", ")}]` : describe(s)}, expected [1, Q, D]; make it again with \`blipdiff encode\``);
  });
  const shape = first.queryEmbeds.shape;
  const size = shape.reduce((a, b) => a * b, 1);
  embeddings.forEach((e, i) => {
    const name = names[i];
    const s = e.queryEmbeds.shape;
    if (s.some((d, k) => d !== shape[k]))
      throw new InputError(`${name} has shape [${s.join(", ")}] but ${names[0]} has [${shape.join(", ")}]; blend subjects encoded with the same model`);
    if (e.queryEmbeds.data.length !== size)
      throw new InputError(`${name} holds ${e.queryEmbeds.data.length} values, its shape [${s.join(", ")}] needs ${size}; make it again with \`blipdiff encode\``);
    const at = firstNonFinite(e.queryEmbeds.data);
    if (at >= 0) throw new InputError(`${name} contains non-finite values (${e.queryEmbeds.data[at]} at index ${at}); make it again with \`blipdiff encode\``);
  });
  const sha = first.model.qformerSha256;
  embeddings.forEach((e, i) => {
    const mine = e.model.qformerSha256;
    if (typeof mine !== "string" || mine === "")
      throw new InputError(
        `${names[i]} does not record the Q-Former that made it (model.qformerSha256), so it cannot be checked against the others; make it again with \`blipdiff encode\``,
      );
    if (mine.toLowerCase() !== (sha as string).toLowerCase())
      throw new InputError(
        `${names[i]} was made with Q-Former sha256 ${short(mine)} but ${names[0]} with ${short(sha as string)}; blend subjects encoded with the same model`,
      );
  });

  const out = new Float32Array(size);
  embeddings.forEach((e, i) => {
    const r = Math.fround(weights[i]);
    const d = e.queryEmbeds.data;
    for (let j = 0; j < size; j++) out[j] = Math.fround(out[j] + Math.fround(r * d[j]));
  });
  // Weights >= 0 summing to 1 keep the sum within the inputs' range, up to rounding at the edge of float32.
  const at = firstNonFinite(out);
  if (at >= 0) throw new InputError(`the blend overflows float32 at index ${at}; the inputs are too large to blend`);

  const checkpoints = new Set(embeddings.map((e) => e.model.checkpoint));
  const [checkpoint] = checkpoints;
  const components: BlendComponent[] = embeddings.map((e, i) => ({
    source: path.basename(names[i]),
    subject: e.subject,
    ratio: weights[i],
    sourceImages: e.sourceImages,
    ...(e.blend ? { blend: e.blend } : {}),
  }));
  return {
    queryEmbeds: { data: out, shape: [...shape] },
    subject,
    sourceImages: embeddings.flatMap((e) => e.sourceImages),
    model: { ...(checkpoints.size === 1 && checkpoint !== undefined ? { checkpoint } : {}), qformerSha256: sha },
    blend: components,
  };
}

/**
 * Loads one input of a blend: a subject file from `blipdiff encode` (or an earlier blend). A fine-tuned file is
 * refused from its header, before its UNet weights are read; anything else as {@link loadSubjectEmbedding} does.
 */
export function loadBlendInput(file: string): SubjectEmbedding {
  let format: string | undefined;
  try {
    const r = SafetensorsReader.open(file);
    format = r.metadata.format;
    r.close();
  } catch (err) {
    // loadSubjectEmbedding below words the errors of a foreign or broken file.
    if (!(err instanceof SafetensorsError)) throw unreadableSubjectFile(file, err);
  }
  if (format === FINETUNE_FORMAT) throw fineTunedInput(file);
  return loadSubjectEmbedding(file);
}
