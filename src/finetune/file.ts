// Fine-tuned subjects on disk (`blipdiff finetune -o X.safetensors`), and the one loader of
// `generate --subject-embedding`, which takes these and `encode` files alike.
//
// A fine-tuned file is safetensors with
//   ctx_embeddings_cache                 [1, Q, D] F32: the trained subject embedding;
//   unet.<diffusers parameter name>      every UNet parameter (mode "full"), in the save dtype; or
//   unet.<module>.lora.down.weight (A)   [r, in] and unet.<module>.lora.up.weight (B) [out, r] per attention
//                                        projection (mode "lora", diffusers' LoRA key names);
// and string metadata: format "blipdiff-finetune", format_version "1", mode, subject, source_images (JSON),
// base_model (JSON: manifest checkpoint name and module sha256s), hyperparameters (JSON), losses (JSON),
// save_dtype, and for LoRA lora_rank and lora_alpha (the update is scaled by alpha / rank).
import type { NativeRawTensor, NativeUnetOverride } from "../bindings/types.js";
import { InputError } from "../errors.js";
import type { AtomicWriteOptions } from "../io/atomic.js";
import { SafetensorsError, SafetensorsReader, firstNonFinite, fromFloat32, toFloat32, writeSafetensors, type RawTensor } from "../io/safetensors.js";
import {
  EMBEDDING_FORMAT,
  REDO_ENCODE,
  embeddingFromReader,
  parseMetadataJson,
  unreadableSubjectFile,
  type SubjectEmbedding,
} from "../pipeline/embedding.js";
import type { ModelManifest } from "../pipeline/manifest.js";

export const FINETUNE_FORMAT = "blipdiff-finetune";
export const FINETUNE_VERSION = "1";
/** The name of the trained subject embedding in a fine-tuned file (LAVIS's parameter name). */
export const CTX_KEY = "ctx_embeddings_cache";
/** Every UNet tensor of a fine-tuned file is named `unet.<name>`. */
export const UNET_PREFIX = "unet.";
const REDO_FINETUNE = "fine-tune it again with `blipdiff finetune`";

export type FinetuneMode = "full" | "lora";
export type SaveDType = "float16" | "float32";

/** The modules a fine-tune depends on, by the sha256 that identifies their weights (ModelManifest.identity). */
export const BASE_MODULES = ["unet", "text_encoder", "qformer", "vae_encoder"] as const;
export type BaseModule = (typeof BASE_MODULES)[number];
/** The modules whose weights a fine-tuned subject is tied to at generation time (a mismatch is refused). */
const GENERATION_MODULES: readonly BaseModule[] = ["unet", "text_encoder"];

/** Which model a fine-tune started from. */
export interface BaseModelIdentity {
  /** The manifest's `source.checkpoint` (a folder name or a hub id), when it has one. */
  checkpoint?: string;
  sha256: Record<BaseModule, string>;
}

/** What a fine-tuned subject carries besides its embedding. */
export interface FinetuneInfo {
  mode: FinetuneMode;
  /** The trained UNet weights as generate() applies them (names without the "unet." prefix). */
  unet: NativeUnetOverride;
  baseModel: BaseModelIdentity;
  /** The settings of the run (steps, batch size, learning rate, ...), as recorded. */
  hyperparameters: Record<string, unknown>;
  /** The loss of each step. */
  losses: number[];
  /** LoRA rank and alpha (mode "lora"). */
  loraRank?: number;
  loraAlpha?: number;
  /** The dtype of the UNet tensors. */
  saveDtype: SaveDType;
}

/** The identity of a loaded manifest's model. */
export function baseModelOf(m: ModelManifest): BaseModelIdentity {
  const ids = m.identity;
  return {
    ...(typeof m.source.checkpoint === "string" ? { checkpoint: m.source.checkpoint } : {}),
    sha256: { unet: ids.unet, text_encoder: ids.text_encoder, qformer: ids.qformer, vae_encoder: ids.vae_encoder },
  };
}

/** Everything needed to make a fine-tuned subject from the native result. */
export interface FinetunedSubjectParts {
  mode: FinetuneMode;
  subject: string;
  sourceImages: string[];
  baseModel: BaseModelIdentity;
  hyperparameters: Record<string, unknown>;
  losses: number[];
  loraRank?: number;
  loraAlpha?: number;
  saveDtype: SaveDType;
}

