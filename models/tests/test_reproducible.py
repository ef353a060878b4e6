"""Exports are byte-identical wherever the exporter's checkout lives, and carry none of its paths."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import torch
from blipdiff_export.reproducible import portable_source_name
from conftest import ROOT


def export_from_copy(checkout: Path, ckpt: Path, out: Path, hash_seed: str) -> None:
    """Copies models/ to `checkout` and exports `ckpt` with that copy in a fresh process."""
    shutil.copytree(ROOT / "models", checkout, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    env = {**os.environ, "PYTHONPATH": str(checkout), "PYTHONHASHSEED": hash_seed}
    proc = subprocess.run(
        [sys.executable, "-m", "blipdiff_export", "convert", str(ckpt), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=checkout,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    # The copy, not the worktree's package, is what that environment imports.
    where = subprocess.run(
        [sys.executable, "-c", "import blipdiff_export; print(blipdiff_export.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=checkout,
        check=True,
    )
    assert where.stdout.strip() == str(checkout / "blipdiff_export" / "__init__.py")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_checkouts_give_identical_files(fixture, tmp_path):
    a, b = tmp_path / "a" / "models", tmp_path / "somewhere-else" / "deeper" / "checkout" / "models"
    export_from_copy(a, fixture.ckpt_controlnet, tmp_path / "out-a", "1")
    export_from_copy(b, fixture.ckpt_controlnet, tmp_path / "out-b", "2")

    manifest = json.loads((tmp_path / "out-a" / "manifest.json").read_text())
    files = [m["file"] for m in manifest["modules"].values()]
    assert "controlnet.pt" in files and len(files) == 6
    for name in files:
        assert sha256(tmp_path / "out-a" / name) == sha256(tmp_path / "out-b" / name), name
    assert (tmp_path / "out-a" / "manifest.json").read_bytes() == (tmp_path / "out-b" / "manifest.json").read_bytes()

    # No machine path: neither checkout, nor the environment torch was imported from.
    forbidden = {str(a), str(b), str(tmp_path), str(ROOT), sys.prefix, str(Path(torch.__file__).parents[1])}
    forbidden |= {os.path.realpath(p) for p in forbidden}
    for name in files:
        path = tmp_path / "out-a" / name
        raw = path.read_bytes()
        with zipfile.ZipFile(path) as z:
            entries = z.namelist()
            assert any(e.endswith(".debug_pkl") for e in entries) and any("/code/" in e for e in entries)
            blobs = [("raw file", raw)] + [(e, z.read(e)) for e in entries]
        for where, data in blobs:
            for p in forbidden:
                assert p.encode() not in data, f"{name}: {where} contains {p}"
        for entry in entries:
            assert not entry.startswith("/") and ".." not in entry.split("/"), entry
        # The debug info still names the sources, relative to their import root.
        debug = b"".join(z_data for e, z_data in blobs if e.endswith(".debug_pkl"))
        assert b"blipdiff_export/" in debug and b"torch/nn/" in debug


def test_portable_source_name(tmp_path):
    unet = str(tmp_path / "models" / "blipdiff_export" / "unet.py")
    # The import name decides, whatever the import roots (the working folder may be one of them).
    roots = [str(tmp_path / "models" / "blipdiff_export"), str(tmp_path)]
    assert portable_source_name(unet, "blipdiff_export.unet", roots) == "blipdiff_export/unet.py"
    init = str(tmp_path / "models" / "blipdiff_export" / "__init__.py")
    assert portable_source_name(init, "blipdiff_export", roots) == "blipdiff_export/__init__.py"
    # Without a matching module name: relative to the longest import root, else the base name.
    assert portable_source_name(unet, None, roots) == "unet.py"
    assert portable_source_name(unet, "other.name", [str(tmp_path)]) == "models/blipdiff_export/unet.py"
    assert portable_source_name("/elsewhere/x/y.py", "__main__", roots) == "y.py"
    assert portable_source_name(None, "x", roots) is None
