"""ControlNetModel (SD-1.5 family) as a TorchScript-scriptable module.

It is the UNet's down half and mid block, with the conditioning image embedded and added after conv_in, and a
zero-initialised 1x1 convolution on every skip tensor and on the mid output; those are the residuals the UNet adds.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .unet import (
    FIXED_VALUES,
    READ_OR_INERT,
    build_down_blocks,
    build_mid_block,
    check_known_keys,
    config_error,
    parse_unet_spec,
    positive_int,
)
from .unet_blocks import TimestepEmbedding, Timesteps

# Keys of UNet2DConditionModel that a ControlNetModel config does not have; reject them if set.
_CN_READ = READ_OR_INERT - {
    "up_block_types",
    "out_channels",
    "conv_in_kernel",
    "conv_out_kernel",
    "center_input_sample",
}


class ControlNetConditioningEmbedding(nn.Module):
    """conv_in, then per level a same-size conv and a stride-2 conv (SiLU after each), then conv_out (no act)."""

    def __init__(self, out_channels: int, conditioning_channels: int, block_out_channels: list[int]):
        super().__init__()
        self.conv_in = nn.Conv2d(conditioning_channels, block_out_channels[0], kernel_size=3, padding=1)
        blocks: list[nn.Module] = []
        for c_in, c_out in zip(block_out_channels[:-1], block_out_channels[1:], strict=True):
            blocks.append(nn.Conv2d(c_in, c_in, kernel_size=3, padding=1))
            blocks.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, stride=2))
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = nn.Conv2d(block_out_channels[-1], out_channels, kernel_size=3, padding=1)

    def forward(self, cond: Tensor) -> Tensor:
        h = F.silu(self.conv_in(cond))
        for block in self.blocks:
            h = F.silu(block(h))
        return self.conv_out(h)


class ControlNetModel(nn.Module):
    def __init__(self, config: dict[str, Any]):
        super().__init__()
        model = "controlnet"
        check_known_keys(config, model, FIXED_VALUES, sorted(_CN_READ))
        spec = parse_unet_spec(config, model, ("UNetMidBlock2DCrossAttn",))
        cond_boc = config.get("conditioning_embedding_out_channels", [16, 32, 96, 256])
        if not isinstance(cond_boc, (list, tuple)) or not cond_boc:
            raise config_error(model, "conditioning_embedding_out_channels", cond_boc, "a non-empty list")
        cond_boc = [positive_int(model, "conditioning_embedding_out_channels", c) for c in cond_boc]
        cond_ch = positive_int(model, "conditioning_channels", config.get("conditioning_channels", 3))

        boc = spec.block_out_channels
        self.conv_in = nn.Conv2d(spec.in_channels, boc[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(boc[0], spec.flip_sin_to_cos, spec.freq_shift)
        self.time_embedding = TimestepEmbedding(boc[0], spec.time_embed_dim)
        self.controlnet_cond_embedding = ControlNetConditioningEmbedding(boc[0], cond_ch, cond_boc)
        self.down_blocks = build_down_blocks(spec)

        # One 1x1 conv per skip tensor, in the order the down path produces them.
        zero_convs: list[nn.Module] = [nn.Conv2d(boc[0], boc[0], kernel_size=1)]
        for i, c in enumerate(boc):
            n_skips = spec.layers_per_block[i] + (0 if i == len(boc) - 1 else 1)
            zero_convs.extend(nn.Conv2d(c, c, kernel_size=1) for _ in range(n_skips))
        self.controlnet_down_blocks = nn.ModuleList(zero_convs)
        mid = build_mid_block(spec)
        assert mid is not None  # parse_unet_spec only accepted a mid block type
        self.mid_block = mid
        self.controlnet_mid_block = nn.Conv2d(boc[-1], boc[-1], kernel_size=1)

    def forward(
        self,
        sample: Tensor,
        timestep: Tensor,
        encoder_hidden_states: Tensor,
        controlnet_cond: Tensor,
        conditioning_scale: float,
    ) -> tuple[list[Tensor], Tensor]:
        """controlnet_cond: RGB NCHW in [0, 1] at the output resolution. Returns (down residuals, mid residual),
        each multiplied by conditioning_scale, ready for UNet2DConditionModel's residual arguments."""
        t = timestep.to(sample.device).reshape(-1).expand(sample.shape[0])
        emb = self.time_embedding(self.time_proj(t).to(sample.dtype))
        temb = F.silu(emb)

        h = self.conv_in(sample) + self.controlnet_cond_embedding(controlnet_cond)
        skips: list[Tensor] = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, temb, encoder_hidden_states)
            skips.extend(block_skips)
        h = self.mid_block(h, temb, encoder_hidden_states)

        down: list[Tensor] = []
        for i, conv in enumerate(self.controlnet_down_blocks):
            down.append(conv(skips[i]) * conditioning_scale)
        return down, self.controlnet_mid_block(h) * conditioning_scale
