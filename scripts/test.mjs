#!/usr/bin/env node
// The one test command (`npm test`): the exporter's pytest suite, then the vitest suites
// (unit, native, CLI end to end). Both run even if the first fails; the exit code is non-zero if either did.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { root, venvPython } from "./lib.mjs";

const only = (() => {
  const i = process.argv.indexOf("--only");
  return i >= 0 ? process.argv[i + 1] : undefined;
})();

const py = venvPython(root);
if (!existsSync(py)) {
  process.stderr.write("error: no .venv: run `npm install` (or `npm run setup`) first.\n");
  process.exit(1);
}

let failed = false;
function step(name, cmd, args, env = {}) {
  process.stderr.write(`\n=== ${name}: ${[path.relative(root, cmd) || cmd, ...args].join(" ")}\n`);
  const r = spawnSync(cmd, args, { stdio: "inherit", cwd: root, env: { ...process.env, ...env } });
  if (r.status !== 0) {
    failed = true;
    process.stderr.write(`=== ${name} failed (${r.status ?? r.signal})\n`);
  }
}

if (!only || only === "python") {
  step("lint (ruff)", py, ["-m", "ruff", "check", "--config", "models/ruff.toml", "models"]);
  step("format (ruff)", py, ["-m", "ruff", "format", "--check", "--config", "models/ruff.toml", "models"]);
  step("python (models/)", py, ["-m", "pytest", "models/tests", "-q", "-p", "no:cacheprovider"], {
    PYTHONDONTWRITEBYTECODE: "1",
  });
}
if (!only || only === "js") {
  step("typescript build", process.execPath, [path.join(root, "node_modules", "typescript", "bin", "tsc"), "-p", "tsconfig.json"]);
  step("vitest", process.execPath, [path.join(root, "node_modules", "vitest", "vitest.mjs"), "run"]);
}
process.exit(failed ? 1 : 0);
