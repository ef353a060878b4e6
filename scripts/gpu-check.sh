#!/usr/bin/env bash
# One prepared run on a GPU machine (no Node needed there): builds the C++ harness against that machine's
# torch, exports the full-size --random-weights model, compares CUDA with the CPU on the same seed, and
# times the issue's GPU benchmark (512x512, 25 steps, float16; float32 and bfloat16 for comparison) and
# 80 fine-tuning steps of each mode (512x512, batch 3), and editing at 512x512 with 50 steps.
# Results (JSON lines, logs, the raw images' comparison) go to $OUT (default .bench/gpu).
#   bash scripts/gpu-check.sh            # on the device machine, from the repository root
#   GPU_CHECK_CPU_ONLY=1 bash scripts/gpu-check.sh   # rehearsal of the same steps on a CPU machine
set -euo pipefail
OUT=${OUT:-.bench/gpu}
PY=${PYTHON:-python3}
BUILD=${BUILD:-/tmp/blipdiff-build}
MODEL=${MODEL:-/tmp/blipdiff-full}
mkdir -p "$OUT"
log() { echo "[gpu-check] $*" | tee -a "$OUT/log.txt" >&2; }

log "torch: $($PY -c 'import torch; print(torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")')"
prefix=$($PY -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
cmake -S native -B "$BUILD" "${gen[@]}" -DBLIPDIFF_BUILD_TOOLS=ON -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" >"$OUT/cmake.txt" 2>&1
cmake --build "$BUILD" --target blipdiff_bench -j"$(nproc)" >>"$OUT/cmake.txt" 2>&1
bench="$BUILD/blipdiff_bench"
log "built $bench"

if [ ! -f "$MODEL/manifest.json" ]; then
  # The tokenizer files do not matter for timing; the fixture's are used when present, else a stub is made.
  tok=../shared/fixtures/tiny-a/ckpt
  if [ ! -d "$tok/tokenizer" ]; then
    tok=/tmp/blipdiff-tok; mkdir -p "$tok/tokenizer" "$tok/qformer_tokenizer"
    $PY - "$tok" <<'PY'
import json, sys
d = sys.argv[1]
vocab = {"<|startoftext|>": 49406, "<|endoftext|>": 49407, "a</w>": 320, "dog</w>": 1929}
json.dump(vocab, open(f"{d}/tokenizer/vocab.json", "w"))
open(f"{d}/tokenizer/merges.txt", "w").write("#version: 0.2\n")
open(f"{d}/qformer_tokenizer/vocab.txt", "w").write("\n".join(["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "dog"]) + "\n")
PY
  fi
  start=$(date +%s)
  PYTHONPATH=models $PY -m blipdiff_export convert --random-weights --out "$MODEL" --force \
    --tokenizer-dir "$tok/tokenizer" --qformer-vocab "$tok/qformer_tokenizer/vocab.txt" >"$OUT/export.txt" 2>&1
  log "exported the full-size model in $(( $(date +%s) - start )) s"
fi

run() {  # name, then blipdiff_bench arguments
  local name=$1; shift
  if "$bench" --model "$MODEL" --steps-offset 0 "$@" >"$OUT/$name.json" 2>"$OUT/$name.log"; then
    log "$name: $(cat "$OUT/$name.json")"
  else
    log "$name FAILED: $(tail -1 "$OUT/$name.log")"
  fi
  # The stderr policy (native/src/core/diagnostics.h): libtorch's own log lines ("[W... file.cpp:N] ...")
  # must not appear; its TORCH_WARN warnings are collected and listed by the harness instead.
  if grep -qE '^\[[WEI][0-9]{4} ' "$OUT/$name.log"; then
    log "$name: libtorch wrote to stderr directly: $(grep -E '^\[[WEI][0-9]{4} ' "$OUT/$name.log" | sort | uniq -c | head -3)"
  fi
  if grep -q '^libtorch warning: ' "$OUT/$name.log"; then
    log "$name: $(grep '^libtorch warning: ' "$OUT/$name.log" | head -3)"
  fi
}

dev=cuda; [ "${GPU_CHECK_CPU_ONLY:-0}" = 1 ] && dev=cpu
# Parity: the same seed on the CPU and on the device in float32, 64x64 latents, 5 steps.
run parity-cpu --device cpu --width 256 --height 256 --steps 5 --runs 1 --dump-image "$OUT/parity-cpu.raw"
run parity-$dev --device $dev --width 256 --height 256 --steps 5 --runs 1 --dump-image "$OUT/parity-$dev.raw"
$PY - "$OUT/parity-cpu.raw" "$OUT/parity-$dev.raw" <<'PY' | tee -a "$OUT/log.txt" >&2
import sys
import numpy as np
a, b = (np.fromfile(p, dtype=np.uint8).astype(np.int16) for p in sys.argv[1:3])
d = np.abs(a - b)
print(f"[gpu-check] parity cpu vs device float32: max |diff| {d.max()} (uint8), {np.mean(d > 1) * 100:.3f}% of values off by more than 1")
PY
[ "$dev" = cpu ] && exit 0
# The issue's GPU benchmark: 512x512, 25 steps, float16 (seconds per image, steps per second).
# Peak device memory: nvidia-smi sampled every 100 ms during the run (includes the CUDA context).
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$OUT/gpu-mem-fp16.txt" 2>/dev/null &
smi=$!
run gpu-fp16-512 --device cuda --dtype float16 --width 512 --height 512 --steps 25 --runs 3 --per-module-load 1
kill $smi 2>/dev/null || true
log "peak GPU memory during the float16 run: $(sort -n "$OUT/gpu-mem-fp16.txt" | tail -1) MiB"
run gpu-bf16-512 --device cuda --dtype bfloat16 --width 512 --height 512 --steps 25 --runs 3
run gpu-fp32-512 --device cuda --dtype float32 --width 512 --height 512 --steps 25 --runs 3
# TorchScript's graph optimization (issue #9): off on the CPU by default, libtorch's default (on) on CUDA. Both
# settings on CUDA, interleaved, each a fresh process: run 0 is the cold (first) image, run 1 the warm one.
for pair in 1 2; do
  for jit in 1 0; do
    BLIPDIFF_JIT_OPTIMIZE=$jit run gpu-fp16-512-jit$jit-$pair --device cuda --dtype float16 --width 512 --height 512 \
      --steps 25 --runs 2
  done
done
# Fine-tuning (issue #7): 80 steps of each mode at 512x512, batch 3, bf16 autocast with float32 master weights
# (the pipeline loads in float16; full mode trains float32 copies). Goal on an H100: full <= 15 s, LoRA <= 8 s.
for mode in lora full; do
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$OUT/gpu-mem-ft-$mode.txt" 2>/dev/null &
  smi=$!
  run ft-$mode-512x3 --device cuda --dtype float16 --finetune $mode --finetune-steps 80 --finetune-batch 3 --finetune-resolution 512
  kill $smi 2>/dev/null || true
  log "peak GPU memory during the $mode fine-tune: $(sort -n "$OUT/gpu-mem-ft-$mode.txt" | tail -1) MiB"
done
# Editing (issue #8): one CFG generation, one prompt-to-prompt edit of a generated source and one of a real picture
# (DDIM inversion + DDIM), 512x512, 50 steps, float16, interleaved, twice (cold then warm).
run edit-fp16-512 --device cuda --dtype float16 --width 512 --height 512 --steps 50 --runs 2 --edit 1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv >"$OUT/nvidia-smi.txt" 2>&1 || true
log "done"
