#!/usr/bin/env node
// blipdiff against diffusers' own BlipDiffusionPipeline (issue #9), cold and warm, in interleaved pairs whose order
// alternates (blipdiff first in odd pairs). Both sides: the same weights, the same subject picture, prompt, size,
// steps, guidance and seed (so the same initial latents: both draw them with torch's CPU generator), the same
// number of threads and the same allocator settings.
//
// cold: one fresh process each, making one image.
//   blipdiff: `node bin/blipdiff.js generate --model MODEL ... --json -q -o PNG`; "in-process" is its `totalMs`
//     (subject picture to pixels, model load excluded); "whole process" is the wall time measured here, node
//     startup, checksums and model load included.
//   diffusers: `python models/bench/diffusers_pipeline.py --cold`; "in-process" is the pipeline call; "whole
//     process" is the wall time measured here, interpreter startup, imports and loading included.
// warm: one process each, loading once and making --warm-repeat images; the figure is the median of the calls
//   after the first (scripts/bench-native-generate.mjs: the whole `generate` call through the library API, the
//   subject encoded in each call, as diffusers' call does; `diffusers_pipeline.py --warm N`).
// Peak RSS of every child from GNU time -v (else /proc polling). Ratios are diffusers / blipdiff: > 1 means
// blipdiff is faster (or smaller). Prints markdown tables; everything goes to <out-dir>/results.json.
//
//   node scripts/bench-vs-diffusers.mjs [--model .bench/full] [--ckpt .bench/full-diffusers]
//     [--diffusers-src ../.bench-src/diffusers/src] [--width 256] [--height 256] [--steps 5] [--guidance 7.5]
//     [--seed 42] [--threads 2] [--pairs 3] [--warm-repeat 3] [--modes cold,warm] [--variants tuned]
//     [--attn sdpa] [--subject-image FILE] [--out-dir .bench/vs-diffusers] [--skip-golden-check]
//
// Weights: --model must be `blipdiff convert` of --ckpt (exported here when missing), or a `--random-weights`
// export whose weights --ckpt holds (models/bench/random_diffusers_ckpt.py writes such a checkpoint; done here
// when --ckpt is missing and --model is a random export of the shipped configs). The two PNGs of the first pair
// are compared pixel by pixel as a check that both sides computed the same image.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, realpathSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { fail, log, measureChild, root, venvPython } from "./lib.mjs";

const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
};
const fixtures = path.resolve(process.env.BLIPDIFF_FIXTURES ?? path.join(root, "..", "shared", "fixtures"));
const model = path.resolve(arg("model", path.join(root, ".bench", "full")));
const ckpt = path.resolve(arg("ckpt", path.join(root, ".bench", "full-diffusers")));
const diffusersSrc = path.resolve(
  arg("diffusers-src", process.env.BLIPDIFF_DIFFUSERS_SRC ?? path.join(root, "..", ".bench-src", "diffusers", "src")),
);
const outDir = path.resolve(arg("out-dir", path.join(root, ".bench", "vs-diffusers")));
const s = {
  width: arg("width", "256"),
  height: arg("height", "256"),
  steps: arg("steps", "5"),
  guidance: arg("guidance", "7.5"),
  seed: arg("seed", "42"),
  subject: arg("subject", "dog"),
  prompt: arg("prompt", "swimming in a pool"),
  negativePrompt: arg("negative-prompt", ""),
  subjectImage: path.resolve(arg("subject-image", path.join(fixtures, "tiny-a", "inputs", "reference_large.png"))),
};
const threads = arg("threads", "2");
const pairs = Number(arg("pairs", "3"));
const warmRepeat = Number(arg("warm-repeat", "3"));
const modes = arg("modes", "cold,warm").split(",");
const attn = arg("attn", "sdpa");
const py = venvPython(root);
const diffusersScript = path.join(root, "models", "bench", "diffusers_pipeline.py");