/**
 * A fine-tuned subject from the native result's `ctx` and `tensors` (the tensors lack the "unet." prefix; they are
 * shared, not copied). LoRA's scale is alpha / rank.
 */
export function finetunedSubject(ctx: { data: Float32Array; shape: number[] }, tensors: Record<string, NativeRawTensor>, p: FinetunedSubjectParts): SubjectEmbedding {
  let unet: NativeUnetOverride;
  if (p.mode === "lora") {
    const rank = p.loraRank;
    if (rank === undefined || !(rank > 0)) throw new RangeError(`Expected a positive LoRA rank for a LoRA fine-tune but received ${rank}`);
    unet = { mode: "lora", scale: (p.loraAlpha ?? rank) / rank, tensors };
  } else unet = { mode: "full", tensors };
  return {
    queryEmbeds: ctx,
    subject: p.subject,
    sourceImages: p.sourceImages,
    model: { checkpoint: p.baseModel.checkpoint, qformerSha256: p.baseModel.sha256.qformer },
    finetune: {
      mode: p.mode,
      unet,
      baseModel: p.baseModel,
      hyperparameters: p.hyperparameters,
      losses: p.losses,
      ...(p.mode === "lora" ? { loraRank: p.loraRank, loraAlpha: p.loraAlpha ?? p.loraRank } : {}),
      saveDtype: p.saveDtype,
    },
  };
}

/** The safetensors metadata of a fine-tuned subject. */
function finetuneMetadata(e: SubjectEmbedding, f: FinetuneInfo): Record<string, string> {
  return {
    format: FINETUNE_FORMAT,
    format_version: FINETUNE_VERSION,
    mode: f.mode,
    subject: e.subject,
    source_images: JSON.stringify(e.sourceImages),
    base_model: JSON.stringify(f.baseModel),
    hyperparameters: JSON.stringify(f.hyperparameters),
    losses: JSON.stringify(f.losses),
    save_dtype: f.saveDtype,
    ...(f.mode === "lora" ? { lora_rank: String(f.loraRank), lora_alpha: String(f.loraAlpha ?? f.loraRank) } : {}),
  };
}

/**
 * Writes a fine-tuned subject atomically (header, then each tensor streamed to a temporary file that is renamed into
 * place; removed on error or interrupt). Refuses a subject without `finetune`.
 */
export function saveFinetunedSubject(file: string, e: SubjectEmbedding, options: AtomicWriteOptions = {}): void {
  const f = e.finetune;
  if (!f) throw new TypeError("Expected a fine-tuned subject (with `finetune`) but received a plain subject embedding");
  const tensors: [string, RawTensor][] = [[CTX_KEY, fromFloat32(e.queryEmbeds.data, e.queryEmbeds.shape)]];
  for (const [name, t] of Object.entries(f.unet.tensors)) tensors.push([UNET_PREFIX + name, t]);
  writeSafetensors(file, tensors, finetuneMetadata(e, f), options);
}

const LORA_KEY = /^(.+)\.lora\.(down|up)\.weight$/;

/** The LoRA modules of a set of names ("<module>.lora.down.weight" / ".lora.up.weight"), or the first stray name. */
export function loraModuleOf(name: string): { module: string; part: "down" | "up" } | undefined {
  const m = LORA_KEY.exec(name);
  return m ? { module: m[1], part: m[2] as "down" | "up" } : undefined;
}

const isSha = (v: unknown): v is string => typeof v === "string" && /^[0-9a-f]{64}$/i.test(v);

