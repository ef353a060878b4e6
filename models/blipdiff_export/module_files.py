"""Module files (format_version 2): a TorchScript archive holding the code, with each tensor of the module stored
beside it in a safetensors file that the runtime maps into memory instead of copying (docs/manifest.md).

`torch::jit::load` reads every tensor of an archive into freshly allocated memory before the first step: at full
size 6.2 GB copied out of the page cache, page-faulted anew on every CLI call, and held twice while the file stays
cached. A safetensors file can be mapped: the runtime's tensors point into the page cache, only what a call touches
is read, and nothing is copied (native/src/core/mapped_weights.cc).

In the archive, every parameter and buffer is an empty tensor of its dtype (a placeholder); the safetensors file
holds each of them by its dotted name (`down_blocks.0.resnets.0.conv1.weight`). 4-D tensors stored channels-last are
written in their memory order, (out, height, width, in), and listed in the header's metadata under
`blipdiff.channels_last`, so they map without a copy into the layout the CPU runtime runs them in. Tensors whose size
is a multiple of 64 bytes come first, each at a 64-byte aligned offset; the rest follow by falling element size.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from .errors import ExportError

WEIGHTS_SUFFIX = ".safetensors"
CHANNELS_LAST_KEY = "blipdiff.channels_last"
ALIGN = 64

_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_FROM_NAME = {v: k for k, v in _DTYPES.items()}


def module_tensors(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every parameter and buffer of `module` by dotted name, in module order (a tensor shared by two names is listed
    under both)."""
    named = list(module.named_parameters(remove_duplicate=False))
    named += list(module.named_buffers(remove_duplicate=False))
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        raise ExportError("a module lists one tensor name twice; cannot store its weights by name")
    return named


def _is_channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def write_weights(path: Path, tensors: list[tuple[str, torch.Tensor]]) -> None:
    """Writes `tensors` to `path` as a safetensors file in the layout described above."""
    stored: list[tuple[str, torch.Tensor]] = []
    channels_last: list[str] = []
    for name, t in tensors:
        t = t.detach()
        if t.dtype not in _DTYPES:
            raise ExportError(f"{name}: dtype {t.dtype} cannot be stored in a safetensors file")
        if t.numel() == 0:
            raise ExportError(f"{name} is empty; the exported module format reserves empty tensors for placeholders")
        if _is_channels_last(t):
            channels_last.append(name)
            t = t.permute(0, 2, 3, 1)  # memory order: a view, no copy
        stored.append((name, t.contiguous()))

    def order(item: tuple[int, tuple[str, torch.Tensor]]) -> tuple[int, int, int]:
        index, (_, t) = item
        nbytes = t.numel() * t.element_size()
        return (0, 0, index) if nbytes % ALIGN == 0 else (1, -t.element_size(), index)

    stored = [item for _, item in sorted(enumerate(stored), key=order)]
    header: dict[str, object] = {"__metadata__": {"format": "pt", CHANNELS_LAST_KEY: ",".join(channels_last)}}
    offset = 0
    for name, t in stored:
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % ALIGN)  # the data starts 64-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, t in stored:
            f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, in their module layout (channels-last ones come back channels-last)."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        data = f.read()
    meta = header.pop("__metadata__", {})
    channels_last = set(filter(None, meta.get(CHANNELS_LAST_KEY, "").split(",")))
    out: dict[str, torch.Tensor] = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        dtype = _FROM_NAME[entry["dtype"]]
        t = torch.frombuffer(bytearray(data[begin:end]), dtype=torch.uint8).view(dtype).reshape(entry["shape"])
        out[name] = t.permute(0, 3, 1, 2) if name in channels_last else t
    return out


def save_module(scripted: torch.jit.ScriptModule, path: Path) -> Path:
    """Saves `scripted` as `path` (code and placeholders) and its tensors as the weights file beside it; returns the
    weights file's path. `scripted` keeps only placeholders afterwards."""
    tensors = [(name, t.data) for name, t in module_tensors(scripted)]
    weights = path.with_suffix(WEIGHTS_SUFFIX)
    write_weights(weights, tensors)
    with torch.no_grad():
        for _, t in module_tensors(scripted):
            t.data = torch.empty(0, dtype=t.dtype)
    torch.jit.save(scripted, str(path))
    return weights


def attach_weights(module: torch.jit.ScriptModule, tensors: dict[str, torch.Tensor]) -> torch.jit.ScriptModule:
    """Puts `tensors` in place of `module`'s placeholders; every placeholder must be filled and every tensor used."""
    targets = dict(module_tensors(module))
    unknown = sorted(set(tensors) - set(targets))
    missing = sorted(n for n, t in targets.items() if t.numel() == 0 and n not in tensors)
    if unknown or missing:
        raise ExportError(f"the weights file does not match the module: unknown {unknown[:5]}, missing {missing[:5]}")
    with torch.no_grad():
        for name, t in tensors.items():
            if targets[name].dtype != t.dtype:
                raise ExportError(f"{name}: the weights file has {t.dtype}, the module {targets[name].dtype}")
            targets[name].data = t
    return module


def load_module(path: Path | str, map_location: str | None = None) -> torch.jit.ScriptModule:
    """Loads an exported module file with its weights (format_version 2), or a module that holds its own (format 1)."""
    path = Path(path)
    module = torch.jit.load(str(path), map_location=map_location)
    weights = path.with_suffix(WEIGHTS_SUFFIX)
    if weights.exists():
        attach_weights(module, read_weights_file(weights))
    return module
