"""Checkpoint paths stay inside the checkpoint folder: shard names, symlinks, Hugging Face cache snapshots."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from blipdiff_export import weights
from blipdiff_export.__main__ import main
from blipdiff_export.errors import ExportError
from blipdiff_export.export import convert, read_manifest
from blipdiff_export.paths import Boundary, check_relative_name, hf_blobs_folder
from blipdiff_export.weights import read_weights
from safetensors.torch import load_file, save_file

UNET_FILE = "diffusion_pytorch_model.safetensors"
INDEX = "diffusion_pytorch_model.safetensors.index.json"


@pytest.fixture
def no_reads(monkeypatch):
    """Fails the test if any weight file is opened."""

    def refuse(path, component):
        raise AssertionError(f"{path} was read")

    monkeypatch.setattr(weights, "read_weight_file", refuse)


def write_index(unet, names):
    (unet / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": names}))


def test_shard_with_an_absolute_name_is_refused(fixture, tmp_path, no_reads):
    # A real, valid weight file outside the folder: without the check it would be read.
    outside = tmp_path / "outside.safetensors"
    shutil.copyfile(fixture.ckpt / "unet" / UNET_FILE, outside)
    unet = tmp_path / "ckpt" / "unet"
    unet.mkdir(parents=True)
    write_index(unet, {"conv_in.weight": str(outside)})
    with pytest.raises(ExportError, match=r"^unet: shard name in .*: '.*outside\.safetensors' is an absolute path"):
        read_weights(unet, "unet")


@pytest.mark.parametrize("name", ["../outside.safetensors", "sub/../../outside.safetensors", "..\\outside.safetensors"])
def test_shard_with_dot_dot_is_refused(fixture, tmp_path, no_reads, name):
    (tmp_path / "ckpt").mkdir()
    shutil.copyfile(fixture.ckpt / "unet" / UNET_FILE, tmp_path / "ckpt" / "outside.safetensors")
    unet = tmp_path / "ckpt" / "unet"
    unet.mkdir()
    write_index(unet, {"conv_in.weight": name})
    with pytest.raises(ExportError, match=r"contains '\.\.'; only names inside the checkpoint folder"):
        read_weights(unet, "unet")


@pytest.mark.parametrize("name", ["C:\\weights\\x.safetensors", "\\\\server\\share\\x.safetensors", "", 3, None])
def test_odd_shard_names_are_refused(tmp_path, no_reads, name):
    write_index(tmp_path, {"conv_in.weight": name})
    with pytest.raises(ExportError, match=r"^unet: shard name in "):
        read_weights(tmp_path, "unet")


def test_shard_symlink_leaving_the_checkpoint_is_refused(fixture, tmp_path, no_reads):
    outside = tmp_path / "elsewhere" / "part.safetensors"
    outside.parent.mkdir()
    shutil.copyfile(fixture.ckpt / "unet" / UNET_FILE, outside)
    ckpt = tmp_path / "ckpt"
    unet = ckpt / "unet"
    unet.mkdir(parents=True)
    (unet / "part.safetensors").symlink_to(outside)
    write_index(unet, {"conv_in.weight": "part.safetensors"})
    with pytest.raises(ExportError) as info:
        read_weights(unet, "unet", Boundary(ckpt))
    message = str(info.value)
    assert message.startswith("unet: shard 'part.safetensors' of ") and "\n" not in message
    assert f"resolves to {outside}, outside the checkpoint folder {ckpt}" in message


def test_single_weight_file_symlink_leaving_the_checkpoint_is_refused(fixture, tmp_path, no_reads):
    ckpt = tmp_path / "ckpt"
    (ckpt / "unet").mkdir(parents=True)
    (ckpt / "unet" / UNET_FILE).symlink_to(fixture.ckpt / "unet" / UNET_FILE)
    with pytest.raises(ExportError, match=r"^unet: unet/diffusion_pytorch_model\.safetensors resolves to .*outside"):
        read_weights(ckpt / "unet", "unet", Boundary(ckpt))


def test_shards_inside_the_checkpoint_are_read(fixture, tmp_path):
    """Subfolders and symlinks that stay inside are fine; shards may sit in the checkpoint beside the component."""
    state = load_file(str(fixture.ckpt / "unet" / UNET_FILE))
    keys = sorted(state)
    ckpt = tmp_path / "ckpt"
    unet = ckpt / "unet"
    (unet / "sub").mkdir(parents=True)
    (ckpt / "store").mkdir()
    save_file({k: state[k] for k in keys[:3]}, str(unet / "sub" / "a.safetensors"))
    save_file({k: state[k] for k in keys[3:]}, str(ckpt / "store" / "b.safetensors"))
    (unet / "b.safetensors").symlink_to("../store/b.safetensors")
    names = {k: "sub/a.safetensors" for k in keys[:3]} | {k: "b.safetensors" for k in keys[3:]}
    write_index(unet, names)
    got = read_weights(unet, "unet", Boundary(ckpt))
    assert sorted(got) == keys


def hf_cache_copy(src, cache, repo="models--owner--tiny", revision="0123abc"):
    """`src` laid out as huggingface_hub caches it: snapshot folders of relative symlinks into blobs/."""
    repo_dir = cache / repo
    snapshot = repo_dir / "snapshots" / revision
    (repo_dir / "blobs").mkdir(parents=True)
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / path.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def test_hf_blobs_folder():
    assert hf_blobs_folder(Path("/c/hub/models--a--b/snapshots/r1")) == Path("/c/hub/models--a--b/blobs")
    assert hf_blobs_folder(Path("/c/hub/models--a--b/snapshots/r1/unet")) == Path("/c/hub/models--a--b/blobs")
    assert hf_blobs_folder(Path("/c/hub/datasets--a--b/snapshots/r1")) is None
    assert hf_blobs_folder(Path("/c/snapshots/r1")) is None


def test_hugging_face_cache_snapshot_converts(fixture, tmp_path):
    snapshot = hf_cache_copy(fixture.ckpt, tmp_path / "hub")
    assert (snapshot / "unet" / UNET_FILE).is_symlink()
    out = convert(str(snapshot), tmp_path / "out", log=None)
    assert sorted(read_manifest(out)["modules"]) == ["qformer", "text_encoder", "unet", "vae_decoder", "vae_encoder"]


def test_hugging_face_snapshot_linking_into_another_repo_is_refused(fixture, tmp_path, capsys):
    snapshot = hf_cache_copy(fixture.ckpt, tmp_path / "hub")
    other = hf_cache_copy(fixture.ckpt, tmp_path / "hub", repo="models--someone--else")
    link = snapshot / "unet" / UNET_FILE
    link.unlink()
    link.symlink_to(os.path.relpath((other / "unet" / UNET_FILE).resolve(), link.parent))
    code = main(["convert", str(snapshot), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "models--someone--else/blobs/" in err and "outside the checkpoint folder" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "relative",
    [
        "model_index.json",
        "unet/config.json",
        "scheduler/scheduler_config.json",
        "image_processor/preprocessor_config.json",
        "tokenizer/vocab.json",
        "tokenizer/tokenizer.json",
        "qformer_tokenizer/vocab.txt",
    ],
)
def test_checkpoint_files_linking_outside_are_refused(fixture, tmp_path, capsys, relative):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(fixture.ckpt, ckpt)
    outside = tmp_path / "secret" / os.path.basename(relative)
    outside.parent.mkdir()
    (ckpt / relative).rename(outside)  # the same content: only the location is wrong
    (ckpt / relative).symlink_to(outside)
    code = main(["convert", str(ckpt), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert f"{relative} resolves to {outside}, outside the checkpoint folder {ckpt}" in err
    assert not (tmp_path / "out").exists()


def test_component_folder_linking_outside_is_refused(fixture, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(fixture.ckpt, ckpt, ignore=shutil.ignore_patterns("vae"))
    (ckpt / "vae").symlink_to(fixture.ckpt / "vae", target_is_directory=True)
    code = main(["convert", str(ckpt), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and "vae/config.json resolves to" in err and "outside the checkpoint folder" in err


def test_check_relative_name_accepts_plain_names():
    assert check_relative_name("a.safetensors", "x") == "a.safetensors"
    assert check_relative_name("sub/dir/a..b.safetensors", "x") == "sub/dir/a..b.safetensors"
