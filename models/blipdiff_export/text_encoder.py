"""BLIP-Diffusion's context CLIP text encoder (diffusers' `ContextCLIPTextModel`) as a scriptable module.

A CLIP text transformer whose token embeddings can take the Q-Former's ctx embeddings spliced in at
`ctx_begin_pos` (fixtures README, "Prompt and text encoder", items 12-14). Parameter names are exactly the
checkpoint's (`text_model.*`), so it loads with `load_state_dict(strict=True)`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .errors import ExportError
from .layers import Linear, activation, check_heads, config_value, multi_head_attention, positive_float, positive_int


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, vocab_size: int, hidden: int, max_positions: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, hidden)
        self.position_embedding = nn.Embedding(max_positions, hidden)
        # Persistent because the reference saves it; always arange (weights.load_into fills it when absent).
        self.register_buffer("position_ids", torch.arange(max_positions).unsqueeze(0))

    def forward(self, input_ids: Tensor, ctx_embeddings: Tensor | None, ctx_begin_pos: int) -> Tensor:
        x = self.token_embedding(input_ids)
        if ctx_embeddings is not None:
            if ctx_begin_pos < 0 or ctx_begin_pos > x.size(1):
                raise ValueError(f"ctx_begin_pos {ctx_begin_pos} is outside the {x.size(1)} prompt tokens")
            ctx = ctx_embeddings.to(x.dtype)
            x = torch.cat([x[:, :ctx_begin_pos], ctx, x[:, ctx_begin_pos:]], dim=1)
        length = x.size(1)
        if length > self.position_ids.size(1):
            raise ValueError(
                f"text encoder input has {length} tokens (ctx included), more than its {self.position_ids.size(1)} positions"
            )
        # Positions are assigned after the splice: ctx token j sits at position ctx_begin_pos + j.
        return x + self.position_embedding(self.position_ids[:, :length])


class CLIPAttention(nn.Module):
    def __init__(self, hidden: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = Linear(hidden, hidden)
        self.k_proj = Linear(hidden, hidden)
        self.v_proj = Linear(hidden, hidden)
        self.out_proj = Linear(hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:
        # Plain causal mask over the whole sequence, ctx tokens included; no padding mask (reference behaviour).
        out = multi_head_attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.num_heads, None, True)
        return self.out_proj(out)


class CLIPMLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int, act: nn.Module):
        super().__init__()
        self.fc1 = Linear(hidden, intermediate)
        self.act = act
        self.fc2 = Linear(intermediate, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, hidden: int, num_heads: int, intermediate: int, eps: float, act: nn.Module):
        super().__init__()
        self.self_attn = CLIPAttention(hidden, num_heads)
        self.layer_norm1 = nn.LayerNorm(hidden, eps=eps)
        self.mlp = CLIPMLP(hidden, intermediate, act)
        self.layer_norm2 = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, layers: nn.ModuleList):
        super().__init__()
        self.layers = layers

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class ContextCLIPTextTransformer(nn.Module):
    def __init__(self, config: dict[str, Any]):
        super().__init__()
        hidden = positive_int(config, "hidden_size", 512, "")
        num_heads = positive_int(config, "num_attention_heads", 8, "")
        check_heads(hidden, num_heads, "")
        intermediate = positive_int(config, "intermediate_size", 2048, "")
        num_layers = positive_int(config, "num_hidden_layers", 12, "")
        vocab_size = positive_int(config, "vocab_size", 49408, "")
        max_positions = positive_int(config, "max_position_embeddings", 77, "")
        eps = positive_float(config, "layer_norm_eps", 1e-5, "")
        act_name = config_value(config, "hidden_act", "quick_gelu")

        self.embeddings = CLIPTextEmbeddings(vocab_size, hidden, max_positions)
        self.encoder = CLIPEncoder(
            nn.ModuleList(
                [
                    CLIPEncoderLayer(hidden, num_heads, intermediate, eps, activation(act_name, "hidden_act"))
                    for _ in range(num_layers)
                ]
            )
        )
        self.final_layer_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, input_ids: Tensor, ctx_embeddings: Tensor | None, ctx_begin_pos: int) -> Tensor:
        return self.final_layer_norm(self.encoder(self.embeddings(input_ids, ctx_embeddings, ctx_begin_pos)))


class ContextCLIPTextEncoder(nn.Module):
    """CLIP ids (+ optional ctx embeddings) -> last_hidden_state, the UNet's encoder_hidden_states.

    `config` is the parsed `text_encoder/config.json` (a CLIPTextConfig dict); missing entries take
    transformers' CLIPTextConfig defaults. The pooled output and projection are not computed: the
    pipeline uses only the last hidden state.
    """

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        if not isinstance(config, dict):
            raise ExportError("unsupported text_encoder config: expected a JSON object")
        self.text_model = ContextCLIPTextTransformer(config)

    def forward(self, input_ids: Tensor, ctx_embeddings: Tensor | None, ctx_begin_pos: int) -> Tensor:
        """[B, L] ids and [B, Q, D] ctx (or None) -> [B, L + Q, D]; L + Q must not exceed max_position_embeddings.

        The ctx embeddings are inserted before token `ctx_begin_pos`; `ctx_begin_pos` is ignored without ctx.
        """
        return self.text_model(input_ids, ctx_embeddings, ctx_begin_pos)
