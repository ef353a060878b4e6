// Exports every fixture's checkpoints once (python -m blipdiff_export convert) into .test-cache/models,
// reusing an earlier export when neither the exporter's sources nor the fixture changed.
import { createHash } from "node:crypto";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { exportRoot, fixtureNames, fixturesRoot, repoRoot } from "./helpers/fixtures.js";

function hashTree(dir: string, h = createHash("sha256")): ReturnType<typeof createHash> {
  for (const e of readdirSync(dir).sort()) {
    const p = path.join(dir, e);
    if (e === "__pycache__") continue;
    if (statSync(p).isDirectory()) hashTree(p, h);
    else h.update(e).update(readFileSync(p));
  }
  return h;
}

export default function setup(): void {
  const python = process.env.BLIPDIFF_PYTHON ?? path.join(repoRoot, ".venv", "bin", "python");
  const exporterHash = hashTree(path.join(repoRoot, "models", "blipdiff_export")).digest("hex");
  for (const name of fixtureNames()) {
    const sums = readFileSync(path.join(fixturesRoot, name, "SHA256SUMS"));
    const key = createHash("sha256").update(exporterHash).update(sums).digest("hex");
    for (const ckpt of ["ckpt", "ckpt-controlnet"]) {
      const src = path.join(fixturesRoot, name, ckpt);
      if (!existsSync(src)) continue;
      const out = path.join(exportRoot, name, ckpt);
      const stamp = `${out}.key`;
      if (existsSync(path.join(out, "manifest.json")) && existsSync(stamp) && readFileSync(stamp, "utf8") === key) continue;
      mkdirSync(path.dirname(out), { recursive: true });
      const r = spawnSync(python, ["-m", "blipdiff_export", "convert", src, "--out", out, "--force"], {
        env: { ...process.env, PYTHONPATH: path.join(repoRoot, "models") },
        encoding: "utf8",
      });
      if (r.status !== 0) throw new Error(`exporting ${name}/${ckpt} failed:\n${r.stderr}`);
      writeFileSync(stamp, key);
    }
  }
}
