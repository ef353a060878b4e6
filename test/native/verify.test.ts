// Checksum verification of the module files: a record of successful checks spares later loads the
// hashing, and any change to a file (here: one byte, same size) is still caught.
import { spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fixtureNames, repoRoot } from "../helpers/fixtures.js";
import { addon, addonPath, fixture, specOf } from "./addon.js";

const RECORD = ".blipdiff-verified";
const opts = { device: "cpu", dtype: "float32", verifyChecksums: true } as const;

/** Total size of the module files a spec names, archives and weights files (what a full verification hashes). */
function moduleBytes(dir: string): number {
  return Object.values(specOf(dir).modules).reduce((sum, m) => sum + statSync(m.path).size + (m.weights ? statSync(m.weights.path).size : 0), 0);
}

for (const name of fixtureNames()) {
  describe(`module checksums (${name})`, () => {
    let dir: string;
    beforeAll(() => {
      dir = mkdtempSync(path.join(os.tmpdir(), "blipdiff-verify-"));
      cpSync(fixture(name).model(), dir, { recursive: true });
      rmSync(path.join(dir, RECORD), { force: true });
    });
    afterAll(() => rmSync(dir, { recursive: true, force: true }));

    it("records each verified file, and a later change to a file is caught", async () => {
      const p = new (addon().Pipeline)();
      const before = addon().sha256Stats();
      await p.load(specOf(dir), opts);
      await p.dispose();
      // Every byte went through the implementation this process picked, and none through the other one.
      const stats = addon().sha256Stats();
      const [used, other] = before.implementation === "portable" ? (["portableBytes", "shaNiBytes"] as const) : (["shaNiBytes", "portableBytes"] as const);
      expect(stats.implementation).toBe(before.implementation);
      expect(stats[used] - before[used]).toBeGreaterThanOrEqual(moduleBytes(dir));
      expect(stats[other]).toBe(before[other]);
      const lines = readFileSync(path.join(dir, RECORD), "utf8").trim().split("\n");
      expect(lines[0]).toBe("blipdiff-verified 1");
      const manifest = JSON.parse(readFileSync(path.join(dir, "manifest.json"), "utf8"));
      type Entry = { file: string; sha256: string; weights: { file: string; sha256: string } };
      for (const [, mod] of Object.entries(manifest.modules as Record<string, Entry>)) {
        for (const f of [mod, mod.weights]) expect(lines.some((l) => l.startsWith(`${f.sha256} `) && l.endsWith(` ${f.file}`))).toBe(true);
      }

      const unet = path.join(dir, "unet.pt");
      const bytes = readFileSync(unet);
      bytes[bytes.length >> 1] ^= 0x01;
      writeFileSync(unet, bytes);
      const q = new (addon().Pipeline)();
      const err = await q.load(specOf(dir), opts).catch((e: unknown) => e);
      expect((err as { code?: string }).code).toBe("ERR_BLIPDIFF_CHECKSUM");
      expect((err as Error).message).toContain(unet);
      // The mismatching file lost its record; the others keep theirs.
      const after = readFileSync(path.join(dir, RECORD), "utf8");
      expect(after).not.toContain(" unet.pt");
      expect(after).toContain(" text_encoder.pt");
      expect(after).toContain(" unet.safetensors");

      // The weights file is checked as closely as the archive (unet.pt first gets its byte back).
      bytes[bytes.length >> 1] ^= 0x01;
      writeFileSync(unet, bytes);
      const weights = path.join(dir, "text_encoder.safetensors");
      const w = readFileSync(weights);
      w[w.length - 3] ^= 0x01;
      writeFileSync(weights, w);
      const err2 = await new (addon().Pipeline)().load(specOf(dir), opts).catch((e: unknown) => e);
      expect((err2 as { code?: string }).code).toBe("ERR_BLIPDIFF_CHECKSUM");
      expect((err2 as Error).message).toContain(`checksum mismatch for the text_encoder weights file ${weights} `);
    });

    it("the portable SHA-256 (no CPU SHA extensions) gives the manifest's hashes too", () => {
      const fresh = mkdtempSync(path.join(os.tmpdir(), "blipdiff-verify-portable-"));
      try {
        cpSync(fixture(name).model(), fresh, { recursive: true });
        rmSync(path.join(fresh, RECORD), { force: true });
        const script = `
          const a = require(${JSON.stringify(addonPath)});
          const spec = JSON.parse(process.argv[1]);
          new a.Pipeline().load(spec, { device: "cpu", dtype: "float32", verifyChecksums: true })
            .then(() => { process.stdout.write(JSON.stringify(a.sha256Stats())); process.exit(0); },
                  (e) => { console.error(e.message); process.exit(1); });`;
        const r = spawnSync(process.execPath, ["-e", script, JSON.stringify(specOf(fresh))], {
          cwd: repoRoot,
          encoding: "utf8",
          env: { ...process.env, BLIPDIFF_SHA256_PORTABLE: "1" },
        });
        expect(r.stderr).toBe("");
        expect(r.status).toBe(0);
        expect(existsSync(path.join(fresh, RECORD))).toBe(true);
        // The portable rounds hashed every module byte (the load verified them against the manifest), and
        // the SHA extensions none: this holds whether or not this CPU has them.
        const stats = JSON.parse(r.stdout) as { implementation: string; portableBytes: number; shaNiBytes: number };
        expect(stats.implementation).toBe("portable");
        expect(stats.portableBytes).toBeGreaterThanOrEqual(moduleBytes(fresh));
        expect(stats.shaNiBytes).toBe(0);
      } finally {
        rmSync(fresh, { recursive: true, force: true });
      }
    });
  });
}