/** A fine-tuned subject from an opened file whose format the caller checked. */
function finetunedFromReader(file: string, r: SafetensorsReader): SubjectEmbedding {
  const bad = (why: string): InputError => new InputError(`${file} is not a usable blipdiff fine-tuned subject: ${why}; ${REDO_FINETUNE}`);
  const meta = r.metadata;
  if (meta.format_version !== FINETUNE_VERSION)
    throw new InputError(
      `${file} has fine-tune format_version ${JSON.stringify(meta.format_version)}, this blipdiff reads version ${FINETUNE_VERSION}; ${REDO_FINETUNE}`,
    );
  const mode = meta.mode;
  if (mode !== "full" && mode !== "lora") throw bad(`mode is ${JSON.stringify(mode)}, expected "full" or "lora"`);
  const saveDtype = meta.save_dtype;
  if (saveDtype !== "float16" && saveDtype !== "float32") throw bad(`save_dtype is ${JSON.stringify(saveDtype)}`);
  const base = parseMetadataJson<unknown>(meta.base_model, undefined) as Partial<BaseModelIdentity> | undefined;
  const sha = base?.sha256 as Partial<Record<BaseModule, unknown>> | undefined;
  if (!sha || !BASE_MODULES.every((k) => isSha(sha[k]))) throw bad("no base model identity (base_model with the module sha256s)");
  const baseModel: BaseModelIdentity = {
    ...(typeof base?.checkpoint === "string" ? { checkpoint: base.checkpoint } : {}),
    sha256: Object.fromEntries(BASE_MODULES.map((k) => [k, (sha[k] as string).toLowerCase()])) as Record<BaseModule, string>,
  };

  const ctxEntry = r.entries.get(CTX_KEY);
  if (!ctxEntry) throw bad(`no ${CTX_KEY} tensor`);
  if (ctxEntry.dtype !== "F32") throw bad(`${CTX_KEY} has dtype ${JSON.stringify(ctxEntry.dtype)}, expected "F32"`);
  if (ctxEntry.shape.length !== 3 || ctxEntry.shape.some((d) => d === 0)) throw bad(`${CTX_KEY} has shape ${JSON.stringify(ctxEntry.shape)}, expected [1, Q, D]`);

  // Names and dtypes are checked before any UNet byte is read (a full fine-tune is gigabytes).
  const unetNames: string[] = [];
  for (const [name, e] of r.entries) {
    if (name === CTX_KEY) continue;
    if (!name.startsWith(UNET_PREFIX)) throw bad(`unexpected tensor ${name} (expected ${CTX_KEY} and unet.* only)`);
    if (e.dtype !== "F32" && e.dtype !== "F16") throw bad(`tensor ${name} has dtype ${JSON.stringify(e.dtype)}, expected "F16" or "F32"`);
    unetNames.push(name);
  }
  if (unetNames.length === 0) throw bad("no unet.* tensors");

  let loraRank: number | undefined;
  let loraAlpha: number | undefined;
  if (mode === "lora") {
    loraRank = Number(meta.lora_rank);
    loraAlpha = Number(meta.lora_alpha);
    if (!Number.isInteger(loraRank) || loraRank < 1) throw bad(`lora_rank is ${JSON.stringify(meta.lora_rank)}, expected a positive integer`);
    if (!Number.isFinite(loraAlpha) || loraAlpha <= 0) throw bad(`lora_alpha is ${JSON.stringify(meta.lora_alpha)}, expected a positive number`);
    const parts = new Map<string, { down?: number[]; up?: number[] }>();
    for (const name of unetNames) {
      const m = loraModuleOf(name.slice(UNET_PREFIX.length));
      if (!m) throw bad(`tensor ${name} is not a LoRA tensor (unet.<module>.lora.down.weight or .lora.up.weight)`);
      const p = parts.get(m.module) ?? {};
      p[m.part] = r.entries.get(name)!.shape;
      parts.set(m.module, p);
    }
    for (const [module, { down, up }] of parts) {
      if (!down || !up) throw bad(`module ${module} has no lora.${down ? "up" : "down"}.weight`);
      if (down.length !== 2 || down[0] !== loraRank)
        throw bad(`unet.${module}.lora.down.weight has shape ${JSON.stringify(down)}, expected [${loraRank}, in] (lora_rank ${loraRank})`);
      if (up.length !== 2 || up[1] !== loraRank)
        throw bad(`unet.${module}.lora.up.weight has shape ${JSON.stringify(up)}, expected [out, ${loraRank}] (lora_rank ${loraRank})`);
    }
  } else {
    const stray = unetNames.find((n) => loraModuleOf(n) !== undefined);
    if (stray) throw bad(`tensor ${stray} is a LoRA tensor in a full fine-tune`);
  }

  const data = toFloat32(r.read(CTX_KEY), CTX_KEY);
  const at = firstNonFinite(data);
  if (at >= 0) throw new InputError(`${file} contains non-finite values (${data[at]} at index ${at}) in ${CTX_KEY}; ${REDO_FINETUNE}`);
  const tensors: Record<string, NativeRawTensor> = {};
  for (const name of unetNames) {
    const t = r.read(name);
    tensors[name.slice(UNET_PREFIX.length)] = { dtype: t.dtype as "F32" | "F16", shape: t.shape, data: t.data };
  }
  const losses = parseMetadataJson<unknown>(meta.losses, []);
  const hyperparameters = parseMetadataJson<unknown>(meta.hyperparameters, {});
  return finetunedSubject({ data, shape: ctxEntry.shape }, tensors, {
    mode,
    subject: meta.subject ?? "",
    sourceImages: parseMetadataJson<string[]>(meta.source_images, []),
    baseModel,
    hyperparameters: typeof hyperparameters === "object" && hyperparameters !== null && !Array.isArray(hyperparameters) ? (hyperparameters as Record<string, unknown>) : {},
    losses: Array.isArray(losses) ? losses.filter((x): x is number => typeof x === "number") : [],
    loraRank,
    loraAlpha,
    saveDtype,
  });
}

