#!/usr/bin/env node
// One blipdiff measurement through the library API (dist/), run by scripts/bench.mjs in its own process.
// Prints one JSON document on stdout. `--load-only` measures only BlipDiffusionPipeline.load.
import path from "node:path";
import { pathToFileURL } from "node:url";
import { root } from "./lib.mjs";

const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
};
const model = arg("model");
const subjectImage = arg("subject-image");
const width = Number(arg("width", "256"));
const height = Number(arg("height", "256"));
const steps = Number(arg("steps", "5"));
const repeat = Number(arg("repeat", "3"));

const { BlipDiffusionPipeline } = await import(pathToFileURL(path.join(root, "dist", "index.js")).href);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

let t = performance.now();
const pipe = await BlipDiffusionPipeline.load(model, { device: "cpu", dtype: "float32" });
const loadMs = performance.now() - t;
if (process.argv.includes("--load-only")) {
  await pipe.dispose();
  process.stdout.write(`${JSON.stringify({ load_ms: loadMs, peak_rss_mb: process.resourceUsage().maxRSS / 1024 })}\n`);
  process.exit(0);
}

const encodeTimes = [];
let embedding;
for (let i = 0; i <= repeat; i++) {
  t = performance.now();
  embedding = await pipe.encodeSubject({ images: subjectImage, subject: "dog" });
  if (i > 0) encodeTimes.push(performance.now() - t); // the first call also warms up the module
}

const opts = { subjectEmbedding: embedding, prompt: "swimming in a pool", negativePrompt: "low quality, blurry", width, height, steps, seed: 42 };
const runs = [];
for (let i = 0; i <= Math.max(1, repeat - 1); i++) {
  t = performance.now();
  const r = await pipe.generate(opts);
  const wall = performance.now() - t;
  if (i > 0) runs.push({ wall, ...r.timings }); // the first image warms up TorchScript's profiling executor
}
await pipe.dispose();
const unetCalls = steps + 1; // PNDM: steps + 1 UNet evaluations
const best = runs.reduce((a, b) => (a.wall <= b.wall ? a : b));
process.stdout.write(
  `${JSON.stringify({
    load_ms: loadMs,
    encode_ms: median(encodeTimes),
    text_ms: best.textMs,
    unet_step_ms: best.denoiseMs / unetCalls,
    vae_decode_ms: best.decodeMs,
    image_ms: best.wall,
    peak_rss_mb: process.resourceUsage().maxRSS / 1024,
  })}\n`,
);
