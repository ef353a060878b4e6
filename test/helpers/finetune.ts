// Fine-tuning goldens (finetune.json, finetune.safetensors) for the tests: the fixture's config and a --draws file
// built from its explicit draws (ft.data.*) and LoRA initial weights (lora.init.<module>.A).
import { existsSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { SafetensorsReader, serializeSafetensors, type RawTensor } from "../../src/io/safetensors.js";
import { fixturesRoot } from "./fixtures.js";

export interface FinetuneFixture {
  name: string;
  dir: string;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  json: any;
  config: {
    subject: string;
    resolution: number;
    steps: number;
    batch: number;
    lr: number;
    weight_decay: number;
    lora_rank: number;
    lora_alpha: number;
    gen_hw: [number, number];
    images: string[];
  };
  /** Absolute paths of the training pictures, in training-index order. */
  images: string[];
  /** One golden tensor (raw bytes, dtype and shape). */
  raw(name: string): RawTensor;
  /** The golden tensor's values as float32 (F32 only). */
  f32(name: string): Float32Array;
  names(): string[];
}

/** Fixtures with fine-tuning goldens (a finetune.json). */
export function finetuneFixtureNames(): string[] {
  const names = readdirSync(fixturesRoot)
    .filter((n) => existsSync(path.join(fixturesRoot, n, "finetune.json")))
    .sort();
  if (names.length === 0) throw new Error(`no fine-tuning goldens (finetune.json) under ${fixturesRoot}`);
  return names;
}

export function loadFinetuneFixture(name: string): FinetuneFixture {
  const dir = path.join(fixturesRoot, name);
  const json = JSON.parse(readFileSync(path.join(dir, "finetune.json"), "utf8"));
  let reader: SafetensorsReader | undefined;
  const open = (): SafetensorsReader => (reader ??= SafetensorsReader.open(path.join(dir, "finetune.safetensors")));
  const raw = (t: string): RawTensor => {
    if (!open().has(t)) throw new Error(`golden tensor ${t} missing in ${name}/finetune.safetensors`);
    return open().read(t);
  };
  return {
    name,
    dir,
    json,
    config: json.config,
    images: (json.config.images as string[]).map((f) => path.join(dir, f)),
    raw,
    f32: (t) => {
      const r = raw(t);
      if (r.dtype !== "F32") throw new Error(`${t} is ${r.dtype}, not F32`);
      const out = new Float32Array(r.data.byteLength / 4);
      new Uint8Array(out.buffer).set(r.data);
      return out;
    },
    names: () => [...open().entries.keys()],
  };
}

/**
 * Writes a --draws file from the fixture's ft.data.* tensors and, with `lora`, every lora.init.<module>.A under the
 * output's name unet.<module>.lora.down.weight. `edit` may change or drop tensors first.
 */
export function writeDrawsFile(fx: FinetuneFixture, file: string, opts: { lora?: boolean; edit?: (t: Map<string, RawTensor>) => void } = {}): string {
  const t = new Map<string, RawTensor>();
  for (const k of ["index", "timesteps", "eps_vae", "noise"]) t.set(k, fx.raw(`ft.data.${k}`));
  if (opts.lora)
    for (const n of fx.names()) {
      const m = /^lora\.init\.(.+)\.A$/.exec(n);
      if (m) t.set(`unet.${m[1]}.lora.down.weight`, fx.raw(n));
    }
  opts.edit?.(t);
  writeFileSync(file, serializeSafetensors(t));
  return file;
}
