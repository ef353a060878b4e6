import { copyFileSync, mkdirSync, mkdtempSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { parseJsonLenient, readManifest } from "../../src/pipeline/manifest.js";
import { fixtureNames, loadFixture } from "./golden.js";

const root = mkdtempSync(path.join(os.tmpdir(), "blipdiff-manifest-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const fx = loadFixture(fixtureNames()[0]);

function manifest(): Record<string, any> {
  const mod = (f: string) => ({ file: f, sha256: "0".repeat(64) });
  return {
    format: "blipdiff-torchscript",
    format_version: 1,
    source: { checkpoint: "tiny-a/ckpt" },
    modules: {
      qformer: mod("qformer.pt"),
      text_encoder: mod("text_encoder.pt"),
      unet: mod("unet.pt"),
      vae_decoder: mod("vae_decoder.pt"),
      vae_encoder: mod("vae_encoder.pt"),
    },
    tokenizers: {
      clip: { file: "tokenizer/tokenizer.json", sha256: "", bos_token_id: 49406, eos_token_id: 49407, pad_token_id: 49407 },
      qformer: { file: "qformer_tokenizer/tokenizer.json", sha256: "", cls_token_id: 4, sep_token_id: 5, pad_token_id: 0, dec_token_id: 157 },
    },
    config: {
      num_query_tokens: 8,
      ctx_begin_pos: 2,
      text_max_length: 77,
      cross_attention_dim: 16,
      image_size: 224,
      image_mean: [0.48145466, 0.4578275, 0.40821073],
      image_std: [0.26862954, 0.26130258, 0.27577711],
      latent_channels: 4,
      latent_scale: 2,
      vae_scaling_factor: 0.18215,
      has_controlnet: false,
    },
    scheduler: { _class_name: "PNDMScheduler", steps_offset: 1, lambda_min_clipped: "@@" },
  };
}

let n = 0;
function folder(edit: (m: Record<string, any>) => void = () => {}, text?: (s: string) => string): string {
  const dir = path.join(root, `m${n++}`);
  mkdirSync(path.join(dir, "tokenizer"), { recursive: true });
  mkdirSync(path.join(dir, "qformer_tokenizer"), { recursive: true });
  for (const f of ["qformer", "text_encoder", "unet", "vae_decoder", "vae_encoder"]) writeFileSync(path.join(dir, `${f}.pt`), "x");
  copyFileSync(fx.ckpt("tokenizer", "tokenizer.json"), path.join(dir, "tokenizer", "tokenizer.json"));
  copyFileSync(fx.ckpt("qformer_tokenizer", "tokenizer.json"), path.join(dir, "qformer_tokenizer", "tokenizer.json"));
  const m = manifest();
  edit(m);
  let s = JSON.stringify(m, null, 2).replace('"@@"', "-Infinity");
  if (text) s = text(s);
  writeFileSync(path.join(dir, "manifest.json"), s);
  return dir;
}

describe("manifest.json", () => {
  it("reads a valid folder into the native spec (Python's -Infinity accepted)", () => {
    const dir = folder();
    const m = readManifest(dir);
    expect(m.spec.numQueryTokens).toBe(8);
    expect(m.spec.latentScale).toBe(2);
    expect(m.spec.modules.unet.path).toBe(path.join(dir, "unet.pt"));
    expect(m.spec.modules.controlnet).toBeUndefined();
    expect(m.spec.scheduler.lambda_min_clipped).toBe(-Infinity);
    expect(m.tokenizers.qformer.cls).toBe(4);
  });

  it("names the fix for a missing folder or manifest", () => {
    expect(() => readManifest(path.join(root, "nope"))).toThrow(/model folder not found: .*blipdiff convert/);
    const empty = path.join(root, "empty");
    mkdirSync(empty);
    expect(() => readManifest(empty)).toThrow(/has no manifest.json .*blipdiff convert/);
  });

  it("rejects another format name or version", () => {
    expect(() => readManifest(folder((m) => (m.format = "onnx")))).toThrow(/has format "onnx", expected "blipdiff-torchscript"; .*blipdiff convert/);
    expect(() => readManifest(folder((m) => (m.format_version = 2)))).toThrow(/format_version 2, this blipdiff reads version 1/);
  });

  it("lists missing files of an incomplete folder", () => {
    const dir = folder();
    unlinkSync(path.join(dir, "unet.pt"));
    unlinkSync(path.join(dir, "tokenizer", "tokenizer.json"));
    expect(() => readManifest(dir)).toThrow(/incomplete: missing unet.pt, tokenizer\/tokenizer.json; .*blipdiff convert/);
  });

  it("rejects missing or wrong config values and broken JSON", () => {
    expect(() => readManifest(folder((m) => delete m.config.latent_scale)))
      .toThrow(/expected a positive integer for config.latent_scale/);
    expect(() => readManifest(folder((m) => (m.config.image_mean = [0.5])))).toThrow(/config.image_mean/);
    expect(() => readManifest(folder(undefined, (s) => s.slice(0, 20)))).toThrow(/cannot parse .*manifest.json/);
  });

  it("parses Python JSON leniently without touching strings", () => {
    expect(parseJsonLenient('{"a": NaN, "b": "Infinity", "c": [Infinity, -Infinity]}')).toEqual({
      a: NaN,
      b: "Infinity",
      c: [Infinity, -Infinity],
    });
  });
});
