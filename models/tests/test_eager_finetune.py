"""models/bench/eager_finetune.py (the eager baseline of the fine-tuning benchmark) against the fine-tuning goldens.

The benchmark's ratios mean something only if the baseline does the same work as blipdiff's finetune: here it
replays each fixture's draws (finetune.safetensors ft.data.*, lora.init.*) and must reproduce the recorded
losses, step-0 tensors and gradients, and the trained weights, for both modes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, assert_close
from safetensors.torch import load_file

SCRIPT = ROOT / "models" / "bench" / "eager_finetune.py"
_spec = importlib.util.spec_from_file_location("eager_finetune", SCRIPT)
eager_finetune = importlib.util.module_from_spec(_spec)
sys.modules["eager_finetune"] = eager_finetune  # dataclasses look their module up while the file executes
_spec.loader.exec_module(eager_finetune)


class Goldens:
    def __init__(self, fixture):
        self.file = fixture.path / "finetune.safetensors"
        if not self.file.is_file():
            pytest.skip(f"{fixture.name} has no fine-tuning goldens")
        self.json = json.loads((fixture.path / "finetune.json").read_text())
        self.config = self.json["config"]
        self.t = load_file(str(self.file))
        self.ckpt = fixture.ckpt

    def args(self, mode: str) -> list[str]:
        c = self.config
        return [
            "--ckpt", str(self.ckpt), "--fixture", str(self.file), "--mode", mode,
            "--lr", str(c["lr"]), "--weight-decay", str(c["weight_decay"]), "--modules", "step",
        ]  # fmt: skip


@pytest.fixture(scope="module")
def goldens(fixture):
    return Goldens(fixture)


def _train(goldens: Goldens, mode: str):
    """Replays every step in-process; returns (trainer, losses, step-0 record)."""
    args = eager_finetune.parse_args(goldens.args(mode))
    setup, _ = eager_finetune.make_setup(args)
    tr = eager_finetune.make_trainer(setup)
    record: dict = {}
    losses = [eager_finetune.train_step(tr, s, record if s == 0 else None)[0] for s in range(args.steps)]
    return tr, losses, record


def _close_rel(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    # atol 1e-4 + rtol 1e-4 (fixtures README, "Fine-tuning goldens")
    assert_close(actual, expected, name, atol=1e-4, rtol=1e-4)


def test_setup_matches_the_recipe(goldens):
    args = eager_finetune.parse_args(goldens.args("full"))
    setup, _ = eager_finetune.make_setup(args)
    tr = eager_finetune.make_trainer(setup)
    decayed = {id(p) for p in tr.optimizer.param_groups[0]["params"]}
    assert tr.optimizer.param_groups[0]["weight_decay"] == goldens.config["weight_decay"]
    assert tr.optimizer.param_groups[1]["weight_decay"] == 0.0
    assert sorted(n for n, p in tr.trained if id(p) in decayed) == sorted(goldens.json["ft_decayed_params"])
    unet_params = sum(p.numel() for p in setup.mods["unet"].parameters())
    assert tr.trained_params == unet_params + goldens.t["ft.cache_init"].numel()
    assert (args.steps, args.batch) == tuple(goldens.t["ft.data.index"].shape)

    args = eager_finetune.parse_args(goldens.args("lora"))
    setup, _ = eager_finetune.make_setup(args)
    tr = eager_finetune.make_trainer(setup)
    assert sorted(tr.lora) == sorted(goldens.json["lora_modules"])
    decayed = {id(p) for p in tr.optimizer.param_groups[0]["params"]}
    assert all(id(p) in decayed for _, p in tr.trained)  # every A, B (2-D) and the cache (3-D) decay
    assert args.rank == goldens.config["lora_rank"]
    assert all(m.scale == goldens.config["lora_alpha"] / goldens.config["lora_rank"] for m in tr.lora.values())
    assert sum(p.requires_grad for p in setup.mods["unet"].parameters()) == 2 * len(tr.lora)  # only A and B train
    for name, m in tr.lora.items():
        assert torch.equal(m.down, goldens.t[f"lora.init.{name}.A"])
        assert not m.up.any()


def test_full_replays_the_goldens(goldens):
    tr, losses, rec = _train(goldens, "full")
    torch.testing.assert_close(torch.tensor(losses), goldens.t["ft.losses"], rtol=1e-4, atol=0)
    for name in ("latents", "noisy", "states"):
        _close_rel(rec[name], goldens.t[f"ft.step0.{name}"], f"ft.step0.{name}")
    grads = rec["grads"]
    _close_rel(grads["ctx_embeddings_cache"], goldens.t["ft.step0.grad.cache"], "ft.step0.grad.cache")
    unet_grads = [k for k in goldens.t if k.startswith("ft.step0.grad.unet.")]
    assert len(unet_grads) == len(tr.trained) - 1
    for key in unet_grads:
        _close_rel(grads[key[len("ft.step0.grad.") :]], goldens.t[key], key)
    _close_rel(tr.setup.cache.detach(), goldens.t["ft.cache_final"], "ft.cache_final")
    # ft.unet.*: at most 1 value in 10,000 off by more than 1e-4, none by more than 2e-3 (fixtures README).
    diffs = torch.cat([(p.detach() - goldens.t[f"ft.{n}"]).abs().flatten() for n, p in tr.trained[1:]])
    assert diffs.max().item() <= 2e-3
    assert (diffs > 1e-4).sum().item() <= diffs.numel() // 10_000


def test_lora_replays_the_goldens(goldens):
    tr, losses, rec = _train(goldens, "lora")
    torch.testing.assert_close(torch.tensor(losses), goldens.t["lora.losses"], rtol=1e-4, atol=0)
    _close_rel(rec["grads"]["ctx_embeddings_cache"], goldens.t["lora.step0.grad.cache"], "lora.step0.grad.cache")
    _close_rel(tr.setup.cache.detach(), goldens.t["lora.cache_final"], "lora.cache_final")
    for name, p in tr.trained[1:]:
        _close_rel(p.detach(), goldens.t[f"lora.final.{name}"], f"lora.final.{name}")


def test_cli_prints_one_json_line(goldens, tmp_path):
    """The command scripts/bench-finetune.mjs runs: one JSON document with the losses, timings and output size."""
    out = tmp_path / "lora.safetensors"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "models")}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *goldens.args("lora"), "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    res = json.loads(lines[0])
    steps = goldens.t["ft.data.index"].shape[0]
    torch.testing.assert_close(torch.tensor(res["losses"]), goldens.t["lora.losses"], rtol=1e-4, atol=0)
    assert res["steps"] == steps and len(res["step_s"]) == steps and res["first_step_s"] == res["step_s"][0]
    assert res["median_step_s"] == pytest.approx(sorted(res["step_s"][1:])[(steps - 1) // 2], rel=0.5)
    assert res["allocator"] == "tuned" and res["allocator_env"]["MALLOC_MMAP_MAX_"] == "0"
    assert res["peak_rss_mb"] > 0 and res["output_bytes"] == out.stat().st_size
    saved = load_file(str(out))
    lora = [k for k in saved if k.startswith("unet.")]
    assert len(lora) == 2 * len(goldens.json["lora_modules"]) and "ctx_embeddings_cache" in saved
    assert res["trained_params"] == sum(t.numel() for t in saved.values())


def test_cli_refuses_sizes_that_disagree_with_the_draws(goldens):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "models")}
    batch = goldens.t["ft.data.index"].shape[1]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *goldens.args("full"), "--batch", str(batch + 1), "--allocator", "inherit"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    assert f"--batch {batch + 1} disagrees with the fixture's draws ({batch})" in proc.stderr
