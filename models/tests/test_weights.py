"""Weight files: both formats, shards, damaged files, strict loading and old key layouts."""

from __future__ import annotations

import json

import pytest
import torch
from blipdiff_export.errors import ExportError
from blipdiff_export.weights import load_into, normalize_keys, read_weights
from safetensors.torch import load_file, save_file
from torch import nn


def fixture_state(fixture, component="unet"):
    return load_file(str(fixture.ckpt / component / "diffusion_pytorch_model.safetensors"))


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("name", ["diffusion_pytorch_model.bin", "pytorch_model.bin"])
def test_bin_and_safetensors_give_the_same_weights(fixture, tmp_path, name):
    state = fixture_state(fixture)
    torch.save(state, tmp_path / name)
    assert_same(read_weights(tmp_path, "unet"), read_weights(fixture.ckpt / "unet", "unet"))


def test_safetensors_preferred_over_bin(fixture, tmp_path):
    state = fixture_state(fixture)
    save_file(state, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"never read")
    assert_same(read_weights(tmp_path, "unet"), state)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_sharded(fixture, tmp_path, fmt):
    state = fixture_state(fixture)
    keys = sorted(state)
    shards = {f"part-1.{fmt}": keys[: len(keys) // 2], f"part-2.{fmt}": keys[len(keys) // 2 :]}
    weight_map = {}
    for file, names in shards.items():
        part = {k: state[k] for k in names}
        save_file(part, str(tmp_path / file)) if fmt == "safetensors" else torch.save(part, tmp_path / file)
        weight_map.update(dict.fromkeys(names, file))
    index = "diffusion_pytorch_model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (tmp_path / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert_same(read_weights(tmp_path, "unet"), state)
    (tmp_path / f"part-2.{fmt}").unlink()
    with pytest.raises(ExportError, match=f"part-2.{fmt}"):
        read_weights(tmp_path, "unet")


def test_no_weight_file(tmp_path):
    with pytest.raises(ExportError, match="no weights in .*diffusion_pytorch_model.safetensors"):
        read_weights(tmp_path, "unet")


@pytest.mark.parametrize(
    "name,content",
    [
        ("diffusion_pytorch_model.safetensors", "truncated"),
        ("diffusion_pytorch_model.safetensors", b"\x00" * 64),
        ("pytorch_model.bin", b"garbage, not a pickle"),
        ("pytorch_model.bin", "truncated"),
    ],
)
def test_damaged_file_names_the_file(fixture, tmp_path, name, content):
    if content == "truncated":
        state = fixture_state(fixture)
        full = tmp_path / "full"
        save_file(state, str(full)) if name.endswith("safetensors") else torch.save(state, full)
        content = full.read_bytes()[: full.stat().st_size // 2]
        full.unlink()
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ExportError) as info:
        read_weights(tmp_path, "unet")
    message = str(info.value)
    assert str(tmp_path / name) in message and "download it again" in message and "\n" not in message


def test_pickle_with_code_is_refused(tmp_path):
    torch.save({"w": torch.zeros(1), "f": nn.Linear(1, 1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ExportError, match="pytorch_model.bin"):
        read_weights(tmp_path, "qformer")


class Tiny(nn.Module):
    def __init__(self, position_ids: bool = False):
        super().__init__()
        self.proj = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)
        if position_ids:
            self.register_buffer("position_ids", torch.arange(5)[None])


def tiny_state() -> dict[str, torch.Tensor]:
    return {k: torch.randn_like(v) for k, v in Tiny().state_dict().items()}


def test_load_into_exact():
    module, state = Tiny(), tiny_state()
    load_into(module, state, "tiny")
    assert_same(module.state_dict(), state)


def test_load_into_reports_every_problem_at_once():
    state = tiny_state()
    del state["norm.bias"]
    state["proj.weight"] = torch.zeros(3, 5)
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(ExportError) as info:
        load_into(Tiny(), state, "text_encoder")
    message = str(info.value)
    assert message.startswith("text_encoder:")
    assert "1 missing: norm.bias" in message
    assert "1 unexpected: extra.weight" in message
    assert "1 with the wrong shape: proj.weight (checkpoint [3, 5], model [3, 4])" in message


def test_load_into_truncates_long_lists():
    state = {f"k{i:02d}": torch.zeros(1) for i in range(25)}
    with pytest.raises(ExportError) as info:
        load_into(nn.Module(), state, "unet")
    assert "25 unexpected" in str(info.value) and "(15 more)" in str(info.value) and "k10" not in str(info.value)


def test_position_ids_are_optional():
    state = tiny_state()
    load_into(Tiny(), {**state, "position_ids": torch.arange(5)[None]}, "tiny")  # dropped
    module = Tiny(position_ids=True)
    load_into(module, state, "tiny")  # kept from the module
    assert torch.equal(module.position_ids, torch.arange(5)[None])


class OldAttention(nn.Module):
    def __init__(self):
        super().__init__()
        attention = nn.Module()
        for name in ("to_q", "to_k", "to_v"):
            setattr(attention, name, nn.Linear(4, 4))
        attention.to_out = nn.ModuleList([nn.Linear(4, 4)])
        block = nn.Module()
        block.attentions = nn.ModuleList([attention])
        self.mid_block = block


def test_old_vae_attention_names_and_conv_weights():
    new = {k: torch.randn_like(v) for k, v in OldAttention().state_dict().items()}
    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    old = {}
    for key, value in new.items():
        for a, b in renames.items():
            key = key.replace(f".{a}.", f".{b}.")
        old[key] = value[:, :, None, None] if value.dim() == 2 else value  # LDM stored 1x1 convolutions
    assert "mid_block.attentions.0.query.weight" in old
    module = OldAttention()
    load_into(module, normalize_keys(old), "vae_decoder")
    assert_same(module.state_dict(), new)
