#!/usr/bin/env node
// Fine-tuning benchmark (issue #7): blipdiff's native finetune (library API, scripts/bench-finetune-native.mjs)
// against the same training step in eager PyTorch (models/bench/eager_finetune.py: the exporter's modules built
// eagerly from the matching checkpoint, same torch, same threads, same allocator settings), each run in its own
// process, in interleaved pairs whose order alternates (blipdiff first in odd pairs, eager first in even ones).
// Measures per-step time (the first, cold step apart; the median of the others), the whole process's wall time
// and peak RSS (GNU time, else /proc polling), and the output file size. Prints a markdown table for
// docs/benchmarks.md; everything measured goes to <out-dir>/results.json.
//
//   node scripts/bench-finetune.mjs --model .bench/full [--ckpt DIR] [--modes full,lora] [--sizes 256x1,512x3]
//     [--rank 4] [--steps 4] [--pairs 2] [--variants tuned] [--threads N] [--images a.png,b.png]
//
// --ckpt: the diffusers checkpoint the export was made from. For a `--random-weights` export it may be left
// out: the eager side then builds the exporter's seeded random weights from the shipped configs (the same
// weights as the export). --sizes: RESOLUTIONxBATCH cases. A run that fails (out of memory, say) is reported in
// the table and the benchmark goes on.
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fail, log, measureChild, root, venvPython } from "./lib.mjs";

const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
};
const model = path.resolve(arg("model", path.join(root, ".bench", "full")));
const outDir = path.resolve(arg("out-dir", path.join(root, ".bench", "finetune")));
const modes = arg("modes", "full,lora").split(",");
const sizes = arg("sizes", "256x1,512x3").split(",").map((s) => {
  const m = /^(\d+)x(\d+)$/.exec(s);
  if (!m) fail(`--sizes: expected RESOLUTIONxBATCH (e.g. 256x1), not ${s}`);
  return { resolution: m[1], batch: m[2] };
});
const rank = arg("rank", "4");
const steps = arg("steps", "4");
const pairs = Number(arg("pairs", "2"));
const lr = arg("lr", "5e-6");
const weightDecay = arg("weight-decay", "0.01");
const threadsArg = arg("threads");
const threads = threadsArg ?? String(os.availableParallelism());
const fixtures = path.resolve(process.env.BLIPDIFF_FIXTURES ?? path.join(root, "..", "shared", "fixtures"));
const images = arg("images", ["reference.png", "reference_large.png"].map((f) => path.join(fixtures, "tiny-a", "inputs", f)).join(","));
const lib = arg("lib");
const keepOutputs = process.argv.includes("--keep-outputs");
const py = venvPython(root);

for (const m of modes) if (m !== "full" && m !== "lora") fail(`--modes: full or lora, not ${m}`);
if (!existsSync(path.join(model, "manifest.json"))) {
  fail(`${model} has no manifest.json: export the model first (npm run bench does it for .bench/full: ` +
    "blipdiff convert --random-weights --with-controlnet --out .bench/full ...)");
}
const manifest = JSON.parse(readFileSync(path.join(model, "manifest.json"), "utf8"));
const randomWeights = manifest.source?.random_weights === true;
const ckpt = arg("ckpt");
if (!ckpt && !(randomWeights && manifest.source?.checkpoint === "Salesforce/blipdiffusion")) {
  fail("--ckpt is needed: the diffusers checkpoint folder the export was made from (it may be left out only for " +
    "a --random-weights export of the shipped configs)");
}
const eagerSource = [...(ckpt ? ["--ckpt", path.resolve(ckpt)] : []), ...(randomWeights ? ["--random-weights"] : [])];

// Allocator variants, as in scripts/bench.mjs: blipdiff's own settings against the same ones given to eager
// (eager_finetune.py re-executes itself with them), and glibc's defaults on both sides.
const variants = {
  tuned: { blipdiff: {}, eager: ["--allocator", "tuned"] },
  // The same, with eager encoding each picture with the VAE once (as blipdiff does) instead of every step (LAVIS).
  "tuned-cache-vae": { blipdiff: {}, eager: ["--allocator", "tuned", "--cache-vae"] },
  glibc: { blipdiff: { BLIPDIFF_MALLOC_TUNING: "0" }, eager: ["--allocator", "glibc"] },
};
const chosen = arg("variants", "tuned").split(",");
for (const v of chosen) if (!variants[v]) fail(`--variants: ${Object.keys(variants).join(" or ")}, not ${v}`);

/** Runs a child through lib.mjs's measureChild (peak RSS, wall time, its JSON), logging its command first. */
function measure(name, cmd, args, env) {
  log(`${name}: ${[cmd, ...args].join(" ")}`);
  return measureChild(cmd, args, { env, tmpDir: outDir });
}

function fileSize(file) {
  if (!existsSync(file)) return null;
  const size = statSync(file).size;
  if (!keepOutputs) rmSync(file, { force: true });
  return size;
}

async function runBlipdiff(c, variant) {
  const out = path.join(outDir, `blipdiff-${c.mode}-${c.resolution}x${c.batch}.safetensors`);
  const env = { ...process.env, ...variants[variant].blipdiff, ...(threadsArg ? { OMP_NUM_THREADS: threads } : {}) };
  const r = await measure(`blipdiff ${c.mode} ${c.resolution}x${c.batch} (${variant})`, process.execPath, [
    path.join(root, "scripts", "bench-finetune-native.mjs"), "--model", model, "--mode", c.mode, "--rank", rank,
    "--resolution", c.resolution, "--batch", c.batch, "--steps", steps, "--lr", lr, "--weight-decay", weightDecay,
    "--images", images, "--out", out, ...(lib ? ["--lib", lib] : []),
  ], env);
  return r;
}

