"""BLIP-Diffusion's subject encoder: vision tower + Q-Former + projection, as one scriptable module.

Parameter names are exactly those of diffusers' `Blip2QFormerModel` checkpoints (`qformer/` folder), so a
checkpoint loads with `load_state_dict(strict=True)`. The math is that of the reference (fixtures README,
"Q-Former", items 5-9); dropout is omitted because the module is only ever used for inference.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .errors import ExportError
from .layers import (
    Linear,
    activation,
    check_heads,
    config_value,
    multi_head_attention,
    positive_float,
    positive_int,
)

# The reference (transformers-4 `get_extended_attention_mask`) adds this to the scores of padded text
# tokens. It is representable in float16 and bfloat16, and no row is fully masked (the queries are
# always visible), so it behaves like -inf in every dtype.
PADDING_MASK_VALUE = -10000.0

# ProjLayer's LayerNorm eps and hidden width (x hidden_size) are fixed in diffusers' code, not in config.json.
PROJ_LAYER_NORM_EPS = 1e-12
PROJ_HIDDEN_MULT = 4


# ---------------------------------------------------------------------------------------------------------
# Vision tower (visual_encoder.*): BLIP-2 ViT, pre-LN, fused qkv.


class VisionEmbeddings(nn.Module):
    def __init__(self, hidden: int, image_size: int, patch_size: int):
        super().__init__()
        num_positions = (image_size // patch_size) ** 2 + 1  # class token + patches
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, hidden))
        self.patch_embedding = nn.Conv2d(3, hidden, kernel_size=patch_size, stride=patch_size, bias=False)
        self.position_embedding = nn.Parameter(torch.zeros(1, num_positions, hidden))

    def forward(self, pixel_values: Tensor) -> Tensor:
        weight = self.patch_embedding.weight
        patches = self.patch_embedding(pixel_values.to(weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(patches.size(0), 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding


class VisionAttention(nn.Module):
    def __init__(self, hidden: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        # Rows are [q; k; v]; the bias (when present) covers all three, k included.
        self.qkv = Linear(hidden, 3 * hidden, bias=qkv_bias)
        self.projection = Linear(hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.projection(multi_head_attention(q, k, v, self.num_heads, None, False))


class VisionMLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int, act: nn.Module):
        super().__init__()
        self.fc1 = Linear(hidden, intermediate)
        self.act = act
        self.fc2 = Linear(intermediate, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisionLayer(nn.Module):
    def __init__(self, hidden: int, num_heads: int, intermediate: int, eps: float, qkv_bias: bool, act: nn.Module):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(hidden, eps=eps)
        self.self_attn = VisionAttention(hidden, num_heads, qkv_bias)
        self.layer_norm2 = nn.LayerNorm(hidden, eps=eps)
        self.mlp = VisionMLP(hidden, intermediate, act)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class VisionEncoder(nn.Module):
    def __init__(self, layers: nn.ModuleList):
        super().__init__()
        self.layers = layers

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, config: dict[str, Any]):
        super().__init__()
        where = "vision_config."
        hidden = positive_int(config, "hidden_size", 1408, where)
        num_heads = positive_int(config, "num_attention_heads", 16, where)
        check_heads(hidden, num_heads, where)
        intermediate = positive_int(config, "intermediate_size", 6144, where)
        num_layers = positive_int(config, "num_hidden_layers", 39, where)
        image_size = positive_int(config, "image_size", 224, where)
        patch_size = positive_int(config, "patch_size", 14, where)
        if patch_size > image_size:
            raise ExportError(f"unsupported {where}patch_size {patch_size}: larger than image_size {image_size}")
        eps = positive_float(config, "layer_norm_eps", 1e-6, where)
        qkv_bias = bool(config_value(config, "qkv_bias", True))
        act_name = config_value(config, "hidden_act", "gelu")

        self.embeddings = VisionEmbeddings(hidden, image_size, patch_size)
        self.pre_layernorm = nn.LayerNorm(hidden, eps=eps)
        self.encoder = VisionEncoder(
            nn.ModuleList(
                [
                    VisionLayer(
                        hidden, num_heads, intermediate, eps, qkv_bias, activation(act_name, where + "hidden_act")
                    )
                    for _ in range(num_layers)
                ]
            )
        )
        self.post_layernorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, pixel_values: Tensor) -> Tensor:
        x = self.pre_layernorm(self.embeddings(pixel_values))
        # post_layernorm covers every token, class token included: all are cross-attention keys/values.
        return self.post_layernorm(self.encoder(x))


# ---------------------------------------------------------------------------------------------------------
# Q-Former (embeddings.*, encoder.layer.*): BERT-style post-LN layers, queries and text in one sequence.


class QFormerEmbeddings(nn.Module):
    def __init__(self, vocab_size: int, hidden: int, max_positions: int, eps: float):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        # Persistent because the reference saves it; always arange (weights.load_into fills it when absent).
        self.register_buffer("position_ids", torch.arange(max_positions).unsqueeze(0))

    def forward(self, input_ids: Tensor, query_tokens: Tensor) -> Tensor:
        length = input_ids.size(1)
        if length > self.position_ids.size(1):
            raise ValueError(f"Q-Former text has {length} tokens, more than its {self.position_ids.size(1)} positions")
        # Positions 0..T-1 go to the text only; the query tokens carry no position embedding.
        text = self.word_embeddings(input_ids) + self.position_embeddings(self.position_ids[:, :length])
        queries = query_tokens.expand(input_ids.size(0), -1, -1)
        return self.LayerNorm(torch.cat([queries, text], dim=1))


class QFormerMultiHeadAttention(nn.Module):
    """Projections named as BERT's (`query`, `key`, `value`); key/value read `kv_dim`-wide states."""

    def __init__(self, hidden: int, kv_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.query = Linear(hidden, hidden)
        self.key = Linear(kv_dim, hidden)
        self.value = Linear(kv_dim, hidden)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
        return multi_head_attention(self.query(x), self.key(context), self.value(context), self.num_heads, mask, False)


class AddNorm(nn.Module):
    """BERT's post-LN output: LayerNorm(dense(x) + residual)."""

    def __init__(self, in_dim: int, hidden: int, eps: float):
        super().__init__()
        self.dense = Linear(in_dim, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class QFormerAttention(nn.Module):
    def __init__(self, hidden: int, kv_dim: int, num_heads: int, eps: float):
        super().__init__()
        self.attention = QFormerMultiHeadAttention(hidden, kv_dim, num_heads)
        self.output = AddNorm(hidden, hidden, eps)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
        return self.output(self.attention(x, context, mask), x)


class Intermediate(nn.Module):
    def __init__(self, hidden: int, intermediate: int, act: nn.Module):
        super().__init__()
        self.dense = Linear(hidden, intermediate)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.dense(x))


class QFormerLayer(nn.Module):
    def __init__(
        self,
        hidden: int,
        num_heads: int,
        intermediate: int,
        eps: float,
        act_name: str,
        encoder_hidden: int,
        has_cross_attention: bool,
    ):
        super().__init__()
        self.attention = QFormerAttention(hidden, hidden, num_heads, eps)
        # Absent (no parameters at all) in layers with i % cross_attention_frequency != 0.
        self.crossattention = QFormerAttention(hidden, encoder_hidden, num_heads, eps) if has_cross_attention else None
        # Separate feed-forward blocks for text tokens (intermediate/output) and queries (*_query).
        self.intermediate = Intermediate(hidden, intermediate, activation(act_name, "qformer_config.hidden_act"))
        self.intermediate_query = Intermediate(hidden, intermediate, activation(act_name, "qformer_config.hidden_act"))
        self.output_query = AddNorm(intermediate, hidden, eps)
        self.output = AddNorm(intermediate, hidden, eps)

    def forward(self, x: Tensor, mask: Tensor, image_embeds: Tensor, num_queries: int) -> Tensor:
        # Self-attention is bidirectional over [queries; text]; only padded text is masked.
        attended = self.attention(x, x, mask)
        queries = attended[:, :num_queries]
        crossattention = self.crossattention
        if crossattention is not None:
            # Image tokens are never padded: the reference's encoder mask is all zeros, so none is applied.
            queries = crossattention(queries, image_embeds, None)
        out = self.output_query(self.intermediate_query(queries), queries)
        if attended.size(1) > num_queries:
            text = attended[:, num_queries:]
            out = torch.cat([out, self.output(self.intermediate(text), text)], dim=1)
        return out


class QFormerEncoder(nn.Module):
    def __init__(self, layers: nn.ModuleList):
        super().__init__()
        self.layer = layers

    def forward(self, x: Tensor, mask: Tensor, image_embeds: Tensor, num_queries: int) -> Tensor:
        for layer in self.layer:
            x = layer(x, mask, image_embeds, num_queries)
        return x


class ProjLayer(nn.Module):
    """x + dense2(quick_gelu(dense1(LayerNorm(x)))): the residual adds the input from before the LayerNorm."""

    def __init__(self, hidden: int):
        super().__init__()
        self.LayerNorm = nn.LayerNorm(hidden, eps=PROJ_LAYER_NORM_EPS)
        self.dense1 = Linear(hidden, hidden * PROJ_HIDDEN_MULT)
        self.act = activation("quick_gelu", "proj_layer activation")
        self.dense2 = Linear(hidden * PROJ_HIDDEN_MULT, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.dense2(self.act(self.dense1(self.LayerNorm(x))))


# ---------------------------------------------------------------------------------------------------------


def max_text_length(config: dict[str, Any]) -> int:
    """The longest subject text the Q-Former takes, in WordPiece ids with [CLS] and [SEP]: its position table size.

    Text positions are numbered 0..T-1 (the query tokens get none), so T <= max_position_embeddings.
    """
    qformer = config_value(config, "qformer_config", {})
    if not isinstance(qformer, dict):
        raise ExportError("unsupported qformer config: vision_config and qformer_config must be objects")
    return positive_int(qformer, "max_position_embeddings", 512, "qformer_config.")


class QFormerModel(nn.Module):
    """Reference image + subject-text ids -> the `num_query_tokens` ctx embeddings spliced into the CLIP prompt.

    `config` is the parsed `qformer/config.json` (a Blip2Config dict). Only `vision_config`, `qformer_config`
    and `num_query_tokens` are read; missing entries take transformers' Blip2*Config defaults. As in
    Blip2Config, the cross-attention key/value width is the vision tower's hidden_size (transformers
    overrides `qformer_config.encoder_hidden_size` with it).
    """

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        vision = config_value(config, "vision_config", {})
        qformer = config_value(config, "qformer_config", {})
        if not isinstance(vision, dict) or not isinstance(qformer, dict):
            raise ExportError("unsupported qformer config: vision_config and qformer_config must be objects")
        where = "qformer_config."
        position_type = config_value(qformer, "position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ExportError(
                f"unsupported {where}position_embedding_type {position_type!r}: only 'absolute' is implemented"
            )
        hidden = positive_int(qformer, "hidden_size", 768, where)
        num_heads = positive_int(qformer, "num_attention_heads", 12, where)
        check_heads(hidden, num_heads, where)
        intermediate = positive_int(qformer, "intermediate_size", 3072, where)
        num_layers = positive_int(qformer, "num_hidden_layers", 12, where)
        vocab_size = positive_int(qformer, "vocab_size", 30522, where)
        max_positions = max_text_length(config)
        eps = positive_float(qformer, "layer_norm_eps", 1e-12, where)
        frequency = positive_int(qformer, "cross_attention_frequency", 2, where)
        act_name = config_value(qformer, "hidden_act", "gelu")
        num_queries = positive_int(config, "num_query_tokens", 32, "")

        self.visual_encoder = VisionTransformer(vision)
        encoder_hidden = self.visual_encoder.pre_layernorm.normalized_shape[0]
        self.embeddings = QFormerEmbeddings(vocab_size, hidden, max_positions, eps)
        self.encoder = QFormerEncoder(
            nn.ModuleList(
                [
                    QFormerLayer(hidden, num_heads, intermediate, eps, act_name, encoder_hidden, i % frequency == 0)
                    for i in range(num_layers)
                ]
            )
        )
        self.query_tokens = nn.Parameter(torch.zeros(1, num_queries, hidden))
        self.proj_layer = ProjLayer(hidden)
        self.num_query_tokens = num_queries
        self.padding_mask_value = PADDING_MASK_VALUE

    @torch.jit.export
    def image_embeds(self, pixel_values: Tensor) -> Tensor:
        """Vision tower output after post_layernorm: [B, 1 + (image/patch)^2, vision hidden]."""
        return self.visual_encoder(pixel_values)

    @torch.jit.export
    def last_hidden_state(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Q-Former output for [queries; text] before the projection: [B, num_query_tokens + T, hidden].

        `input_ids` / `attention_mask` are the subject text's WordPiece ids and 0/1 padding mask, [B, T].
        """
        image_embeds = self.visual_encoder(pixel_values)
        x = self.embeddings(input_ids, self.query_tokens)
        batch = x.size(0)
        query_mask = torch.ones(batch, self.num_query_tokens, dtype=x.dtype, device=x.device)
        keep = torch.cat([query_mask, attention_mask.to(x.dtype)], dim=1)
        mask = ((1.0 - keep) * self.padding_mask_value)[:, None, None, :]
        return self.encoder(x, mask, image_embeds.to(x.dtype), self.num_query_tokens)

    def forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Projected query embeddings [B, num_query_tokens, hidden]: the ctx tokens for the text encoder."""
        hidden = self.last_hidden_state(pixel_values, input_ids, attention_mask)
        return self.proj_layer(hidden[:, : self.num_query_tokens])
