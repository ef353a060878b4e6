// Bad input through the CLI: each case exits 1 (2 for usage errors) with a one-line error and leaves
// no output file behind.
import { spawnSync } from "node:child_process";
import { appendFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { crc32 } from "../../src/image/png-text.js";
import { fixtureNames, loadFixture } from "../unit/golden.js";
import { serializeSubjectEmbedding } from "../../src/pipeline/embedding.js";
import { addonBuilt, buildCli, expectCliFailure, lines, modelDir, repoRoot, runCli } from "./cli.js";

const tmp = mkdtempSync(path.join(os.tmpdir(), "blipdiff-bad-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** A PNG whose header claims width x height pixels (no real pixel data). */
function hugePngHeader(width: number, height: number): Buffer {
  const chunk = (type: string, data: Buffer): Buffer => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(Buffer.from(type, "latin1"), data));
    return Buffer.concat([len, Buffer.from(type, "latin1"), data, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  return Buffer.concat([Buffer.from("89504e470d0a1a0a", "hex"), chunk("IHDR", ihdr), chunk("IDAT", Buffer.alloc(0)), chunk("IEND", Buffer.alloc(0))]);
}

const name = fixtureNames()[0];
const fx = loadFixture(name);
const k = fx.json.cases.pipeline.cases.nocfg.call_kwargs;

function args(overrides: Record<string, string> = {}): string[] {
  const base: Record<string, string> = {
    "--model": modelDir(name),
    "--subject-image": path.join(fx.dir, k.reference_image),
    "--subject": k.source_subject_category,
    "--prompt": k.prompt,
    "--steps": "2",
    "--guidance": "1",
    "--width": String(k.width),
    "--height": String(k.height),
    "--seed": "1",
    "--device": "cpu",
    ...overrides,
  };
  return ["generate", "--quiet", ...Object.entries(base).flatMap(([key, v]) => (v === "" ? [] : [key, v]))];
}

/** Runs into a fresh output folder and checks: exit code, a single error line matching, no files left. */
function expectFailure(a: string[], code: number, message: RegExp, out = "out.png"): void {
  expectCliFailure(tmp, a, code, message, out);
}

/**
 * Like expectFailure, with progress on (no --quiet): the error must be the only line, so the run stopped before
 * "loading the model", i.e. the check ran before the slow work.
 */
function expectEarlyFailure(a: string[], code: number, message: RegExp, out = "out.png"): void {
  const i = a.indexOf("--quiet");
  expectFailure(i >= 0 ? [...a.slice(0, i), ...a.slice(i + 1)] : a, code, message, out);
}

/** Every file under a folder, recursively. */
function walk(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? walk(path.join(dir, e.name)) : [path.join(dir, e.name)],
  );
}

/** A subject-embedding file for `encode`'s format with the given shape and values. */
function embeddingFile(file: string, shape: number[], fill: (i: number) => number): string {
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1)).map((_, i) => fill(i));
  writeFileSync(file, serializeSubjectEmbedding({ queryEmbeds: { data, shape }, subject: "dog", sourceImages: ["x.png"], model: {} }));
  return file;
}

describe("bad input (CLI)", () => {
  buildCli();

  it("has the native addon (a missing prerequisite fails, it does not skip)", () => {
    expect(addonBuilt(), "native/build/Release/blipdiff.node: run `npm run build:native`").toBe(true);
  });

  it("usage errors exit 2", () => {
    expectFailure(args({ "--steps": "0" }), 2, /Expected an integer between 1 and \d+ for steps but received 0/);
    expectFailure(args({ "--steps": "1001" }), 2, /for steps but received 1001/);
    // steps_offset 1 (tiny-a) makes 1000 steps reach timestep 1000: refused up front, like any range error.
    expectFailure(args({ "--steps": "1000" }), 2, /Expected an integer between 1 and 999 for steps but received 1000/);
    expectFailure(args({ "--steps": "ten" }), 2, /--steps .* argument 'ten' is invalid/);
    expectFailure(args({ "--guidance": "-1" }), 2, /for guidance but received -1/);
    expectFailure(args({ "--width": "33" }), 2, /Expected a multiple of \d+ \(the model's latent scale\) for width but received 33/);
    expectFailure(args({ "--height": "0" }), 2, /for height but received 0/);
    expectFailure(args({ "--width": "100000" }), 2, /for width but received 100000/);
    expectFailure([...args(), "--scheduler", "euler"], 2, /Expected one of pndm, ddim, dpmpp-2m for scheduler but received "euler"/);
    expectFailure(args({ "--prompt": "" }).filter((x) => x !== "--prompt"), 2, /required option '--prompt <text>' not specified/);
    expectFailure(args({ "--subject": "" }), 2, /--subject is required with --subject-image/);
    expectFailure(args({ "--device": "gpu" }), 2, /Expected auto, cpu, cuda or cuda:N for device but received "gpu"/);
    expectFailure(args(), 2, /for output but received .*out.gif/, "out.gif");
  });

  it("bad pictures exit 1", () => {
    const empty = path.join(tmp, "empty.png");
    writeFileSync(empty, "");
    const text = path.join(tmp, "notes.png");
    writeFileSync(text, "not an image at all\n");
    const huge = path.join(tmp, "huge.png");
    writeFileSync(huge, hugePngHeader(30000, 30000));
    expectFailure(args({ "--subject-image": path.join(tmp, "missing.png") }), 1, /^error: subject image: file not found: .*missing.png$/);
    expectFailure(args({ "--subject-image": empty }), 1, /empty.png is empty \(0 bytes\)/);
    expectFailure(args({ "--subject-image": text }), 1, /notes.png is not a readable image/);
    expectFailure(args({ "--subject-image": huge }), 1, /huge.png is too large/);
  });

  it("bad model folders exit 1 and name the fix", () => {
    expectFailure(args({ "--model": path.join(tmp, "no-model") }), 1, /model folder not found: .*blipdiff convert/);
    const incomplete = path.join(tmp, "incomplete");
    cpSync(modelDir(name), incomplete, { recursive: true });
    unlinkSync(path.join(incomplete, "unet.pt"));
    expectFailure(args({ "--model": incomplete }), 1, /incomplete: missing unet.pt; .*blipdiff convert/);
    const version = path.join(tmp, "version");
    cpSync(modelDir(name), version, { recursive: true });
    const m = path.join(version, "manifest.json");
    writeFileSync(m, readFileSync(m, "utf8").replace(/"format_version": 2/, '"format_version": 99'));
    expectFailure(args({ "--model": version }), 1, /format_version 99, this blipdiff reads versions 1 and 2; .*blipdiff convert/);
  });

  it("unwritable output paths exit 1 before any work", () => {
    expectFailure(args(), 1, /cannot write .*: the folder .*no-such-dir does not exist/, path.join(tmp, "no-such-dir", "x.png"));
    const file = path.join(tmp, "a-file");
    writeFileSync(file, "x");
    expectFailure(args(), 1, /cannot write .*a-file.* is not a folder/, path.join(file, "x.png"));
  });

  it("checks what it can before loading the model", () => {
    const manifest = JSON.parse(readFileSync(path.join(modelDir(name), "manifest.json"), "utf8"));
    const { latent_scale: f, unet_sample_size: s, num_query_tokens: q, cross_attention_dim: d } = manifest.config;
    expect(s, "the exporter records unet_sample_size").toBeGreaterThan(0);
    // The bound is in latent tokens (4 x sample_size^2), not pixels: a long thin image within it passes the check.
    const side = 2 * s * f;
    expectEarlyFailure(args({ "--width": String(side + f), "--height": String(side) }), 2, new RegExp(`at most ${4 * s * s} latent tokens .* for size but received "${side + f}x${side}"`));
    expectEarlyFailure(args({ "--subject": Array.from({ length: 600 }, (_, i) => `word${i}`).join(" ") }), 2, /at most \d+ word pieces \(the Q-Former's text limit\) for subject/);
    expectEarlyFailure(args({ "--dtype": "float16" }), 2, /Expected float32 on the cpu device for dtype but received "float16"/);
    const control = path.join(fx.dir, "inputs", "condition.png");
    expectEarlyFailure([...args(), "--control-image", control], 1, /--control-image needs a model exported with a ControlNet/);
    const wrong = embeddingFile(path.join(tmp, "wrong-shape.safetensors"), [1, q + 1, d], (i) => i / 1000);
    expectEarlyFailure(args({ "--subject-image": "", "--subject": "", "--subject-embedding": wrong }), 1, new RegExp(`wrong-shape.safetensors has shape \\[1, ${q + 1}, ${d}\\], this model needs \\[1, ${q}, ${d}\\]`));
    const nan = embeddingFile(path.join(tmp, "nan.safetensors"), [1, q, d], (i) => (i === 5 ? Number.NaN : 0.1));
    expectEarlyFailure(args({ "--subject-image": "", "--subject": "", "--subject-embedding": nan }), 1, /nan.safetensors .*NaN/);
    const inf = embeddingFile(path.join(tmp, "inf.safetensors"), [1, q, d], (i) => (i === 7 ? Number.POSITIVE_INFINITY : 0.1));
    expectEarlyFailure(args({ "--subject-image": "", "--subject": "", "--subject-embedding": inf }), 1, /inf.safetensors .*Infinity/);
  });

  it("-o folder/ creates nothing when the run fails", () => {
    // Fails in validation, and (bad checksum) after validation, during the load: neither leaves the folder behind.
    expectEarlyFailure(args({ "--steps": "0" }), 2, /for steps but received 0/, "new-folder/");
    const bad = path.join(tmp, "bad-sha-dir");
    cpSync(modelDir(name), bad, { recursive: true });
    appendFileSync(path.join(bad, "unet.pt"), "x");
    expectFailure(args({ "--model": bad }), 1, /sha256|checksum/i, path.join("new-folder", "sub") + path.sep);
  });

  it("-o NAME.png that is a folder is refused, not filled", () => {
    const dir = mkdtempSync(path.join(tmp, "folder-png-"));
    const folder = path.join(dir, "out.png");
    mkdirSync(folder);
    const r = runCli([...args(), "-o", folder]);
    expect(r.code, r.stderr).toBe(2);
    expect(lines(r.stderr)).toEqual([expect.stringMatching(/out.png is a folder; .* end the name with a slash/)]);
    expect(readdirSync(folder)).toEqual([]);
  });

  it("an existing output is not overwritten without --force", () => {
    const dir = mkdtempSync(path.join(tmp, "clobber-"));
    const out = path.join(dir, "out.png");
    writeFileSync(out, "precious");
    const r = runCli([...args(), "-o", out]);
    expect(r.code, r.stderr).toBe(1);
    expect(lines(r.stderr)).toEqual([expect.stringMatching(/out.png already exists; use --force to overwrite it/)]);
    expect(readFileSync(out, "utf8")).toBe("precious");
    // A folder output checks each seed-named file: 1.png exists.
    writeFileSync(path.join(dir, "1.png"), "precious");
    const d = runCli([...args(), "-o", dir + path.sep]);
    expect(d.code, d.stderr).toBe(1);
    expect(d.stderr).toMatch(/1.png already exists/);
    const f = runCli([...args(), "--force", "-o", out]);
    expect(f.code, f.stderr).toBe(0);
    expect(readFileSync(out).subarray(0, 8).toString("hex")).toBe("89504e470d0a1a0a");
    expect(readdirSync(dir).sort()).toEqual(["1.png", "out.png"]);
  });

  it("--subject-image - on a terminal is refused instead of waiting", () => {
    // `script` gives the CLI a pseudo-terminal as stdin, as an interactive shell would.
    const cmd = [process.execPath, path.join(repoRoot, "bin", "blipdiff.js"), ...args({ "--subject-image": "-" }), "-o", path.join(tmp, "tty.png")]
      .map((x) => `'${x.replace(/'/g, "'\\''")}'`)
      .join(" ");
    const r = spawnSync("script", ["-qec", cmd, "/dev/null"], { encoding: "utf8", timeout: 60_000, env: { ...process.env, CI: "1" } });
    expect(r.signal).toBeNull();
    expect(r.status, r.stdout).toBe(2);
    expect(r.stdout).toMatch(/stdin is a terminal; pipe a picture in/);
    expect(existsSync(path.join(tmp, "tty.png"))).toBe(false);
  });

  it("encode checks its output path like generate", () => {
    const enc = (out: string, extra: string[] = []): ReturnType<typeof runCli> =>
      runCli(["encode", "--quiet", "--model", modelDir(name), "--subject-image", path.join(fx.dir, k.reference_image), "--subject", "dog", "--device", "cpu", ...extra, "-o", out]);
    const dir = mkdtempSync(path.join(tmp, "encode-"));
    const folder = path.join(dir, "emb.safetensors");
    mkdirSync(folder);
    const cases: [string, number, RegExp][] = [
      [folder, 2, /cannot write .*emb.safetensors: it is a folder/],
      [path.join(dir, "missing", "e.safetensors"), 1, /cannot write .*e.safetensors: the folder .*missing does not exist/],
      [path.join(dir, "e.bin"), 2, /Expected a .safetensors file for --output/],
    ];
    const existing = path.join(dir, "old.safetensors");
    writeFileSync(existing, "precious");
    cases.push([existing, 1, /old.safetensors already exists; use --force/]);
    for (const [out, code, message] of cases) {
      const r = enc(out);
      expect(lines(r.stderr), r.stderr).toEqual([expect.stringMatching(message)]);
      expect(r.stderr).not.toMatch(/EISDIR|ENOTDIR|\.tmp/);
      expect(r.code).toBe(code);
    }
    expect(readFileSync(existing, "utf8")).toBe("precious");
    const long = enc(path.join(dir, "long.safetensors"), ["--subject", Array.from({ length: 600 }, () => "dog").join(" ")]);
    expect(long.code).toBe(2);
    expect(long.stderr).toMatch(/word pieces \(the Q-Former's text limit\)/);
    const ok = enc(existing, ["--force"]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(readFileSync(existing).subarray(8, 9).toString()).toBe("{");
    expect(readdirSync(dir).sort()).toEqual(["emb.safetensors", "old.safetensors"]);
  });

  it("a module with a bad checksum exits 1", () => {
    const bad = path.join(tmp, "bad-sha");
    cpSync(modelDir(name), bad, { recursive: true });
    appendFileSync(path.join(bad, "vae_decoder.pt"), "x");
    expectFailure(args({ "--model": bad }), 1, /sha256|checksum/i);
  });

  it("a CUDA device that is not there exits 1 before loading", () => {
    const info = runCli(["info", "--json"]);
    expect(info.code).toBe(0);
    const build = JSON.parse(info.stdout.toString()).build;
    // On a CPU build any CUDA device is missing; on a GPU machine, one past the last is.
    if (build.cudaAvailable) expectEarlyFailure(args({ "--device": `cuda:${build.cudaDeviceCount}` }), 1, /does not exist/);
    else expectEarlyFailure(args({ "--device": "cuda" }), 1, /CUDA was requested/);
  });

  it("no temporary files are left after failures", () => {
    // Every case ran in a folder under tmp: nothing named *.tmp anywhere below it.
    expect(walk(tmp).filter((f) => f.endsWith(".tmp"))).toEqual([]);
  });
});
