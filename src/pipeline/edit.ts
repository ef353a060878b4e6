// BlipDiffusionPipeline.edit: the TypeScript half of subject-driven prompt-to-prompt editing (edit.json "spec"). The
// prompts, their ids, the token alignment and the subject positions are made here (src/edit/); the subject embedding
// comes from its pictures (as encodeSubject) or a subject file; a photo to edit is decoded, resized on its shorter
// side and centre-cropped to the size (LAVIS's preparation); the addon generates or inverts the source, edits it and
// decodes both images (native/src/core/edit).
import type {
  NativeDType,
  NativeEditParams,
  NativeEditProgress,
  NativeEditRecord,
  NativeEditResult,
  NativeImage,
  NativeTensor,
} from "../bindings/types.js";
import { AbortError, invalid } from "../errors.js";
import { decodeRgb, type ImageSource } from "../image/decode.js";
import { resizeBicubicWindow, type RawImage } from "../image/resample.js";
import type { FinetuneMode } from "../finetune/file.js";
import {
  EDIT_LIBRARY_NAMES,
  resolveEditPrompt,
  resolveEditSettings,
  tokenizeEdit,
  type EditNames,
  type EditPromptOptions,
  type EditSettings,
  type EditTokens,
  type PhotoSize,
  type ResolvedEditPrompt,
  type ResolvedEditSettings,
} from "../edit/options.js";
import { abortable, asArray, guardProgress, type PipelineHost } from "./calls.js";
import type { SubjectEmbedding } from "./embedding.js";
import { ATTENTION_CONTROL, modelLabel, requireCapability, type ModelManifest } from "./manifest.js";
import { DEFAULTS } from "./options.js";
import { resolveSubjectInput, type SubjectInputOptions } from "./preflight.js";
import { parseSubjectCrop, type SubjectCrop } from "./preprocess.js";

export type EditProgress = NativeEditProgress;

export interface EditOptions extends EditSettings, EditPromptOptions {
  /** The subject's category word for the Q-Former, e.g. "dog" (required with `subjectImage`; an embedding's own otherwise). */
  subject?: string;
  /** Picture(s) of the subject; several are averaged. Either this or `subjectEmbedding`. */
  subjectImage?: ImageSource | ImageSource[];
  /** A subject from {@link BlipDiffusionPipeline.encodeSubject}, a blend, a fine-tune, or a file (loadSubjectFile). */
  subjectEmbedding?: SubjectEmbedding;
  /** How a non-square subject picture is made square. Defaults to `"squash"`. */
  subjectCrop?: SubjectCrop;
  /**
   * The photo to edit (a path, "-" for stdin, or encoded bytes): resized on its shorter side and centre-cropped to
   * width x height, encoded, inverted with DDIM and edited. Without it the source is generated from `seed`.
   */
  image?: ImageSource;
  /** Refuse pictures with more pixels. Defaults to sharp's limit (about 268 MP). */
  maxPixels?: number;
  /** Explicit initial latents [1, C, H/f, W/f] of a generated source (overrides the seed's draw; tests). */
  latents?: NativeTensor;
  /** Return the intermediates (every step's tensors, LocalBlend maps, inversion) in `record`. Defaults to `false`. */
  record?: boolean;
  /** Disable every control (cross and self replacement, LocalBlend): both branches run independently (tests). */
  noControl?: boolean;
  /** Cancels between UNet calls; the promise then rejects with an AbortError. */
  signal?: AbortSignal;
  /** Progress per phase (text, encode, inversion, edit, decode); exceptions thrown by it are ignored. */
  onProgress?: (p: EditProgress) => void;
}

/** Everything that determined an edit, as embedded in the images' metadata and printed with --json. */
export interface EditParameters extends ResolvedEditSettings, Omit<ResolvedEditPrompt, "inversionPrompt"> {
  /** The DDIM inversion's prompt, for a photo. */
  inversionPrompt?: string;
  /** The subject's word for the Q-Former. */
  subject: string;
  subjectCrop: SubjectCrop;
  /** The photo that was edited (its file name), for a photo. */
  image?: string;
  /** The editing scheduler: PNDM for a generated source, DDIM (with DDIM inversion) for a photo. */
  scheduler: "pndm" | "ddim";
  /** Set when the subject was fine-tuned: the UNet weights of that fine-tune were used. */
  finetuned?: FinetuneMode;
  model: string;
  device: string;
  dtype: NativeDType;
}

