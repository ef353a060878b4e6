// Shared by the native tests: the addon, fixtures, tensors.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import type { NativeAddon, NativeGenerateParams, NativeModelSpec, NativeModuleFile, NativeTensor } from "../../src/bindings/types.js";
import { Fixture, repoRoot } from "../helpers/fixtures.js";

/** The addon under test: BLIPDIFF_ADDON (as src/bindings), else native/build/Release/blipdiff.node. */
export const addonPath = process.env.BLIPDIFF_ADDON
  ? path.resolve(process.env.BLIPDIFF_ADDON)
  : path.join(repoRoot, "native", "build", "Release", "blipdiff.node");

let cached: NativeAddon | undefined;
/** Loads the addon; a missing or unloadable addon throws, failing the test (never a skip). */
export function addon(): NativeAddon {
  cached ??= createRequire(import.meta.url)(addonPath) as NativeAddon;
  return cached;
}

export function fixture(name: string): Fixture {
  return new Fixture(name);
}

export function nt(f: Fixture, name: string): NativeTensor {
  const t = f.tensor(name);
  if (!(t.data instanceof Float32Array)) throw new Error(`${name} is ${t.dtype}`);
  return { data: t.data, shape: t.shape };
}

export function ids(f: Fixture, name: string): Int32Array {
  const t = f.tensor(name);
  if (!(t.data instanceof BigInt64Array)) throw new Error(`${name} is ${t.dtype}`);
  return Int32Array.from(t.data, (v) => Number(v));
}

/** NativeModelSpec of an exported model folder, as src/ builds it from manifest.json but without src's file
 * checks (readManifest), so these tests reach the native backstops (missing module files, checksums). */
export function specOf(dir: string): NativeModelSpec {
  const m = JSON.parse(readFileSync(path.join(dir, "manifest.json"), "utf8").replace(/-Infinity/g, "null"));
  type Entry = { file: string; sha256: string; weights?: { file: string; sha256: string } };
  const modules: Record<string, NativeModuleFile> = {};
  for (const [name, mod] of Object.entries(m.modules as Record<string, Entry>)) {
    modules[name] = { path: path.join(dir, mod.file), sha256: mod.sha256 };
    if (mod.weights) modules[name].weights = { path: path.join(dir, mod.weights.file), sha256: mod.weights.sha256 };
  }
  return {
    modules: modules as NativeModelSpec["modules"],
    numQueryTokens: m.config.num_query_tokens,
    ctxBeginPos: m.config.ctx_begin_pos,
    textMaxLength: m.config.text_max_length,
    latentChannels: m.config.latent_channels,
    latentScale: m.config.latent_scale,
    vaeScalingFactor: m.config.vae_scaling_factor,
    scheduler: m.scheduler,
  };
}

/** Max |a-b| and whether all |a-b| <= atol + rtol |b|. */
export function compare(a: ArrayLike<number>, b: ArrayLike<number>, atol = 1e-4, rtol = 1e-4): { max: number; ok: boolean } {
  if (a.length !== b.length) return { max: Infinity, ok: false };
  let max = 0;
  let ok = true;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    max = Math.max(max, d);
    if (!(d <= atol + rtol * Math.abs(b[i]))) ok = false;
  }
  return { max, ok };
}

/** Ids of a tokenizer check (golden.json), padded with its last id (EOS) to `length`. */
export function padIds(f: Fixture, text: string, length: number): Int32Array {
  const check = (f.json.tokenizer_checks.clip as Array<{ text: string; ids: number[] }>).find((c) => c.text === text);
  if (!check) throw new Error(`no tokenizer check for ${text}`);
  const out = new Int32Array(length).fill(check.ids[check.ids.length - 1]);
  out.set(check.ids);
  return out;
}

/** Native parameters of a golden pipeline case, with the golden initial latents and ids. */
export function caseParams(
  f: Fixture,
  caseName: "cfg" | "nocfg" | "cn",
  extra: Partial<NativeGenerateParams> = {},
): NativeGenerateParams {
  const kw = f.json.cases.pipeline.cases[caseName].call_kwargs;
  const spec = specOf(f.model(caseName === "cn" ? "ckpt-controlnet" : "ckpt"));
  return {
    condIds: ids(f, "text.dog.input_ids"),
    uncondIds: padIds(f, kw.neg_prompt, spec.textMaxLength),
    queryEmbeds: nt(f, `pipe.${caseName}.query_embeds`),
    width: kw.width,
    height: kw.height,
    steps: kw.num_inference_steps,
    guidance: kw.guidance_scale,
    seed: kw.latents_seed,
    numImages: 1,
    scheduler: "pndm",
    latents: nt(f, "pipe.latents"),
    recordSteps: true,
    ...extra,
  };
}