for (const m of modes) if (m !== "cold" && m !== "warm") fail(`--modes: cold and/or warm, not ${m}`);
if (!(pairs >= 1) || !(warmRepeat >= 2)) fail("--pairs must be >= 1 and --warm-repeat >= 2 (the first call is the warm-up)");
if (!existsSync(s.subjectImage)) fail(`--subject-image ${s.subjectImage}: file not found`);

// The allocator settings blipdiff's runtime applies (mallopt + its caching allocator with huge pages), given to
// the Python side as the environment variables that mean the same to glibc and to c10 (as scripts/bench.mjs and
// models/bench/eager_finetune.py do); "glibc" is both sides' defaults.
const variants = {
  tuned: {
    blipdiff: {},
    diffusers: { MALLOC_MMAP_MAX_: "0", MALLOC_TRIM_THRESHOLD_: String(1 << 30), MALLOC_TOP_PAD_: String(64 << 20), THP_MEM_ALLOC_ENABLE: "1" },
  },
  glibc: { blipdiff: { BLIPDIFF_MALLOC_TUNING: "0", BLIPDIFF_HUGEPAGES: "0" }, diffusers: {} },
};
const chosen = arg("variants", "tuned").split(",");
for (const v of chosen) if (!variants[v]) fail(`--variants: ${Object.keys(variants).join(" or ")}, not ${v}`);
const ALLOCATOR_KEYS = ["MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "THP_MEM_ALLOC_ENABLE", "BLIPDIFF_MALLOC_TUNING", "BLIPDIFF_HUGEPAGES"];
const baseEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !ALLOCATOR_KEYS.includes(k)));
const threadEnv = { OMP_NUM_THREADS: threads, MKL_NUM_THREADS: threads };
const pyEnv = {
  ...baseEnv,
  ...threadEnv,
  PYTHONPATH: [diffusersSrc, process.env.PYTHONPATH].filter(Boolean).join(path.delimiter),
  HF_HUB_OFFLINE: "1",
};

// ------------------------------------------------------------------------------------------ prerequisites

if (!existsSync(path.join(diffusersSrc, "diffusers", "__init__.py"))) {
  fail(`no diffusers source at ${diffusersSrc}: check out huggingface/diffusers (the fixtures' commit 58eb52c0) and pass ` +
    "--diffusers-src <checkout>/src or set BLIPDIFF_DIFFUSERS_SRC (docs/benchmarks.md, \"blipdiff against diffusers\")");
}
{
  const r = spawnSync(py, ["-c", "import transformers, accelerate, requests"], { encoding: "utf8" });
  if (r.status !== 0) {
    fail(`the venv lacks the benchmark-only packages (${(r.stderr || "").trim().split("\n").pop()}); install them from the ` +
      "local index: .venv/bin/pip install --no-index --find-links /opt/pypi/files transformers==5.17.0 accelerate requests importlib_metadata");
  }
}

const shown = (cmd, args) => [cmd, ...args].map((a) => (/^[\w./:=,+-]+$/.test(a) ? a : JSON.stringify(a))).join(" ");

function runSync(name, cmd, args, env) {
  log(`${name}: ${shown(cmd, args)}`);
  const r = spawnSync(cmd, args, { encoding: "utf8", env, stdio: ["ignore", "pipe", "inherit"], maxBuffer: 1 << 24 });
  if (r.status !== 0) fail(`${name} failed (${r.status ?? r.signal})`);
  return r.stdout;
}