export interface EditTimings {
  /** Decoding the photo and the pictures, and the subject embedding. */
  subjectMs: number;
  textMs: number;
  /** The photo's VAE encoding and DDIM inversion (0 for a generated source). */
  inversionMs: number;
  editMs: number;
  decodeMs: number;
  totalMs: number;
}

export interface EditResult {
  /** The source image (generated, or the photo as reconstructed through inversion) and the edited one. */
  source: NativeImage;
  edited: NativeImage;
  parameters: EditParameters;
  timings: EditTimings;
  /** E.g. a subject embedding made with another Q-Former. */
  warnings: string[];
  /** With `record`: the addon's intermediates. */
  record?: NativeEditRecord;
}

/** What can be checked before the model loads. */
export interface EditPreflight {
  settings: ResolvedEditSettings;
  prompt: ResolvedEditPrompt;
  tokens: EditTokens;
  subject: string;
  warnings: string[];
}

export interface EditPreflightOptions extends EditSettings, EditPromptOptions, SubjectInputOptions {
  /** The photo to edit (its size and name), when there is one. */
  photo?: PhotoSize;
}

/**
 * Checks an edit against a model without the modules: the attention-control capability, the subject input, the
 * settings, and that the prompts fit the text window. TypeError / RangeError for bad values (usage errors in the CLI),
 * ModelError for a model exported without attention control, InputError for an unusable embedding or photo.
 */
export function preflightEdit(m: ModelManifest, o: EditPreflightOptions, names: EditNames = EDIT_LIBRARY_NAMES): EditPreflight {
  requireCapability(m, ATTENTION_CONTROL, "edit");
  const subject = resolveSubjectInput(m, o);
  const settings = resolveEditSettings(m, o, o.photo, names);
  const prompt = resolveEditPrompt(o, subject, names);
  const tokens = tokenizeEdit(m, prompt, names);
  const warnings: string[] = [];
  const sha = o.subjectEmbedding?.model.qformerSha256;
  if (sha && sha !== m.identity.qformer) warnings.push("the subject embedding was made with a different Q-Former than this model's");
  return { settings, prompt, tokens, subject, warnings };
}

/** Python's round(): half to even. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * A photo brought to width x height as LAVIS prepares its input (generalized to any aspect): resized with PIL's
 * bicubic so that it covers the size, the side that limits the scale to exactly its target and the other to
 * int(target * other / side) (torchvision's Resize; for a square target, the shorter side to the size), then
 * centre-cropped (offsets Python-rounded, torchvision's CenterCrop). A photo of exactly the size is used as is.
 */
export function resizePhoto(img: RawImage, width: number, height: number): RawImage {
  const { width: pw, height: ph } = img;
  const [nw, nh] = width * ph >= height * pw ? [width, Math.trunc((width * ph) / pw)] : [Math.trunc((height * pw) / ph), height];
  const left = roundHalfEven((nw - width) / 2);
  const top = roundHalfEven((nh - height) / 2);
  return resizeBicubicWindow(img, nw, nh, [left, top, width, height]);
}

/** The photo as the VAE encoder takes it: [1, 3, H, W] float32 = float32(u8 / 255) * 2 - 1 (spec section 10). */
export function preprocessPhoto(img: RawImage, width: number, height: number): NativeTensor {
  if (img.channels !== 3) throw invalid("an RGB image (3 channels)", "image", img.channels);
  const resized = resizePhoto(img, width, height);
  const plane = width * height;
  const out = new Float32Array(3 * plane);
  for (let c = 0; c < 3; c++)
    for (let i = 0; i < plane; i++) {
      // torch: u8 -> float32, / 255 (one rounding), * 2 (exact), - 1 (one rounding).
      const x = Math.fround(resized.data[i * 3 + c] / 255);
      out[c * plane + i] = Math.fround(2 * x - 1);
    }
  return { data: out, shape: [1, 3, height, width] };
}

