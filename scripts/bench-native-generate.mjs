#!/usr/bin/env node
// One warm blipdiff process for scripts/bench-vs-diffusers.mjs: loads the model once through the library API
// (dist/), then makes `--repeat` images with the whole call a `blipdiff generate` user makes (subject picture
// decoded and encoded by the Q-Former, prompt, denoising, decoding to pixels), timing each call. Unlike
// scripts/bench-native.mjs, no subject embedding is computed beforehand, so each call does what one call of
// diffusers' BlipDiffusionPipeline does. Prints one JSON document on stdout.
//   node scripts/bench-native-generate.mjs --model DIR --subject-image FILE [--subject dog] [--prompt TEXT]
//     [--negative-prompt TEXT] [--width 256] [--height 256] [--steps 5] [--guidance 7.5] [--seed 42]
//     [--repeat 3] [--out last.png]
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { root } from "./lib.mjs";

const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
};
const model = arg("model");
const subjectImage = arg("subject-image");
const repeat = Number(arg("repeat", "3"));
const out = arg("out");
if (!model || !subjectImage || !(repeat >= 1)) {
  process.stderr.write("usage: bench-native-generate.mjs --model DIR --subject-image FILE [--repeat N >= 1] ...\n");
  process.exit(2);
}

const { BlipDiffusionPipeline, encodeImage } = await import(pathToFileURL(path.join(root, "dist", "index.js")).href);

let t = performance.now();
const pipe = await BlipDiffusionPipeline.load(model, { device: "cpu", dtype: "float32" });
const loadMs = performance.now() - t;

// The picture's bytes are read once (diffusers' script also opens its picture once); decoding stays in each call.
const picture = readFileSync(subjectImage);
const opts = {
  subjectImage: picture,
  subject: arg("subject", "dog"),
  prompt: arg("prompt", "swimming in a pool"),
  negativePrompt: arg("negative-prompt", ""),
  width: Number(arg("width", "256")),
  height: Number(arg("height", "256")),
  steps: Number(arg("steps", "5")),
  guidance: Number(arg("guidance", "7.5")),
  seed: Number(arg("seed", "42")),
};
const imageMs = [];
const timings = [];
let last;
for (let i = 0; i < repeat; i++) {
  t = performance.now();
  last = await pipe.generate(opts);
  imageMs.push(performance.now() - t);
  timings.push(last.timings);
}
await pipe.dispose();
if (out) writeFileSync(out, await encodeImage(last.images[0], "png"));
process.stdout.write(
  `${JSON.stringify({ load_ms: loadMs, image_ms: imageMs, timings, peak_rss_mb: process.resourceUsage().maxRSS / 1024 })}\n`,
);
