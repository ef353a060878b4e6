// Weights files (manifest format_version 2): the runtime maps each module's safetensors file instead of copying
// its tensors, keeps the mapping exactly as long as the modules, and refuses a weights file that does not fit its
// module with a message naming the file and the fix.
import { copyFileSync, cpSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fixtureNames } from "../helpers/fixtures.js";
import { addon, caseParams, compare, fixture, specOf } from "./addon.js";

const opts = { device: "cpu", dtype: "float32", verifyChecksums: false } as const;
const MODULES = ["qformer", "text_encoder", "unet", "vae_decoder", "vae_encoder"];

/** The files this process has mapped (the path column of /proc/self/maps). */
function mappedFiles(): Set<string> {
  const out = new Set<string>();
  for (const line of readFileSync("/proc/self/maps", "utf8").split("\n")) {
    const at = line.indexOf("/");
    if (at >= 0) out.add(line.slice(at));
  }
  return out;
}

const name = fixtureNames()[0];

describe(`mapped weights files (${name})`, () => {
  const f = fixture(name);
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), "blipdiff-mapped-"));
    cpSync(f.model(), dir, { recursive: true });
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("maps every module's weights file while loaded, generates the goldens from them, and unmaps on dispose", async () => {
    const p = new (addon().Pipeline)();
    await p.load(specOf(dir), opts);
    const mapped = mappedFiles();
    for (const m of MODULES) expect(mapped.has(path.join(dir, `${m}.safetensors`)), m).toBe(true);
    const res = await p.generate(caseParams(f, "cfg"));
    res.stepLatents!.forEach((s, i) => {
      const r = compare(s.data, f.f32(`pipe.cfg.step${i}.latents`));
      expect(r.ok, `step ${i}: max diff ${r.max}`).toBe(true);
    });
    await p.dispose();
    const after = mappedFiles();
    for (const m of MODULES) expect(after.has(path.join(dir, `${m}.safetensors`)), m).toBe(false);
  });

  it("refuses a weights file that is not a safetensors file, that belongs to another module, or that is missing", async () => {
    const load = async (mutate: (d: string) => void): Promise<Error & { code?: string }> => {
      const bad = mkdtempSync(path.join(os.tmpdir(), "blipdiff-mapped-bad-"));
      try {
        cpSync(dir, bad, { recursive: true });
        mutate(bad);
        const p = new (addon().Pipeline)();
        const err = await p.load(specOf(bad), opts).then(
          () => new Error("loaded"),
          (e: unknown) => e as Error,
        );
        expect(p.loaded).toBe(false);
        return Object.assign(err, { message: err.message.replaceAll(bad, "<dir>") });
      } finally {
        rmSync(bad, { recursive: true, force: true });
      }
    };
    const fix = /; re-export the model with `blipdiff convert`$/;

    const short = await load((d) => truncateSync(path.join(d, "unet.safetensors"), 5));
    expect(short.code).toBe("ERR_BLIPDIFF_MODEL");
    expect(short.message).toMatch(/^the unet weights file <dir>\/unet.safetensors does not fit its module: it is 5 bytes long/);
    expect(short.message).toMatch(fix);

    const cut = await load((d) => {
      const w = path.join(d, "vae_decoder.safetensors");
      const bytes = readFileSync(w);
      writeFileSync(w, bytes.subarray(0, 8 + Number(bytes.readBigUInt64LE(0)) + 100)); // the header and 100 bytes of data
    });
    expect(cut.message).toMatch(/^the vae_decoder weights file .* does not fit its module: tensor ".*": data_offsets \[\d+, \d+\] lie outside/);

    const swapped = await load((d) => copyFileSync(path.join(d, "vae_encoder.safetensors"), path.join(d, "vae_decoder.safetensors")));
    expect(swapped.code).toBe("ERR_BLIPDIFF_MODEL");
    expect(swapped.message).toMatch(/^the vae_decoder weights file .* does not fit its module: (it has a tensor ".*" that the module lacks|it lacks the module's tensor)/);
    expect(swapped.message).toMatch(fix);

    const missing = await load((d) => rmSync(path.join(d, "text_encoder.safetensors")));
    expect(missing.code).toBe("ERR_BLIPDIFF_MODEL");
    expect(missing.message).toBe("the text_encoder weights file <dir>/text_encoder.safetensors does not exist; re-export the model with `blipdiff convert`");
  });
});
