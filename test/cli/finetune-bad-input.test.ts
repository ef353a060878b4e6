// Bad input to `blipdiff finetune`: each case exits 2 (usage) or 1 with one line on stderr, before the model loads
// (no "loading the model" line: these need no native finetune), and leaves no output file.
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { fromFloat32 } from "../../src/io/safetensors.js";
import { finetuneFixtureNames, loadFinetuneFixture, writeDrawsFile } from "../helpers/finetune.js";
import { buildCli, expectCliFailure, lines, modelDir, runCli } from "./cli.js";

const tmp = mkdtempSync(path.join(os.tmpdir(), "blipdiff-ftbad-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const name = finetuneFixtureNames()[0];
const fx = loadFinetuneFixture(name);
const cfg = fx.config;
const manifest = JSON.parse(readFileSync(path.join(modelDir(name), "manifest.json"), "utf8"));
const f: number = manifest.config.latent_scale;
const maxSide = 2 * manifest.config.unet_sample_size * f;

/** `finetune` arguments; an override "" drops the option. Output comes from the caller. */
function args(overrides: Record<string, string> = {}, extra: string[] = []): string[] {
  const base: Record<string, string> = {
    "--model": modelDir(name),
    "--subject-image": fx.images[0],
    "--subject": cfg.subject,
    "--resolution": String(cfg.resolution),
    "--steps": "1",
    "--batch-size": "1",
    "--seed": "1",
    "--device": "cpu",
    ...overrides,
  };
  return ["finetune", ...Object.entries(base).flatMap(([k, v]) => (v === "" ? [] : [k, v])), ...extra];
}

/**
 * Runs into a fresh folder and checks: the exit code, one stderr line matching (the run stopped before "loading the
 * model": progress is on), nothing on stdout, nothing left in the folder.
 */
function expectFailure(a: string[], code: number, message: RegExp, out = "ft.safetensors"): void {
  expectCliFailure(tmp, a, code, message, out);
}

describe(`blipdiff finetune: bad input (${name})`, () => {
  buildCli();

  it("no photos, an empty folder, a folder without pictures", () => {
    expectFailure(args({ "--subject-image": "" }), 2, /required option '--subject-image <file\|dir\|->' not specified/);
    const empty = mkdtempSync(path.join(tmp, "empty-"));
    expectFailure(args({ "--subject-image": empty }), 1, new RegExp(`^error: subject image: the folder ${empty} has no jpg, jpeg, png or webp pictures$`));
    const notes = mkdtempSync(path.join(tmp, "notes-"));
    writeFileSync(path.join(notes, "readme.txt"), "dog photos go here");
    mkdirSync(path.join(notes, "sub.png"));
    expectFailure(args({ "--subject-image": notes }), 1, /the folder .*notes-.* has no jpg, jpeg, png or webp pictures/);
  });

  it("a missing, empty or unreadable photo, also inside a folder", () => {
    expectFailure(args({ "--subject-image": path.join(tmp, "missing.png") }), 1, /^error: subject image: file not found: .*missing\.png$/);
    const empty = path.join(tmp, "empty.png");
    writeFileSync(empty, "");
    expectFailure(args({ "--subject-image": empty }), 1, /empty\.png is empty \(0 bytes\)/);
    const folder = mkdtempSync(path.join(tmp, "mixed-"));
    copyFileSync(fx.images[0], path.join(folder, "a.png"));
    writeFileSync(path.join(folder, "b.jpg"), "not a picture at all\n");
    expectFailure(args({ "--subject-image": folder }), 1, /subject image: .*b\.jpg is not a readable image/);
  });

  it("steps, batch size, rank, lr, weight decay and resolution: zero, negative, not an integer, absurd", () => {
    const cases: [Record<string, string>, string[], RegExp][] = [
      [{ "--steps": "0" }, [], /^error: Expected an integer between 1 and 100000 for --steps but received 0$/],
      [{ "--steps": "-5" }, [], /for --steps but received -5/],
      [{ "--steps": "1000000" }, [], /for --steps but received 1000000/],
      [{ "--steps": "2.5" }, [], /option '--steps <n>' argument '2.5' is invalid\. Expected an integer\./],
      [{ "--batch-size": "0" }, [], /^error: Expected an integer between 1 and 64 for --batch-size but received 0$/],
      [{ "--batch-size": "-1" }, [], /for --batch-size but received -1/],
      [{ "--batch-size": "10000" }, [], /for --batch-size but received 10000/],
      [{}, ["--mode", "lora", "--lora-rank", "0"], /^error: Expected an integer between 1 and \d+ \(the model's narrowest attention width\) for --lora-rank but received 0$/],
      [{}, ["--mode", "lora", "--lora-rank", "-4"], /for --lora-rank but received -4/],
      [{}, ["--mode", "lora", "--lora-rank", "100000"], /for --lora-rank but received 100000/],
      [{}, ["--lora-rank", "4"], /^error: --lora-rank applies to --mode lora only \(--mode is full\)$/],
      [{}, ["--lr", "0"], /^error: Expected a number in \(0, 1\] for --lr but received 0$/],
      [{}, ["--lr", "-0.001"], /for --lr but received -0.001/],
      [{}, ["--lr", "1000"], /for --lr but received 1000/],
      [{}, ["--lr", "fast"], /option '--lr <x>' argument 'fast' is invalid/],
      [{}, ["--weight-decay", "-1"], /^error: Expected a number in \[0, 10\) for --weight-decay but received -1$/],
      [{}, ["--weight-decay", "1e9"], /for --weight-decay but received 1000000000/],
      [{ "--resolution": "0" }, [], new RegExp(`^error: Expected an integer between ${f} and 4096 for --resolution but received 0$`)],
      [{ "--resolution": "-64" }, [], /for --resolution but received -64/],
      [{ "--resolution": String(cfg.resolution + 1) }, [], new RegExp(`^error: Expected a multiple of ${f} \\(the model's latent scale\\) for --resolution but received ${cfg.resolution + 1}$`)],
      [{ "--resolution": String(maxSide + f) }, [], new RegExp(`^error: Expected at most ${maxSide} for this model .* for --resolution but received ${maxSide + f}$`)],
      [{ "--resolution": "100000" }, [], /for --resolution but received 100000/],
      [{}, ["--mode", "half"], /option '--mode <mode>' argument 'half' is invalid\. Allowed choices are full, lora\./],
      [{}, ["--save-dtype", "int8"], /option '--save-dtype <dtype>' argument 'int8' is invalid/],
      [{ "--subject": " " }, [], /^error: --subject must not be empty/],
      [{ "--subject": Array.from({ length: 80 }, () => "dog").join(" ") }, [], /^error: Expected a subject whose caption "a \{subject\}" is at most \d+ CLIP tokens/],
    ];
    for (const [o, extra, message] of cases) expectFailure(args(o, extra), 2, message);
  });

  it("an output that is not a .safetensors file, a missing or unwritable folder, an existing file", () => {
    expectFailure(args(), 2, /Expected a \.safetensors file for --output but received .*ft\.bin/, "ft.bin");
    expectFailure(args(), 1, /^error: cannot write .*: the folder .*no-such-dir does not exist$/, path.join(tmp, "no-such-dir", "ft.safetensors"));
    const file = path.join(tmp, "a-file");
    writeFileSync(file, "x");
    expectFailure(args(), 1, /^error: cannot write .*a-file.* is not a folder$/, path.join(file, "ft.safetensors"));
    const dir = mkdtempSync(path.join(tmp, "clobber-"));
    const out = path.join(dir, "old.safetensors");
    writeFileSync(out, "precious");
    const r = runCli([...args(), "-o", out]);
    expect(r.code, r.stderr).toBe(1);
    expect(lines(r.stderr)).toEqual([expect.stringMatching(/old\.safetensors already exists; use --force to overwrite it/)]);
    expect(readFileSync(out, "utf8")).toBe("precious");
    expect(readdirSync(dir)).toEqual(["old.safetensors"]);
  });

  it("a bad --draws file exits 1, naming the problem", () => {
    const junk = path.join(tmp, "junk.safetensors");
    writeFileSync(junk, "not a safetensors file");
    expectFailure(args({}, ["--draws", junk]), 1, /^error: --draws .*junk\.safetensors is not a usable draws file: the header length \d+ does not fit/);
    expectFailure(args({}, ["--draws", path.join(tmp, "nope.safetensors")]), 1, /^error: --draws file not found: .*nope\.safetensors$/);
    const noNoise = writeDrawsFile(fx, path.join(tmp, "no-noise.safetensors"), { edit: (t) => t.delete("noise") });
    expectFailure(args({}, ["--draws", noNoise]), 1, /is not a usable draws file: no noise tensor/);
    const stray = writeDrawsFile(fx, path.join(tmp, "stray.safetensors"), { edit: (t) => t.set("latents", fromFloat32(new Float32Array(1), [1])) });
    expectFailure(args({}, ["--draws", stray]), 1, /unexpected tensor latents/);
  });

  it("a --draws file that disagrees with the options exits 2, naming the tensor, its shape and what the options need", () => {
    const draws = writeDrawsFile(fx, path.join(tmp, "draws.safetensors"), { lora: true });
    const both = ["--subject-image", fx.images[1]];
    const d = (o: Record<string, string>, extra: string[] = []): string[] =>
      args({ "--steps": "", "--batch-size": "", ...o }, ["--draws", draws, ...both, "--lr", String(cfg.lr), ...extra]);
    const S = cfg.steps;
    const B = cfg.batch;
    const h = cfg.resolution / f;
    const C = manifest.config.latent_channels;
    expectFailure(d({ "--steps": String(S + 1) }), 2, new RegExp(`^error: --draws .*draws\\.safetensors: index has shape \\[${S}, ${B}\\], but --steps ${S + 1} and --batch-size ${B} need \\[${S + 1}, ${B}\\]$`));
    expectFailure(d({ "--batch-size": "1" }), 2, new RegExp(`index has shape \\[${S}, ${B}\\], but --steps ${S} and --batch-size 1 need \\[${S}, 1\\]`));
    expectFailure(
      d({ "--resolution": String(cfg.resolution * 2) }),
      2,
      new RegExp(`eps_vae has shape \\[${S}, ${B}, ${C}, ${h}, ${h}\\], but --steps ${S}, --batch-size ${B}, ${C} latent channels and --resolution ${cfg.resolution * 2} \\(latent scale ${f}\\) need \\[${S}, ${B}, ${C}, ${2 * h}, ${2 * h}\\]`),
    );
    expectFailure(d({}, ["--mode", "lora", "--lora-rank", String(cfg.lora_rank + 1)]), 2, new RegExp(`lora\\.down\\.weight has shape \\[${cfg.lora_rank}, \\d+\\], but --lora-rank ${cfg.lora_rank + 1} needs \\[${cfg.lora_rank + 1}, in\\]`));
    // One picture where the draws index two.
    const one = args({ "--steps": "", "--batch-size": "" }, ["--draws", draws]);
    expectFailure(one, 2, /index holds 1 at \[\d+, \d+\], but there is 1 picture \(indices 0..0\)/);
  });

  it("--subject-embedding: a fine-tuned file of another base model is refused by generate, naming both models", async () => {
    const { baseModelOf, finetunedSubject, saveFinetunedSubject } = await import("../../src/finetune/file.js");
    const { readManifest } = await import("../../src/pipeline/manifest.js");
    const m = readManifest(modelDir(name));
    const base = baseModelOf(m);
    const q = manifest.config.num_query_tokens;
    const dim = manifest.config.cross_attention_dim;
    const file = path.join(tmp, "other-base.safetensors");
    const e = finetunedSubject({ data: new Float32Array(q * dim).fill(0.1), shape: [1, q, dim] }, { "conv_in.bias": fromFloat32(Float32Array.of(1), [1]) as never }, {
      mode: "full", subject: "dog", sourceImages: [], baseModel: { checkpoint: "someone/else", sha256: { ...base.sha256, unet: "e".repeat(64) } },
      hyperparameters: {}, losses: [], saveDtype: "float32",
    });
    saveFinetunedSubject(file, e);
    const gen = ["generate", "--model", modelDir(name), "--subject-embedding", file, "--prompt", "x", "--width", String(cfg.resolution), "--height", String(cfg.resolution), "--steps", "1", "--device", "cpu"];
    expectFailure(gen, 1, new RegExp(`^error: .*other-base\\.safetensors was fine-tuned from "someone/else" \\(unet sha256 e{12}\\) but --model .* is "${manifest.source.checkpoint}" \\(unet sha256 ${m.identity.unet.slice(0, 12)}\\)`), "x.png");
  });
});
