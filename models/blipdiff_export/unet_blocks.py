"""Building blocks of the SD-1.5-family UNet, ControlNet and VAE, written to be TorchScript-scriptable.

Submodule and parameter names equal diffusers' so that diffusers checkpoints load with `strict=True`.
Every module is dtype-agnostic: its arithmetic runs in the dtype of its input and parameters, except the
sinusoidal timestep embedding, which is always computed in float32 (as the reference does) and cast by the caller.

Conventions:
- `temb` given to a ResnetBlock2D is the time embedding *after* the SiLU that every diffusers resnet applies
  to it; the UNet/ControlNet apply that SiLU once per forward instead of once per resnet.
- ModuleList loops are unrolled by TorchScript; ModuleLists can only be indexed by literals there, so pairs of
  lists of equal length are walked with zip() and offset pairs with enumerate() plus an index comparison.
- `forward_edit` (UNet blocks only) is `forward` with prompt-to-prompt attention control (edit.json spec, sections
  6 and 7), its arguments and outputs in one EditControl; `forward` itself is left as it was, so generation and
  fine-tuning run the graph they always ran.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Linear, linear


class Timesteps(nn.Module):
    """Sinusoidal timestep embedding (diffusers `get_timestep_embedding`, scale 1, max period 10000), in float32."""

    def __init__(self, num_channels: int, flip_sin_to_cos: bool, freq_shift: float):
        super().__init__()
        self.num_channels = num_channels
        self.flip_sin_to_cos = flip_sin_to_cos
        self.freq_shift = float(freq_shift)

    def forward(self, timesteps: Tensor) -> Tensor:
        half = self.num_channels // 2
        # Same operation order as the reference, so the float32 frequencies are bit-identical.
        exponent = -math.log(10000.0) * torch.arange(0, half, dtype=torch.float32, device=timesteps.device)
        exponent = exponent / (half - self.freq_shift)
        args = timesteps[:, None].float() * torch.exp(exponent)[None, :]
        if self.flip_sin_to_cos:
            emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        else:
            emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
        if self.num_channels % 2 == 1:
            emb = F.pad(emb, (0, 1, 0, 0))
        return emb


class TimestepEmbedding(nn.Module):
    """linear_1 -> SiLU -> linear_2."""

    def __init__(self, in_channels: int, time_embed_dim: int):
        super().__init__()
        self.linear_1 = Linear(in_channels, time_embed_dim)
        self.linear_2 = Linear(time_embed_dim, time_embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock2D(nn.Module):
    """GroupNorm-SiLU-conv, + projected time embedding, GroupNorm-SiLU-conv, plus (1x1-projected) input.

    `temb_channels` None means no time embedding (VAE). Dropout is omitted: inference only.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int | None,
        groups: int,
        eps: float,
        output_scale_factor: float = 1.0,
    ):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps, affine=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.time_emb_proj = Linear(temb_channels, out_channels) if temb_channels is not None else None
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps, affine=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)
            if in_channels != out_channels
            else None
        )
        self.output_scale_factor = float(output_scale_factor)

    def forward(self, x: Tensor, temb: Tensor | None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        proj = self.time_emb_proj
        if proj is not None and temb is not None:
            h = h + proj(temb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = self.conv_shortcut
        if shortcut is not None:
            x = shortcut(x)
        out = x + h
        if self.output_scale_factor != 1.0:
            out = out / self.output_scale_factor
        return out


class EditControl:
    """One forward_edit call's control arguments (UNet2DConditionModel.forward_edit documents them) and the lists its
    attention layers append to. TorchScript compiles the class where forward_edit first uses it (inside the exporter's
    reproducible scripting) and passes it by reference, so every layer appends to the same lists."""

    def __init__(
        self,
        mapper: Tensor,
        alphas: Tensor,
        cross_alpha: Tensor,
        cross_replace: bool,
        self_replace: bool,
        collect_blend: bool,
        record: bool,
    ):
        self.mapper = mapper
        self.alphas = alphas
        self.cross_alpha = cross_alpha
        self.cross_replace = cross_replace
        self.self_replace = self_replace
        self.collect_blend = collect_blend
        self.record = record
        self.blend: list[Tensor] = []  # cond_src probabilities of the LocalBlend layers, call order
        self.recorded: list[Tensor] = []  # conditional half of every layer's probabilities, call order


class AdaptableLinear(Linear):
    """Linear (the same parameters, names and math) with an optional low-rank update that the runtime attaches
    while it fine-tunes LoRA adapters: y = x W^T + b + lora_scale * (x A^T) B^T, A = lora_down [r, in],
    B = lora_up [out, r]. Exported with none attached, it computes exactly what nn.Linear does.

    Training through the unmerged update computes only the adapters' low-rank gradients; merging W + scale B A
    into the weight would also compute the dense [out, in] weight gradient on every step.
    """

    # The attributes' types for TorchScript are set below the class: with `from __future__ import annotations` a
    # class-level annotation is a string, which TorchScript cannot resolve for attributes.

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.lora_down = None
        self.lora_up = None
        self.lora_scale = 1.0

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 (nn.Linear's parameter name)
        y = linear(input, self.weight, self.bias, self.cpu_onednn)
        down = self.lora_down
        up = self.lora_up
        if down is not None and up is not None:
            y = y + self.lora_scale * F.linear(F.linear(input, down), up)
        return y


AdaptableLinear.__annotations__ = {"lora_down": Optional[Tensor], "lora_up": Optional[Tensor], "lora_scale": float}  # noqa: UP045


class Attention(nn.Module):
    """Multi-head attention on [B, N, C] tokens; `context` None means self-attention.

    Keys: to_q, to_k, to_v, to_out.0 (to_out.1 is a parameterless dropout in diffusers).
    """

    def __init__(self, query_dim: int, context_dim: int, heads: int, dim_head: int, qkv_bias: bool):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        # AdaptableLinear: LoRA fine-tuning attaches its adapters to these four (native/src/core/finetune).
        self.to_q = AdaptableLinear(query_dim, inner, bias=qkv_bias)
        self.to_k = AdaptableLinear(context_dim, inner, bias=qkv_bias)
        self.to_v = AdaptableLinear(context_dim, inner, bias=qkv_bias)
        self.to_out = nn.ModuleList([AdaptableLinear(inner, query_dim, bias=True)])
        # Editing roles, set by the UNet from edit_layers.attention_table (all off in the ControlNet).
        self.edit_cross = False  # cross-attention over the text (attn2), else self-attention (attn1)
        self.edit_cross_replace = False  # AttentionRefine when forward_edit's cross_replace is set
        self.edit_self_replace = False  # self-attention replacement when forward_edit's self_replace is set
        self.edit_local_blend = False  # hands its cond_src probabilities to LocalBlend when collect_blend is set

    def forward(self, x: Tensor, context: Tensor | None) -> Tensor:
        ctx = x if context is None else context
        b = x.shape[0]
        q = self.to_q(x).view(b, -1, self.heads, self.dim_head).transpose(1, 2)
        k = self.to_k(ctx).view(b, -1, self.heads, self.dim_head).transpose(1, 2)
        v = self.to_v(ctx).view(b, -1, self.heads, self.dim_head).transpose(1, 2)
        # SDPA's default scale is dim_head ** -0.5, the reference's.
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, -1, self.heads * self.dim_head)
        return self.to_out[0](out)

    def forward_edit(self, x: Tensor, context: Tensor | None, ctl: EditControl) -> Tensor:
        """`forward`, with explicit probabilities and the controller where this layer has something to do."""
        cross = self.edit_cross
        replace = (cross and ctl.cross_replace and self.edit_cross_replace) or (
            not cross and ctl.self_replace and self.edit_self_replace
        )
        collect = ctl.collect_blend and self.edit_local_blend
        if not (replace or collect or ctl.record):
            return self.forward(x, context)

        ctx = x if context is None else context
        b = x.shape[0]
        heads = self.heads
        dh = self.dim_head
        # diffusers head_to_batch_dim: row = batch_index * heads + head.
        q = self.to_q(x).view(b, -1, heads, dh).transpose(1, 2).reshape(b * heads, -1, dh)
        k = self.to_k(ctx).view(b, -1, heads, dh).transpose(1, 2).reshape(b * heads, -1, dh)
        v = self.to_v(ctx).view(b, -1, heads, dh).transpose(1, 2).reshape(b * heads, -1, dh)
        # diffusers Attention.get_attention_scores: baddbmm (beta 0, alpha head_dim^-0.5), then softmax.
        empty = torch.empty(q.shape[0], q.shape[1], k.shape[1], dtype=q.dtype, device=q.device)
        probs = torch.baddbmm(empty, q, k.transpose(-1, -2), beta=0.0, alpha=dh**-0.5).softmax(dim=-1)

        if replace or collect:
            # Batch [uncond_src, uncond_edit, cond_src, cond_edit]: only the conditional half is read or edited.
            if b != 4:
                raise RuntimeError(f"attention control needs the 4-row editing batch, got batch {b}")
            src = probs[2 * heads : 3 * heads]
            if replace:
                edit = probs[3 * heads :]
                if cross:
                    # AttentionRefine, operation for operation (with 0/1 weights it is bitwise a selection).
                    gathered = src.index_select(-1, torch.remainder(ctl.mapper, probs.shape[-1]))
                    refined = gathered * ctl.alphas + edit * (1 - ctl.alphas)
                    edit = refined * ctl.cross_alpha + (1 - ctl.cross_alpha) * edit
                else:
                    edit = src
                probs = torch.cat([probs[: 3 * heads], edit], dim=0)
            if collect:
                ctl.blend.append(src)
        if ctl.record:
            ctl.recorded.append(probs[(b // 2) * heads :])

        out = torch.bmm(probs, v)
        out = out.view(b, heads, -1, dh).transpose(1, 2).reshape(b, -1, heads * dh)
        return self.to_out[0](out)


class GEGLU(nn.Module):
    """proj -> (h, gate) halves -> h * gelu(gate), exact (erf) GELU."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    """net.0 = GEGLU(dim, 4*dim), net.1 = dropout (no parameters), net.2 = Linear(4*dim, dim)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = dim * mult
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Identity(), Linear(inner, dim)])

    def forward(self, x: Tensor) -> Tensor:
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm self-attention, cross-attention and GEGLU feed-forward, each with a residual."""

    def __init__(self, dim: int, heads: int, dim_head: int, cross_attention_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn1 = Attention(dim, dim, heads, dim_head, qkv_bias=False)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.attn2 = Attention(dim, cross_attention_dim, heads, dim_head, qkv_bias=False)
        self.norm3 = nn.LayerNorm(dim, eps=1e-5)
        self.ff = FeedForward(dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = self.attn1(self.norm1(x), None) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x

    def forward_edit(self, x: Tensor, context: Tensor, ctl: EditControl) -> Tensor:
        x = self.attn1.forward_edit(self.norm1(x), None, ctl) + x
        x = self.attn2.forward_edit(self.norm2(x), context, ctl) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nn.Module):
    """Spatial transformer: GroupNorm (eps 1e-6), proj_in, transformer blocks over H*W tokens, proj_out, residual.

    proj_in/proj_out are 1x1 convolutions, or Linear layers when `use_linear_projection`.
    """

    def __init__(
        self,
        heads: int,
        dim_head: int,
        in_channels: int,
        num_layers: int,
        cross_attention_dim: int,
        norm_num_groups: int,
        use_linear_projection: bool,
    ):
        super().__init__()
        inner = heads * dim_head
        self.inner = inner
        self.use_linear_projection = use_linear_projection
        self.norm = nn.GroupNorm(norm_num_groups, in_channels, eps=1e-6, affine=True)
        if use_linear_projection:
            self.proj_in = Linear(in_channels, inner)
            self.proj_out = Linear(inner, in_channels)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner, kernel_size=1, stride=1, padding=0)
            self.proj_out = nn.Conv2d(inner, in_channels, kernel_size=1, stride=1, padding=0)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, heads, dim_head, cross_attention_dim) for _ in range(num_layers)]
        )

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        b, c, height, width = x.shape
        h = self.norm(x)
        if self.use_linear_projection:
            h = self.proj_in(h.permute(0, 2, 3, 1).reshape(b, height * width, c))
        else:
            h = self.proj_in(h).permute(0, 2, 3, 1).reshape(b, height * width, self.inner)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.use_linear_projection:
            h = self.proj_out(h).reshape(b, height, width, c).permute(0, 3, 1, 2)
        else:
            h = self.proj_out(h.reshape(b, height, width, self.inner).permute(0, 3, 1, 2))
        return h + x

    def forward_edit(self, x: Tensor, context: Tensor, ctl: EditControl) -> Tensor:
        b, c, height, width = x.shape
        h = self.norm(x)
        if self.use_linear_projection:
            h = self.proj_in(h.permute(0, 2, 3, 1).reshape(b, height * width, c))
        else:
            h = self.proj_in(h).permute(0, 2, 3, 1).reshape(b, height * width, self.inner)
        for block in self.transformer_blocks:
            h = block.forward_edit(h, context, ctl)
        if self.use_linear_projection:
            h = self.proj_out(h).reshape(b, height, width, c).permute(0, 3, 1, 2)
        else:
            h = self.proj_out(h.reshape(b, height, width, self.inner).permute(0, 3, 1, 2))
        return h + x


class Downsample2D(nn.Module):
    """3x3 stride-2 convolution; with padding 0 the input is first padded by one on the right and bottom."""

    def __init__(self, channels: int, padding: int):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0)
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour upsampling (x2, or to `size`), then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor, size: list[int] | None) -> Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)


# UNet down blocks: forward(h, temb, context) -> (h, skip tensors in order). Same signature for every type, so
# the UNet can hold them in one ModuleList.


class CrossAttnDownBlock2D(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        num_layers: int,
        transformer_layers: int,
        groups: int,
        eps: float,
        heads: int,
        cross_attention_dim: int,
        use_linear_projection: bool,
        add_downsample: bool,
        downsample_padding: int,
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_channels, groups, eps)
                for i in range(num_layers)
            ]
        )
        self.attentions = nn.ModuleList(
            [
                Transformer2DModel(
                    heads,
                    out_channels // heads,
                    out_channels,
                    transformer_layers,
                    cross_attention_dim,
                    groups,
                    use_linear_projection,
                )
                for _ in range(num_layers)
            ]
        )
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels, downsample_padding)] if add_downsample else [])

    def forward(self, h: Tensor, temb: Tensor, context: Tensor) -> tuple[Tensor, list[Tensor]]:
        skips: list[Tensor] = []
        for resnet, attn in zip(self.resnets, self.attentions, strict=True):
            h = attn(resnet(h, temb), context)
            skips.append(h)
        for down in self.downsamplers:
            h = down(h)
            skips.append(h)
        return h, skips

    def forward_edit(self, h: Tensor, temb: Tensor, context: Tensor, ctl: EditControl) -> tuple[Tensor, list[Tensor]]:
        skips: list[Tensor] = []
        for resnet, attn in zip(self.resnets, self.attentions, strict=True):
            h = attn.forward_edit(resnet(h, temb), context, ctl)
            skips.append(h)
        for down in self.downsamplers:
            h = down(h)
            skips.append(h)
        return h, skips


class DownBlock2D(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        num_layers: int,
        groups: int,
        eps: float,
        add_downsample: bool,
        downsample_padding: int,
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_channels, groups, eps)
                for i in range(num_layers)
            ]
        )
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels, downsample_padding)] if add_downsample else [])

    def forward(self, h: Tensor, temb: Tensor, context: Tensor) -> tuple[Tensor, list[Tensor]]:
        skips: list[Tensor] = []
        for resnet in self.resnets:
            h = resnet(h, temb)
            skips.append(h)
        for down in self.downsamplers:
            h = down(h)
            skips.append(h)
        return h, skips

    def forward_edit(self, h: Tensor, temb: Tensor, context: Tensor, ctl: EditControl) -> tuple[Tensor, list[Tensor]]:
        return self.forward(h, temb, context)  # no attention


# UNet up blocks: forward(h, skips, temb, context, upsample_size) -> h. `skips` are exactly this block's skip
# tensors in the order the down path produced them (len == number of resnets); resnet i consumes skips[-1 - i].


def _up_resnet_channels(in_channels: int, prev_output_channel: int, out_channels: int, num_layers: int, i: int) -> int:
    """Input channels of resnet i of an up block: its input (previous block's output, then its own) + its skip."""
    skip = in_channels if i == num_layers - 1 else out_channels
    return (prev_output_channel if i == 0 else out_channels) + skip


class CrossAttnUpBlock2D(nn.Module):
    def __init__(
        self,
        in_channels: int,
        prev_output_channel: int,
        out_channels: int,
        temb_channels: int,
        num_layers: int,
        transformer_layers: int,
        groups: int,
        eps: float,
        heads: int,
        cross_attention_dim: int,
        use_linear_projection: bool,
        add_upsample: bool,
    ):
        super().__init__()
        self.num_skips = num_layers
        self.resnets = nn.ModuleList(
            [
                ResnetBlock2D(
                    _up_resnet_channels(in_channels, prev_output_channel, out_channels, num_layers, i),
                    out_channels,
                    temb_channels,
                    groups,
                    eps,
                )
                for i in range(num_layers)
            ]
        )
        self.attentions = nn.ModuleList(
            [
                Transformer2DModel(
                    heads,
                    out_channels // heads,
                    out_channels,
                    transformer_layers,
                    cross_attention_dim,
                    groups,
                    use_linear_projection,
                )
                for _ in range(num_layers)
            ]
        )
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)] if add_upsample else [])

    def forward(
        self, h: Tensor, skips: list[Tensor], temb: Tensor, context: Tensor, upsample_size: list[int] | None
    ) -> Tensor:
        i = 0
        for resnet, attn in zip(self.resnets, self.attentions, strict=True):
            h = torch.cat([h, skips[-1 - i]], dim=1)
            h = attn(resnet(h, temb), context)
            i += 1
        for up in self.upsamplers:
            h = up(h, upsample_size)
        return h

    def forward_edit(
        self,
        h: Tensor,
        skips: list[Tensor],
        temb: Tensor,
        context: Tensor,
        upsample_size: list[int] | None,
        ctl: EditControl,
    ) -> Tensor:
        i = 0
        for resnet, attn in zip(self.resnets, self.attentions, strict=True):
            h = torch.cat([h, skips[-1 - i]], dim=1)
            h = attn.forward_edit(resnet(h, temb), context, ctl)
            i += 1
        for up in self.upsamplers:
            h = up(h, upsample_size)
        return h


class UpBlock2D(nn.Module):
    def __init__(
        self,
        in_channels: int,
        prev_output_channel: int,
        out_channels: int,
        temb_channels: int,
        num_layers: int,
        groups: int,
        eps: float,
        add_upsample: bool,
    ):
        super().__init__()
        self.num_skips = num_layers
        self.resnets = nn.ModuleList(
            [
                ResnetBlock2D(
                    _up_resnet_channels(in_channels, prev_output_channel, out_channels, num_layers, i),
                    out_channels,
                    temb_channels,
                    groups,
                    eps,
                )
                for i in range(num_layers)
            ]
        )
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)] if add_upsample else [])

    def forward(
        self, h: Tensor, skips: list[Tensor], temb: Tensor, context: Tensor, upsample_size: list[int] | None
    ) -> Tensor:
        for i, resnet in enumerate(self.resnets):
            h = resnet(torch.cat([h, skips[-1 - i]], dim=1), temb)
        for up in self.upsamplers:
            h = up(h, upsample_size)
        return h

    def forward_edit(
        self,
        h: Tensor,
        skips: list[Tensor],
        temb: Tensor,
        context: Tensor,
        upsample_size: list[int] | None,
        ctl: EditControl,
    ) -> Tensor:
        return self.forward(h, skips, temb, context, upsample_size)  # no attention