/** What edit needs from the pipeline object: the shared host, and the name a photo is recorded under. */
export interface EditHost extends PipelineHost {
  pictureName(src: ImageSource): string;
}

/** Runs one edit on a loaded pipeline (serialized by the caller). */
export async function runEdit(host: EditHost, o: EditOptions): Promise<EditResult> {
  const t0 = performance.now();
  const m = host.manifest;
  requireCapability(m, ATTENTION_CONTROL, "edit");
  const crop = parseSubjectCrop(o.subjectCrop ?? DEFAULTS.subjectCrop);
  const sources = o.subjectImage === undefined ? [] : asArray(o.subjectImage);
  if (o.subjectImage !== undefined && sources.length === 0) throw invalid("at least one image", "subjectImage", sources);
  if (o.image !== undefined && o.latents !== undefined) throw new RangeError("latents apply to a generated source only (without image)");
  // The photo first: its size is the default size, and an unreadable photo fails before any work.
  const photo = o.image === undefined ? undefined : await decodeRgb(o.image, { maxPixels: o.maxPixels, label: "image" });
  const photoName = o.image === undefined ? undefined : host.pictureName(o.image);
  const pre = preflightEdit(m, {
    ...o,
    hasSubjectImage: sources.length > 0,
    ...(photo ? { photo: { width: photo.width, height: photo.height, name: photoName ?? "image" } } : {}),
  });
  const s = pre.settings;

  let embedding = o.subjectEmbedding;
  if (!embedding) {
    const { images, names } = await host.decode(sources, o.maxPixels, o.signal);
    embedding = await host.encode(images, names, pre.subject, crop, o.signal);
  }
  const image = photo ? preprocessPhoto(photo, s.width, s.height) : undefined;
  const subjectMs = performance.now() - t0;
  if (o.signal?.aborted) throw new AbortError();

  const t = pre.tokens;
  const params: NativeEditParams = {
    queryEmbeds: embedding.queryEmbeds,
    uncondIds: t.uncondIds,
    srcIds: t.srcIds,
    editIds: t.editIds,
    mapper: t.mapper,
    alphas: t.alphas,
    subjectAlpha: t.subjectAlpha,
    width: s.width,
    height: s.height,
    steps: s.steps,
    guidance: s.guidance,
    crossReplace: s.crossReplace,
    selfReplace: s.selfReplace,
    blendThreshold: s.blendThreshold,
    seed: s.seed ?? 0,
    ...(image ? { image, inversionIds: t.inversionIds, inversionSteps: s.inversionSteps } : {}),
    ...(o.latents ? { latents: o.latents } : {}),
    ...(embedding.finetune ? { unet: embedding.finetune.unet } : {}),
    ...(o.noControl ? { noControl: true } : {}),
    ...(o.record ? { record: true } : {}),
  };
  const warnings = [...pre.warnings];
  let res: NativeEditResult;
  try {
    res = await abortable(host.native, o.signal, () => host.native.edit(params, guardProgress(o.onProgress)));
  } finally {
    warnings.push(...host.nativeWarnings());
  }
  if (o.signal?.aborted) throw new AbortError();

  const { inversionPrompt, ...prompts } = pre.prompt;
  const parameters: EditParameters = {
    ...s,
    ...prompts,
    ...(photo ? { inversionPrompt } : {}),
    subject: pre.subject,
    subjectCrop: crop,
    ...(photoName !== undefined ? { image: photoName } : {}),
    scheduler: photo ? "ddim" : "pndm",
    ...(embedding.finetune ? { finetuned: embedding.finetune.mode } : {}),
    model: modelLabel(m),
    device: host.device,
    dtype: host.dtype,
  };
  return {
    source: res.images[0],
    edited: res.images[1],
    parameters,
    timings: {
      subjectMs,
      textMs: res.timings.textMs,
      inversionMs: res.timings.inversionMs,
      editMs: res.timings.editMs,
      decodeMs: res.timings.decodeMs,
      totalMs: performance.now() - t0,
    },
    warnings,
    ...(res.record ? { record: res.record } : {}),
  };
}