const readJson = (file) => JSON.parse(readFileSync(file, "utf8"));
const MARKER = "blipdiff_random_weights.json";
let manifest = existsSync(path.join(model, "manifest.json")) ? readJson(path.join(model, "manifest.json")) : null;
if (!existsSync(path.join(ckpt, "model_index.json"))) {
  const src = manifest?.source;
  if (!(src?.random_weights === true && src.checkpoint === "Salesforce/blipdiffusion")) {
    fail(`no diffusers checkpoint at ${ckpt}: pass --ckpt <diffusers-format folder> (the model is exported from it when ` +
      "--model has no manifest), or give --model a --random-weights export of the shipped configs");
  }
  // The lead's .bench/full was exported with the fixture's tokenizer files (scripts/bench.mjs); use the same.
  const tok = path.join(fixtures, "tiny-a", "ckpt");
  mkdirSync(path.dirname(ckpt), { recursive: true });
  runSync("diffusers checkpoint of the random weights", py, [path.join(root, "models", "bench", "random_diffusers_ckpt.py"),
    "--out", ckpt, "--tokenizer-dir", path.join(tok, "tokenizer"), "--qformer-tokenizer-dir", path.join(tok, "qformer_tokenizer")],
  { ...process.env, PYTHONPATH: path.join(root, "models") });
}
if (!manifest) {
  mkdirSync(path.dirname(model), { recursive: true });
  runSync("export", process.execPath, [path.join(root, "bin", "blipdiff.js"), "convert", ckpt, "--out", model], process.env);
  manifest = readJson(path.join(model, "manifest.json"));
}

// Both sides must hold the same weights, or the ratios compare different models.
{
  const src = manifest.source ?? {};
  const marker = existsSync(path.join(ckpt, MARKER)) ? readJson(path.join(ckpt, MARKER)) : null;
  if (src.random_weights === true) {
    const same = marker && ["random_seed", "exporter_version", "checkpoint"].every((k) => marker[k] === src[k]);
    if (!same) {
      fail(`${model} is a --random-weights export (${src.checkpoint}, seed ${src.random_seed}, exporter ${src.exporter_version}) ` +
        `but ${ckpt} ${marker ? `holds other random weights (${marker.checkpoint}, seed ${marker.random_seed}, exporter ${marker.exporter_version})` : "is not a random-weights checkpoint"}; ` +
        "write it with models/bench/random_diffusers_ckpt.py, or export the model from the checkpoint (blipdiff convert CKPT --out MODEL)");
    }
  } else {
    const label = realpathSync(ckpt).split(path.sep).slice(-2).join("/");
    if (src.checkpoint !== label) {
      fail(`${model} was exported from ${src.checkpoint}, not from ${ckpt}; export it from the checkpoint: ` +
        `node bin/blipdiff.js convert ${ckpt} --out <folder>`);
    }
  }
}

mkdirSync(outDir, { recursive: true });
const results = {
  date: new Date().toISOString(), cpu: os.cpus()[0]?.model, cpus: os.availableParallelism(), memory_gb: os.totalmem() / 2 ** 30,
  model, ckpt, diffusers_src: diffusersSrc, threads: Number(threads), attn, settings: s, warm_repeat: warmRepeat, runs: [],
};

// The baseline must compute the reference's numbers: the fixture's golden image (fixtures README tolerances).
if (!process.argv.includes("--skip-golden-check")) {
  const fixture = path.join(fixtures, "tiny-a");
  const args = [diffusersScript, "--check-golden", fixture, "--attn", attn, "--threads", threads];
  log(`golden check of the diffusers baseline: ${shown(py, args)}`);
  const r = spawnSync(py, args, { encoding: "utf8", env: pyEnv, stdio: ["ignore", "pipe", "inherit"] });
  const last = (r.stdout || "").trim().split("\n").pop();
  if (r.status !== 0 || !last?.startsWith("{")) {
    fail(`the patched diffusers pipeline does not reproduce ${fixture}'s golden image (exit ${r.status ?? r.signal}): ${last || "no output"}`);
  }
  results.golden_check = JSON.parse(last);
  log(`golden check: image max |diff| ${results.golden_check.image_max_abs_diff.toExponential(1)}, ` +
    `uint8 off on ${results.golden_check.image_u8_pixels_off} values`);
}

// ------------------------------------------------------------------------------------------ measuring