class UNetMidBlock2DCrossAttn(nn.Module):
    """resnets[0], then (attentions[i], resnets[i + 1]) for each layer; resnets scale their output."""

    def __init__(
        self,
        channels: int,
        temb_channels: int,
        num_layers: int,
        transformer_layers: int,
        groups: int,
        eps: float,
        heads: int,
        cross_attention_dim: int,
        use_linear_projection: bool,
        output_scale_factor: float,
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                ResnetBlock2D(channels, channels, temb_channels, groups, eps, output_scale_factor)
                for _ in range(num_layers + 1)
            ]
        )
        self.attentions = nn.ModuleList(
            [
                Transformer2DModel(
                    heads,
                    channels // heads,
                    channels,
                    transformer_layers,
                    cross_attention_dim,
                    groups,
                    use_linear_projection,
                )
                for _ in range(num_layers)
            ]
        )

    def forward(self, h: Tensor, temb: Tensor, context: Tensor) -> Tensor:
        for i, resnet in enumerate(self.resnets):
            for j, attn in enumerate(self.attentions):
                if j + 1 == i:
                    h = attn(h, context)
            h = resnet(h, temb)
        return h

    def forward_edit(self, h: Tensor, temb: Tensor, context: Tensor, ctl: EditControl) -> Tensor:
        for i, resnet in enumerate(self.resnets):
            for j, attn in enumerate(self.attentions):
                if j + 1 == i:
                    h = attn.forward_edit(h, context, ctl)
            h = resnet(h, temb)
        return h