/**
 * The loader of `--subject-embedding`: an `encode` file (subject embedding only) or a fine-tuned file (embedding plus
 * UNet weights in `finetune`). One-line errors for anything else; a fine-tuned file's base model is checked against
 * a model with {@link checkBaseModel}.
 */
export function loadSubjectFile(file: string): SubjectEmbedding {
  const either = "make it with `blipdiff encode`, `blipdiff blend` or `blipdiff finetune`";
  let r: SafetensorsReader;
  try {
    r = SafetensorsReader.open(file);
  } catch (err) {
    if (err instanceof SafetensorsError) throw new InputError(`${file} is not a blipdiff subject embedding: ${err.reason}; ${either}`);
    throw unreadableSubjectFile(file, err);
  }
  try {
    const format = r.metadata.format;
    if (format === EMBEDDING_FORMAT)
      return embeddingFromReader(file, r, (why) => new InputError(`${file} is not a blipdiff subject embedding: ${why}; ${REDO_ENCODE}`));
    if (format === FINETUNE_FORMAT) return finetunedFromReader(file, r);
    throw new InputError(`${file} is not a blipdiff subject embedding or fine-tuned subject: format is ${JSON.stringify(format)}; ${either}`);
  } catch (err) {
    if (err instanceof SafetensorsError) throw new InputError(`${file} cannot be read: ${err.reason}; ${either}`);
    if (err instanceof InputError) throw err;
    throw unreadableSubjectFile(file, err);
  } finally {
    r.close();
  }
}

/** "tiny-a/ckpt" (unet 1bd48ba7, text_encoder 502139af) */
function describeModel(id: BaseModelIdentity, modules: readonly BaseModule[]): string {
  const name = id.checkpoint ? JSON.stringify(id.checkpoint) : "an unnamed model";
  return `${name} (${modules.map((k) => `${k} sha256 ${id.sha256[k].slice(0, 12)}`).join(", ")})`;
}

/**
 * Refuses a fine-tuned subject made from another base model than `m` (its UNet or text encoder differ), naming both
 * models; a no-op for plain subject embeddings.
 */
export function checkBaseModel(m: ModelManifest, e: SubjectEmbedding, source = "the fine-tuned subject"): void {
  const f = e.finetune;
  if (!f) return;
  const mine = baseModelOf(m);
  const differ = GENERATION_MODULES.filter((k) => f.baseModel.sha256[k].toLowerCase() !== mine.sha256[k].toLowerCase());
  if (differ.length === 0) return;
  throw new InputError(
    `${source} was fine-tuned from ${describeModel(f.baseModel, differ)} but --model ${m.dir} is ${describeModel(mine, differ)}; use the model it was made from, or fine-tune again on this one`,
  );
}

/** The module names of a LoRA override (sorted), for messages and tests. */
export function loraModules(tensors: Record<string, unknown>): string[] {
  const out = new Set<string>();
  for (const name of Object.keys(tensors)) {
    const m = loraModuleOf(name);
    if (m) out.add(m.module);
  }
  return [...out].sort();
}
