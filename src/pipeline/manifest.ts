// Reading and validating an exported model folder (docs/manifest.md) and building the native spec.
import { createHash } from "node:crypto";
import { existsSync, readFileSync, realpathSync, statSync } from "node:fs";
import path from "node:path";
import type { NativeModelSpec, NativeModuleFile } from "../bindings/types.js";
import { ModelError, messageOf } from "../errors.js";

export const MANIFEST_FORMAT = "blipdiff-torchscript";
/** The manifest format this blipdiff writes (through models/) and reads; 1 is still read (docs/manifest.md). */
export const MANIFEST_VERSION = 2;
const READABLE_VERSIONS = [1, 2];
const FIX = "convert the checkpoint again with `blipdiff convert <checkpoint> --out <dir>`";
const REQUIRED_MODULES = ["qformer", "text_encoder", "unet", "vae_decoder", "vae_encoder"] as const;

export interface ModelManifest {
  dir: string;
  spec: NativeModelSpec;
  tokenizers: {
    clip: { file: string; sha256?: string; bos: number; eos: number; pad: number };
    qformer: { file: string; sha256?: string; cls: number; sep: number; pad: number };
  };
  imageSize: number;
  imageMean: number[];
  imageStd: number[];
  crossAttentionDim: number;
  /**
   * Longest subject text, in WordPiece tokens with [CLS] and [SEP], that the Q-Former's position table holds
   * (`config.qformer_max_text_length`); undefined for exports made before the field existed.
   */
  qformerMaxTextLength?: number;
  /** Channels of each UNet level (`config.unet_block_out_channels`); undefined for exports that predate the field. */
  unetBlockOutChannels?: number[];
  hasControlnet: boolean;
  /**
   * The sha256 that identifies each module's weights (what fine-tunes and subject embeddings record): its weights
   * file's for format 2, its archive's for format 1 (whose archives hold the weights).
   */
  identity: Record<keyof NativeModelSpec["modules"], string>;
  /**
   * Optional features of the exported modules (manifest `capabilities`, exporter 0.3.0 on; [] when absent), e.g.
   * "attention_control": the UNet has the prompt-to-prompt path that edit needs.
   */
  capabilities: string[];
  /** manifest.source as written by the exporter. */
  source: Record<string, unknown>;
  /** The raw manifest.json. */
  raw: Record<string, unknown>;
}

/** JSON.parse that also accepts Python's bare NaN / Infinity / -Infinity tokens (outside strings). */
export function parseJsonLenient(text: string): unknown {
  const marked = text.replace(/"(?:[^"\\]|\\.)*"|-?Infinity|NaN/g, (m) => (m.startsWith('"') ? m : `"\\u0000num:${m}"`));
  return JSON.parse(marked, (_k, v: unknown) => (typeof v === "string" && v.startsWith("\u0000num:") ? Number(v.slice(5)) : v));
}

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function field<T>(obj: Obj, key: string, where: string, check: (v: unknown) => v is T, what: string): T {
  const v = obj[key];
  if (!check(v)) throw new ModelError(`manifest.json: expected ${what} for ${where}.${key}; ${FIX}`);
  return v;
}

const isPosInt = (v: unknown): v is number => typeof v === "number" && Number.isInteger(v) && v > 0;
const isInt = (v: unknown): v is number => typeof v === "number" && Number.isInteger(v) && v >= 0;
const isNum = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v);
const isStr = (v: unknown): v is string => typeof v === "string" && v.length > 0;
const isTriple = (v: unknown): v is number[] => Array.isArray(v) && v.length === 3 && v.every(isNum);

/** Whether `p` is `root` or lies below it (both absolute and normalized). */
function isInside(root: string, p: string): boolean {
  const rel = path.relative(root, p);
  return rel === "" || (rel !== ".." && !rel.startsWith(`..${path.sep}`) && !path.isAbsolute(rel));
}

/** realpath of `p`, or of its deepest existing ancestor joined with the rest when `p` does not exist. */
function realpathOfExisting(p: string): string {
  try {
    return realpathSync(p);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const parent = path.dirname(p);
    if ((code !== "ENOENT" && code !== "ENOTDIR") || parent === p) throw err;
    return path.join(realpathOfExisting(parent), path.basename(p));
  }
}

/**
 * Resolves a file named by manifest key `key` inside the model folder `dir` (whose realpath is `realDir`).
 * Refuses absolute paths and paths that leave the folder, lexically or through symlinks, before anything
 * reads the file: a manifest must not make blipdiff hash, load or show files elsewhere.
 */
export function resolveInModelDir(dir: string, realDir: string, rel: string, key: string): string {
  const refuse = (why: string): ModelError =>
    new ModelError(`manifest.json: ${key} ${JSON.stringify(rel)} ${why}; files must lie inside the model folder ${dir}; ${FIX}`);
  if (path.isAbsolute(rel) || path.win32.isAbsolute(rel)) throw refuse("is an absolute path");
  const p = path.resolve(dir, rel);
  if (!isInside(dir, p)) throw refuse("leaves the model folder");
  let real: string;
  try {
    real = realpathOfExisting(p);
  } catch (err) {
    throw new ModelError(`manifest.json: cannot resolve ${key} ${JSON.stringify(rel)}: ${messageOf(err)}; ${FIX}`);
  }
  if (!isInside(realDir, real)) throw refuse(`leaves the model folder through a symlink (it resolves to ${real})`);
  return p;
}

