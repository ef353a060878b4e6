#!/usr/bin/env node
// One-shot setup, run by `npm install` (postinstall) or `npm run setup`:
//   1. a project-local Python venv (.venv) with models/' dependencies (torch, safetensors, numpy, ...)
//   2. the native addon, built with cmake-js against that venv's libtorch (or BLIPDIFF_LIBTORCH)
//   3. the TypeScript build (dist/)
// Environment:
//   BLIPDIFF_SKIP_SETUP=1     do nothing (for packaging or when iterating on one part)
//   BLIPDIFF_PYTHON=path      the Python used to create the venv (default: python3)
//   BLIPDIFF_LIBTORCH=dir     build against this libtorch (e.g. a CUDA libtorch) instead of the venv's torch
//   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS and pip's config files are honoured.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { venvPython, pipIndexArgs, checkIndexReachable, run, log, fail } from "./lib.mjs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
process.chdir(root);

if (process.env.BLIPDIFF_SKIP_SETUP === "1") {
  log("BLIPDIFF_SKIP_SETUP=1: skipping the venv, native and TypeScript builds");
  process.exit(0);
}

const steps = new Set(process.argv.slice(2).filter((a) => !a.startsWith("-")));
const want = (s) => steps.size === 0 || steps.has(s);

if (want("python")) setupPython();
if (want("native")) run(process.execPath, ["scripts/build-native.mjs"]);
if (want("ts")) run(process.execPath, [path.join("node_modules", "typescript", "bin", "tsc"), "-p", "tsconfig.json"]);
log("setup complete");

function setupPython() {
  const py = venvPython(root);
  if (!existsSync(py)) {
    const base = process.env.BLIPDIFF_PYTHON || "python3";
    log(`creating the Python venv in .venv with ${base}`);
    const r = spawnSync(base, ["-m", "venv", ".venv"], { stdio: "inherit" });
    if (r.status !== 0) {
      fail(`could not create .venv with '${base}'. Install Python 3.10+ with the venv module, or set BLIPDIFF_PYTHON to one.`);
    }
  }
  const index = pipIndexArgs(py);
  checkIndexReachable(index);
  log(`installing models/requirements.txt into .venv (${index.describe})`);
  run(py, ["-m", "pip", "install", "--disable-pip-version-check", "--retries", "1", "--timeout", "30", ...index.args,
    "-r", path.join("models", "requirements.txt")]);
}