/** Runs a child through lib.mjs's measureChild (peak RSS, wall time, its JSON), logging its command first. */
function measure(name, cmd, args, env) {
  log(`${name}: ${shown(cmd, args)}`);
  return measureChild(cmd, args, { env, tmpDir: outDir });
}

const median = (xs) => {
  const a = [...xs].sort((x, y) => x - y);
  const m = Math.floor(a.length / 2);
  return a.length % 2 ? a[m] : (a[m - 1] + a[m]) / 2;
};
const png = (side, mode, pair) => path.join(outDir, `${side}-${mode}-${pair}.png`);
const common = ["--width", s.width, "--height", s.height, "--steps", s.steps, "--guidance", s.guidance, "--seed", s.seed,
  "--prompt", s.prompt, "--negative-prompt", s.negativePrompt, "--subject", s.subject];

async function blipdiffCold(variant, pair) {
  const r = await measure(`blipdiff cold (${variant}, pair ${pair})`, process.execPath, [path.join(root, "bin", "blipdiff.js"),
    "generate", "--model", model, "--subject-image", s.subjectImage, ...common, "--device", "cpu", "--json", "-q", "-f",
    "-o", png("blipdiff", "cold", pair)], { ...baseEnv, ...threadEnv, ...variants[variant].blipdiff });
  if (r.json) {
    const t = r.json.timings;
    r.summary = { image_s: t.totalMs / 1000, process_s: r.wallS, subject_s: t.subjectMs / 1000, text_s: t.textMs / 1000,
      denoise_s: t.denoiseMs / 1000, decode_s: t.decodeMs / 1000 };
  }
  return r;
}

async function diffusersRun(mode, variant, pair) {
  const r = await measure(`diffusers ${mode} (${variant}, pair ${pair})`, py, [diffusersScript,
    ...(mode === "cold" ? ["--cold"] : ["--warm", String(warmRepeat)]), "--ckpt", ckpt, "--image", s.subjectImage, ...common,
    "--threads", threads, "--attn", attn, "--out", png("diffusers", mode, pair)], { ...pyEnv, ...variants[variant].diffusers });
  if (r.json) {
    const j = r.json;
    const calls = mode === "cold" ? j.stages : j.stages.slice(1);
    const ms = (key) => median(calls.map((c) => c[key])) / 1000;
    r.summary = {
      image_s: ms("image_ms"), first_s: j.image_ms[0] / 1000, process_s: r.wallS, load_s: j.load_ms / 1000, import_s: j.import_ms / 1000,
      subject_s: ms("subject_ms"), text_s: ms("text_ms"), denoise_s: ms("denoise_ms"), decode_s: ms("decode_ms"),
    };
  }
  return r;
}

async function blipdiffWarm(variant, pair) {
  const r = await measure(`blipdiff warm (${variant}, pair ${pair})`, process.execPath, [path.join(root, "scripts", "bench-native-generate.mjs"),
    "--model", model, "--subject-image", s.subjectImage, ...common, "--repeat", String(warmRepeat), "--out", png("blipdiff", "warm", pair)],
  { ...baseEnv, ...threadEnv, ...variants[variant].blipdiff });
  if (r.json) {
    const j = r.json;
    const calls = j.timings.slice(1);
    const ms = (key) => median(calls.map((c) => c[key])) / 1000;
    r.summary = { image_s: median(j.image_ms.slice(1)) / 1000, first_s: j.image_ms[0] / 1000, process_s: r.wallS, load_s: j.load_ms / 1000,
      subject_s: ms("subjectMs"), text_s: ms("textMs"), denoise_s: ms("denoiseMs"), decode_s: ms("decodeMs") };
  }
  return r;
}