# VAE blocks (no time embedding).


class VAEAttention(nn.Module):
    """Single-head self-attention over H*W with its own GroupNorm and a residual (the VAE mid block's).

    Keys: group_norm, to_q, to_k, to_v (with biases), to_out.0.
    """

    def __init__(self, channels: int, groups: int, eps: float):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps, affine=True)
        self.to_q = Linear(channels, channels)
        self.to_k = Linear(channels, channels)
        self.to_v = Linear(channels, channels)
        self.to_out = nn.ModuleList([Linear(channels, channels)])

    def forward(self, x: Tensor) -> Tensor:
        b, c, height, width = x.shape
        h = self.group_norm(x).view(b, c, height * width).transpose(1, 2)
        q = self.to_q(h)
        k = self.to_k(h)
        v = self.to_v(h)
        h = F.scaled_dot_product_attention(q, k, v)
        h = self.to_out[0](h).transpose(1, 2).reshape(b, c, height, width)
        return h + x


class UNetMidBlock2D(nn.Module):
    """VAE mid block: resnets[0], then (attention if present, resnets[i + 1]) for each layer."""

    def __init__(self, channels: int, num_layers: int, groups: int, eps: float, add_attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(channels, channels, None, groups, eps) for _ in range(num_layers + 1)]
        )
        self.attentions = nn.ModuleList(
            [VAEAttention(channels, groups, eps) for _ in range(num_layers)] if add_attention else []
        )

    def forward(self, h: Tensor) -> Tensor:
        for i, resnet in enumerate(self.resnets):
            for j, attn in enumerate(self.attentions):
                if j + 1 == i:
                    h = attn(h)
            h = resnet(h, None)
        return h


class DownEncoderBlock2D(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        groups: int,
        eps: float,
        add_downsample: bool,
        downsample_padding: int,
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, None, groups, eps)
                for i in range(num_layers)
            ]
        )
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels, downsample_padding)] if add_downsample else [])

    def forward(self, h: Tensor) -> Tensor:
        for resnet in self.resnets:
            h = resnet(h, None)
        for down in self.downsamplers:
            h = down(h)
        return h


class UpDecoderBlock2D(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        groups: int,
        eps: float,
        add_upsample: bool,
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, None, groups, eps)
                for i in range(num_layers)
            ]
        )
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)] if add_upsample else [])

    def forward(self, h: Tensor) -> Tensor:
        for resnet in self.resnets:
            h = resnet(h, None)
        for up in self.upsamplers:
            h = up(h, None)
        return h
