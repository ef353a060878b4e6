"""`python -m blipdiff_export convert`: exit codes, messages, atomic output, hub ids, random weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from blipdiff_export.__main__ import main
from blipdiff_export.export import convert
from blipdiff_export.module_files import load_module
from conftest import ROOT
from safetensors.torch import load_file, save_file


def run_main(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def assert_no_leftovers(parent) -> None:
    assert not [p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_cli_in_a_fresh_process(fixture, exported, tmp_path):
    """The real entry point; also shows that the .pt files are byte-identical across processes.

    A fixed, different hash seed: TorchScript output used to depend on it (see blipdiff_export.reproducible).
    """
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "models"), "PYTHONHASHSEED": "12345"}
    proc = subprocess.run(
        [sys.executable, "-m", "blipdiff_export", "convert", str(fixture.ckpt), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{out}\n"
    for name in ("qformer", "text_encoder", "unet", "vae_decoder", "vae_encoder"):
        assert any(line.startswith(f"{name}: ") and " s, " in line for line in proc.stderr.splitlines()), name
    reference = exported(fixture)
    assert (out / "manifest.json").read_bytes() == (reference / "manifest.json").read_bytes()


@pytest.mark.parametrize(
    "argv",
    [[], ["convert"], ["convert", "--out"], ["convert", "--out", "x"], ["frobnicate"], ["convert", "a", "--bogus"]],
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_existing_out_needs_force(fixture, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, stdout, err = run_main(["convert", fixture.ckpt, "--out", out], capsys)
    assert code == 1 and stdout == ""
    assert "--force" in assert_one_error_line(err)
    assert (out / "keep.txt").exists()
    code, stdout, _ = run_main(["convert", fixture.ckpt, "--out", out, "--force"], capsys)
    assert code == 0 and stdout == f"{out}\n"
    assert not (out / "keep.txt").exists() and (out / "manifest.json").is_file()
    assert_no_leftovers(tmp_path)


def broken_copy(fixture, tmp_path, edit):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(fixture.ckpt, ckpt)
    edit(ckpt)
    return ckpt


def edit_unet(change):
    def edit(ckpt):
        path = ckpt / "unet" / "diffusion_pytorch_model.safetensors"
        state = load_file(str(path))
        change(state)
        save_file(state, str(path))

    return edit


def _drop(state):
    del state["conv_in.weight"]


def _reshape(state):
    state["conv_out.bias"] = torch.zeros(7)


def _corrupt(ckpt):
    path = ckpt / "text_encoder" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])


def _no_vae(ckpt):
    shutil.rmtree(ckpt / "vae")


def _unknown_block(ckpt):
    path = ckpt / "unet" / "config.json"
    config = json.loads(path.read_text())
    config["down_block_types"][0] = "SimpleCrossAttnDownBlock2D"
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    "edit,expected",
    [
        (edit_unet(_drop), ["unet:", "1 missing: conv_in.weight"]),
        (edit_unet(_reshape), ["unet:", "wrong shape: conv_out.bias (checkpoint [7], model ["]),
        (_corrupt, ["text_encoder:", "text_encoder/model.safetensors", "download it again"]),
        (_no_vae, ["vae/", "model_index.json lists"]),
        (_unknown_block, ["SimpleCrossAttnDownBlock2D"]),
    ],
    ids=["missing-key", "wrong-shape", "corrupt-file", "missing-folder", "unknown-block"],
)
def test_bad_checkpoint_fails_cleanly(fixture, tmp_path, capsys, edit, expected):
    ckpt = broken_copy(fixture, tmp_path, edit)
    out = tmp_path / "out"
    code, stdout, err = run_main(["convert", ckpt, "--out", out], capsys)
    line = assert_one_error_line(err) if "unknown" not in str(expected) else err
    assert code == 1 and stdout == ""
    for text in expected:
        assert text in line, (text, line)
    assert not out.exists()
    assert_no_leftovers(tmp_path)


def test_not_a_checkpoint(tmp_path, capsys):
    code, _, err = run_main(["convert", tmp_path, "--out", tmp_path / "out"], capsys)
    assert code == 1 and "model_index.json" in assert_one_error_line(err)
    code, _, err = run_main(["convert", tmp_path / "nope" / "deeper" / "x", "--out", tmp_path / "out"], capsys)
    assert code == 1 and "no such folder" in assert_one_error_line(err)


def test_hub_id_offline_fails_fast(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    start = time.monotonic()
    code, stdout, err = run_main(["convert", "Salesforce/blipdiffusion", "--out", tmp_path / "out"], capsys)
    assert time.monotonic() - start < 10
    line = assert_one_error_line(err)
    assert code == 1 and stdout == ""
    assert "Salesforce/blipdiffusion" in line and "HF_HUB_OFFLINE" in line
    assert "huggingface-cli download Salesforce/blipdiffusion" in line and "blipdiff convert <dir>" in line
    assert not (tmp_path / "out").exists()


def test_random_weights_from_a_checkpoints_configs(fixture, tmp_path, capsys):
    (tmp_path / "a").mkdir()  # an existing empty --out is fine
    code, stdout, err = run_main(
        ["convert", fixture.ckpt_controlnet, "--random-weights", "--out", tmp_path / "a"], capsys
    )
    assert code == 0, err
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert m["source"]["random_weights"] is True and m["source"]["random_seed"] == 0
    assert "controlnet" in m["modules"]
    # Seeded: a second export gives the same files; and the weights are not the checkpoint's.
    again = convert(str(fixture.ckpt_controlnet), tmp_path / "b", random_weights=True, log=None)
    assert (again / "manifest.json").read_bytes() == (tmp_path / "a" / "manifest.json").read_bytes()
    unet = load_module(again / "unet.pt")
    trained = load_file(str(fixture.ckpt / "unet" / "diffusion_pytorch_model.safetensors"))
    assert not torch.equal(unet.state_dict()["conv_in.weight"], trained["conv_in.weight"])


def test_random_weights_without_tokenizer_dir(tmp_path, capsys):
    code, _, err = run_main(["convert", "--random-weights", "--out", tmp_path / "out"], capsys)
    line = assert_one_error_line(err)
    assert code == 1 and ("--tokenizer-dir" in line or "--qformer-vocab" in line)


def test_hub_id_without_network_fails_fast(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # .invalid never resolves (RFC 2606)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    start = time.monotonic()
    code, _, err = run_main(["convert", "Salesforce/blipdiffusion", "--out", tmp_path / "out"], capsys)
    assert time.monotonic() - start < 10
    line = assert_one_error_line(err)
    assert code == 1 and "hub.invalid cannot be reached" in line and "huggingface-cli download" in line