/** Reads `<dir>/manifest.json`, checks the format and that every file it names exists. */
export function readManifest(dir: string): ModelManifest {
  const abs = path.resolve(dir);
  if (!existsSync(abs)) throw new ModelError(`model folder not found: ${abs}; ${FIX} (or pass --model)`);
  if (!statSync(abs).isDirectory()) throw new ModelError(`the model path is not a folder: ${abs}`);
  const file = path.join(abs, "manifest.json");
  if (!existsSync(file)) throw new ModelError(`${abs} has no manifest.json (not an exported blipdiff model); ${FIX}`);
  let raw: unknown;
  try {
    raw = parseJsonLenient(readFileSync(file, "utf8"));
  } catch (err) {
    throw new ModelError(`cannot parse ${file}: ${messageOf(err)}; ${FIX}`);
  }
  if (!isObj(raw)) throw new ModelError(`${file} is not a JSON object; ${FIX}`);
  if (raw.format !== MANIFEST_FORMAT)
    throw new ModelError(`${file} has format ${JSON.stringify(raw.format)}, expected "${MANIFEST_FORMAT}"; ${FIX}`);
  if (!READABLE_VERSIONS.includes(raw.format_version as number))
    throw new ModelError(
      `${file} has format_version ${JSON.stringify(raw.format_version)}, this blipdiff reads versions ${READABLE_VERSIONS.join(" and ")}; ${FIX}`,
    );
  const version = raw.format_version as number;
  const modules = field(raw, "modules", "manifest", isObj, "an object");
  const cfg = field(raw, "config", "manifest", isObj, "an object");
  const toks = field(raw, "tokenizers", "manifest", isObj, "an object");
  const scheduler = field(raw, "scheduler", "manifest", isObj, "an object");

  const realDir = realpathSync(abs);
  const missing: string[] = [];
  const locate = (rel: string, key: string): string => {
    const p = resolveInModelDir(abs, realDir, rel, key);
    if (!existsSync(p)) missing.push(rel);
    return p;
  };
  const mod = (name: string): NativeModuleFile => {
    const m = field(modules, name, "modules", isObj, "an object");
    const rel = field(m, "file", `modules.${name}`, isStr, "a file name");
    const sha256 = field(m, "sha256", `modules.${name}`, isStr, "a sha256");
    const out: NativeModuleFile = { path: locate(rel, `modules.${name}.file`), sha256 };
    // Format 2 keeps each module's tensors in a safetensors file beside its archive.
    if (version >= 2) {
      const w = field(m, "weights", `modules.${name}`, isObj, "an object");
      const wrel = field(w, "file", `modules.${name}.weights`, isStr, "a file name");
      out.weights = { path: locate(wrel, `modules.${name}.weights.file`), sha256: field(w, "sha256", `modules.${name}.weights`, isStr, "a sha256") };
    }
    return out;
  };
  const specModules = Object.fromEntries(REQUIRED_MODULES.map((n) => [n, mod(n)])) as NativeModelSpec["modules"];
  if (isObj(modules.controlnet)) specModules.controlnet = mod("controlnet");

  const clipT = field(toks, "clip", "tokenizers", isObj, "an object");
  const qfT = field(toks, "qformer", "tokenizers", isObj, "an object");
  const tokenizers = {
    clip: {
      file: locate(field(clipT, "file", "tokenizers.clip", isStr, "a file name"), "tokenizers.clip.file"),
      sha256: isStr(clipT.sha256) ? clipT.sha256 : undefined,
      bos: field(clipT, "bos_token_id", "tokenizers.clip", isInt, "an id"),
      eos: field(clipT, "eos_token_id", "tokenizers.clip", isInt, "an id"),
      pad: field(clipT, "pad_token_id", "tokenizers.clip", isInt, "an id"),
    },
    qformer: {
      file: locate(field(qfT, "file", "tokenizers.qformer", isStr, "a file name"), "tokenizers.qformer.file"),
      sha256: isStr(qfT.sha256) ? qfT.sha256 : undefined,
      cls: field(qfT, "cls_token_id", "tokenizers.qformer", isInt, "an id"),
      sep: field(qfT, "sep_token_id", "tokenizers.qformer", isInt, "an id"),
      pad: field(qfT, "pad_token_id", "tokenizers.qformer", isInt, "an id"),
    },
  };
  if (missing.length > 0)
    throw new ModelError(`the model folder ${abs} is incomplete: missing ${missing.join(", ")}; ${FIX}`);

  const spec: NativeModelSpec = {
    modules: specModules,
    numQueryTokens: field(cfg, "num_query_tokens", "config", isPosInt, "a positive integer"),
    ctxBeginPos: field(cfg, "ctx_begin_pos", "config", isInt, "an integer >= 0"),
    textMaxLength: field(cfg, "text_max_length", "config", isPosInt, "a positive integer"),
    latentChannels: field(cfg, "latent_channels", "config", isPosInt, "a positive integer"),
    latentScale: field(cfg, "latent_scale", "config", isPosInt, "a positive integer"),
    vaeScalingFactor: field(cfg, "vae_scaling_factor", "config", isNum, "a number"),
    scheduler,
  };
  if (spec.numQueryTokens + 2 > spec.textMaxLength)
    throw new ModelError(`manifest.json: num_query_tokens ${spec.numQueryTokens} leaves no room in ${spec.textMaxLength} text positions`);
  const qformerMaxTextLength =
    cfg.qformer_max_text_length === undefined
      ? undefined
      : field(cfg, "qformer_max_text_length", "config", isPosInt, "a positive integer");
  const unetBlockOutChannels =
    cfg.unet_block_out_channels === undefined
      ? undefined
      : field(cfg, "unet_block_out_channels", "config", (v): v is number[] => Array.isArray(v) && v.length > 0 && v.every(isPosInt), "a list of positive integers");
  const hasControlnet = cfg.has_controlnet === true && specModules.controlnet !== undefined;
  const capabilities =
    raw.capabilities === undefined
      ? []
      : field(raw, "capabilities", "manifest", (v): v is string[] => Array.isArray(v) && v.every(isStr), "a list of strings");
  return {
    dir: abs,
    spec,
    tokenizers,
    imageSize: field(cfg, "image_size", "config", isPosInt, "a positive integer"),
    imageMean: field(cfg, "image_mean", "config", isTriple, "3 numbers"),
    imageStd: field(cfg, "image_std", "config", isTriple, "3 numbers"),
    crossAttentionDim: field(cfg, "cross_attention_dim", "config", isPosInt, "a positive integer"),
    qformerMaxTextLength,
    unetBlockOutChannels,
    hasControlnet,
    identity: Object.fromEntries(Object.entries(specModules).map(([k, f]) => [k, f.weights?.sha256 ?? f.sha256])) as ModelManifest["identity"],
    capabilities: [...capabilities],
    source: isObj(raw.source) ? raw.source : {},
    raw,
  };
}

