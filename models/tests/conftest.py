"""Shared helpers for the exporter tests: fixture discovery, golden tensors, TorchScript round trips.

Every test that compares against golden tensors runs once per fixture folder found under
BLIPDIFF_FIXTURES (default: ../shared/fixtures beside the repository), so fixtures with other shapes
are checked by the same tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "models"))

FIXTURES = Path(os.environ.get("BLIPDIFF_FIXTURES", ROOT.parent / "shared" / "fixtures")).resolve()
FIXTURE_DIRS = sorted(p.parent for p in FIXTURES.glob("*/golden.json"))

torch.set_num_threads(1)

ATOL = 1e-4
RTOL = 1e-4


class Fixture:
    """One fixture folder: its checkpoints, golden.json and golden tensors (loaded lazily)."""

    def __init__(self, path: Path):
        self.path = path
        self.name = path.name
        self.ckpt = path / "ckpt"
        self.ckpt_controlnet = path / "ckpt-controlnet"
        self.json = json.loads((path / "golden.json").read_text())
        self._tensors: dict[str, torch.Tensor] | None = None

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        if self._tensors is None:
            self._tensors = load_file(str(self.path / "golden.safetensors"))
        return self._tensors

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def config(self, component: str, ckpt: str = "ckpt") -> dict:
        return json.loads((self.path / ckpt / component / "config.json").read_text())


_cache: dict[Path, Fixture] = {}


@pytest.fixture(params=FIXTURE_DIRS, ids=[p.name for p in FIXTURE_DIRS], scope="session")
def fixture(request) -> Fixture:
    if request.param not in _cache:
        _cache[request.param] = Fixture(request.param)
    return _cache[request.param]


def script_roundtrip(module: torch.nn.Module, tmp_path: Path, name: str = "m.pt") -> torch.jit.ScriptModule:
    """Scripts `module`, saves it and loads the saved file back (tests use the saved file, not the eager module)."""
    module.eval()
    scripted = torch.jit.script(module)
    path = tmp_path / name
    torch.jit.save(scripted, str(path))
    return torch.jit.load(str(path))


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, name: str, atol: float = ATOL, rtol: float = RTOL
) -> None:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual.float() - expected.float()).abs().max().item()
    torch.testing.assert_close(
        actual.float(), expected.float(), atol=atol, rtol=rtol, msg=lambda m: f"{name}: max |diff| {diff:.3g}; {m}"
    )


if not FIXTURE_DIRS:
    raise RuntimeError(f"no fixtures found under {FIXTURES}: set BLIPDIFF_FIXTURES to the folder that holds tiny-a/")


_exports: dict[tuple[Path, str], Path] = {}


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """`exported(fixture, "ckpt" | "ckpt-controlnet")` -> folder written by the `convert` CLI (once per session).

    Runs in a fresh process: TorchScript's type names depend on what the process scripted before,
    so only a fresh process gives the bytes every other export of the checkpoint gives.
    """

    def get(fx: Fixture, variant: str = "ckpt") -> Path:
        key = (fx.path, variant)
        if key not in _exports:
            out = tmp_path_factory.mktemp(f"export-{fx.name}") / variant
            env = {**os.environ, "PYTHONPATH": str(ROOT / "models")}
            command = [sys.executable, "-m", "blipdiff_export", "convert", str(fx.path / variant), "--out", str(out)]
            proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
            assert proc.returncode == 0, proc.stderr
            _exports[key] = out
        return _exports[key]

    return get
