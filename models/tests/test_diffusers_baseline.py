"""models/bench/diffusers_pipeline.py, diffusers' own BlipDiffusionPipeline patched for transformers 5 (the baseline of
scripts/bench-vs-diffusers.mjs), against the fixtures' golden images.

Needs a diffusers source tree (BLIPDIFF_DIFFUSERS_SRC, default ../.bench-src/diffusers/src beside the repository)
and the benchmark-only packages in the venv (transformers, accelerate, requests: docs/benchmarks.md), neither of
which is a dependency of blipdiff. So these tests are marked `bench` and deselected from the default run (pytest.ini);
run them with `pytest -m bench` where the benchmark is set up (scripts/bench-vs-diffusers.mjs also runs the golden
check itself before timing).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT
from PIL import Image
from safetensors.torch import load_file

SCRIPT = ROOT / "models" / "bench" / "diffusers_pipeline.py"
DIFFUSERS_SRC = Path(os.environ.get("BLIPDIFF_DIFFUSERS_SRC", ROOT.parent / ".bench-src" / "diffusers" / "src"))

missing = [m for m in ("transformers", "accelerate", "requests") if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.bench,
    pytest.mark.skipif(
        not (DIFFUSERS_SRC / "diffusers" / "__init__.py").is_file(),
        reason=f"no diffusers source at {DIFFUSERS_SRC} (set BLIPDIFF_DIFFUSERS_SRC)",
    ),
    pytest.mark.skipif(bool(missing), reason=f"benchmark-only packages not installed: {', '.join(missing)}"),
]


def run(*args, script: Path = SCRIPT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(DIFFUSERS_SRC), "HF_HUB_OFFLINE": "1", **(env or {})}
    cmd = [sys.executable, str(script), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_reproduces_the_golden_image(fixture, attn):
    proc = run("--check-golden", fixture.path, "--attn", attn, "--threads", "1")
    result = last_json(proc)
    assert proc.returncode == 0 and result["ok"], result
    assert result["seed_equals_latents"]
    if attn == "eager":  # how the goldens were made (one thread, eager attention): bit for bit
        assert result["image_max_abs_diff"] == 0.0


def test_check_fails_without_the_causal_mask_patch(fixture, tmp_path):
    """The golden check can fail: without adaptation (2) the text encoder attends both ways and the image moves."""
    source = SCRIPT.read_text()
    needle = "            if causal_attention_mask is not None:\n"
    assert needle in source
    broken = tmp_path / "diffusers_pipeline.py"
    broken.write_text(source.replace(needle, "            if False:\n"))
    proc = run("--check-golden", fixture.path, "--attn", "eager", "--threads", 1, script=broken)
    result = last_json(proc)
    assert proc.returncode == 1 and not result["ok"]
    assert result["image_max_abs_diff"] > 1e-3


def published_layout(ckpt: Path, out: Path) -> Path:
    """`ckpt` rewritten as the published checkpoint is laid out: pickled Q-Former and text-encoder weights, library
    "blip_diffusion", mean/std in model_index.json, no qformer_tokenizer/."""
    shutil.copytree(ckpt, out)
    for component in ("qformer", "text_encoder"):
        st = out / component / "model.safetensors"
        if st.is_file():
            torch.save(load_file(str(st)), out / component / "pytorch_model.bin")
            st.unlink()
    index = json.loads((out / "model_index.json").read_text())
    proc = json.loads((out / "image_processor" / "preprocessor_config.json").read_text())
    for component in ("qformer", "text_encoder", "image_processor"):
        index[component][0] = "blip_diffusion"
    index["mean"], index["std"] = proc["image_mean"], proc["image_std"]
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    shutil.rmtree(out / "qformer_tokenizer", ignore_errors=True)
    return out


def test_published_layout_gives_the_same_image(fixture, tmp_path):
    published = published_layout(fixture.ckpt, tmp_path / "published")
    size = json.loads((fixture.path / "golden.json").read_text())["cases"]["pipeline"]["cases"]["cfg"]["call_kwargs"]
    common = [
        "--image",
        fixture.path / "inputs" / "reference.png",
        "--width",
        size["width"],
        "--height",
        size["height"],
    ]
    common += ["--steps", 2, "--threads", 1, "--qformer-tokenizer", fixture.ckpt / "qformer_tokenizer"]
    a = run("--cold", "--ckpt", fixture.ckpt, *common, "--out", tmp_path / "a.png")
    b = run("--cold", "--ckpt", published, *common, "--out", tmp_path / "b.png")
    assert a.returncode == 0, a.stderr
    assert b.returncode == 0, b.stderr
    assert last_json(b)["image_ms"][0] > 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png")))


def test_missing_qformer_vocabulary_is_an_error(fixture, tmp_path):
    """transformers 5 would build an empty WordPiece vocabulary without a word; the script refuses instead."""
    published = published_layout(fixture.ckpt, tmp_path / "published")
    image = fixture.path / "inputs" / "reference.png"
    proc = run("--cold", "--ckpt", published, "--image", image, env={"HF_HUB_CACHE": str(tmp_path / "no-cache")})
    assert proc.returncode == 1
    assert "qformer_tokenizer" in proc.stderr and "--qformer-tokenizer" in proc.stderr
