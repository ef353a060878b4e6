// Fine-tuned subject files (src/finetune/file.ts): the format round trip for both modes, the one loader of
// --subject-embedding, the base-model refusal and malformed files.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import type { NativeRawTensor } from "../../src/bindings/types.js";
import { baseModelOf, finetunedSubject, loadSubjectFile, saveFinetunedSubject, type FinetunedSubjectParts } from "../../src/finetune/file.js";
import { fromFloat32, readSafetensors, serializeSafetensors, type RawTensor } from "../../src/io/safetensors.js";
import { saveSubjectEmbedding, type SubjectEmbedding } from "../../src/pipeline/embedding.js";
import { readManifest } from "../../src/pipeline/manifest.js";
import { checkEmbeddingFor, preflightGenerate } from "../../src/pipeline/preflight.js";
import { exportRoot, fixtureNames, repoRoot } from "../helpers/fixtures.js";

const dir = mkdtempSync(path.join(os.tmpdir(), "blipdiff-ftfile-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const python = process.env.BLIPDIFF_PYTHON ?? path.join(repoRoot, ".venv", "bin", "python");

const name = fixtureNames()[0];
const manifest = readManifest(path.join(exportRoot, name, "ckpt"));
const Q = manifest.spec.numQueryTokens;
const D = manifest.crossAttentionDim;

function ctx(seed = 1): { data: Float32Array; shape: number[] } {
  return { data: Float32Array.from({ length: Q * D }, (_, i) => Math.sin(i * seed) * 0.7), shape: [1, Q, D] };
}

function parts(over: Partial<FinetunedSubjectParts> = {}): FinetunedSubjectParts {
  return {
    mode: "full",
    subject: "dog",
    sourceImages: ["a.png", "b.jpg"],
    baseModel: baseModelOf(manifest),
    hyperparameters: { steps: 3, batchSize: 3, lr: 0.001 },
    losses: [1.25, 1.125, 0.5],
    saveDtype: "float16",
    ...over,
  };
}

const fullTensors = (): Record<string, NativeRawTensor> => ({
  "conv_in.weight": fromFloat32(Float32Array.from({ length: 2 * 4 * 3 * 3 }, (_, i) => i / 7 - 3), [2, 4, 3, 3], "F16") as NativeRawTensor,
  "conv_in.bias": fromFloat32(Float32Array.of(0.5, -0.25), [2], "F16") as NativeRawTensor,
});

const MOD = "mid_block.attentions.0.transformer_blocks.0.attn1.to_q";
const loraTensors = (rank = 2, din = 8, dout = 6): Record<string, NativeRawTensor> => ({
  [`${MOD}.lora.down.weight`]: fromFloat32(Float32Array.from({ length: rank * din }, (_, i) => i * 0.01), [rank, din]) as NativeRawTensor,
  [`${MOD}.lora.up.weight`]: fromFloat32(Float32Array.from({ length: dout * rank }, (_, i) => -i * 0.02), [dout, rank]) as NativeRawTensor,
});

const sameBytes = (a: Uint8Array, b: Uint8Array): boolean => Buffer.from(a).equals(Buffer.from(b));

describe("fine-tuned subject files", () => {
  it("full mode round-trips the embedding, every UNet tensor and the metadata", () => {
    const file = path.join(dir, "full.safetensors");
    const e = finetunedSubject(ctx(), fullTensors(), parts());
    saveFinetunedSubject(file, e);
    const back = loadSubjectFile(file);
    expect(back.subject).toBe("dog");
    expect(back.sourceImages).toEqual(["a.png", "b.jpg"]);
    expect(back.queryEmbeds.shape).toEqual([1, Q, D]);
    expect(Array.from(back.queryEmbeds.data)).toEqual(Array.from(e.queryEmbeds.data));
    const f = back.finetune!;
    expect(f.mode).toBe("full");
    expect(f.unet.mode).toBe("full");
    expect(f.baseModel).toEqual(baseModelOf(manifest));
    expect(f.losses).toEqual([1.25, 1.125, 0.5]);
    expect(f.hyperparameters).toEqual({ steps: 3, batchSize: 3, lr: 0.001 });
    expect(f.saveDtype).toBe("float16");
    expect(Object.keys(f.unet.tensors).sort()).toEqual(["conv_in.bias", "conv_in.weight"]);
    for (const [k, t] of Object.entries(fullTensors())) {
      expect(f.unet.tensors[k].dtype).toBe("F16");
      expect(f.unet.tensors[k].shape).toEqual(t.shape);
      expect(sameBytes(f.unet.tensors[k].data, t.data)).toBe(true);
    }
    // On disk: the names and metadata the format promises.
    const raw = readSafetensors(file);
    expect([...raw.tensors.keys()].sort()).toEqual(["ctx_embeddings_cache", "unet.conv_in.bias", "unet.conv_in.weight"]);
    expect(raw.tensors.get("ctx_embeddings_cache")!.dtype).toBe("F32");
    expect(raw.metadata.format).toBe("blipdiff-finetune");
    expect(raw.metadata.format_version).toBe("1");
    expect(raw.metadata.mode).toBe("full");
    expect(raw.metadata.save_dtype).toBe("float16");
    expect(JSON.parse(raw.metadata.base_model)).toEqual({
      checkpoint: manifest.source.checkpoint,
      sha256: {
        unet: manifest.identity.unet,
        text_encoder: manifest.identity.text_encoder,
        qformer: manifest.identity.qformer,
        vae_encoder: manifest.identity.vae_encoder,
      },
    });
    expect(raw.metadata.lora_rank).toBeUndefined();
  });

  it("LoRA mode uses diffusers' key names, records rank and alpha, and scales by alpha / rank", () => {
    const file = path.join(dir, "lora.safetensors");
    saveFinetunedSubject(file, finetunedSubject(ctx(), loraTensors(), parts({ mode: "lora", loraRank: 2, loraAlpha: 3, saveDtype: "float32" })));
    const back = loadSubjectFile(file);
    const f = back.finetune!;
    expect(f.unet).toMatchObject({ mode: "lora", scale: 1.5 });
    expect(f.loraRank).toBe(2);
    expect(f.loraAlpha).toBe(3);
    expect(Object.keys(f.unet.tensors).sort()).toEqual([`${MOD}.lora.down.weight`, `${MOD}.lora.up.weight`]);
    // The safetensors library sees diffusers' names and the metadata.
    const r = spawnSync(
      python,
      ["-c", "import json,sys; from safetensors import safe_open; f = safe_open(sys.argv[1], 'pt'); print(json.dumps({'keys': sorted(f.keys()), 'meta': f.metadata(), 'down': list(f.get_tensor('unet." + MOD + ".lora.down.weight').shape)}))", file],
      { encoding: "utf8" },
    );
    expect(r.status, r.stderr).toBe(0);
    const doc = JSON.parse(r.stdout);
    expect(doc.keys).toEqual(["ctx_embeddings_cache", `unet.${MOD}.lora.down.weight`, `unet.${MOD}.lora.up.weight`]);
    expect(doc.down).toEqual([2, 8]);
    expect(doc.meta).toMatchObject({ mode: "lora", lora_rank: "2", lora_alpha: "3", save_dtype: "float32", subject: "dog" });
    // alpha defaults to the rank (scale 1).
    const def = finetunedSubject(ctx(), loraTensors(), parts({ mode: "lora", loraRank: 2, saveDtype: "float32" }));
    expect(def.finetune!.unet).toMatchObject({ mode: "lora", scale: 1 });
  });

  it("loads encode files through the same loader, without UNet weights", () => {
    const file = path.join(dir, "enc.safetensors");
    const e: SubjectEmbedding = { queryEmbeds: ctx(2), subject: "cat", sourceImages: ["c.png"], model: {} };
    saveSubjectEmbedding(file, e);
    const back = loadSubjectFile(file);
    expect(back.finetune).toBeUndefined();
    expect(back.subject).toBe("cat");
    expect(Array.from(back.queryEmbeds.data)).toEqual(Array.from(e.queryEmbeds.data));
  });

  it("is written atomically and never replaces a file without overwrite", () => {
    const file = path.join(dir, "kept.safetensors");
    writeFileSync(file, "precious");
    const e = finetunedSubject(ctx(), fullTensors(), parts());
    expect(() => saveFinetunedSubject(file, e, { overwrite: false })).toThrow(expect.objectContaining({ code: "EEXIST" }));
    expect(readFileSync(file, "utf8")).toBe("precious");
    expect(() => saveFinetunedSubject(file, { ...e, finetune: undefined })).toThrow(/Expected a fine-tuned subject/);
  });
});

describe("fine-tuned subjects against a model", () => {
  it("accepts a subject made from this model, and one whose Q-Former alone differs (with the usual warning)", () => {
    const e = finetunedSubject(ctx(), fullTensors(), parts());
    expect(() => checkEmbeddingFor(manifest, e, "ft.safetensors")).not.toThrow();
    const other = finetunedSubject(ctx(), fullTensors(), parts({ baseModel: { ...baseModelOf(manifest), sha256: { ...baseModelOf(manifest).sha256, qformer: "c".repeat(64) } } }));
    const pre = preflightGenerate(manifest, { prompt: "x", width: 32, height: 32, subjectEmbedding: other, hasSubjectImage: false, hasControlImage: false });
    expect(pre.subject).toBe("dog");
    expect(pre.warnings).toContain("the subject embedding was made with a different Q-Former than this model's");
  });

  it("refuses a subject fine-tuned from another base model, naming both models", () => {
    const base = baseModelOf(manifest);
    const e = finetunedSubject(ctx(), fullTensors(), parts({ baseModel: { checkpoint: "other/ckpt", sha256: { ...base.sha256, unet: "a".repeat(64) } } }));
    const mine = manifest.identity.unet.slice(0, 12);
    expect(() => checkEmbeddingFor(manifest, e, "ft.safetensors")).toThrow(
      new RegExp(`^ft\\.safetensors was fine-tuned from "other/ckpt" \\(unet sha256 a{12}\\) but --model .* is "${manifest.source.checkpoint}" \\(unet sha256 ${mine}\\); use the model it was made from, or fine-tune again on this one$`),
    );
    const te = finetunedSubject(ctx(), loraTensors(), parts({ mode: "lora", loraRank: 2, baseModel: { sha256: { ...base.sha256, text_encoder: "b".repeat(64) } } }));
    expect(() => checkEmbeddingFor(manifest, te, "x")).toThrow(/fine-tuned from an unnamed model \(text_encoder sha256 b{12}\) but/);
  });

  it("checks the embedding's shape against the model, naming the command that makes it again", () => {
    const e = finetunedSubject({ data: new Float32Array((Q + 1) * D), shape: [1, Q + 1, D] }, fullTensors(), parts());
    expect(() => checkEmbeddingFor(manifest, e, "ft.safetensors")).toThrow(
      `ft.safetensors has shape [1, ${Q + 1}, ${D}], this model needs [1, ${Q}, ${D}]; re-run \`blipdiff finetune\` with this model`,
    );
  });
});

describe("malformed fine-tuned files", () => {
  const good = (): { tensors: Record<string, RawTensor>; meta: Record<string, string> } => {
    const base = baseModelOf(manifest);
    return {
      tensors: { ctx_embeddings_cache: fromFloat32(ctx().data, [1, Q, D]), ...Object.fromEntries(Object.entries(loraTensors()).map(([k, v]) => [`unet.${k}`, v])) },
      meta: {
        format: "blipdiff-finetune", format_version: "1", mode: "lora", subject: "dog", source_images: "[]",
        base_model: JSON.stringify(base), hyperparameters: "{}", losses: "[1]", save_dtype: "float32", lora_rank: "2", lora_alpha: "2",
      },
    };
  };
  let n = 0;
  const write = (tensors: Record<string, RawTensor>, meta: Record<string, string>): string => {
    const file = path.join(dir, `bad-${n++}.safetensors`);
    writeFileSync(file, serializeSafetensors(tensors, meta));
    return file;
  };
  const refused = (edit: (g: ReturnType<typeof good>) => void, why: RegExp): void => {
    const g = good();
    edit(g);
    const file = write(g.tensors, g.meta);
    let err: unknown;
    try {
      loadSubjectFile(file);
    } catch (e) {
      err = e;
    }
    expect((err as Error)?.name, String(err)).toBe("InputError");
    expect((err as Error).message).toMatch(why);
    expect((err as Error).message.split("\n")).toHaveLength(1);
    expect((err as Error).message.startsWith(file)).toBe(true);
  };

  it("the unedited file loads (the builder is sound)", () => {
    const g = good();
    expect(loadSubjectFile(write(g.tensors, g.meta)).finetune?.mode).toBe("lora");
  });

  it("refuses each malformed part with the reason and the fix", () => {
    refused((g) => (g.meta.format = "something-else"), /is not a blipdiff subject embedding or fine-tuned subject: format is "something-else"; make it with `blipdiff encode`, `blipdiff blend` or `blipdiff finetune`$/);
    refused((g) => (g.meta.format_version = "2"), /has fine-tune format_version "2", this blipdiff reads version 1; fine-tune it again/);
    refused((g) => (g.meta.mode = "half"), /mode is "half", expected "full" or "lora"; fine-tune it again with `blipdiff finetune`$/);
    refused((g) => (g.meta.save_dtype = "int8"), /save_dtype is "int8"/);
    refused((g) => delete (g.meta as Record<string, string>).base_model, /no base model identity/);
    refused((g) => delete g.tensors.ctx_embeddings_cache, /no ctx_embeddings_cache tensor/);
    refused((g) => (g.tensors.ctx_embeddings_cache = fromFloat32(ctx().data, [1, Q, D], "F16")), /ctx_embeddings_cache has dtype "F16", expected "F32"/);
    refused((g) => (g.tensors.ctx_embeddings_cache = fromFloat32(ctx().data, [Q, D])), /ctx_embeddings_cache has shape \[\d+,\d+\], expected \[1, Q, D\]/);
    refused((g) => (g.tensors.extra = fromFloat32(Float32Array.of(1), [1])), /unexpected tensor extra \(expected ctx_embeddings_cache and unet\.\* only\)/);
    refused((g) => delete g.tensors[`unet.${MOD}.lora.up.weight`], new RegExp(`module ${MOD.replace(/\./g, "\\.")} has no lora.up.weight`));
    refused((g) => (g.meta.lora_rank = "3"), /lora.down.weight has shape \[2,8\], expected \[3, in\] \(lora_rank 3\)/);
    refused((g) => (g.meta.lora_rank = "two"), /lora_rank is "two", expected a positive integer/);
    refused((g) => (g.meta.lora_alpha = "0"), /lora_alpha is "0", expected a positive number/);
    refused((g) => (g.tensors["unet.conv_in.weight"] = fromFloat32(Float32Array.of(1), [1])), /tensor unet\.conv_in\.weight is not a LoRA tensor/);
    refused((g) => (g.tensors[`unet.${MOD}.lora.up.weight`] = { dtype: "I32", shape: [6, 2], data: new Uint8Array(48) }), /has dtype "I32", expected "F16" or "F32"/);
    refused((g) => {
      g.meta.mode = "full";
    }, /is a LoRA tensor in a full fine-tune/);
    refused((g) => {
      const d = ctx().data;
      d[3] = Number.NaN;
      g.tensors.ctx_embeddings_cache = fromFloat32(d, [1, Q, D]);
    }, /contains non-finite values \(NaN at index 3\) in ctx_embeddings_cache; fine-tune it again/);
  });

  it("refuses missing files and non-safetensors bytes in one line", () => {
    expect(() => loadSubjectFile(path.join(dir, "none.safetensors"))).toThrow(/^subject embedding not found: .*none\.safetensors$/);
    const junk = path.join(dir, "junk.safetensors");
    writeFileSync(junk, "definitely not safetensors");
    expect(() => loadSubjectFile(junk)).toThrow(/junk\.safetensors is not a blipdiff subject embedding: the header length \d+ does not fit in the file/);
  });
});
