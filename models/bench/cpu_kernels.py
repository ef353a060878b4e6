"""Which CPU kernels the full-size UNet's time goes to, and two ways to change them (issue #9, docs/benchmarks.md).

1. The linear layers' shapes of a 256x256 CFG call, as ATen's float32 GEMM (F.linear) and as oneDNN's matmul
   (`mkldnn::_linear_pointwise`, what exporter 0.4.0's Linear runs on the CPU): milliseconds per product.
2. One full-size UNet call (eager, the exporter's modules with the `--random-weights` weights, channels-last
   convolution weights as the runtime keeps them), alternating, in one process:
   - linear layers through ATen or oneDNN (the Linear's `cpu_onednn` switch);
   - convolutions with their weights reordered into oneDNN's blocked layout on every call (F.conv2d), or
     prepacked once (`mkldnn_reorder_conv2d_weight` + `mkldnn::_convolution_pointwise`, as inductor does).

    PYTHONPATH=models .venv/bin/python models/bench/cpu_kernels.py [--rounds 3] [--threads 2]

Run it on a quiet machine with the allocator settings blipdiff uses (the numbers in docs/benchmarks.md had
MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824 MALLOC_TOP_PAD_=67108864 THP_MEM_ALLOC_ENABLE=1).
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from blipdiff_export.checkpoint import read_checkpoint
from blipdiff_export.export import CONFIGS_DIR, MODULES, build_module
from blipdiff_export.layers import Linear
from torch import nn

# (tokens, in, out) of the UNet's linear layers at 256x256 with CFG (batch 2): 32x32, 16x16, 8x8 latents and the
# 77 text tokens of the cross-attention keys and values.
GEMM_SHAPES = [
    (2048, 320, 320),
    (2048, 320, 2560),
    (2048, 1280, 320),
    (512, 640, 5120),
    (128, 1280, 1280),
    (128, 1280, 10240),
    (154, 768, 1280),
]


def best_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return min(times)


def gemms(repeat: int) -> list[dict]:
    out = []
    g = torch.Generator().manual_seed(0)
    for m, k, n in GEMM_SHAPES:
        x, w, b = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)
        aten = best_ms(lambda x=x, w=w, b=b: F.linear(x, w, b), repeat)
        onednn = best_ms(lambda x=x, w=w, b=b: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], ""), repeat)
        diff = (F.linear(x, w, b) - torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")).abs().max().item()
        out.append({"m": m, "k": k, "n": n, "aten_ms": aten, "onednn_ms": onednn, "max_abs_diff": diff})
    return out


class PrepackedConv:
    """Swaps a Conv2d's forward for oneDNN's convolution on a weight reordered once into the kernel's layout."""

    def __init__(self, conv: nn.Conv2d):
        self.conv = conv
        self.packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
            conv.weight.detach().to_mkldnn(),
            list(conv.padding),
            list(conv.stride),
            list(conv.dilation),
            conv.groups,
            [1, conv.in_channels, 64, 64],  # any input size: it selects the channels-last format
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.packed, c.bias, list(c.padding), list(c.stride), list(c.dilation), c.groups, "none", [], ""
        )


def unet_calls(rounds: int) -> dict:
    ckpt = read_checkpoint(CONFIGS_DIR, with_controlnet=False)
    spec = next(s for s in MODULES if s.name == "unet")
    unet, _ = build_module(spec, ckpt, random_weights=True, cache={})
    with torch.no_grad():
        for p in unet.parameters():
            if p.dim() == 4:
                p.data = p.data.contiguous(memory_format=torch.channels_last)
    linears = [m for m in unet.modules() if isinstance(m, Linear)]
    convs = [m for m in unet.modules() if isinstance(m, nn.Conv2d)]
    packed = {id(c): PrepackedConv(c) for c in convs}
    c = ckpt.configs["unet"]["in_channels"]
    g = torch.Generator().manual_seed(0)
    latents, states = torch.randn(2, c, 32, 32, generator=g), torch.randn(2, 77, 768, generator=g)
    t = torch.tensor(981)

    def configure(onednn: bool, prepack: bool) -> None:
        for m in linears:
            m.cpu_onednn = onednn
        for conv in convs:
            if prepack:
                conv.forward = packed[id(conv)]
            else:
                conv.__dict__.pop("forward", None)

    variants = {
        "aten linear": (False, False),
        "onednn linear": (True, False),
        "onednn linear + prepacked conv": (True, True),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    outputs: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, (onednn, prepack) in variants.items():
                configure(onednn, prepack)
                outputs[name] = unet(latents, t, states, None, None)  # not timed: the variant's first call
                start = time.perf_counter()
                unet(latents, t, states, None, None)
                times[name].append((time.perf_counter() - start) * 1000)
    ref = outputs["aten linear"]
    return {
        name: {
            "ms": [round(x, 1) for x in ts],
            "median_ms": round(statistics.median(ts), 1),
            "max_abs_diff_vs_aten": (outputs[name] - ref).abs().max().item(),
        }
        for name, ts in times.items()
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    res = {"threads": args.threads, "gemm": gemms(args.repeat), "unet_call": unet_calls(args.rounds)}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
