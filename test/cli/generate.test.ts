// End to end through the CLI: the fixture's pipeline cases from --seed, stdout streaming, --json,
// several images, subject embeddings, SIGINT.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import sharp from "sharp";
import { afterAll, describe, expect, it } from "vitest";
import { readPngText } from "../../src/image/png-text.js";
import { fixtureNames, loadFixture } from "../unit/golden.js";
import { buildCli, caseArgs, expectImageClose, lines, modelDir, repoRoot, runCli } from "./cli.js";

const tmp = mkdtempSync(path.join(os.tmpdir(), "blipdiff-cli-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Decoded RGB pixels of an image file or buffer. */
async function pixels(src: string | Buffer): Promise<{ data: Buffer; width: number; height: number }> {
  const { data, info } = await sharp(src).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  return { data, width: info.width, height: info.height };
}

for (const name of fixtureNames()) {
  describe(`blipdiff generate (${name})`, () => {
    const fx = loadFixture(name);
    buildCli();

    for (const c of Object.keys(fx.json.cases.pipeline.cases)) {
      it(`reproduces pipe.${c}.image_u8 from --seed`, async () => {
        const out = path.join(tmp, `${name}-${c}.png`);
        const r = runCli([...caseArgs(fx, c), "--quiet", "-o", out]);
        expect(r.stderr).toBe("");
        expect(r.code).toBe(0);
        expect(r.stdout.toString().trim()).toBe(out);
        const img = await pixels(out);
        const golden = fx.tensor(`pipe.${c}.image_u8`);
        expect([1, img.height, img.width, 3]).toEqual(golden.shape);
        expectImageClose(img.data, golden.data as Uint8Array);
        const meta = JSON.parse(readPngText(readFileSync(out)).blipdiff);
        expect(meta.seed).toBe(fx.json.cases.pipeline.cases[c].call_kwargs.latents_seed);
        expect(meta.steps).toBe(fx.json.cases.pipeline.cases[c].call_kwargs.num_inference_steps);
        expect(readPngText(readFileSync(out)).parameters).toMatch(/Seed: 42/);
      });
    }

    it("-o - streams a valid PNG to stdout", async () => {
      const r = runCli([...caseArgs(fx, "cfg"), "-o", "-"]);
      expect(r.code).toBe(0);
      expect(r.stdout.subarray(0, 8).toString("hex")).toBe("89504e470d0a1a0a");
      const img = await pixels(r.stdout);
      expectImageClose(img.data, fx.tensor("pipe.cfg.image_u8").data as Uint8Array);
      expect(readPngText(r.stdout).parameters).toMatch(/Seed: 42/);
    });

    it("--json prints one parseable document; -n 2 into a folder writes seed-named files", () => {
      const dir = path.join(tmp, `${name}-many`) + path.sep;
      const r = runCli([...caseArgs(fx, "nocfg"), "-n", "2", "--json", "-o", dir]);
      expect(r.code).toBe(0);
      const doc = JSON.parse(r.stdout.toString());
      expect(doc.seeds).toEqual([42, 43]);
      expect(doc.outputs).toEqual([path.join(dir, "42.png"), path.join(dir, "43.png")]);
      expect(doc.parameters.steps).toBe(5);
      expect(doc.parameters.seed).toBe(42);
      expect(typeof doc.timings.totalMs).toBe("number");
      for (const f of doc.outputs) expect(existsSync(f)).toBe(true);
      expect(readdirSync(dir).sort()).toEqual(["42.png", "43.png"]);
    });

    it("-n 2 with a file name writes name-0 and name-1; image 1 equals a run from seed + 1", async () => {
      const base = path.join(tmp, `${name}-pair.png`);
      const r = runCli([...caseArgs(fx, "nocfg"), "-n", "2", "--quiet", "-o", base]);
      expect(r.code).toBe(0);
      const outs = lines(r.stdout.toString());
      expect(outs).toEqual([path.join(tmp, `${name}-pair-0.png`), path.join(tmp, `${name}-pair-1.png`)]);
      const single = path.join(tmp, `${name}-seed43.png`);
      const args = caseArgs(fx, "nocfg");
      args[args.indexOf("--seed") + 1] = "43";
      expect(runCli([...args, "--quiet", "-o", single]).code).toBe(0);
      expect((await pixels(single)).data.equals((await pixels(outs[1])).data)).toBe(true);
    });

    it("encode then generate --subject-embedding gives the same image as from the picture", async () => {
      const k = fx.json.cases.pipeline.cases.cfg.call_kwargs;
      const emb = path.join(tmp, `${name}-dog.safetensors`);
      const e = runCli([
        "encode", "--model", modelDir(name), "--subject-image", path.join(fx.dir, k.reference_image),
        "--subject", k.source_subject_category, "--device", "cpu", "--quiet", "-o", emb,
      ]);
      expect(e.stderr).toBe("");
      expect(e.code).toBe(0);
      expect(e.stdout.toString().trim()).toBe(emb);
      const args = caseArgs(fx, "cfg");
      const i = args.indexOf("--subject-image");
      args.splice(i, 2, "--subject-embedding", emb);
      const out = path.join(tmp, `${name}-from-emb.png`);
      const r = runCli([...args, "--quiet", "-o", out]);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      expectImageClose((await pixels(out)).data, fx.tensor("pipe.cfg.image_u8").data as Uint8Array);
      // Bit-identical to the same run from the picture (made here, not left by another test).
      const direct = path.join(tmp, `${name}-cfg-direct.png`);
      expect(runCli([...caseArgs(fx, "cfg"), "--quiet", "-o", direct]).code).toBe(0);
      expect((await pixels(out)).data.equals((await pixels(direct)).data)).toBe(true);
    });

    it("--scheduler names are case-insensitive, as in the library (DDIM = ddim, PLMS = pndm)", async () => {
      const run = async (sched: string): Promise<Buffer> => {
        const args = caseArgs(fx, "nocfg");
        args[args.indexOf("--steps") + 1] = "2";
        const r = runCli([...args, "--scheduler", sched, "--quiet", "-o", "-"]);
        expect(r.stderr).toBe("");
        expect(r.code).toBe(0);
        return (await pixels(r.stdout)).data;
      };
      expect((await run("DDIM")).equals(await run("ddim"))).toBe(true);
      expect((await run("PLMS")).equals(await run("pndm"))).toBe(true);
    });

    it("warns (once, not with -q) when one copy of the prompt does not fit the text window; newlines stay out of the parameters text", async () => {
      const args = caseArgs(fx, "nocfg");
      const long = Array.from({ length: 80 }, (_, i) => `word${i}`).join(" ");
      args[args.indexOf("--prompt") + 1] = `${long}\nsecond line`;
      const r = runCli([...args, "-o", "-"]);
      expect(r.code, r.stderr).toBe(0);
      const warnings = lines(r.stderr).filter((l) => l.startsWith("warning:"));
      expect(warnings).toEqual([expect.stringMatching(/the prompt "a .*" is \d+ tokens, only the first \d+ fit in the text window/)]);
      const text = readPngText(r.stdout).parameters.split("\n");
      expect(text[0]).toBe(`${long} second line`);
      expect(text.slice(1).map((l) => l.split(":")[0])).toEqual(["Negative prompt", "Steps"]);
      const q = runCli([...args, "-q", "-o", "-"]);
      expect(q.code).toBe(0);
      expect(q.stderr).toBe("");
      const short = runCli([...caseArgs(fx, "nocfg"), "-o", "-"]);
      expect(short.stderr).not.toMatch(/warning/);
    });

    it("--subject-image reads a FIFO (process substitution) once, and gives the same image", async () => {
      const args = caseArgs(fx, "nocfg");
      const i = args.indexOf("--subject-image");
      const fifo = path.join(tmp, `${name}-subject.fifo`);
      expect(spawnSync("mkfifo", [fifo]).status).toBe(0);
      // One writer, one pass: a second read of the FIFO would wait for a writer that never comes.
      const writer = spawn("sh", ["-c", 'cat "$1" > "$2"', "sh", args[i + 1], fifo]);
      args[i + 1] = fifo;
      const out = path.join(tmp, `${name}-fifo.png`);
      const r = runCli([...args, "--quiet", "-o", out], { timeoutMs: 60_000 });
      writer.kill();
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      expectImageClose((await pixels(out)).data, fx.tensor("pipe.nocfg.image_u8").data as Uint8Array);
    });

    it("--subject-image - reads the picture from stdin", async () => {
      const args = caseArgs(fx, "nocfg");
      const i = args.indexOf("--subject-image");
      const file = args[i + 1];
      args[i + 1] = "-";
      const out = path.join(tmp, `${name}-stdin.png`);
      const r = runCli([...args, "--quiet", "-o", out], { input: readFileSync(file) });
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      expectImageClose((await pixels(out)).data, fx.tensor("pipe.nocfg.image_u8").data as Uint8Array);
    });

    it("SIGINT mid-run exits 130 and leaves no partial file", async () => {
      const dir = mkdtempSync(path.join(tmp, "sigint-"));
      const out = path.join(dir, "never.png");
      const args = caseArgs(fx, "cfg");
      args[args.indexOf("--steps") + 1] = "900";
      const child = spawn(process.execPath, [path.join(repoRoot, "bin", "blipdiff.js"), ...args, "-o", out], {
        cwd: repoRoot,
        env: { ...process.env, CI: "1" },
      });
      let stderr = "";
      const code = await new Promise<number | null>((resolve) => {
        let sent = false;
        child.stderr.on("data", (d: Buffer) => {
          stderr += d.toString();
          if (!sent && /denoising step [3-9]/.test(stderr)) {
            sent = true;
            child.kill("SIGINT");
          }
        });
        child.on("close", (c) => resolve(c));
      });
      expect(stderr).toMatch(/denoising step/);
      expect(code).toBe(130);
      expect(readdirSync(dir)).toEqual([]);
    });
  });
}
