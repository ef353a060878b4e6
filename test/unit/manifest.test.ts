import { copyFileSync, mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ATTENTION_CONTROL, parseJsonLenient, readManifest, requireCapability, summarizeManifest } from "../../src/pipeline/manifest.js";
import { fixtureNames, loadFixture } from "./golden.js";

const root = mkdtempSync(path.join(os.tmpdir(), "blipdiff-manifest-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const fx = loadFixture(fixtureNames()[0]);

function manifest(): Record<string, any> {
  const mod = (f: string) => ({ file: f, sha256: "0".repeat(64), weights: { file: f.replace(/\.pt$/, ".safetensors"), sha256: "1".repeat(64) } });
  return {
    format: "blipdiff-torchscript",
    format_version: 2,
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
  for (const f of ["qformer", "text_encoder", "unet", "vae_decoder", "vae_encoder"]) {
    writeFileSync(path.join(dir, `${f}.pt`), "x");
    writeFileSync(path.join(dir, `${f}.safetensors`), "x");
  }
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
    expect(m.spec.modules.unet.weights).toEqual({ path: path.join(dir, "unet.safetensors"), sha256: "1".repeat(64) });
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
    expect(() => readManifest(folder((m) => (m.format_version = 3)))).toThrow(/format_version 3, this blipdiff reads versions 1 and 2/);
  });

  it("reads format 1 (tensors inside the archives) and requires format 2's weights files", () => {
    const v1 = readManifest(folder((m) => {
      m.format_version = 1;
      for (const entry of Object.values(m.modules) as Record<string, unknown>[]) delete entry.weights;
    }));
    expect(v1.spec.modules.unet.weights).toBeUndefined();
    expect(v1.identity.unet).toBe("0".repeat(64)); // format 1: the archive holds the weights
    expect(summarizeManifest(v1)).toMatchObject({ format: "blipdiff-torchscript v1", modules: { unet: { file: "unet.pt", bytes: 1 } } });
    const v2 = readManifest(folder());
    expect(v2.identity.unet).toBe("1".repeat(64)); // format 2: the weights file's sha256
    expect(summarizeManifest(v2)).toMatchObject({ format: "blipdiff-torchscript v2", modules: { unet: { file: "unet.pt", weights: "unet.safetensors", bytes: 2 } } });
    expect(() => readManifest(folder((m) => delete m.modules.unet.weights))).toThrow(/expected an object for modules.unet.weights; .*blipdiff convert/);
    expect(() => readManifest(folder((m) => (m.modules.vae_decoder.weights.sha256 = 7)))).toThrow(/expected a sha256 for modules.vae_decoder.weights.sha256/);
    const dir = folder();
    unlinkSync(path.join(dir, "unet.safetensors"));
    expect(() => readManifest(dir)).toThrow(/incomplete: missing unet.safetensors; .*blipdiff convert/);
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

  it("reads the optional config.qformer_max_text_length and validates it", () => {
    expect(readManifest(folder()).qformerMaxTextLength).toBeUndefined();
    const m = readManifest(folder((x) => (x.config.qformer_max_text_length = 512)));
    expect(m.qformerMaxTextLength).toBe(512);
    expect(summarizeManifest(m).qformerMaxTextLength).toBe(512);
    for (const bad of [0, -3, 2.5, "512", null, true])
      expect(() => readManifest(folder((x) => (x.config.qformer_max_text_length = bad))))
        .toThrow(/expected a positive integer for config.qformer_max_text_length/);
  });

  it("reads capabilities (absent in exports before 0.3.0: none) and refuses edit without attention control", () => {
    const old = readManifest(folder());
    expect(old.capabilities).toEqual([]);
    expect(() => requireCapability(old, ATTENTION_CONTROL, "edit")).toThrow(
      /^edit needs a model exported with "attention_control", which .* lacks \(its manifest's capabilities: none\); re-convert the model with `blipdiff convert`$/,
    );
    const other = readManifest(folder((x) => (x.capabilities = ["something_else"])));
    expect(() => requireCapability(other, ATTENTION_CONTROL, "edit")).toThrow(/capabilities: something_else\); re-convert/);
    const m = readManifest(folder((x) => (x.capabilities = ["attention_control"])));
    expect(m.capabilities).toEqual(["attention_control"]);
    expect(summarizeManifest(m).capabilities).toEqual(["attention_control"]);
    expect(() => requireCapability(m, ATTENTION_CONTROL, "edit")).not.toThrow();
    for (const bad of ["attention_control", [1], [""], null, {}])
      expect(() => readManifest(folder((x) => (x.capabilities = bad))))
        .toThrow(/expected a list of strings for manifest.capabilities/);
  });

  it("the exported fixtures have attention control (exporter 0.3.0)", async () => {
    const { exportRoot } = await import("../helpers/fixtures.js");
    for (const name of fixtureNames()) expect(readManifest(path.join(exportRoot, name, "ckpt")).capabilities).toContain(ATTENTION_CONTROL);
  });

  it("parses Python JSON leniently without touching strings", () => {
    expect(parseJsonLenient('{"a": NaN, "b": "Infinity", "c": [Infinity, -Infinity]}')).toEqual({
      a: NaN,
      b: "Infinity",
      c: [Infinity, -Infinity],
    });
  });
});

describe("manifest paths stay inside the model folder", () => {
  // A file outside every model folder that a hostile manifest points at.
  const secretDir = path.join(root, "outside");
  mkdirSync(secretDir, { recursive: true });
  const secret = path.join(secretDir, "secret.pt");
  writeFileSync(secret, "not yours");

  const keys = [
    { key: "modules.unet.file", set: (m: Record<string, any>, f: string) => (m.modules.unet.file = f) },
    {
      key: "modules.controlnet.file",
      set: (m: Record<string, any>, f: string) => (m.modules.controlnet = { file: f, sha256: "0".repeat(64), weights: { file: "unet.safetensors", sha256: "1".repeat(64) } }),
    },
    { key: "modules.unet.weights.file", set: (m: Record<string, any>, f: string) => (m.modules.unet.weights.file = f) },
    { key: "tokenizers.clip.file", set: (m: Record<string, any>, f: string) => (m.tokenizers.clip.file = f) },
    { key: "tokenizers.qformer.file", set: (m: Record<string, any>, f: string) => (m.tokenizers.qformer.file = f) },
  ];
  const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

  for (const { key, set } of keys) {
    it(`refuses an absolute ${key}, naming the key and the path`, () => {
      const dir = folder((m) => set(m, secret));
      expect(() => readManifest(dir)).toThrow(new RegExp(`manifest.json: ${esc(key)} "${esc(secret)}" is an absolute path; .*inside the model folder`));
    });

    it(`refuses a ../ ${key} that leaves the folder`, () => {
      const rel = path.join("..", "outside", "secret.pt");
      expect(() => readManifest(folder((m) => set(m, rel)))).toThrow(new RegExp(`${esc(key)} "${esc(rel)}" leaves the model folder;`));
      // Out through the parent and back into the same folder is fine: the check is on the resolved path.
      const back = path.join("..", `m${n}`, "unet.pt");
      expect(readManifest(folder((m) => set(m, back))).dir).toBe(path.join(root, `m${n - 1}`));
      expect(() => readManifest(folder((m) => set(m, "sub/../../x.pt")))).toThrow(/leaves the model folder;/);
    });

    it(`refuses a ${key} symlink (or symlinked folder) that points outside`, () => {
      const dir = folder((m) => set(m, "evil.pt"));
      symlinkSync(secret, path.join(dir, "evil.pt"));
      expect(() => readManifest(dir)).toThrow(new RegExp(`${esc(key)} "evil.pt" leaves the model folder through a symlink \\(it resolves to ${esc(secret)}\\)`));
      const dir2 = folder((m) => set(m, "linked/secret.pt"));
      symlinkSync(secretDir, path.join(dir2, "linked"));
      expect(() => readManifest(dir2)).toThrow(new RegExp(`${esc(key)} "linked/secret.pt" leaves the model folder through a symlink`));
      // A name below a symlinked outside folder that does not exist is refused too, not reported missing.
      const dir3 = folder((m) => set(m, "linked/none.pt"));
      symlinkSync(secretDir, path.join(dir3, "linked"));
      expect(() => readManifest(dir3)).toThrow(/leaves the model folder through a symlink/);
    });
  }

  it("accepts symlinks that stay inside the folder, and a model folder reached through a symlink", () => {
    const dir = folder((m) => {
      m.modules.unet.file = "alias.pt";
      m.tokenizers.clip.file = "tok-link/tokenizer.json";
    });
    symlinkSync("unet.pt", path.join(dir, "alias.pt"));
    symlinkSync("tokenizer", path.join(dir, "tok-link"));
    const m = readManifest(dir);
    expect(m.spec.modules.unet.path).toBe(path.join(dir, "alias.pt"));
    expect(m.tokenizers.clip.file).toBe(path.join(dir, "tok-link", "tokenizer.json"));
    const via = path.join(root, "via-link");
    symlinkSync(dir, via);
    expect(readManifest(via).spec.modules.unet.path).toBe(path.join(via, "alias.pt"));
  });

  it("refuses before reading: info never sees the outside file", () => {
    const dir = folder((m) => (m.modules.unet.file = "../outside/secret.pt"));
    // An incomplete folder with a bad path reports the bad path, not a missing file.
    unlinkSync(path.join(dir, "vae_decoder.pt"));
    expect(() => summarizeManifest(readManifest(dir))).toThrow(/modules.unet.file .* leaves the model folder/);
    renameSync(secret, `${secret}.moved`);
    try {
      // A missing outside target is refused the same way: nothing is probed outside the folder.
      expect(() => readManifest(dir)).toThrow(/leaves the model folder/);
    } finally {
      renameSync(`${secret}.moved`, secret);
    }
  });
});
