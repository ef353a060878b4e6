"""Building blocks shared by the Q-Former and the context CLIP text encoder.

Everything here is TorchScript-scriptable and dtype-agnostic: nothing creates a float32 tensor, so
modules converted with `.half()` / `.to(torch.bfloat16)` run in that dtype end to end.
"""

from __future__ import annotations

from typing import Any, List, Optional, Union  # noqa: UP035 (TorchScript resolves these names)

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ExportError

# transformers' ACT2FN names this exporter implements; anything else is refused at build time.
SUPPORTED_ACTIVATIONS = ("gelu", "quick_gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish")


class Linear(nn.Linear):
    """nn.Linear (the same parameters, names and math) that the runtime can route through oneDNN's matmul.

    With `cpu_onednn` set (the runtime sets it on CPU float32 modules at load) and gradients off, the product
    runs as `mkldnn::_linear_pointwise` on the dense weight; otherwise, and always while training, as
    F.linear. On CPUs where ATen's fp32 GEMM (MKL) takes a slow path, such as AMD's, oneDNN's is 2-3x faster
    (docs/benchmarks.md). Both compute the same float32 product; only the summation order differs.
    Exported with the switch off, the module computes exactly what nn.Linear does.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.cpu_onednn = False

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 (nn.Linear's parameter name)
        return linear(input, self.weight, self.bias, self.cpu_onednn)


def linear(input: Tensor, weight: Tensor, bias: Optional[Tensor], cpu_onednn: bool) -> Tensor:  # noqa: A002, UP045
    """F.linear, through oneDNN's matmul when `cpu_onednn` is set and gradients are off (see Linear)."""
    if cpu_onednn and not torch.is_grad_enabled():
        no_scalars = torch.jit.annotate(List[Optional[Union[int, float, complex]]], [])  # noqa: UP006, UP007, UP045
        return torch.ops.mkldnn._linear_pointwise(input, weight, bias, "none", no_scalars, "")
    return F.linear(input, weight, bias)


class QuickGELU(nn.Module):
    """`x * sigmoid(1.702 x)` (CLIP's activation; transformers' "quick_gelu")."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def activation(name: Any, key: str) -> nn.Module:
    """The parameter-free module for transformers' activation `name`; `key` names the config entry in errors."""
    if name == "gelu":
        return nn.GELU()  # exact (erf) GELU
    if name == "quick_gelu":
        return QuickGELU()
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return nn.GELU(approximate="tanh")
    if name == "relu":
        return nn.ReLU()
    if name in ("silu", "swish"):
        return nn.SiLU()
    raise ExportError(f"unsupported {key} {name!r}: expected one of {', '.join(SUPPORTED_ACTIVATIONS)}")


def config_value(config: dict[str, Any], key: str, default: Any) -> Any:
    """`config[key]`, or `default` where the key is missing or null (transformers fills its defaults the same way)."""
    value = config.get(key)
    return default if value is None else value


def positive_int(config: dict[str, Any], key: str, default: int, where: str) -> int:
    """A config entry that must be a positive integer; `where` prefixes the key in errors (e.g. "vision_config.")."""
    value = config_value(config, key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ExportError(f"unsupported {where}{key} {value!r}: expected a positive integer")
    return value


def positive_float(config: dict[str, Any], key: str, default: float, where: str) -> float:
    value = config_value(config, key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ExportError(f"unsupported {where}{key} {value!r}: expected a positive number")
    return float(value)


def check_heads(hidden_size: int, num_heads: int, where: str) -> None:
    if hidden_size % num_heads != 0:
        raise ExportError(
            f"unsupported {where}num_attention_heads {num_heads}: hidden_size {hidden_size} is not a multiple of it"
        )


def multi_head_attention(q: Tensor, k: Tensor, v: Tensor, num_heads: int, mask: Tensor | None, causal: bool) -> Tensor:
    """softmax(q k^T / sqrt(head_dim) + mask) v per head, for [B, L, D] projections; returns [B, Lq, D].

    Heads are contiguous slices of D (head h owns channels h*head_dim ... (h+1)*head_dim - 1), as in
    every transformers attention. `mask` is additive and broadcastable to [B, heads, Lq, Lk], in q's dtype.
    """
    batch = q.size(0)
    lq = q.size(1)
    lk = k.size(1)
    dim = q.size(2)
    head_dim = dim // num_heads
    q = q.reshape(batch, lq, num_heads, head_dim).transpose(1, 2)
    k = k.reshape(batch, lk, num_heads, head_dim).transpose(1, 2)
    v = v.reshape(batch, lk, num_heads, head_dim).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    return out.transpose(1, 2).reshape(batch, lq, dim)
