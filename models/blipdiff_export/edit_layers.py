"""Which UNet attention layers prompt-to-prompt editing controls (edit.json spec, section 5).

The one source of truth for the layer roles: the UNet sets each Attention module's roles from this table when it
is built, the exporter writes it into the manifest, and the tests compare it with the fixtures' tables.

Levels: down_blocks[i] works at level i, the mid block at level L-1, up_blocks[j] at level L-1-j (L = number of
blocks). l* is the deepest level whose down block has attention. Every cross-attention layer is replaced
(AttentionRefine); self-attention layers at level >= l* are replaced; LocalBlend reads the cross-attention layers of
down_blocks[l*] and up_blocks[L-1-l*] (not the mid block), in call order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .errors import ExportError


@dataclass(frozen=True)
class AttentionLayer:
    call_index: int
    name: str  # diffusers module name, e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    place: str  # "down", "mid" or "up"
    level: int
    kind: str  # "self" or "cross"
    heads: int
    cross_replace: bool
    self_replace: bool
    local_blend: bool
    query_hw: list[int] | None = None  # with a latent size only
    keys: int | None = None  # with a latent size only: text length for cross, query count for self

    def as_dict(self, sized: bool = True) -> dict[str, Any]:
        d = asdict(self)
        if not sized:
            del d["query_hw"], d["keys"]
        return d


@dataclass(frozen=True)
class AttentionTable:
    l_star: int
    num_levels: int
    layers: list[AttentionLayer]

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def blend_names(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.local_blend]

    def manifest_entry(self) -> dict[str, Any]:
        """The manifest's `attention_control` value: the table without the size-dependent fields."""
        return {"l_star": self.l_star, "layers": [layer.as_dict(sized=False) for layer in self.layers]}


def _level_size(size: int, level: int) -> int:
    # Each downsampler (3x3, stride 2, one pixel of padding) maps n to ceil(n / 2); exact halving when divisible.
    for _ in range(level):
        size = (size + 1) // 2
    return size


def _structure(unet: nn.Module) -> list[tuple[str, str, int, nn.Module]]:
    """(place, transformer prefix, level, Attention-holding transformer block) in call order."""
    num_levels = len(unet.down_blocks)
    out: list[tuple[str, str, int, nn.Module]] = []

    def walk(place: str, prefix: str, level: int, block: nn.Module) -> None:
        for a, t2d in enumerate(getattr(block, "attentions", [])):
            for t, tb in enumerate(t2d.transformer_blocks):
                out.append((place, f"{prefix}.attentions.{a}.transformer_blocks.{t}", level, tb))

    for i, block in enumerate(unet.down_blocks):
        walk("down", f"down_blocks.{i}", i, block)
    if unet.mid_block is not None:
        walk("mid", "mid_block", num_levels - 1, unet.mid_block)
    for j, block in enumerate(unet.up_blocks):
        walk("up", f"up_blocks.{j}", num_levels - 1 - j, block)
    return out


def attention_table(
    unet: nn.Module | dict[str, Any], latent_hw: tuple[int, int] | None = None, text_length: int | None = None
) -> AttentionTable:
    """The attention layers of `unet` (our UNet2DConditionModel, or its config, built on the meta device) in call
    order, with their editing roles. With `latent_hw` (h, w) each layer also gets query_hw and keys; cross-attention
    keys are `text_length` (the text encoder's max_position_embeddings).

    Raises ExportError when no down block has attention (there is no level for LocalBlend).
    """
    if isinstance(unet, dict):
        from .unet import UNet2DConditionModel

        with torch.device("meta"):
            unet = UNet2DConditionModel(unet)
    if latent_hw is not None and text_length is None:
        raise ValueError("attention_table: latent_hw needs text_length (the cross-attention key count)")
    num_levels = len(unet.down_blocks)
    with_attention = [i for i, block in enumerate(unet.down_blocks) if len(getattr(block, "attentions", [])) > 0]
    if not with_attention:
        raise ExportError(
            "unet: no down block has cross-attention (down_block_types has no CrossAttnDownBlock2D), so prompt-to-"
            "prompt editing has no layer to control; export a UNet with CrossAttnDownBlock2D blocks"
        )
    l_star = max(with_attention)

    layers: list[AttentionLayer] = []
    for place, prefix, level, tb in _structure(unet):
        for kind, attn in (("self", tb.attn1), ("cross", tb.attn2)):
            cross = kind == "cross"
            query_hw = None
            keys = None
            if latent_hw is not None:
                query_hw = [_level_size(latent_hw[0], level), _level_size(latent_hw[1], level)]
                keys = text_length if cross else query_hw[0] * query_hw[1]
            layers.append(
                AttentionLayer(
                    call_index=len(layers),
                    name=f"{prefix}.{'attn2' if cross else 'attn1'}",
                    place=place,
                    level=level,
                    kind=kind,
                    heads=attn.heads,
                    cross_replace=cross,
                    self_replace=not cross and level >= l_star,
                    local_blend=cross and place in ("down", "up") and level == l_star,
                    query_hw=query_hw,
                    keys=keys,
                )
            )
    return AttentionTable(l_star=l_star, num_levels=num_levels, layers=layers)
