#!/usr/bin/env node
// One blipdiff fine-tune through the library API (dist/), run by scripts/bench-finetune.mjs in its own process.
// Prints one JSON document on stdout. Written against the finetune contract of issue #7
// (src/bindings/types.ts NativeFinetuneParams/Result): pipe.finetune({ images, subject, mode, steps, batchSize,
// resolution, seed, lr, weightDecay, loraRank, saveDtype, onProgress }) resolving to { losses, tensors, ctx,
// timings }. Per-step times come from result.timings.stepMs when the library reports them, otherwise from the
// arrival times of the per-step progress events, otherwise from the whole call.
import { rmSync, statSync } from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { fail, root } from "./lib.mjs";

const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
};
const model = arg("model");
const mode = arg("mode", "full");
const steps = Number(arg("steps", "4"));
const batchSize = Number(arg("batch", "1"));
const resolution = Number(arg("resolution", "256"));
const loraRank = Number(arg("rank", "4"));
const lr = Number(arg("lr", "5e-6"));
const weightDecay = Number(arg("weight-decay", "0.01"));
const images = arg("images", "").split(",").filter(Boolean);
const subject = arg("subject", "dog");
const out = arg("out"); // where the library's own writer (if it has one) saves the result; deleted afterwards
const libPath = path.resolve(arg("lib", path.join(root, "dist", "index.js")));

const lib = await import(pathToFileURL(libPath).href);
const { BlipDiffusionPipeline } = lib;
if (typeof BlipDiffusionPipeline?.prototype?.finetune !== "function") {
  fail(`${libPath} has no BlipDiffusionPipeline.finetune (issue #7): build a branch that has it (npm run build:ts) or pass --lib`);
}
const numel = (shape) => shape.reduce((a, b) => a * b, 1);
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; // as Python's statistics.median on the eager side
};

let t = performance.now();
const pipe = await BlipDiffusionPipeline.load(model, { device: "cpu", dtype: "float32" });
const loadMs = performance.now() - t;

const stepEnds = [];
const start = performance.now();
const result = await pipe.finetune({
  images,
  subject,
  mode,
  steps,
  batchSize,
  resolution,
  seed: 42,
  lr,
  weightDecay,
  ...(mode === "lora" ? { loraRank } : {}),
  saveDtype: mode === "full" ? "float16" : "float32",
  onProgress: () => stepEnds.push(performance.now()),
});
const callMs = performance.now() - start;

// Per-step milliseconds; the first step is the cold one and is reported apart from the others.
let stepMs;
let stepSource;
const prepareMs = result.timings?.prepareMs;
if (Array.isArray(result.timings?.stepMs) && result.timings.stepMs.length === steps) {
  stepMs = result.timings.stepMs;
  stepSource = "library";
} else if (stepEnds.length === steps) {
  // Progress arrives when a step is done; the first step starts after the preparation (when it is reported).
  const firstStart = start + (typeof prepareMs === "number" ? prepareMs : 0);
  stepMs = stepEnds.map((end, i) => end - (i === 0 ? firstStart : stepEnds[i - 1]));
  stepSource = typeof prepareMs === "number" ? "progress" : "progress (first step includes the preparation)";
} else {
  stepMs = Array(steps).fill((result.timings?.trainMs ?? callMs) / steps);
  stepSource = "whole call / steps";
}

// The output file: the library's writer when it has one (a result method or an exported function), else the
// exact size of a safetensors file of the returned tensors without metadata.
const tensors = { ...(result.tensors ?? {}) };
if (result.ctx) tensors.ctx_embeddings_cache = { dtype: "F32", shape: result.ctx.shape, data: result.ctx.data };
// The UNet or LoRA tensors plus the trained subject embedding (as the eager side counts).
const ctxShape = result.embedding?.queryEmbeds?.shape;
const trainedParams = Object.values(tensors).reduce((n, x) => n + numel(x.shape), 0) + (ctxShape ? numel(ctxShape) : 0);
let outputBytes = null;
let outputSource = null;
const writer = typeof lib.saveFinetunedSubject === "function" && result.embedding ? (f) => lib.saveFinetunedSubject(f, result.embedding)
  : typeof result.save === "function" ? (f) => result.save(f) : null;
if (writer && out) {
  await writer(out);
  outputBytes = statSync(out).size;
  outputSource = "file";
  rmSync(out, { force: true });
} else if (Object.keys(tensors).length > 0) {
  let offset = 0;
  const header = {};
  for (const [name, x] of Object.entries(tensors)) {
    const bytes = x.data.byteLength;
    header[name] = { dtype: x.dtype ?? "F32", shape: x.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  outputBytes = 8 + Buffer.byteLength(JSON.stringify(header)) + offset;
  outputSource = "computed (tensors + header, no metadata)";
}
await pipe.dispose();

process.stdout.write(
  `${JSON.stringify({
    mode,
    resolution,
    batch: batchSize,
    steps,
    threads: lib.loadAddon?.().buildInfo?.().numThreads ?? null,
    losses: result.losses,
    step_s: stepMs.map((ms) => ms / 1000),
    step_source: stepSource,
    first_step_s: stepMs[0] / 1000,
    median_step_s: steps > 1 ? median(stepMs.slice(1)) / 1000 : null,
    call_s: callMs / 1000,
    prepare_s: typeof prepareMs === "number" ? prepareMs / 1000 : null,
    load_s: loadMs / 1000,
    trained_params: trainedParams || null,
    output_bytes: outputBytes,
    output_source: outputSource,
    peak_rss_mb: process.resourceUsage().maxRSS / 1024,
  })}\n`,
);
