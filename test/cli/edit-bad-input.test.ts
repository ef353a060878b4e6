// Bad input to `blipdiff edit`: each case exits 2 (usage) or 1 with one line on stderr, before the model loads (progress
// is on, so a run that got as far as "loading the model" would print more), and leaves no output file.
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import sharp from "sharp";
import { afterAll, describe, expect, it } from "vitest";
import { serializeSubjectEmbedding } from "../../src/pipeline/embedding.js";
import { fixtureNames, fixturesRoot } from "../helpers/fixtures.js";
import { buildCli, expectCliFailure, lines, modelDir, runCli } from "./cli.js";

const tmp = mkdtempSync(path.join(os.tmpdir(), "blipdiff-editbad-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const name = fixtureNames().find((n) => existsSync(path.join(fixturesRoot, n, "edit.json")));
if (!name) throw new Error("no fixture with an edit.json: the editing tests would check nothing");
const dir = path.join(fixturesRoot, name);
const json = JSON.parse(readFileSync(path.join(dir, "edit.json"), "utf8"));
const gen = json.cases.p2p_generated.params;
const realCase = json.cases.p2p_real;
const manifest = JSON.parse(readFileSync(path.join(modelDir(name), "manifest.json"), "utf8"));
const f: number = manifest.config.latent_scale;
const P: number = manifest.config.text_max_length;
const nq: number = manifest.config.num_query_tokens;
const maxTokens = 4 * manifest.config.unet_sample_size ** 2;
const photo = path.join(dir, realCase.real_image.file);

/** `edit` arguments; an override "" drops the option. Output comes from the caller. */
function args(overrides: Record<string, string> = {}, extra: string[] = []): string[] {
  const base: Record<string, string> = {
    "--model": modelDir(name!),
    "--subject-image": path.join(dir, json.cases.p2p_generated.reference_image),
    "--subject": gen.cond_subject,
    "--source-subject": gen.src_subject,
    "--prompt": gen.prompt,
    "--steps": "1",
    "--width": String(gen.width),
    "--height": String(gen.height),
    "--seed": "1",
    "--device": "cpu",
    ...overrides,
  };
  return ["edit", ...Object.entries(base).flatMap(([k, v]) => (v === "" ? [] : [k, v])), ...extra];
}

function expectFailure(a: string[], code: number, message: RegExp, out = "edited.png"): void {
  expectCliFailure(tmp, a, code, message, out);
}

/** `words(k)`: k one-token words. */
const words = (k: number): string => new Array(k).fill("dog").join(" ");

describe(`blipdiff edit: bad input (${name})`, () => {
  buildCli();

  it("prompts that do not fit the text window", () => {
    // "a {target} {prompt}" with a one-token target: 2 + k content tokens; the window is P - nq - 2.
    const editRoom = P - nq - 2;
    expectFailure(
      args({ "--prompt": words(editRoom - 1) }),
      2,
      new RegExp(`^error: Expected a prompt whose edited prompt "a \\{target subject\\} \\{prompt\\}" is at most ${editRoom} CLIP tokens \\(${P} text positions less ${nq} subject tokens and 2 markers\\) for --prompt but received text of ${editRoom + 1} tokens$`),
    );
    // A long source subject: the source prompt overflows P while the edited one fits.
    expectFailure(
      args({ "--source-subject": words(nq + 5), "--prompt": words(P - 2 - nq - 5) }),
      2,
      new RegExp(`^error: Expected a prompt whose source prompt "a \\{source subject\\} \\{prompt\\}" is at most ${P - 2} CLIP tokens \\(${P} text positions less 2 markers\\) for --prompt but received text of ${P - 1} tokens$`),
    );
    expectFailure(
      args({ "--negative-prompt": words(P - 1) }),
      2,
      new RegExp(`^error: Expected a negative prompt of at most ${P - 2} CLIP tokens \\(${P} text positions less 2 markers\\) for --negative-prompt but received text of ${P - 1} tokens$`),
    );
  });

  it("guidance <= 1, fractions outside [0, 1], bad steps, sizes and seeds", () => {
    const side = Math.floor(Math.sqrt(maxTokens)) * f;
    const cases: [Record<string, string>, string[], RegExp][] = [
      [{ "--guidance": "1" }, [], /^error: Expected a number > 1 and <= 1000 \(editing needs classifier-free guidance\) for --guidance but received 1$/],
      [{ "--guidance": "0.5" }, [], /for --guidance but received 0.5$/],
      [{ "--guidance": "-3" }, [], /for --guidance but received -3$/],
      [{ "--guidance": "lots" }, [], /option '--guidance <g>' argument 'lots' is invalid\. Expected a number\./],
      [{}, ["--cross-replace", "1.5"], /^error: Expected a number in \[0, 1\] for --cross-replace but received 1.5$/],
      [{}, ["--cross-replace", "-0.2"], /for --cross-replace but received -0.2$/],
      [{}, ["--self-replace", "-0.1"], /^error: Expected a number in \[0, 1\] for --self-replace but received -0.1$/],
      [{}, ["--self-replace", "2"], /for --self-replace but received 2$/],
      [{}, ["--blend-threshold", "1.01"], /^error: Expected a number in \[0, 1\] for --blend-threshold but received 1.01$/],
      [{}, ["--blend-threshold", "NaN"], /option '--blend-threshold <f>' argument 'NaN' is invalid/],
      [{ "--steps": "0" }, [], /^error: Expected an integer between 1 and \d+ for --steps but received 0$/],
      [{ "--steps": "100000" }, [], /for --steps but received 100000$/],
      [{ "--steps": "ten" }, [], /option '--steps <n>' argument 'ten' is invalid\. Expected an integer\./],
      [{ "--seed": "-1" }, [], /for --seed but received -1$/],
      [{ "--width": String(gen.width + 1) }, [], new RegExp(`^error: Expected a multiple of ${f} \\(the model's latent scale\\) for --width but received ${gen.width + 1}$`)],
      [{ "--height": "0" }, [], /for --height but received 0$/],
      [{ "--width": String(side + f), "--height": String(side) }, [], new RegExp(`^error: Expected at most ${maxTokens} latent tokens .*: use a smaller --width/--height for size but received "${side + f}x${side}"$`)],
      [{}, ["--inversion-steps", "3"], /^error: --inversion-steps applies to editing a photo \(--image\) only; a generated source is not inverted$/],
      [{ "--width": "", "--height": "" }, ["--image", photo], /^error: --seed applies to a generated source only \(without --image\); editing a photo draws nothing at random$/],
      [{ "--seed": "" }, ["--image", photo, "--inversion-steps", "0"], /^error: Expected an integer between 1 and \d+ for --inversion-steps but received 0$/],
      [{ "--subject": "" }, [], /^error: --subject is required with --subject-image/],
      [{ "--subject-image": "" }, [], /^error: missing --subject-image \(or --subject-embedding\)$/],
      [{ "--source-subject": "" }, [], /required option '--source-subject <text>' not specified/],
      [{ "--source-subject": "  " }, [], /^error: Expected a non-empty string for --source-subject but received "  "$/],
      [{ "--prompt": "" }, [], /required option '--prompt <text>' not specified/],
      [{ "--device": "gpu" }, [], /^error: Expected auto, cpu, cuda or cuda:N for device but received "gpu"$/],
      [{ "--dtype": "float16" }, [], /^error: Expected float32 on the cpu device for dtype but received "float16"$/],
    ];
    for (const [o, extra, message] of cases) expectFailure(args(o, extra), 2, message);
  });

  it("a photo that cannot be read, or is smaller than the latent scale", async () => {
    const img = (o: Record<string, string>, extra: string[]) => args({ "--seed": "", "--width": "", "--height": "", ...o }, extra);
    expectFailure(img({}, ["--image", path.join(tmp, "missing.png")]), 1, /^error: --image: file not found: .*missing\.png$/);
    const text = path.join(tmp, "notes.png");
    writeFileSync(text, "not an image at all\n");
    expectFailure(img({}, ["--image", text]), 1, /^error: --image: .*notes\.png is not a readable image/);
    const empty = path.join(tmp, "empty.jpg");
    writeFileSync(empty, "");
    expectFailure(img({}, ["--image", empty]), 1, /^error: --image: .*empty\.jpg is empty \(0 bytes\)$/);
    expectFailure(img({}, ["--image", tmp]), 1, /^error: --image: .* is a folder, not an image file$/);
    if (f > 1) {
      const onePixel = await sharp({ create: { width: 1, height: 1, channels: 3, background: { r: 9, g: 9, b: 9 } } }).png().toBuffer();
      const tiny = path.join(tmp, "tiny.png");
      writeFileSync(tiny, onePixel);
      expectFailure(img({}, ["--image", tiny]), 1, new RegExp(`^error: --image: .*tiny\\.png is 1x1 pixels, smaller than the model's latent scale ${f}; give --width and --height to enlarge it$`));
    }
  });

  it("a model exported without attention control, a missing model", () => {
    const old = path.join(tmp, "no-control");
    cpSync(modelDir(name), old, { recursive: true });
    const m = JSON.parse(readFileSync(path.join(old, "manifest.json"), "utf8"));
    delete m.capabilities;
    delete m.attention_control;
    writeFileSync(path.join(old, "manifest.json"), JSON.stringify(m));
    expectFailure(
      args({ "--model": old }),
      1,
      /^error: edit needs a model exported with "attention_control", which .*no-control lacks \(its manifest's capabilities: none\); re-convert the model with `blipdiff convert`$/,
    );
    expectFailure(args({ "--model": path.join(tmp, "no-model") }), 1, /^error: model folder not found: .*no-model; .*blipdiff convert/);
  });

  it("subject inputs: both, a bad embedding file", () => {
    const q = manifest.config.num_query_tokens;
    const d = manifest.config.cross_attention_dim;
    const emb = (file: string, shape: number[], fill: (i: number) => number): string => {
      const data = new Float32Array(shape.reduce((a, b) => a * b, 1)).map((_, i) => fill(i));
      writeFileSync(file, serializeSubjectEmbedding({ queryEmbeds: { data, shape }, subject: "dog", sourceImages: ["x.png"], model: {} }));
      return file;
    };
    const good = emb(path.join(tmp, "good.safetensors"), [1, q, d], () => 0.1);
    expectFailure(args({}, ["--subject-embedding", good]), 2, /^error: give either --subject-image or --subject-embedding, not both$/);
    const wrong = emb(path.join(tmp, "wrong.safetensors"), [1, q + 1, d], () => 0.1);
    expectFailure(args({ "--subject-image": "", "--subject": "" }, ["--subject-embedding", wrong]), 1, new RegExp(`wrong\\.safetensors has shape \\[1, ${q + 1}, ${d}\\], this model needs \\[1, ${q}, ${d}\\]`));
    const nan = emb(path.join(tmp, "nan.safetensors"), [1, q, d], (i) => (i === 3 ? Number.NaN : 0.1));
    expectFailure(args({ "--subject-image": "", "--subject": "" }, ["--subject-embedding", nan]), 1, /nan\.safetensors .*NaN/);
    expectFailure(args({ "--subject-image": "", "--subject": "" }, ["--subject-embedding", path.join(tmp, "none.safetensors")]), 1, /^error: subject embedding not found: .*none\.safetensors$/);
    const junk = path.join(tmp, "junk.safetensors");
    writeFileSync(junk, "junk");
    expectFailure(args({ "--subject-image": "", "--subject": "" }, ["--subject-embedding", junk]), 1, /junk\.safetensors is not a blipdiff subject/);
  });

  it("outputs: a folder, another format, a missing folder, stdout with --json, one file twice", () => {
    expectFailure(args(), 2, /^error: edit writes one file: give --output a file name ending in \.png, \.jpg or \.webp, not a folder$/, "out/");
    expectFailure(args(), 2, /^error: Expected an output file ending in \.png, \.jpg, \.jpeg or \.webp for output but received .*edited\.gif"$/, "edited.gif");
    expectFailure(args(), 1, /^error: cannot write .*: the folder .*no-such-dir does not exist$/, path.join(tmp, "no-such-dir", "x.png"));
    const r = runCli([...args({}, ["--json"]), "-o", "-"]);
    expect(r.code, r.stderr).toBe(2);
    expect(lines(r.stderr)).toEqual(["error: --json and -o - both write to stdout; pick one"]);
    expect(r.stdout.length).toBe(0);
    const d = mkdtempSync(path.join(tmp, "same-"));
    expectFailure(args({}, ["--source-output", path.join(d, "x.png")]), 2, /^error: --source-output and --output name the same file$/, path.join(d, "x.png"));
    expectFailure(args({}, ["--source-output", "-"]), 2, /^error: --source-output writes a file/);
    expectFailure(args({}, ["--source-output", path.join(d, "s.tiff")]), 2, /for output but received .*s\.tiff"$/);
    expect(readdirSync(d)).toEqual([]);
  });

  it("an existing output or source output is not overwritten without --force; nothing else is written", () => {
    const d = mkdtempSync(path.join(tmp, "clobber-"));
    const out = path.join(d, "edited.png");
    const src = path.join(d, "source.png");
    writeFileSync(out, "precious");
    let r = runCli([...args(), "-o", out, "--source-output", src]);
    expect(r.code, r.stderr).toBe(1);
    expect(lines(r.stderr)).toEqual([expect.stringMatching(/edited\.png already exists; use --force to overwrite it/)]);
    expect(readdirSync(d)).toEqual(["edited.png"]);
    rmSync(out);
    writeFileSync(src, "precious");
    r = runCli([...args(), "-o", out, "--source-output", src]);
    expect(r.code, r.stderr).toBe(1);
    expect(lines(r.stderr)).toEqual([expect.stringMatching(/source\.png already exists; use --force to overwrite it/)]);
    expect(readdirSync(d)).toEqual(["source.png"]);
    expect(readFileSync(src, "utf8")).toBe("precious");
    mkdirSync(path.join(d, "folder.png"));
    r = runCli([...args(), "-o", path.join(d, "folder.png")]);
    expect(r.code, r.stderr).toBe(2);
    expect(lines(r.stderr)).toEqual([expect.stringMatching(/cannot write .*folder\.png: it is a folder/)]);
  });
});
