// Bad input through the CLI: each case exits 1 (2 for usage errors) with a one-line error and leaves
// no output file behind.
import { appendFileSync, cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { crc32 } from "../../src/image/png-text.js";
import { fixtureNames, loadFixture } from "../unit/golden.js";
import { addonBuilt, buildCli, lines, modelDir, runCli } from "./cli.js";

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
  const dir = mkdtempSync(path.join(tmp, "case-"));
  const target = path.isAbsolute(out) ? out : path.join(dir, out);
  const r = runCli([...a, "-o", target]);
  const errLines = lines(r.stderr);
  expect(errLines, r.stderr).toHaveLength(1);
  expect(errLines[0]).toMatch(message);
  expect(r.code, r.stderr).toBe(code);
  expect(r.stdout.length).toBe(0);
  expect(readdirSync(dir)).toEqual([]);
}

describe("bad input (CLI)", () => {
  buildCli();

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
    expectFailure([...args(), "--scheduler", "euler"], 2, /'euler' is invalid. Allowed choices are pndm, ddim, dpmpp-2m/);
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
    writeFileSync(m, readFileSync(m, "utf8").replace(/"format_version": 1/, '"format_version": 99'));
    expectFailure(args({ "--model": version }), 1, /format_version 99, this blipdiff reads version 1; .*blipdiff convert/);
  });

  it("unwritable output paths exit 1 before any work", () => {
    expectFailure(args(), 1, /cannot write .*: the folder .*no-such-dir does not exist/, path.join(tmp, "no-such-dir", "x.png"));
    const file = path.join(tmp, "a-file");
    writeFileSync(file, "x");
    expectFailure(args(), 1, /cannot write .*a-file.* is not a folder/, path.join(file, "x.png"));
  });

  it.runIf(addonBuilt())("a module with a bad checksum exits 1", () => {
    const bad = path.join(tmp, "bad-sha");
    cpSync(modelDir(name), bad, { recursive: true });
    appendFileSync(path.join(bad, "vae_decoder.pt"), "x");
    expectFailure(args({ "--model": bad }), 1, /sha256|checksum/i);
  });

  it.runIf(addonBuilt())("--device cuda on a CPU build exits 1", () => {
    const info = runCli(["info", "--json"]);
    expect(info.code).toBe(0);
    const build = JSON.parse(info.stdout.toString()).build;
    if (build.cudaAvailable) return;
    expectFailure(args({ "--device": "cuda" }), 1, /CUDA was requested/);
  });

  it("no temporary files are left after failures", () => {
    expect(readdirSync(tmp).filter((f) => f.endsWith(".tmp"))).toEqual([]);
    expect(existsSync(path.join(tmp, "out.png"))).toBe(false);
  });
});
