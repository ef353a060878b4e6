"""SD-1.5-family UNet2DConditionModel (any depth) as a TorchScript-scriptable module, plus the config reader it
shares with the ControlNet.

Config values outside what is implemented raise ExportError naming the key and the value, rather than exporting
a module that silently computes something else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .edit_layers import attention_table
from .errors import ExportError
from .unet_blocks import (
    CrossAttnDownBlock2D,
    CrossAttnUpBlock2D,
    DownBlock2D,
    EditControl,
    TimestepEmbedding,
    Timesteps,
    UNetMidBlock2DCrossAttn,
    UpBlock2D,
)

DOWN_BLOCK_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCK_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")

_MISSING = object()

# key -> values the implementation supports (the first is diffusers' default, used when the key is absent).
FIXED_VALUES: dict[str, tuple] = {
    "act_fn": ("silu",),
    "attention_type": ("default",),
    "class_embed_type": (None,),
    "num_class_embeds": (None,),
    "addition_embed_type": (None,),
    "time_cond_proj_dim": (None,),
    "time_embedding_type": ("positional",),
    "time_embedding_dim": (None,),
    "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,),
    "resnet_time_scale_shift": ("default",),
    "resnet_skip_time_act": (False,),
    "resnet_out_scale_factor": (1.0,),
    "dual_cross_attention": (False,),
    "upcast_attention": (False,),
    "mid_block_only_cross_attention": (None, False),
    "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,),
    "cross_attention_norm": (None,),
    "class_embeddings_concat": (False,),
    "reverse_transformer_layers_per_block": (None,),
    "global_pool_conditions": (False,),
    "controlnet_conditioning_channel_order": ("rgb",),
}

# Keys read by the parsers below, or only meaningful together with a value rejected above.
READ_OR_INERT = {
    "in_channels",
    "out_channels",
    "block_out_channels",
    "down_block_types",
    "up_block_types",
    "mid_block_type",
    "layers_per_block",
    "attention_head_dim",
    "num_attention_heads",
    "cross_attention_dim",
    "norm_num_groups",
    "norm_eps",
    "flip_sin_to_cos",
    "freq_shift",
    "downsample_padding",
    "mid_block_scale_factor",
    "use_linear_projection",
    "only_cross_attention",
    "transformer_layers_per_block",
    "conv_in_kernel",
    "conv_out_kernel",
    "center_input_sample",
    "conditioning_channels",
    "conditioning_embedding_out_channels",
    "sample_size",  # training resolution hint
    "dropout",  # inference only
    "addition_embed_type_num_heads",  # only with addition_embed_type
    "addition_time_embed_dim",  # only with addition_embed_type
    "projection_class_embeddings_input_dim",  # only with class/addition embeddings
}


def config_error(model: str, key: str, value: Any, supported: str) -> ExportError:
    return ExportError(f"{model} config: unsupported {key}={value!r} (supported: {supported})")


def check_known_keys(config: dict[str, Any], model: str, fixed: dict[str, tuple], read: Sequence[str]) -> None:
    """Rejects fixed-value keys set to anything else, and unknown keys that are set (not None/False)."""
    for key, allowed in fixed.items():
        value = config.get(key, allowed[0])
        if value not in allowed:
            raise config_error(model, key, value, " or ".join(repr(a) for a in allowed))
    for key, value in config.items():
        if key.startswith("_") or key in fixed or key in read:
            continue
        if value is not None and value is not False:
            raise config_error(model, key, value, "absent or null; this key is unknown to the exporter")


def per_block(config: dict[str, Any], model: str, key: str, n: int, default: Any = _MISSING) -> list[Any]:
    """A scalar applies to every block; a list must have one entry per block."""
    value = config.get(key, default)
    if value is _MISSING or value is None:
        raise config_error(model, key, value, "a number or a list with one entry per block")
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise config_error(model, key, value, f"a list of length {n} (one per block)")
        return list(value)
    return [value] * n


def positive_int(model: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise config_error(model, key, value, "a positive integer")
    return value


@dataclass
class UNetSpec:
    """The normalized config of a UNet2DConditionModel or of the UNet half of a ControlNetModel."""

    in_channels: int
    block_out_channels: list[int]
    down_block_types: list[str]
    layers_per_block: list[int]
    heads: list[int]
    cross_attention_dim: list[int]
    transformer_layers: list[int]
    norm_num_groups: int
    norm_eps: float
    flip_sin_to_cos: bool
    freq_shift: float
    downsample_padding: int
    mid_block_type: str | None
    mid_block_scale_factor: float
    use_linear_projection: bool
    heads_key: str  # the config key the head counts came from, for error messages

    @property
    def time_embed_dim(self) -> int:
        return self.block_out_channels[0] * 4


def parse_unet_spec(config: dict[str, Any], model: str, mid_block_types: Sequence[str | None]) -> UNetSpec:
    """Validates and normalizes the keys a UNet and a ControlNet share (down half, mid block, time embedding)."""
    boc = config.get("block_out_channels")
    if not isinstance(boc, (list, tuple)) or not boc:
        raise config_error(model, "block_out_channels", boc, "a non-empty list of channel counts")
    boc = [positive_int(model, "block_out_channels", c) for c in boc]
    n = len(boc)

    down = config.get("down_block_types")
    if not isinstance(down, (list, tuple)) or len(down) != n:
        raise config_error(model, "down_block_types", down, f"a list of {n} block types")
    for t in down:
        if t not in DOWN_BLOCK_TYPES:
            raise config_error(model, "down_block_types", t, " or ".join(DOWN_BLOCK_TYPES))

    only_cross = config.get("only_cross_attention", False)
    for v in only_cross if isinstance(only_cross, (list, tuple)) else [only_cross]:
        if v is not False:
            raise config_error(model, "only_cross_attention", only_cross, "false")

    layers = [positive_int(model, "layers_per_block", v) for v in per_block(config, model, "layers_per_block", n, 2)]
    # In this config family `attention_head_dim` holds the number of heads; `num_attention_heads` wins when set.
    heads_key = "num_attention_heads" if config.get("num_attention_heads") is not None else "attention_head_dim"
    heads = [positive_int(model, heads_key, v) for v in per_block(config, model, heads_key, n, 8)]
    cross = [
        positive_int(model, "cross_attention_dim", v) for v in per_block(config, model, "cross_attention_dim", n, 1280)
    ]
    tlayers = [
        positive_int(model, "transformer_layers_per_block", v)
        for v in per_block(config, model, "transformer_layers_per_block", n, 1)
    ]

    groups = config.get("norm_num_groups", 32)
    groups = positive_int(model, "norm_num_groups", groups)
    for c in boc:
        if c % groups != 0:
            raise config_error(model, "norm_num_groups", groups, f"a divisor of every block_out_channels entry {boc}")
    for c, h, t in zip(boc, heads, down, strict=True):
        if t.startswith("CrossAttn") and c % h != 0:
            raise config_error(model, heads_key, h, f"a divisor of the block's channel count {c}")

    mid = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid not in mid_block_types:
        raise config_error(model, "mid_block_type", mid, " or ".join(repr(m) for m in mid_block_types))
    if mid is not None and boc[-1] % heads[-1] != 0:
        raise config_error(model, heads_key, heads[-1], f"a divisor of the mid block's channel count {boc[-1]}")

    padding = config.get("downsample_padding", 1)
    if padding not in (0, 1) or isinstance(padding, bool):
        raise config_error(model, "downsample_padding", padding, "0 or 1")

    return UNetSpec(
        in_channels=positive_int(model, "in_channels", config.get("in_channels", 4)),
        block_out_channels=boc,
        down_block_types=list(down),
        layers_per_block=layers,
        heads=heads,
        cross_attention_dim=cross,
        transformer_layers=tlayers,
        norm_num_groups=groups,
        norm_eps=float(config.get("norm_eps", 1e-5)),
        flip_sin_to_cos=bool(config.get("flip_sin_to_cos", True)),
        freq_shift=float(config.get("freq_shift", 0)),
        downsample_padding=int(padding),
        mid_block_type=mid,
        mid_block_scale_factor=float(config.get("mid_block_scale_factor", 1.0)),
        use_linear_projection=bool(config.get("use_linear_projection", False)),
        heads_key=heads_key,
    )


def build_down_blocks(spec: UNetSpec) -> nn.ModuleList:
    blocks = nn.ModuleList()
    out_ch = spec.block_out_channels[0]
    n = len(spec.block_out_channels)
    for i, block_type in enumerate(spec.down_block_types):
        in_ch, out_ch = out_ch, spec.block_out_channels[i]
        is_final = i == n - 1
        if block_type == "CrossAttnDownBlock2D":
            blocks.append(
                CrossAttnDownBlock2D(
                    in_ch,
                    out_ch,
                    spec.time_embed_dim,
                    spec.layers_per_block[i],
                    spec.transformer_layers[i],
                    spec.norm_num_groups,
                    spec.norm_eps,
                    spec.heads[i],
                    spec.cross_attention_dim[i],
                    spec.use_linear_projection,
                    not is_final,
                    spec.downsample_padding,
                )
            )
        else:
            blocks.append(
                DownBlock2D(
                    in_ch,
                    out_ch,
                    spec.time_embed_dim,
                    spec.layers_per_block[i],
                    spec.norm_num_groups,
                    spec.norm_eps,
                    not is_final,
                    spec.downsample_padding,
                )
            )
    return blocks


def build_mid_block(spec: UNetSpec) -> UNetMidBlock2DCrossAttn | None:
    if spec.mid_block_type is None:
        return None
    return UNetMidBlock2DCrossAttn(
        spec.block_out_channels[-1],
        spec.time_embed_dim,
        1,
        spec.transformer_layers[-1],
        spec.norm_num_groups,
        spec.norm_eps,
        spec.heads[-1],
        spec.cross_attention_dim[-1],
        spec.use_linear_projection,
        spec.mid_block_scale_factor,
    )


def conv_kernel(config: dict[str, Any], model: str, key: str) -> int:
    k = config.get(key, 3)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
        raise config_error(model, key, k, "an odd positive integer")
    return k


_UNET_READ = READ_OR_INERT - {"conditioning_channels", "conditioning_embedding_out_channels"}
_UNET_FIXED = {
    k: v
    for k, v in FIXED_VALUES.items()
    if k not in ("global_pool_conditions", "controlnet_conditioning_channel_order")
}


class UNet2DConditionModel(nn.Module):
    """Noise prediction eps(sample, t, encoder_hidden_states), with optional ControlNet residuals."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        model = "unet"
        check_known_keys(config, model, _UNET_FIXED, sorted(_UNET_READ))
        spec = parse_unet_spec(config, model, ("UNetMidBlock2DCrossAttn", None))
        n = len(spec.block_out_channels)
        up_types = config.get("up_block_types")
        if not isinstance(up_types, (list, tuple)) or len(up_types) != n:
            raise config_error(model, "up_block_types", up_types, f"a list of {n} block types")
        for t in up_types:
            if t not in UP_BLOCK_TYPES:
                raise config_error(model, "up_block_types", t, " or ".join(UP_BLOCK_TYPES))
        for i, t in enumerate(up_types):
            c = spec.block_out_channels[n - 1 - i]
            if t.startswith("CrossAttn") and c % spec.heads[n - 1 - i] != 0:
                raise config_error(model, spec.heads_key, spec.heads[n - 1 - i], f"a divisor of {c}")
        k_in = conv_kernel(config, model, "conv_in_kernel")
        k_out = conv_kernel(config, model, "conv_out_kernel")
        out_channels = positive_int(model, "out_channels", config.get("out_channels", 4))
        center = config.get("center_input_sample", False)
        if not isinstance(center, bool):
            raise config_error(model, "center_input_sample", center, "true or false")
        self.center_input_sample = center

        boc = spec.block_out_channels
        self.conv_in = nn.Conv2d(spec.in_channels, boc[0], kernel_size=k_in, padding=(k_in - 1) // 2)
        self.time_proj = Timesteps(boc[0], spec.flip_sin_to_cos, spec.freq_shift)
        self.time_embedding = TimestepEmbedding(boc[0], spec.time_embed_dim)
        self.down_blocks = build_down_blocks(spec)
        self.mid_block = build_mid_block(spec)

        self.up_blocks = nn.ModuleList()
        rev_ch = list(reversed(boc))
        rev_layers = list(reversed(spec.layers_per_block))
        rev_heads = list(reversed(spec.heads))
        rev_cross = list(reversed(spec.cross_attention_dim))
        rev_tlayers = list(reversed(spec.transformer_layers))
        out_ch = rev_ch[0]
        for i, block_type in enumerate(up_types):
            is_final = i == n - 1
            prev_out, out_ch = out_ch, rev_ch[i]
            in_ch = rev_ch[min(i + 1, n - 1)]
            if block_type == "CrossAttnUpBlock2D":
                block: nn.Module = CrossAttnUpBlock2D(
                    in_ch,
                    prev_out,
                    out_ch,
                    spec.time_embed_dim,
                    rev_layers[i] + 1,
                    rev_tlayers[i],
                    spec.norm_num_groups,
                    spec.norm_eps,
                    rev_heads[i],
                    rev_cross[i],
                    spec.use_linear_projection,
                    not is_final,
                )
            else:
                block = UpBlock2D(
                    in_ch,
                    prev_out,
                    out_ch,
                    spec.time_embed_dim,
                    rev_layers[i] + 1,
                    spec.norm_num_groups,
                    spec.norm_eps,
                    not is_final,
                )
            self.up_blocks.append(block)

        self.conv_norm_out = nn.GroupNorm(spec.norm_num_groups, boc[0], eps=spec.norm_eps)
        self.conv_out = nn.Conv2d(boc[0], out_channels, kernel_size=k_out, padding=(k_out - 1) // 2)
        self._set_edit_roles()

    def _set_edit_roles(self) -> None:
        """Each Attention's editing roles, and the attributes the runtime reads (`module.attr(...)`), from
        edit_layers.attention_table. A UNet without a cross-attention down block gets l* = -1 and empty lists
        (forward_edit then refuses any control)."""
        try:
            table = attention_table(self)
        except ExportError:
            table = None
        self.edit_blend_level = -1 if table is None else table.l_star
        self.edit_layer_names = [] if table is None else table.names
        self.edit_blend_layer_names = [] if table is None else table.blend_names
        for layer in [] if table is None else table.layers:
            attn = self.get_submodule(layer.name)
            attn.edit_cross = layer.kind == "cross"
            attn.edit_cross_replace = layer.cross_replace
            attn.edit_self_replace = layer.self_replace
            attn.edit_local_blend = layer.local_blend

    def forward(
        self,
        sample: Tensor,
        timestep: Tensor,
        encoder_hidden_states: Tensor,
        down_block_additional_residuals: list[Tensor] | None = None,
        mid_block_additional_residual: Tensor | None = None,
    ) -> Tensor:
        """sample [B, C, H, W]; timestep int64, scalar or [B]; encoder_hidden_states [B, L, D].

        down_block_additional_residuals (one per skip tensor, in down-path order) and mid_block_additional_residual
        are added to the skips and to the mid block output, as ControlNet residuals are in the reference.
        """
        if self.center_input_sample:
            sample = 2 * sample - 1.0
        t = timestep.to(sample.device).reshape(-1).expand(sample.shape[0])
        # The sinusoid is float32 whatever the model dtype; the MLP runs in the sample's dtype.
        emb = self.time_embedding(self.time_proj(t).to(sample.dtype))
        temb = F.silu(emb)

        h = self.conv_in(sample)
        skips: list[Tensor] = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, temb, encoder_hidden_states)
            skips.extend(block_skips)

        if down_block_additional_residuals is not None:
            if len(down_block_additional_residuals) != len(skips):
                raise RuntimeError(
                    f"expected {len(skips)} down_block_additional_residuals, got {len(down_block_additional_residuals)}"
                )
            skips = [s + r for s, r in zip(skips, down_block_additional_residuals, strict=True)]

        mid = self.mid_block
        if mid is not None:
            h = mid(h, temb, encoder_hidden_states)
        if mid_block_additional_residual is not None:
            h = h + mid_block_additional_residual

        num_up = len(self.up_blocks)
        for i, block in enumerate(self.up_blocks):
            n_skips = block.num_skips
            block_skips = skips[len(skips) - n_skips :]
            skips = skips[: len(skips) - n_skips]
            # Upsampling to the next skip's size equals x2 when sizes divide evenly and matches the reference's
            # forward_upsample_size path when they do not (odd latent sizes).
            upsample_size: list[int] | None = None
            if i < num_up - 1:
                upsample_size = skips[-1].shape[2:]
            h = block(h, block_skips, temb, encoder_hidden_states, upsample_size)

        return self.conv_out(F.silu(self.conv_norm_out(h)))

    @torch.jit.export
    def forward_edit(
        self,
        sample: Tensor,
        timestep: Tensor,
        encoder_hidden_states: Tensor,
        mapper: Tensor,
        alphas: Tensor,
        cross_alpha: Tensor,
        cross_replace: bool,
        self_replace: bool,
        collect_blend: bool,
        record: bool,
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """`forward` (without ControlNet residuals) with prompt-to-prompt attention control (edit.json spec 6, 7).

        sample [B, C, h, w], B = 4 rows [uncond_src, uncond_edit, cond_src, cond_edit] whenever a control is on.
        mapper int64 [P] (-1 = no source column: it reads the last one, as Python indexing does, and alphas is 0
        there), alphas [P] and cross_alpha [P] (the controller step's row) in the sample's dtype, P =
        encoder_hidden_states.shape[1]. cross_replace: AttentionRefine in every cross-attention layer;
        self_replace: cond_edit takes cond_src's probabilities in the self-attention layers at level >= l*.
        Returns (noise prediction, blend, recorded): blend = with collect_blend, the cond_src probabilities
        [heads, Q, P] after control of each LocalBlend layer (edit_blend_layer_names); recorded = with record, the
        conditional half of every attention layer's probabilities (rows [B//2 * heads, B * heads)) after control, in
        call order (edit_layer_names). Layers with nothing to do use the same SDPA as `forward`.
        """
        if (cross_replace or self_replace or collect_blend or record) and self.edit_blend_level < 0:
            raise RuntimeError("forward_edit: this UNet has no cross-attention down block, so it has no edit layers")
        if (cross_replace or self_replace or collect_blend) and sample.shape[0] != 4:
            raise RuntimeError(
                f"forward_edit: cross_replace, self_replace and collect_blend need the 4-row editing batch "
                f"[uncond_src, uncond_edit, cond_src, cond_edit], got batch {sample.shape[0]}"
            )
        if cross_replace:
            keys = encoder_hidden_states.shape[1]
            if mapper.dim() != 1 or mapper.shape[0] != keys or mapper.dtype != torch.int64:
                raise RuntimeError(f"forward_edit: mapper must be int64 [{keys}], got {mapper.dtype} {mapper.shape}")
            if alphas.shape != mapper.shape or cross_alpha.shape != mapper.shape:
                raise RuntimeError(
                    f"forward_edit: alphas and cross_alpha must be [{keys}], got {alphas.shape} and {cross_alpha.shape}"
                )
        ctl = EditControl(mapper, alphas, cross_alpha, cross_replace, self_replace, collect_blend, record)

        if self.center_input_sample:
            sample = 2 * sample - 1.0
        t = timestep.to(sample.device).reshape(-1).expand(sample.shape[0])
        emb = self.time_embedding(self.time_proj(t).to(sample.dtype))
        temb = F.silu(emb)

        h = self.conv_in(sample)
        skips: list[Tensor] = [h]
        for block in self.down_blocks:
            h, block_skips = block.forward_edit(h, temb, encoder_hidden_states, ctl)
            skips.extend(block_skips)

        mid = self.mid_block
        if mid is not None:
            h = mid.forward_edit(h, temb, encoder_hidden_states, ctl)

        num_up = len(self.up_blocks)
        for i, block in enumerate(self.up_blocks):
            n_skips = block.num_skips
            block_skips = skips[len(skips) - n_skips :]
            skips = skips[: len(skips) - n_skips]
            upsample_size: list[int] | None = None
            if i < num_up - 1:
                upsample_size = skips[-1].shape[2:]
            h = block.forward_edit(h, block_skips, temb, encoder_hidden_states, upsample_size, ctl)

        return self.conv_out(F.silu(self.conv_norm_out(h))), ctl.blend, ctl.recorded


# TorchScript reads attribute types from here (class-level annotations are strings under `from __future__`); the
# lists may be empty, so their element type cannot be inferred.
UNet2DConditionModel.__annotations__ = {
    "edit_blend_level": int,
    "edit_layer_names": list[str],
    "edit_blend_layer_names": list[str],
}