for (const variant of chosen) {
  for (let pair = 1; pair <= pairs; pair++) {
    const run = { variant, pair };
    const blipdiffFirst = pair % 2 === 1;
    if (modes.includes("cold")) {
      if (blipdiffFirst) {
        run.cold = { blipdiff: await blipdiffCold(variant, pair) };
        run.cold.diffusers = await diffusersRun("cold", variant, pair);
      } else {
        const d = await diffusersRun("cold", variant, pair);
        run.cold = { blipdiff: await blipdiffCold(variant, pair), diffusers: d };
      }
    }
    if (modes.includes("warm")) {
      if (blipdiffFirst) {
        run.warm = { blipdiff: await blipdiffWarm(variant, pair) };
        run.warm.diffusers = await diffusersRun("warm", variant, pair);
      } else {
        const d = await diffusersRun("warm", variant, pair);
        run.warm = { blipdiff: await blipdiffWarm(variant, pair), diffusers: d };
      }
    }
    results.runs.push(run);
    writeFileSync(path.join(outDir, "results.json"), `${JSON.stringify(results, null, 2)}\n`);
  }
}

// Same weights, same latents: the two images must agree up to float32 noise (blipdiff runs TorchScript with its
// own kernels' order of operations, so not bit for bit).
const { decodeRgb } = await import(pathToFileURL(path.join(root, "dist", "index.js")).href);
results.image_comparison = [];
for (const mode of modes) {
  const [a, b] = [png("blipdiff", mode, 1), png("diffusers", mode, 1)];
  if (!existsSync(a) || !existsSync(b)) continue;
  const [x, y] = [await decodeRgb(a), await decodeRgb(b)];
  if (x.width !== y.width || x.height !== y.height) {
    results.image_comparison.push({ mode, error: `sizes differ: ${x.width}x${x.height} and ${y.width}x${y.height}` });
    continue;
  }
  let max = 0;
  let sum = 0;
  let off = 0;
  for (let i = 0; i < x.data.length; i++) {
    const d = Math.abs(x.data[i] - y.data[i]);
    max = Math.max(max, d);
    sum += d;
    if (d > 1) off++;
  }
  results.image_comparison.push({ mode, max_abs_diff: max, mean_abs_diff: sum / x.data.length, values_off_by_more_than_1: off, values: x.data.length });
}
writeFileSync(path.join(outDir, "results.json"), `${JSON.stringify(results, null, 2)}\n`);

// ------------------------------------------------------------------------------------------ tables

const f = (v) => (v == null || Number.isNaN(v) ? "–" : v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v >= 1 ? v.toFixed(2) : v.toFixed(3));
const ratio = (d, b) => (d != null && b ? `${(d / b).toFixed(2)}x` : "–");
const gb = (mb) => (mb ? (mb / 1024).toFixed(2) : "–");
const sum = (r) => (r?.error ? null : r?.summary);
const cell = (r, key) => (r?.error ? `failed: ${r.error}` : f(r?.summary?.[key]));
let out = "";
const setting = `${s.width}x${s.height}, ${s.steps} PNDM steps (${Number(s.steps) + 1} UNet calls), guidance ${s.guidance}, seed ${s.seed}, ` +
  `${threads} threads, transformers attention ${attn}`;
