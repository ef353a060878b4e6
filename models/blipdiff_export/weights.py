"""Finding, reading and strictly loading a component's weights (safetensors or pickled state dicts)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .errors import ExportError
from .paths import Boundary, check_relative_name

# Searched in this order; the first name present wins. A folder holding both a safetensors and a
# .bin file (as some hub repos do) is read from the safetensors file: it is not executable code.
SINGLE_FILES = (
    "model.safetensors",
    "diffusion_pytorch_model.safetensors",
    "pytorch_model.bin",
    "diffusion_pytorch_model.bin",
)
INDEX_FILES = (
    "model.safetensors.index.json",
    "diffusion_pytorch_model.safetensors.index.json",
    "pytorch_model.bin.index.json",
    "diffusion_pytorch_model.bin.index.json",
)

# Old diffusers VAE attention blocks (AttentionBlock, before the Attention refactor) used these names.
_OLD_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_OLD_ATTENTION_RE = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")

LIST_LIMIT = 10


def find_weight_files(folder: Path, component: str, boundary: Boundary | None = None) -> list[Path]:
    """The files holding `component`'s weights: one file, or every shard named by an index file.

    Every file must stay inside `boundary` (default: `folder`) after resolving symlinks, and shard
    names must be relative without `..`; both are checked before any weight file is read.
    """
    boundary = boundary if boundary is not None else Boundary(folder)
    for name in SINGLE_FILES:
        if (folder / name).is_file():
            boundary.check(folder / name, component)
            return [folder / name]
    for name in INDEX_FILES:
        index = folder / name
        if index.is_file():
            boundary.check(index, component)
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                values = list(weight_map.values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise ExportError(f"{component}: cannot read the shard index {index}: {e}") from e
            shards = sorted(set(check_relative_name(v, f"{component}: shard name in {index}") for v in values))
            for shard in shards:
                boundary.check(folder / shard, f"{component}: shard {shard!r} of {index.name}")
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise ExportError(
                    f"{component}: the shard index {index} names files that are not there: {', '.join(missing)}; "
                    "download the complete folder again"
                )
            return [folder / s for s in shards]
    raise ExportError(
        f"{component}: no weights in {folder}: expected one of {', '.join(SINGLE_FILES)} "
        "(or a sharded *.index.json); copy the component's weight file into that folder"
    )


def read_weight_file(path: Path, component: str) -> dict[str, torch.Tensor]:
    """One weight file as a flat {name: tensor} dict on the CPU; unreadable files are an ExportError naming the file."""
    try:
        if path.name.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            # weights_only: a pickled checkpoint must not run code while it is read.
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors, zipfile and unpickling raise unrelated types for a damaged file
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(
            f"{component}: cannot read the weight file {path} ({detail}); the file is damaged or not a "
            "weight file: download it again"
        ) from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ExportError(f"{component}: {path} does not hold a flat state dict of tensors")
    return dict(state)


def read_weights(folder: Path, component: str, boundary: Boundary | None = None) -> dict[str, torch.Tensor]:
    """All of `component`'s weights from `folder`, key-normalised (see `normalize_keys`).

    `boundary`: the folder the files must stay in (the checkpoint's, see paths.py); default `folder`.
    """
    state: dict[str, torch.Tensor] = {}
    for path in find_weight_files(folder, component, boundary):
        part = read_weight_file(path, component)
        dup = sorted(set(part) & set(state))
        if dup:
            raise ExportError(f"{component}: keys appear in more than one shard: {_head(dup)}")
        state.update(part)
    return normalize_keys(state)


def normalize_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames old diffusers VAE attention names to the current ones.

    `*.attentions.N.{query,key,value,proj_attn}` become `to_q/to_k/to_v/to_out.0`; the original
    LDM layout stored these projections as 1x1 convolutions, which `load_into` flattens.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _OLD_ATTENTION_RE.match(key)
        if m:
            key = f"{m.group(1)}.{_OLD_ATTENTION[m.group(2)]}.{m.group(3)}"
        out[key] = value
    return out


def _head(keys: list[str]) -> str:
    shown = ", ".join(keys[:LIST_LIMIT])
    return shown + (f", ... ({len(keys) - LIST_LIMIT} more)" if len(keys) > LIST_LIMIT else "")


def _is_position_ids(key: str) -> bool:
    return key.endswith("position_ids")


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], component: str) -> None:
    """Loads `state` into `module` strictly: every key present, no extra key, every shape equal.

    All problems are reported in one ExportError. Two differences are not problems:
    `position_ids` buffers (always arange, saved by some transformers versions and not by others)
    and 1x1-convolution weights given for linear layers (old VAE attention).
    """
    expected = module.state_dict()
    state = dict(state)
    for key in [k for k in state if _is_position_ids(k)]:
        if key not in expected:
            del state[key]
    for key in expected:
        if _is_position_ids(key) and key not in state:
            state[key] = expected[key]
    for key, value in list(state.items()):
        target = expected.get(key)
        if target is not None and value.dim() == 4 and target.dim() == 2 and value.shape[2:] == (1, 1):
            state[key] = value[:, :, 0, 0]

    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    mismatched = sorted(
        f"{k} (checkpoint {list(state[k].shape)}, model {list(expected[k].shape)})"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_head(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_head(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} with the wrong shape: {_head(mismatched)}")
        raise ExportError(
            f"{component}: the weights do not fit the model built from {component}/config.json: "
            + "; ".join(parts)
            + ". The weight file and config.json must come from the same checkpoint"
        )
    with torch.no_grad():
        module.load_state_dict(state, strict=True)
