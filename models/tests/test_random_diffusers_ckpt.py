"""models/bench/random_diffusers_ckpt.py: the diffusers checkpoint it writes holds exactly the weights of
`convert --random-weights`, so scripts/bench-vs-diffusers.mjs compares diffusers and blipdiff on the same model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT

SCRIPT = ROOT / "models" / "bench" / "random_diffusers_ckpt.py"
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "models")}


def run(*args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)


def write(fixture, out):
    return run(
        SCRIPT,
        "--configs",
        fixture.ckpt,
        "--out",
        out,
        "--tokenizer-dir",
        fixture.ckpt / "tokenizer",
        "--qformer-tokenizer-dir",
        fixture.ckpt / "qformer_tokenizer",
    )


def test_export_of_the_written_checkpoint_is_the_random_export(fixture, tmp_path):
    proc = write(fixture, tmp_path / "ckpt")
    assert proc.returncode == 0, proc.stderr
    ckpt = tmp_path / "ckpt"
    for path in ("qformer/model.safetensors", "text_encoder/model.safetensors", "unet/config.json", "vae/config.json"):
        assert (ckpt / path).is_file(), path
    assert (ckpt / "qformer_tokenizer" / "vocab.txt").is_file() and (ckpt / "tokenizer").is_dir()

    # Fresh processes (the CLI), as TorchScript files are byte-reproducible only across processes.
    for args in (
        (ckpt, "--out", tmp_path / "from-ckpt"),
        (fixture.ckpt, "--random-weights", "--out", tmp_path / "random"),
    ):
        proc = run("-m", "blipdiff_export", "convert", *args)
        assert proc.returncode == 0, proc.stderr
    from_ckpt = json.loads((tmp_path / "from-ckpt" / "manifest.json").read_text())
    random = json.loads((tmp_path / "random" / "manifest.json").read_text())
    assert sorted(from_ckpt["modules"]) == sorted(random["modules"])
    for name, entry in random["modules"].items():
        assert from_ckpt["modules"][name]["sha256"] == entry["sha256"], name

    marker = json.loads((ckpt / "blipdiff_random_weights.json").read_text())
    for key in ("random_seed", "exporter_version", "checkpoint"):
        assert marker[key] == random["source"][key], key


def test_refuses_a_non_empty_out(fixture, tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    proc = write(fixture, out)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error:") and "--force" in proc.stderr
    assert (out / "keep.txt").read_text() == "x"
