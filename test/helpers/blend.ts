// The blend case of the editing goldens (edit.json `cases.blend`, edit.safetensors `blend.*`), and subject files
// made from its Q-Former outputs, for the blend tests.
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import type { NativeTensor } from "../../src/bindings/types.js";
import { saveSubjectEmbedding, type SubjectEmbedding } from "../../src/pipeline/embedding.js";
import { parseJsonLenient, readManifest } from "../../src/pipeline/manifest.js";
import { exportRoot, fixtureNames, fixturesRoot, readSafetensors, type GoldenTensor } from "./fixtures.js";

export interface BlendParams {
  guidance_scale: number;
  neg_prompt: string;
  prompt_strength: number;
  prompt_reps: number;
  /** [picture (relative to the fixture), subject word] per input, in blend order. */
  subjects: [string, string][];
  ratio: number[];
  prompt: string;
  tgt_subject: string;
  num_inference_steps: number;
  height: number;
  width: number;
  latents_seed: number;
}

export interface BlendFixture {
  name: string;
  dir: string;
  params: BlendParams;
  /** The golden tensor names of the case, in edit.json's order. */
  tensors: string[];
  tensor(name: string): GoldenTensor;
  f32(name: string): NativeTensor;
  /** The exported model folder (test/global-setup.ts). */
  model: string;
}

/** Fixtures with editing goldens (an edit.json); throws when there are none, so the suites cannot pass empty. */
export function blendFixtureNames(): string[] {
  const names = fixtureNames().filter((n) => existsSync(path.join(fixturesRoot, n, "edit.json")));
  if (names.length === 0) throw new Error(`no editing goldens (edit.json) under ${fixturesRoot}: the blend suites would check nothing`);
  return names;
}

export function loadBlendFixture(name: string): BlendFixture {
  const dir = path.join(fixturesRoot, name);
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const json = parseJsonLenient(readFileSync(path.join(dir, "edit.json"), "utf8")) as any;
  const blend = json.cases.blend;
  let tensors: Map<string, GoldenTensor> | undefined;
  const tensor = (t: string): GoldenTensor => {
    tensors ??= readSafetensors(path.join(dir, "edit.safetensors"));
    const v = tensors.get(t);
    if (!v) throw new Error(`golden tensor ${t} missing in ${name}/edit.safetensors`);
    return v;
  };
  return {
    name,
    dir,
    params: blend.params as BlendParams,
    tensors: blend.tensors as string[],
    tensor,
    f32: (t) => {
      const g = tensor(t);
      if (!(g.data instanceof Float32Array)) throw new Error(`${t} is ${g.dtype}, not F32`);
      return { data: g.data, shape: g.shape };
    },
    model: path.join(exportRoot, name, "ckpt"),
  };
}

/** The blend's inputs as subject embeddings: blend.query_embeds.<i> with the case's subjects and the model's Q-Former. */
export function blendInputs(fx: BlendFixture): SubjectEmbedding[] {
  const m = readManifest(fx.model);
  return fx.params.subjects.map(([picture, subject], i) => ({
    queryEmbeds: fx.f32(`blend.query_embeds.${i}`),
    subject,
    sourceImages: [path.basename(picture)],
    model: { checkpoint: `${fx.name}/ckpt`, qformerSha256: m.identity.qformer },
  }));
}

/** Writes the blend's inputs as `encode` files into `dir` (<fixture>-input-<i>.safetensors); returns their paths. */
export function writeBlendInputs(fx: BlendFixture, dir: string): string[] {
  return blendInputs(fx).map((e, i) => {
    const file = path.join(dir, `${fx.name}-input-${i}.safetensors`);
    saveSubjectEmbedding(file, e);
    return file;
  });
}
