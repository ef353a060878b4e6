// Explicit random draws of a fine-tune (`--draws FILE`): a safetensors file with
//   index      [steps, batch] int64   training-picture index of each sample
//   timesteps  [steps, batch] int64   DDPM timestep of each sample, in [0, num_train_timesteps)
//   eps_vae    [steps, batch, C, h, w] float32   standard normal draw of the VAE posterior sample
//   noise      [steps, batch, C, h, w] float32   the noise added (the regression target)
// and optionally, for LoRA, the initial A of modules under the output's names, unet.<module>.lora.down.weight
// [rank, in]. A malformed file is an InputError; draws that disagree with the options are a RangeError naming
// the tensor, its shape and what the options need (a usage error in the CLI).
import type { NativeFinetuneDraws, NativeTensor } from "../bindings/types.js";
import { InputError, messageOf } from "../errors.js";
import { SafetensorsError, SafetensorsReader, firstNonFinite, toFloat32, toInt32 } from "../io/safetensors.js";
import type { ModelManifest } from "../pipeline/manifest.js";
import { UNET_PREFIX, loraModuleOf, type FinetuneMode } from "./file.js";

/** The projections LoRA adapts (diffusers names end with these). */
export const LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"] as const;

/** Draws read from a file, with the step count and batch size their shapes give. */
export interface LoadedDraws {
  draws: NativeFinetuneDraws;
  steps: number;
  batchSize: number;
}

/** The scheduler's number of training timesteps (manifest scheduler config; 1000 when it does not say). */
export function numTrainTimesteps(m: ModelManifest): number {
  const t = m.spec.scheduler.num_train_timesteps;
  return typeof t === "number" && Number.isInteger(t) && t > 0 ? t : 1000;
}

const fmt = (shape: readonly number[]): string => `[${shape.join(", ")}]`;

/**
 * Reads a draws file. Malformed files (not safetensors, a missing tensor, a wrong dtype or rank, tensors that
 * disagree with each other, stray tensors) are refused with an InputError; the options are checked later by
 * {@link checkDraws}.
 */
export function readDrawsFile(file: string): LoadedDraws {
  const bad = (why: string): InputError =>
    new InputError(`--draws ${file} is not a usable draws file: ${why} (it needs index, timesteps, eps_vae and noise; see \`blipdiff finetune --help\`)`);
  let r: SafetensorsReader;
  try {
    r = SafetensorsReader.open(file);
  } catch (err) {
    if (err instanceof SafetensorsError) throw bad(err.reason);
    const code = (err as NodeJS.ErrnoException).code;
    throw new InputError(code === "ENOENT" ? `--draws file not found: ${file}` : `cannot read --draws ${file}: ${messageOf(err)}`);
  }
  try {
    const entry = (name: string, dtypes: string[], rank: number): { shape: number[] } => {
      const e = r.entries.get(name);
      if (!e) throw bad(`no ${name} tensor`);
      if (!dtypes.includes(e.dtype)) throw bad(`${name} has dtype ${e.dtype}, expected ${dtypes.join(" or ")}`);
      if (e.shape.length !== rank) throw bad(`${name} has shape ${fmt(e.shape)}, expected ${rank} dimensions`);
      if (e.shape.some((d) => d === 0)) throw bad(`${name} has the empty shape ${fmt(e.shape)}`);
      return e;
    };
    const index = entry("index", ["I64", "I32"], 2);
    const [steps, batchSize] = index.shape;
    const timesteps = entry("timesteps", ["I64", "I32"], 2);
    if (timesteps.shape.join() !== index.shape.join()) throw bad(`timesteps has shape ${fmt(timesteps.shape)} but index has ${fmt(index.shape)}`);
    const eps = entry("eps_vae", ["F32"], 5);
    const noise = entry("noise", ["F32"], 5);
    for (const [name, e] of [["eps_vae", eps], ["noise", noise]] as const)
      if (e.shape[0] !== steps || e.shape[1] !== batchSize) throw bad(`${name} has shape ${fmt(e.shape)} but index has ${fmt(index.shape)}`);
    if (noise.shape.join() !== eps.shape.join()) throw bad(`noise has shape ${fmt(noise.shape)} but eps_vae has ${fmt(eps.shape)}`);

    const loraInit: Record<string, NativeTensor> = {};
    for (const [name, e] of r.entries) {
      if (["index", "timesteps", "eps_vae", "noise"].includes(name)) continue;
      const m = name.startsWith(UNET_PREFIX) ? loraModuleOf(name.slice(UNET_PREFIX.length)) : undefined;
      if (!m || m.part !== "down") throw bad(`unexpected tensor ${name} (LoRA initial weights are unet.<module>.lora.down.weight)`);
      if (e.dtype !== "F32") throw bad(`${name} has dtype ${e.dtype}, expected F32`);
      if (e.shape.length !== 2 || e.shape.some((d) => d === 0)) throw bad(`${name} has shape ${fmt(e.shape)}, expected [rank, in]`);
      loraInit[m.module] = { data: toFloat32(r.read(name), name), shape: e.shape };
    }
    const draws: NativeFinetuneDraws = {
      index: toInt32(r.read("index"), "index"),
      timesteps: toInt32(r.read("timesteps"), "timesteps"),
      epsVae: { data: toFloat32(r.read("eps_vae"), "eps_vae"), shape: eps.shape },
      noise: { data: toFloat32(r.read("noise"), "noise"), shape: noise.shape },
      ...(Object.keys(loraInit).length > 0 ? { loraInit } : {}),
    };
    return { draws, steps, batchSize };
  } catch (err) {
    if (err instanceof SafetensorsError) throw bad(err.reason);
    if (err instanceof InputError) throw err;
    throw new InputError(`cannot read --draws ${file}: ${messageOf(err)}`);
  } finally {
    r.close();
  }
}

