// The caching CPU allocator: at a size where activations are large enough to go through it, images are
// bit-identical to those made with c10's own allocator (BLIPDIFF_MALLOC_TUNING=0, in a child process),
// and the cache really serves allocations.
import { spawnSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import type { NativeGenerateParams } from "../../src/bindings/types.js";
import { fixtureNames, repoRoot } from "../helpers/fixtures.js";
import { addon, addonPath, fixture, ids, nt, specOf } from "./addon.js";

for (const name of fixtureNames()) {
  describe(`caching CPU allocator (${name})`, () => {
    const f = fixture(name);
    const spec = specOf(f.model());
    // Large enough that UNet activations exceed the cache's 1 MiB threshold even for tiny models.
    const side = 64 * spec.latentScale;
    const params = (): NativeGenerateParams => ({
      condIds: ids(f, "text.dog.input_ids"),
      uncondIds: Int32Array.from(ids(f, "text.uncond_empty.input_ids")),
      queryEmbeds: nt(f, "pipe.cfg.query_embeds"),
      width: side,
      height: side,
      steps: 3,
      guidance: 7.5,
      seed: 11,
      numImages: 2,
      scheduler: "pndm",
    });

    it("serves repeated steps from the cache and changes no pixel", async () => {
      const p = new (addon().Pipeline)();
      await p.load(spec, { device: "cpu", dtype: "float32", verifyChecksums: false });
      const before = addon().memoryStats();
      const res = await p.generate(params());
      const after = addon().memoryStats();
      await p.dispose();
      expect(after.cpuCacheHits - before.cpuCacheHits).toBeGreaterThan(after.cpuCacheMisses - before.cpuCacheMisses);
      // The load and the first activations went to the system: their 2 MiB-aligned interiors were advised.
      expect(after.cpuHugePageBytes).toBeGreaterThan(0);
      expect(after.cpuHugePageBytes % (2 << 20)).toBe(0);
      expect(addon().memoryStats().cpuCachedBytes).toBe(0); // dispose releases the cache

      const script = `
        const a = require(${JSON.stringify(addonPath)});
        const [spec, params] = JSON.parse(process.argv[1]);
        const t = (o) => ({ data: Float32Array.from(o.data), shape: o.shape });
        params.condIds = Int32Array.from(params.condIds); params.uncondIds = Int32Array.from(params.uncondIds);
        params.queryEmbeds = t(params.queryEmbeds);
        const p = new a.Pipeline();
        p.load(spec, { device: "cpu", dtype: "float32", verifyChecksums: false })
          .then(() => p.generate(params))
          .then((r) => { if (a.memoryStats().cpuCacheHits !== 0 || a.memoryStats().cpuHugePageBytes !== 0) throw new Error("cache active");
                         process.stdout.write(JSON.stringify(r.images.map((i) => Buffer.from(i.data).toString("base64")))); })
          .catch((e) => { console.error(e.message); process.exit(1); });`;
      const q = params();
      const payload = JSON.stringify([
        spec,
        { ...q, condIds: [...q.condIds], uncondIds: [...q.uncondIds], queryEmbeds: { data: [...q.queryEmbeds.data], shape: q.queryEmbeds.shape } },
      ]);
      const r = spawnSync(process.execPath, ["-e", script, payload], {
        cwd: repoRoot,
        encoding: "utf8",
        env: { ...process.env, BLIPDIFF_MALLOC_TUNING: "0" },
        maxBuffer: 1 << 26,
      });
      expect(r.stderr).toBe("");
      const untuned = JSON.parse(r.stdout) as string[];
      expect(untuned).toEqual(res.images.map((i) => Buffer.from(i.data).toString("base64")));
    });
  });
}