/** The capability `blipdiff edit` needs: the UNet's attention-control path (`forward_edit`). */
export const ATTENTION_CONTROL = "attention_control";

/**
 * Refuses a model whose modules lack `capability` (exported before it existed, or without it); `what` names the
 * command or call that needs it.
 */
export function requireCapability(m: ModelManifest, capability: string, what: string): void {
  if (m.capabilities.includes(capability)) return;
  throw new ModelError(
    `${what} needs a model exported with ${JSON.stringify(capability)}, which ${m.dir} lacks (its manifest's capabilities: ${
      m.capabilities.length > 0 ? m.capabilities.join(", ") : "none"
    }); re-convert the model with \`blipdiff convert\``,
  );
}

/** Checks the tokenizer files against their sha256 in the manifest (the native side checks the modules). */
export function verifyTokenizerChecksums(m: ModelManifest): void {
  for (const t of [m.tokenizers.clip, m.tokenizers.qformer]) {
    if (!t.sha256) continue;
    const actual = createHash("sha256").update(readFileSync(t.file)).digest("hex");
    if (actual !== t.sha256.toLowerCase())
      throw new ModelError(`checksum mismatch for ${path.relative(m.dir, t.file)} (sha256 ${actual}, manifest says ${t.sha256}); ${FIX}`);
  }
}

/** How a model is named in parameters and metadata: its checkpoint (or folder name), marked when its weights are random. */
export function modelLabel(m: ModelManifest): string {
  return (typeof m.source.checkpoint === "string" ? m.source.checkpoint : path.basename(m.dir)) + (m.source.random_weights === true ? " (random weights)" : "");
}

/** A short human-readable summary (blipdiff info --model). */
export function summarizeManifest(m: ModelManifest): Record<string, unknown> {
  const c = (m.raw.config ?? {}) as Obj;
  return {
    folder: m.dir,
    format: `${MANIFEST_FORMAT} v${String(m.raw.format_version)}`,
    source: m.source,
    queryTokens: m.spec.numQueryTokens,
    imageSize: m.imageSize,
    textMaxLength: m.spec.textMaxLength,
    qformerMaxTextLength: m.qformerMaxTextLength,
    crossAttentionDim: m.crossAttentionDim,
    latentChannels: m.spec.latentChannels,
    latentScale: m.spec.latentScale,
    unetSampleSize: c.unet_sample_size,
    unetBlockOutChannels: m.unetBlockOutChannels,
    controlnet: m.hasControlnet,
    capabilities: m.capabilities,
    scheduler: m.spec.scheduler._class_name ?? "unknown",
    modules: Object.fromEntries(
      Object.entries(m.spec.modules).map(([k, v]) => [
        k,
        {
          file: path.relative(m.dir, v.path),
          ...(v.weights ? { weights: path.relative(m.dir, v.weights.path) } : {}),
          bytes: statSync(v.path).size + (v.weights ? statSync(v.weights.path).size : 0),
        },
      ]),
    ),
  };
}