/** What the draws must fit. */
export interface DrawsExpectations {
  mode: FinetuneMode;
  steps: number;
  batchSize: number;
  /** Number of training pictures (index values lie below it). */
  numPictures: number;
  resolution: number;
  /** LoRA rank (mode "lora"). */
  loraRank?: number;
}

/** Names the options in messages: the library's, or the CLI's flags. */
export interface DrawsNames {
  steps: string;
  batchSize: string;
  resolution: string;
  loraRank: string;
  /** Prefix of tensor names, e.g. "draws " or "--draws file.safetensors: ". */
  source: string;
}

export const LIBRARY_DRAWS_NAMES: DrawsNames = { steps: "steps", batchSize: "batchSize", resolution: "resolution", loraRank: "loraRank", source: "draws." };

/**
 * Checks draws against the options and the model; RangeError (a usage error in the CLI) naming the tensor, its shape
 * or value and what the options need. Returns the draws to pass to the addon: in mode "full" without LoRA initial
 * weights (one draws file serves both modes).
 */
export function checkDraws(
  m: ModelManifest,
  d: NativeFinetuneDraws,
  x: DrawsExpectations,
  names: DrawsNames = LIBRARY_DRAWS_NAMES,
  /** The [steps, batch] shape of index and timesteps in a file (the addon's arrays are flat). */
  indexShape?: readonly [number, number],
): NativeFinetuneDraws {
  const f = m.spec.latentScale;
  const c = m.spec.latentChannels;
  const h = x.resolution / f;
  const fail = (tensor: string, what: string, got: string): RangeError => new RangeError(`${names.source}${tensor} ${got}, but ${what}`);
  const sb = x.steps * x.batchSize;
  const optsSB = `${names.steps} ${x.steps} and ${names.batchSize} ${x.batchSize} need`;
  for (const [tensor, a] of [["index", d.index], ["timesteps", d.timesteps]] as const) {
    const fits = indexShape ? indexShape[0] === x.steps && indexShape[1] === x.batchSize : a instanceof Int32Array && a.length === sb;
    if (!fits || !(a instanceof Int32Array) || a.length !== sb)
      throw fail(tensor, `${optsSB} [${x.steps}, ${x.batchSize}]`, indexShape ? `has shape ${fmt(indexShape)}` : `has ${a?.length} values`);
  }
  const want = [x.steps, x.batchSize, c, h, h];
  for (const [tensor, t] of [["eps_vae", d.epsVae], ["noise", d.noise]] as const) {
    const shape = Array.isArray(t?.shape) ? t.shape : [];
    if (shape.length !== 5 || shape.some((v, i) => v !== want[i]))
      throw fail(
        tensor,
        `${names.steps} ${x.steps}, ${names.batchSize} ${x.batchSize}, ${c} latent channels and ${names.resolution} ${x.resolution} (latent scale ${f}) need ${fmt(want)}`,
        `has shape ${fmt(shape)}`,
      );
    if (!(t.data instanceof Float32Array) || t.data.length !== want.reduce((a, b) => a * b, 1))
      throw fail(tensor, `its shape ${fmt(want)} needs ${want.reduce((a, b) => a * b, 1)} values`, `holds ${t.data?.length} values`);
    const at = firstNonFinite(t.data);
    if (at >= 0) throw fail(tensor, "draws must be finite", `holds ${t.data[at]} at flat index ${at}`);
  }
  const where = (i: number): string => `[${Math.floor(i / x.batchSize)}, ${i % x.batchSize}]`;
  for (let i = 0; i < sb; i++)
    if (d.index[i] < 0 || d.index[i] >= x.numPictures)
      throw fail("index", `there ${x.numPictures === 1 ? "is 1 picture" : `are ${x.numPictures} pictures`} (indices 0..${x.numPictures - 1})`, `holds ${d.index[i]} at ${where(i)}`);
  const T = numTrainTimesteps(m);
  for (let i = 0; i < sb; i++)
    if (d.timesteps[i] < 0 || d.timesteps[i] >= T)
      throw fail("timesteps", `the scheduler trains on timesteps 0..${T - 1} (num_train_timesteps ${T})`, `holds ${d.timesteps[i]} at ${where(i)}`);
  if (x.mode === "full" || !d.loraInit) {
    const { loraInit: _, ...rest } = d;
    return rest;
  }
  for (const [module, t] of Object.entries(d.loraInit)) {
    const key = `${UNET_PREFIX}${module}.lora.down.weight`;
    if (!LORA_TARGETS.some((s) => module.endsWith(`.${s}`)))
      throw fail(key, `LoRA adapts only ${LORA_TARGETS.join(", ")} projections`, "is not an attention projection");
    if (t.shape.length !== 2 || t.shape[0] !== x.loraRank)
      throw fail(key, `${names.loraRank} ${x.loraRank} needs [${x.loraRank}, in]`, `has shape ${fmt(t.shape)}`);
    const at = firstNonFinite(t.data);
    if (at >= 0) throw fail(key, "draws must be finite", `holds ${t.data[at]} at flat index ${at}`);
  }
  return d;
}
