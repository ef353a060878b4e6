#!/usr/bin/env node
// Lint and format checks: ruff for models/, tsc for src/.
import path from "node:path";
import { root, run, venvPython } from "./lib.mjs";

const py = venvPython(root);
run(py, ["-m", "ruff", "check", "--config", "models/ruff.toml", "models"], { cwd: root });
run(py, ["-m", "ruff", "format", "--check", "--config", "models/ruff.toml", "models"], { cwd: root });
run(process.execPath, [path.join(root, "node_modules", "typescript", "bin", "tsc"), "-p", "tsconfig.json", "--noEmit"], { cwd: root });
