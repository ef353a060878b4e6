"""Module files: the archive keeps placeholders, the safetensors file beside it every tensor (module_files.py)."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from blipdiff_export.errors import ExportError
from blipdiff_export.module_files import (
    ALIGN,
    CHANNELS_LAST_KEY,
    attach_weights,
    load_module,
    module_tensors,
    read_weights_file,
    save_module,
)
from safetensors import safe_open
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)  # 5*3*3*3*4 = 540 bytes: not a multiple of 64
        self.point = nn.Conv2d(5, 16, 1)
        self.norm = nn.GroupNorm(1, 16)
        self.linear = nn.Linear(16, 7)
        self.register_buffer("ids", torch.arange(3, dtype=torch.int64).view(1, 3))
        self.register_buffer("scale", torch.tensor([0.5], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.point(self.conv(x))).mean(dim=(2, 3))
        return self.linear(y) * self.scale.float() + self.ids.sum().float()


def scripted_net() -> torch.jit.ScriptModule:
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        net.conv.weight.data = net.conv.weight.data.contiguous(memory_format=torch.channels_last)
    return torch.jit.script(net)


def header(path) -> tuple[int, dict]:
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        return size, json.loads(f.read(size))


def test_round_trip_keeps_values_dtypes_and_layout(tmp_path):
    module = scripted_net()
    expected = {name: t.detach().clone(memory_format=torch.preserve_format) for name, t in module_tensors(module)}
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = module(x)
    weights = save_module(module, tmp_path / "net.pt")
    assert weights == tmp_path / "net.safetensors"
    # The archive holds only placeholders; it is tiny next to the weights.
    bare = torch.jit.load(str(tmp_path / "net.pt"))
    assert all(t.numel() == 0 for _, t in module_tensors(bare))
    assert {n: t.dtype for n, t in module_tensors(bare)} == {n: t.dtype for n, t in expected.items()}
    loaded = load_module(tmp_path / "net.pt")
    got = dict(module_tensors(loaded))
    assert sorted(got) == sorted(expected)
    for name, t in expected.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), name
    assert got["conv.weight"].is_contiguous(memory_format=torch.channels_last)
    assert not got["conv.weight"].is_contiguous()
    with torch.no_grad():
        assert torch.equal(loaded(x), want)


def test_file_is_plain_safetensors_with_aligned_data(tmp_path):
    save_module(scripted_net(), tmp_path / "net.pt")
    path = tmp_path / "net.safetensors"
    size, head = header(path)
    assert (8 + size) % ALIGN == 0
    meta = head.pop("__metadata__")
    assert meta[CHANNELS_LAST_KEY] == "conv.weight"
    # Stored in memory order: (out, height, width, in).
    assert head["conv.weight"]["shape"] == [5, 3, 3, 3] and head["linear.weight"]["shape"] == [7, 16]
    ranges = sorted(tuple(e["data_offsets"]) for e in head.values())
    assert ranges[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    assert ranges[-1][1] == path.stat().st_size - 8 - size  # no hole, nothing after
    for name, e in head.items():
        begin, end = e["data_offsets"]
        if (end - begin) % ALIGN == 0:
            assert begin % ALIGN == 0, name
        itemsize = {"F32": 4, "F64": 8, "I64": 8}[e["dtype"]]
        assert begin % itemsize == 0, name
    # safetensors itself reads it, with the same values.
    ours = read_weights_file(path)
    with safe_open(str(path), framework="pt") as f:
        assert sorted(f.keys()) == sorted(ours)
        for name in f.keys():
            t = f.get_tensor(name)
            expected = ours[name].permute(0, 2, 3, 1) if name == "conv.weight" else ours[name]
            assert torch.equal(t, expected), name


def test_mismatched_weights_are_refused(tmp_path):
    save_module(scripted_net(), tmp_path / "net.pt")
    tensors = read_weights_file(tmp_path / "net.safetensors")
    bare = torch.jit.load(str(tmp_path / "net.pt"))
    with pytest.raises(ExportError, match=r"missing \['linear.bias'\]"):
        attach_weights(bare, {k: v for k, v in tensors.items() if k != "linear.bias"})
    with pytest.raises(ExportError, match=r"unknown \['extra'\]"):
        attach_weights(bare, {**tensors, "extra": torch.zeros(1)})
    with pytest.raises(ExportError, match="ids: the weights file has torch.int32"):
        attach_weights(bare, {**tensors, "ids": tensors["ids"].int()})


def test_empty_tensors_cannot_be_exported(tmp_path):
    module = nn.Linear(4, 3)
    module.weight = nn.Parameter(torch.empty(3, 0))
    with pytest.raises(ExportError, match="weight is empty"):
        save_module(torch.jit.script(module), tmp_path / "m.pt")
