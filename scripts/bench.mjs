#!/usr/bin/env node
// CPU benchmark (`npm run bench`): blipdiff (TorchScript through the addon) against the same modules run
// eagerly in Python (same torch, same threads), each in its own process, on the full-size
// `--random-weights` export. Exports it first when missing. Prints a markdown table for docs/benchmarks.md.
//   npm run bench -- [--model .bench/full] [--width 256] [--height 256] [--steps 5] [--repeat 3]
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fail, log, root, venvPython } from "./lib.mjs";

const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
};
const model = path.resolve(arg("model", path.join(root, ".bench", "full")));
const width = arg("width", "256");
const height = arg("height", "256");
const steps = arg("steps", "5");
const repeat = arg("repeat", "3");
const threads = String(os.availableParallelism());
const fixtures = path.resolve(process.env.BLIPDIFF_FIXTURES ?? path.join(root, "..", "shared", "fixtures"));
const subjectImage = arg("subject-image", path.join(fixtures, "tiny-a", "inputs", "reference_large.png"));
const py = venvPython(root);
const pyEnv = { ...process.env, PYTHONPATH: path.join(root, "models") };

function runJson(name, cmd, args, env = process.env) {
  log(`${name}: ${[cmd, ...args].join(" ")}`);
  const start = performance.now();
  const r = spawnSync(cmd, args, { encoding: "utf8", env, stdio: ["ignore", "pipe", "inherit"], maxBuffer: 1 << 24 });
  if (r.status !== 0) fail(`${name} failed (${r.status ?? r.signal})`);
  const lines = r.stdout.trim().split("\n");
  return { ...JSON.parse(lines[lines.length - 1]), wall_ms: performance.now() - start, stdout: r.stdout };
}

const results = { date: new Date().toISOString(), cpu: os.cpus()[0]?.model, threads, width, height, steps };
if (!existsSync(path.join(model, "manifest.json"))) {
  mkdirSync(path.dirname(model), { recursive: true });
  const ckpt = path.join(fixtures, "tiny-a", "ckpt");
  const r = runJson("export", py, ["-m", "blipdiff_export", "convert", "--random-weights", "--with-controlnet", "--out", model,
    "--tokenizer-dir", path.join(ckpt, "tokenizer"), "--qformer-vocab", path.join(ckpt, "qformer_tokenizer", "vocab.txt")], pyEnv);
  results.export_ms = r.wall_ms;
}
const size = ["--width", width, "--height", height, "--steps", steps, "--repeat", repeat];
// The allocator is part of the runtime (native/src/core/model.cc sets mallopt at load): compare like with
// like by running both sides once with glibc's defaults and once with the same settings (the eager side
// gets them through glibc's MALLOC_*_ environment variables, which mean the same as those mallopt calls).
const variants = {
  tuned: {
    blipdiff: {},
    eager: { MALLOC_MMAP_MAX_: "0", MALLOC_TRIM_THRESHOLD_: String(1 << 30), MALLOC_TOP_PAD_: String(64 << 20) },
  },
  glibc: { blipdiff: { BLIPDIFF_MALLOC_TUNING: "0" }, eager: {} },
};
const chosen = arg("variants", "tuned,glibc").split(",");
const rows = [
  ["subject encoding (Q-Former, 1 image)", "encode_ms"],
  ["text encoding (cond + uncond)", "text_ms"],
  ["one UNet call (CFG batch of 2)", "unet_step_ms"],
  ["VAE decode", "vae_decode_ms"],
  [`whole image (${steps} steps, text to pixels)`, "image_ms"],
  ["peak RSS (MB)", "peak_rss_mb"],
];
const fmt = (v) => (v >= 100 ? v.toFixed(0) : v.toFixed(1));
let table = "";
for (const name of chosen) {
  const v = variants[name];
  if (!v) fail(`unknown variant ${name}`);
  const native = runJson(`blipdiff (${name})`, process.execPath, [path.join(root, "scripts", "bench-native.mjs"), "--model", model,
    "--subject-image", subjectImage, ...size], { ...process.env, ...v.blipdiff });
  const eager = runJson(`eager (${name})`, py, [path.join(root, "models", "bench", "eager_baseline.py"), "--threads", threads, ...size],
    { ...pyEnv, ...v.eager });
  delete native.stdout;
  delete eager.stdout;
  results[name] = { blipdiff: native, eager };
  table += `\nallocator: ${name === "tuned" ? "tuned (blipdiff: caching allocator + mallopt; eager: the same MALLOC_* settings)" : "glibc defaults on both sides"}\n\n`;
  table += "| stage | blipdiff (ms) | eager PyTorch (ms) | eager / blipdiff |\n| --- | ---: | ---: | ---: |\n";
  for (const [label, key] of rows) {
    table += `| ${label} | ${fmt(native[key])} | ${fmt(eager[key])} | ${(eager[key] / native[key]).toFixed(2)}x |\n`;
  }
  table += `| load (blipdiff: checksums + torch::jit::load; eager: build the modules) | ${fmt(native.load_ms)} | ${fmt(eager.build_ms)} | |\n`;
}
mkdirSync(path.join(root, ".bench"), { recursive: true });
writeFileSync(path.join(root, ".bench", "results.json"), `${JSON.stringify(results, null, 2)}\n`);
process.stdout.write(table);