for (const variant of chosen) {
  const runs = results.runs.filter((r) => r.variant === variant);
  const alloc = variant === "tuned" ? "allocator tuned (blipdiff's defaults; diffusers: the same MALLOC_* settings and huge pages)"
    : "glibc and c10 defaults on both sides";
  if (modes.includes("cold")) {
    out += `\ncold: one fresh process per image; ${setting}; ${alloc}\n\n`;
    out += "| pair | blipdiff in-process (s) | diffusers in-process (s) | diffusers / blipdiff | blipdiff whole process (s) " +
      "| diffusers whole process (s) | diffusers / blipdiff | peak RSS blipdiff / diffusers (GB) |\n";
    out += "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
    for (const r of runs) {
      const [b, d] = [r.cold.blipdiff, r.cold.diffusers];
      out += `| ${r.pair} | ${cell(b, "image_s")} | ${cell(d, "image_s")} | ${ratio(sum(d)?.image_s, sum(b)?.image_s)} ` +
        `| ${cell(b, "process_s")} | ${cell(d, "process_s")} | ${ratio(sum(d)?.process_s, sum(b)?.process_s)} ` +
        `| ${gb(b.peakRssMb)} / ${gb(d.peakRssMb)} |\n`;
    }
  }
  if (modes.includes("warm")) {
    out += `\nwarm: one process per side, one load, then ${warmRepeat} images; the median of all but the first; ${setting}; ${alloc}\n\n`;
    out += "| pair | blipdiff image (s) | diffusers image (s) | diffusers / blipdiff | first image blipdiff / diffusers (s) " +
      "| peak RSS blipdiff / diffusers (GB) |\n";
    out += "| ---: | ---: | ---: | ---: | ---: | ---: |\n";
    for (const r of runs) {
      const [b, d] = [r.warm.blipdiff, r.warm.diffusers];
      out += `| ${r.pair} | ${cell(b, "image_s")} | ${cell(d, "image_s")} | ${ratio(sum(d)?.image_s, sum(b)?.image_s)} ` +
        `| ${cell(b, "first_s")} / ${cell(d, "first_s")} | ${gb(b.peakRssMb)} / ${gb(d.peakRssMb)} |\n`;
    }
  }
  if (modes.includes("cold") && modes.includes("warm")) {
    out += `\nissue #9 goals (${variant}; each >= 1.25x): a fresh blipdiff generate against a warm diffusers call, and the whole ` +
      "blipdiff process against the whole Python script\n\n";
    out += "| pair | warm diffusers call / blipdiff cold in-process | diffusers whole process / blipdiff whole process |\n";
    out += "| ---: | ---: | ---: |\n";
    for (const r of runs) {
      out += `| ${r.pair} | ${ratio(sum(r.warm.diffusers)?.image_s, sum(r.cold.blipdiff)?.image_s)} ` +
        `| ${ratio(sum(r.cold.diffusers)?.process_s, sum(r.cold.blipdiff)?.process_s)} |\n`;
    }
  }
  // Stages, median over the pairs. blipdiff's subject time includes decoding and resizing the picture; diffusers'
  // is the Q-Former call only (its preprocessing runs before it); text: the text encoder calls.
  const stage = (mode, side, key) => {
    const v = runs.map((r) => sum(r[mode]?.[side])?.[key]).filter((x) => x != null);
    return v.length ? f(median(v)) : "–";
  };
  out += `\nstages (${variant}, median over pairs, s): blipdiff's subject time includes reading and resizing the picture\n\n`;
  const cols = modes.flatMap((m) => [[m, "blipdiff"], [m, "diffusers"]]);
  out += `| stage | ${cols.map(([m, side]) => `${side} ${m}`).join(" | ")} |\n| --- |${" ---: |".repeat(cols.length)}\n`;
  for (const [label, key] of [["subject (Q-Former)", "subject_s"], ["text encoder", "text_s"],
    [`denoise (${Number(s.steps) + 1} UNet calls)`, "denoise_s"], ["VAE decode", "decode_s"], ["whole call", "image_s"]]) {
    out += `| ${label} | ${cols.map(([m, side]) => stage(m, side, key)).join(" | ")} |\n`;
  }
}
if (results.image_comparison.length) {
  out += "\nsame image check (pair 1, blipdiff PNG against diffusers PNG, uint8 RGB):\n";
  for (const c of results.image_comparison) {
    out += c.error ? `- ${c.mode}: ${c.error}\n` : `- ${c.mode}: max |diff| ${c.max_abs_diff}, mean ${c.mean_abs_diff.toFixed(3)}, ` +
      `${c.values_off_by_more_than_1} of ${c.values} values off by more than 1\n`;
  }
}
process.stdout.write(out);
log(`results: ${path.join(outDir, "results.json")}`);
