"""The AutoencoderKL halves as TorchScript-scriptable modules.

Both load from the full VAE checkpoint filtered by prefix: VAEDecoder owns `post_quant_conv.*` + `decoder.*`,
VAEEncoder owns `encoder.*` + `quant_conv.*`. Neither applies the scaling factor; the pipeline does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .unet import check_known_keys, config_error
from .unet_blocks import DownEncoderBlock2D, UNetMidBlock2D, UpDecoderBlock2D

DECODER_PREFIXES = ("post_quant_conv.", "decoder.")
ENCODER_PREFIXES = ("encoder.", "quant_conv.")

# Fixed-eps and padding values the reference's Encoder/Decoder hard-code.
_VAE_EPS = 1e-6
_ENCODER_DOWNSAMPLE_PADDING = 0

_VAE_FIXED: dict[str, tuple] = {"act_fn": ("silu",)}
_VAE_READ = [
    "in_channels",
    "out_channels",
    "latent_channels",
    "block_out_channels",
    "down_block_types",
    "up_block_types",
    "layers_per_block",
    "norm_num_groups",
    "mid_block_add_attention",
    "use_quant_conv",
    "use_post_quant_conv",
    # Used by the pipeline, not by the modules.
    "sample_size",
    "scaling_factor",
    "shift_factor",
    "latents_mean",
    "latents_std",
    "force_upcast",
]


@dataclass
class VAESpec:
    in_channels: int
    out_channels: int
    latent_channels: int
    block_out_channels: list[int]
    layers_per_block: int
    norm_num_groups: int
    mid_block_add_attention: bool
    use_quant_conv: bool
    use_post_quant_conv: bool


def _int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise config_error("vae", key, value, "a positive integer")
    return value


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise config_error("vae", key, value, "true or false")
    return value


def parse_vae_spec(config: dict[str, Any]) -> VAESpec:
    check_known_keys(config, "vae", _VAE_FIXED, _VAE_READ)
    boc = config.get("block_out_channels", [64])
    if not isinstance(boc, (list, tuple)) or not boc:
        raise config_error("vae", "block_out_channels", boc, "a non-empty list of channel counts")
    boc = [_int("block_out_channels", c) for c in boc]
    n = len(boc)
    for key, expected in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        types = config.get(key, [expected] * n)
        if not isinstance(types, (list, tuple)) or len(types) != n:
            raise config_error("vae", key, types, f"a list of {n} block types")
        for t in types:
            if t != expected:
                raise config_error("vae", key, t, expected)
    groups = _int("norm_num_groups", config.get("norm_num_groups", 32))
    for c in boc:
        if c % groups != 0:
            raise config_error("vae", "norm_num_groups", groups, f"a divisor of every block_out_channels entry {boc}")
    return VAESpec(
        in_channels=_int("in_channels", config.get("in_channels", 3)),
        out_channels=_int("out_channels", config.get("out_channels", 3)),
        latent_channels=_int("latent_channels", config.get("latent_channels", 4)),
        block_out_channels=boc,
        layers_per_block=_int("layers_per_block", config.get("layers_per_block", 1)),
        norm_num_groups=groups,
        mid_block_add_attention=_bool("mid_block_add_attention", config.get("mid_block_add_attention", True)),
        use_quant_conv=_bool("use_quant_conv", config.get("use_quant_conv", True)),
        use_post_quant_conv=_bool("use_post_quant_conv", config.get("use_post_quant_conv", True)),
    )


def filter_state_dict(state_dict: dict[str, Tensor], prefixes: tuple[str, ...]) -> dict[str, Tensor]:
    """The entries of a full AutoencoderKL state dict that belong to one half (keys unchanged)."""
    return {k: v for k, v in state_dict.items() if k.startswith(prefixes)}


class Encoder(nn.Module):
    def __init__(self, spec: VAESpec):
        super().__init__()
        boc = spec.block_out_channels
        g = spec.norm_num_groups
        self.conv_in = nn.Conv2d(spec.in_channels, boc[0], kernel_size=3, stride=1, padding=1)
        self.down_blocks = nn.ModuleList()
        out_ch = boc[0]
        for i in range(len(boc)):
            in_ch, out_ch = out_ch, boc[i]
            is_final = i == len(boc) - 1
            self.down_blocks.append(
                DownEncoderBlock2D(
                    in_ch, out_ch, spec.layers_per_block, g, _VAE_EPS, not is_final, _ENCODER_DOWNSAMPLE_PADDING
                )
            )
        self.mid_block = UNetMidBlock2D(boc[-1], 1, g, _VAE_EPS, spec.mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(g, boc[-1], eps=_VAE_EPS)
        # Twice the latent channels: mean and logvar.
        self.conv_out = nn.Conv2d(boc[-1], 2 * spec.latent_channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for block in self.down_blocks:
            h = block(h)
        h = self.mid_block(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, spec: VAESpec):
        super().__init__()
        rev = list(reversed(spec.block_out_channels))
        g = spec.norm_num_groups
        self.conv_in = nn.Conv2d(spec.latent_channels, rev[0], kernel_size=3, stride=1, padding=1)
        self.mid_block = UNetMidBlock2D(rev[0], 1, g, _VAE_EPS, spec.mid_block_add_attention)
        self.up_blocks = nn.ModuleList()
        out_ch = rev[0]
        for i in range(len(rev)):
            prev, out_ch = out_ch, rev[i]
            is_final = i == len(rev) - 1
            self.up_blocks.append(UpDecoderBlock2D(prev, out_ch, spec.layers_per_block + 1, g, _VAE_EPS, not is_final))
        self.conv_norm_out = nn.GroupNorm(g, rev[-1], eps=_VAE_EPS)
        self.conv_out = nn.Conv2d(rev[-1], spec.out_channels, kernel_size=3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            h = block(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class VAEDecoder(nn.Module):
    """z (latents already divided by the scaling factor) -> image, NCHW, roughly in [-1, 1]."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        spec = parse_vae_spec(config)
        c = spec.latent_channels
        self.post_quant_conv = nn.Conv2d(c, c, kernel_size=1) if spec.use_post_quant_conv else None
        self.decoder = Decoder(spec)

    def forward(self, z: Tensor) -> Tensor:
        pq = self.post_quant_conv
        if pq is not None:
            z = pq(z)
        return self.decoder(z)


class VAEEncoder(nn.Module):
    """image (NCHW in [-1, 1]) -> (mean, logvar) of the latent distribution, logvar clamped to [-30, 20]."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        spec = parse_vae_spec(config)
        c = 2 * spec.latent_channels
        self.encoder = Encoder(spec)
        self.quant_conv = nn.Conv2d(c, c, kernel_size=1) if spec.use_quant_conv else None

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        moments = self.encoder(image)
        qc = self.quant_conv
        if qc is not None:
            moments = qc(moments)
        mean, logvar = torch.chunk(moments, 2, dim=1)
        return mean, torch.clamp(logvar, -30.0, 20.0)