async function runEager(c, variant) {
  const out = path.join(outDir, `eager-${c.mode}-${c.resolution}x${c.batch}.safetensors`);
  const env = { ...process.env, PYTHONPATH: path.join(root, "models") };
  const r = await measure(`eager ${c.mode} ${c.resolution}x${c.batch} (${variant})`, py, [
    path.join(root, "models", "bench", "eager_finetune.py"), ...eagerSource, "--tokenizer-dir", path.join(model, "tokenizer"),
    "--mode", c.mode, "--rank", rank, "--resolution", c.resolution, "--batch", c.batch, "--steps", steps,
    "--lr", lr, "--weight-decay", weightDecay, "--images", String(images.split(",").length), "--threads", threads,
    "--out", out, ...variants[variant].eager, ...(process.argv.includes("--channels-last") ? ["--channels-last"] : []),
  ], env);
  if (r.json) r.json.output_bytes = fileSize(out) ?? r.json.output_bytes;
  return r;
}

mkdirSync(outDir, { recursive: true });
const cases = modes.flatMap((mode) => sizes.map((s) => ({ mode, ...s })));
const results = {
  date: new Date().toISOString(), cpu: os.cpus()[0]?.model, cpus: os.availableParallelism(),
  memory_gb: os.totalmem() / 2 ** 30, model, threads, steps: Number(steps), rank: Number(rank), runs: [],
};
for (const variant of chosen) {
  for (const c of cases) {
    for (let p = 1; p <= pairs; p++) {
      const order = p % 2 ? [runBlipdiff, runEager] : [runEager, runBlipdiff];
      const [a, b] = [await order[0](c, variant), await order[1](c, variant)];
      const [blipdiff, eager] = p % 2 ? [a, b] : [b, a];
      results.runs.push({ variant, ...c, pair: p, blipdiff, eager });
      writeFileSync(path.join(outDir, "results.json"), `${JSON.stringify(results, null, 2)}\n`);
    }
  }
}

const f1 = (v) => (v == null ? "–" : v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));
const gb = (mb) => (mb ? (mb / 1024).toFixed(2) : "–");
const mbFile = (bytes) => (bytes == null ? "–" : bytes >= 1e9 ? (bytes / 1e6).toFixed(0) : (bytes / 1e6).toPrecision(3));
const cell = (r, fn) => (r.error ? `failed: ${r.error}` : fn(r.json));
let table = "";
for (const variant of chosen) {
  const what = {
    tuned: "tuned (blipdiff's defaults; eager: the same MALLOC_* and huge pages), eager encodes the VAE every step (LAVIS)",
    "tuned-cache-vae": "tuned, eager encodes each picture with the VAE once (as blipdiff does)",
    glibc: "glibc defaults on both sides",
  }[variant];
  table += `\nallocator: ${what}; ` +
    `${threads} threads, ${steps} steps (the first is the cold one; "step" is the median of the others)\n\n`;
  table += "| mode | size x batch | pair | blipdiff step (s) | eager step (s) | eager / blipdiff | first step blipdiff / eager (s) " +
    "| process wall blipdiff / eager (s) | peak RSS blipdiff / eager (GB) | output file blipdiff / eager (MB) |\n";
  table += "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
  for (const r of results.runs.filter((x) => x.variant === variant)) {
    const { blipdiff: n, eager: e } = r;
    const ratio = n.json?.median_step_s && e.json?.median_step_s ? `${(e.json.median_step_s / n.json.median_step_s).toFixed(2)}x` : "–";
    table += `| ${r.mode}${r.mode === "lora" ? ` r${rank}` : ""} | ${r.resolution} x ${r.batch} | ${r.pair} ` +
      `| ${cell(n, (j) => f1(j.median_step_s))} | ${cell(e, (j) => f1(j.median_step_s))} | ${ratio} ` +
      `| ${f1(n.json?.first_step_s)} / ${f1(e.json?.first_step_s)} | ${f1(n.wallS)} / ${f1(e.wallS)} ` +
      `| ${gb(n.peakRssMb)} / ${gb(e.peakRssMb)} | ${mbFile(n.json?.output_bytes)} / ${mbFile(e.json?.output_bytes)} |\n`;
  }
}
// Both sides must train the same parameters, or the ratio compares different work.
const notes = [];
for (const r of results.runs) {
  const [n, e] = [r.blipdiff.json, r.eager.json];
  if (n?.trained_params && e?.trained_params && n.trained_params !== e.trained_params) {
    notes.push(`${r.mode} ${r.resolution}x${r.batch} pair ${r.pair}: blipdiff trained ${n.trained_params} parameters, eager ${e.trained_params}`);
  }
  if (n?.threads && e?.threads && n.threads !== e.threads) {
    notes.push(`${r.mode} ${r.resolution}x${r.batch} pair ${r.pair}: blipdiff ran ${n.threads} torch threads, eager ${e.threads}`);
  }
  if (n && n.step_source !== "library") notes.push(`${r.mode} ${r.resolution}x${r.batch} pair ${r.pair}: blipdiff step times from ${n.step_source}`);
}
process.stdout.write(table);
if (notes.length) process.stdout.write(`\nnotes:\n${[...new Set(notes)].map((n) => `- ${n}`).join("\n")}\n`);
log(`results: ${path.join(outDir, "results.json")}`);
