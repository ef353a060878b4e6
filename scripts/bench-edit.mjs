#!/usr/bin/env node
// Editing benchmark (issue #8) on the full-size --random-weights model, with the C++ harness (native/tools/bench.cc,
// no Node-side work in the figures): each pair runs, in fresh processes and interleaved,
//   A. plain generation on a model exported without the attention-control path (exporter 0.2.0),
//   B. plain generation on the current export (0.3.0: the same `forward`, plus `forward_edit`),
//   E. one process that alternates a CFG generation, an edit of a generated source and an edit of a real picture
//      (DDIM inversion, then DDIM) with the same size and steps (`blipdiff_bench --edit 1`).
// A/B shows whether plain generation kept its speed; E gives edit / generate and the cost of inversion.
//   node scripts/bench-edit.mjs --bench BIN --old DIR --new DIR [--pairs 2] [--runs 2] [--width 256] [--steps 5]
// BIN: cmake -S native -B .bench/tools -G Ninja -DBLIPDIFF_BUILD_TOOLS=ON -DCMAKE_BUILD_TYPE=Release
//        -DCMAKE_PREFIX_PATH=$(.venv/bin/python -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')
//      cmake --build .bench/tools --target blipdiff_bench
// Prints one JSON document; run it on a quiet machine (nothing else running).
import { fail, measureChild } from "./lib.mjs";

const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
};
const bench = arg("bench");
const oldModel = arg("old");
const newModel = arg("new");
if (!bench || !oldModel || !newModel) fail("usage: bench-edit.mjs --bench BIN --old DIR --new DIR [--pairs N] [--runs N]");
const pairs = Number(arg("pairs", "2"));
const size = arg("width", "256");
const steps = arg("steps", "5");
const runs = arg("runs", "2");
const common = ["--width", size, "--height", size, "--steps", steps, "--steps-offset", "1"];

const results = [];
for (let i = 0; i < pairs; i++) {
  const pair = { pair: i + 1 };
  for (const [key, args] of [
    ["plainOld", ["--model", oldModel, ...common, "--runs", runs]],
    ["plainNew", ["--model", newModel, ...common, "--runs", runs]],
    ["edit", ["--model", newModel, ...common, "--runs", runs, "--edit", "1"]],
  ]) {
    process.stderr.write(`[bench-edit] pair ${i + 1}: ${key}\n`);
    const r = await measureChild(bench, args);
    if (r.error) fail(`${key}: ${r.error}`);
    pair[key] = { ...r.json, wallS: r.wallS, peakRssMb: r.peakRssMb };
  }
  results.push(pair);
}
process.stdout.write(`${JSON.stringify({ date: new Date().toISOString(), size, steps, runs, results }, null, 2)}\n`);
