// What libtorch may write to the host process's stderr (nothing, on any CPU), how its warnings reach the
// caller instead (Pipeline.takeWarnings), and addon.exitNow. Runs the addon in child processes, whose
// file descriptor 2 is captured whole (libtorch writes to it directly, not through process.stderr). The
// test hook BLIPDIFF_TEST_NATIVE_WARNINGS=1 makes load() and generate() raise one TORCH_WARN and one
// LOG(WARNING) each, so the policy is checked without depending on this CPU (native/src/core/diagnostics.h).
import { spawnSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import type { NativeGenerateParams } from "../../src/bindings/types.js";
import { fixtureNames, repoRoot } from "../helpers/fixtures.js";
import { addon, addonPath, fixture, ids, nt, specOf } from "./addon.js";

interface ChildResult {
  status: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs `body` (JavaScript, with `a` the addon and `spec`, `params` from argv) in a fresh Node process. */
function child(body: string, payload: unknown, env: Record<string, string> = {}): ChildResult {
  const script = `
    const a = require(${JSON.stringify(addonPath)});
    const { spec, params: raw } = JSON.parse(process.argv[1]);
    const t = (o) => ({ data: Float32Array.from(o.data), shape: o.shape });
    const params = { ...raw, condIds: Int32Array.from(raw.condIds), uncondIds: Int32Array.from(raw.uncondIds), queryEmbeds: t(raw.queryEmbeds) };
    (async () => { ${body} })().catch((e) => { process.stdout.write("FAILED " + e.message); process.exitCode = 1; });`;
  const started = Date.now();
  const r = spawnSync(process.execPath, ["-e", script, JSON.stringify(payload)], {
    cwd: repoRoot,
    encoding: "utf8",
    env: { ...process.env, BLIPDIFF_DEBUG: "", BLIPDIFF_TEST_NATIVE_WARNINGS: "", ...env },
    maxBuffer: 1 << 26,
    timeout: 120_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, ms: Date.now() - started };
}

const count = (list: string[], item: string): number => list.filter((w) => w === item).length;

for (const name of fixtureNames()) {
  describe(`libtorch diagnostics (${name})`, () => {
    const f = fixture(name);
    const spec = specOf(f.model());
    const params = (extra: Partial<NativeGenerateParams> = {}): unknown => {
      const q = nt(f, "pipe.cfg.query_embeds");
      const p = {
        condIds: [...ids(f, "text.dog.input_ids")],
        uncondIds: [...ids(f, "text.uncond_empty.input_ids")],
        queryEmbeds: { data: [...q.data], shape: q.shape },
        width: 8 * spec.latentScale,
        height: 8 * spec.latentScale,
        steps: 3,
        guidance: 7.5,
        seed: 3,
        numImages: 1,
        scheduler: "pndm",
        ...extra,
      };
      return { spec, params: p };
    };
    const loadAndGenerateTwice = `
      const p = new a.Pipeline();
      await p.load(spec, { device: "cpu", dtype: "float32", verifyChecksums: true });
      await p.generate(params);
      await p.generate(params);
      const first = p.takeWarnings();
      const second = p.takeWarnings();
      process.stdout.write(JSON.stringify({ first, second, nnpack: a.buildInfo().nnpackEnabled }));`;

    it("NNPACK is disabled as soon as the addon loads", () => {
      expect(addon().buildInfo().nnpackEnabled).toBe(false);
    });

    it("load and generate write nothing to stderr; TORCH_WARN warnings are collected once each and drained", () => {
      const r = child(loadAndGenerateTwice, params(), { BLIPDIFF_TEST_NATIVE_WARNINGS: "1" });
      expect(r.stderr).toBe("");
      expect(r.status).toBe(0);
      const out = JSON.parse(r.stdout) as { first: string[]; second: string[]; nnpack: boolean };
      expect(out.nnpack).toBe(false);
      expect(count(out.first, "blipdiff test warning (load)")).toBe(1);
      expect(count(out.first, "blipdiff test warning (generate)")).toBe(1); // raised twice, kept once
      expect(out.first.indexOf("blipdiff test warning (load)")).toBeLessThan(out.first.indexOf("blipdiff test warning (generate)"));
      expect(out.first.some((w) => w.includes("test log line"))).toBe(false); // c10 log lines are dropped
      expect(out.second).toEqual([]);
    });

    it("BLIPDIFF_DEBUG=1 keeps everything: c10 log lines on stderr, every warning occurrence", () => {
      const r = child(loadAndGenerateTwice, params(), { BLIPDIFF_TEST_NATIVE_WARNINGS: "1", BLIPDIFF_DEBUG: "1" });
      expect(r.status).toBe(0);
      expect(r.stderr).toContain("blipdiff test log line (load)");
      expect(r.stderr).toContain("blipdiff test log line (generate)");
      const out = JSON.parse(r.stdout) as { first: string[] };
      expect(count(out.first, "blipdiff test warning (generate)")).toBe(2);
    });

    it("linear layers run on oneDNN's matmul on the CPU; BLIPDIFF_ONEDNN_LINEAR=0 keeps ATen's GEMM", () => {
      // oneDNN's own log (ONEDNN_VERBOSE=1, on stdout) names every primitive it executes: the exporter's Linear
      // runs as an inner_product primitive when the runtime switched it on at load, and never otherwise.
      const body = `
        const p = new a.Pipeline();
        await p.load(spec, { device: "cpu", dtype: "float32", verifyChecksums: false });
        await p.generate(params);
        process.stdout.write("\\nDONE\\n");`;
      const innerProducts = (r: ChildResult): number => {
        expect(r.status).toBe(0);
        expect(r.stdout).toContain("\nDONE\n");
        return r.stdout.split("\n").filter((l) => /^onednn_verbose,.*,exec,cpu,inner_product,/.test(l)).length;
      };
      const on = child(body, params({ steps: 1 }), { ONEDNN_VERBOSE: "1" });
      const off = child(body, params({ steps: 1 }), { ONEDNN_VERBOSE: "1", BLIPDIFF_ONEDNN_LINEAR: "0" });
      expect(innerProducts(on)).toBeGreaterThan(0);
      expect(innerProducts(off)).toBe(0);
      // The convolutions are oneDNN's either way, so the log itself was on in both runs.
      expect(off.stdout).toMatch(/^onednn_verbose,.*,exec,cpu,convolution,/m);
    });

    it("exitNow(code) ends the process at once, while a native step runs, without exit handlers", () => {
      // 200 images x 50 steps would run for minutes; the child exits on the first step's progress.
      const r = child(
        `process.on("exit", () => process.stdout.write("exit handler ran"));
         const p = new a.Pipeline();
         await p.load(spec, { device: "cpu", dtype: "float32", verifyChecksums: false });
         await p.generate(params, (e) => { if (e.phase === "denoise") a.exitNow(130); });
         process.stdout.write("generate finished");`,
        params({ steps: 50, numImages: 200 }),
      );
      expect(r.stdout).toBe("");
      expect(r.stderr).toBe("");
      expect(r.status).toBe(130);
      expect(r.ms).toBeLessThan(60_000);
    });

    it("exitNow refuses codes outside [0, 255] without exiting", () => {
      expect(() => addon().exitNow(256)).toThrow(RangeError);
      expect(() => addon().exitNow(-1)).toThrow(/\[0, 255\]/);
      expect(() => addon().exitNow(1.5)).toThrow(RangeError);
      expect(() => addon().exitNow("0" as unknown as number)).toThrow(RangeError);
    });
  });
}
