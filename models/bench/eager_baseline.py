"""Eager-PyTorch baseline for the CPU benchmark (scripts/bench.mjs runs it in the same script as blipdiff).

Builds the same full-size modules the `--random-weights` export holds (same configs, same seed, so the same
weights) as plain eager nn.Modules and times the stages blipdiff reports: subject encoding, text encoding,
one UNet call (the CFG batch of 2), VAE decode, and a whole image (text, steps + 1 PNDM UNet calls with
guidance, decode). Prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from blipdiff_export.checkpoint import read_checkpoint
from blipdiff_export.export import CONFIGS_DIR, MODULES, RANDOM_SEED, module_class


def timed(fn, repeat: int, warmup: int) -> tuple[float, object]:
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), out


def plms_timesteps(n: int, offset: int) -> list[int]:
    ratio = 1000 // n
    base = [k * ratio + offset for k in range(n)]
    return list(reversed(base[:-1] + [base[-2], base[-1]]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--configs", type=Path, default=CONFIGS_DIR)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    ckpt = read_checkpoint(args.configs, with_controlnet=False)
    start = time.perf_counter()
    mods: dict[str, torch.nn.Module] = {}
    for spec in MODULES:
        if spec.component not in ckpt.configs:
            continue
        torch.manual_seed(RANDOM_SEED)  # as the exporter: identical random weights
        mods[spec.name] = module_class(spec)(ckpt.configs[spec.component]).eval()
    build_ms = (time.perf_counter() - start) * 1000

    cfg = ckpt.configs
    q = cfg["qformer"]["num_query_tokens"]
    size = ckpt.image_size
    f = 2 ** (len(cfg["unet"]["block_out_channels"]) - 1)
    c = cfg["unet"]["in_channels"]
    h, w = args.height // f, args.width // f
    scaling = cfg["vae"].get("scaling_factor", 0.18215)
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(1, 3, size, size, generator=g)
    qids = torch.tensor([[101, 3899, 102]])
    qmask = torch.ones_like(qids)
    cond_ids = torch.randint(0, 49406, (1, 77 - q), generator=g)
    uncond_ids = torch.full((1, 77), 49407)
    uncond_ids[0, 0] = 49406
    ctx_pos = ckpt.ctx_begin_pos
    latents = torch.randn(1, c, h, w, generator=g)

    res: dict[str, float] = {"build_ms": build_ms}
    with torch.inference_mode():
        res["encode_ms"], query = timed(lambda: mods["qformer"](pixels, qids, qmask), args.repeat, 1)

        def text():
            cond = mods["text_encoder"](cond_ids, query, ctx_pos)
            uncond = mods["text_encoder"](uncond_ids, None, ctx_pos)
            return torch.cat([uncond, cond])

        res["text_ms"], states = timed(text, args.repeat, 1)
        lat2 = torch.cat([latents, latents])
        t = torch.tensor(981, dtype=torch.int64)
        res["unet_step_ms"], _ = timed(lambda: mods["unet"](lat2, t, states, None, None), args.repeat, 1)
        res["vae_decode_ms"], _ = timed(lambda: mods["vae_decoder"](latents / scaling), args.repeat, 1)

        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
        ac = torch.cumprod(1.0 - betas, dim=0)

        def whole():
            s = text()
            x = latents.clone()
            ets: list[torch.Tensor] = []
            x0 = x
            ratio = 1000 // args.steps
            for i, ti in enumerate(plms_timesteps(args.steps, cfg["scheduler"].get("steps_offset", 0))):
                out = mods["unet"](torch.cat([x, x]), torch.tensor(ti), s, None, None)
                u, cnd = out.chunk(2)
                e = u + 7.5 * (cnd - u)
                if i == 1:
                    e, x, ti = (e + ets[-1]) / 2, x0, ti + ratio
                else:
                    ets.append(e)
                    if i == 0:
                        x0 = x
                    n = len(ets)
                    if n == 2:
                        e = (3 * ets[-1] - ets[-2]) / 2
                    elif n == 3:
                        e = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
                    elif n >= 4:
                        e = (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4]) / 24
                prev = ti - ratio
                a_t, a_p = ac[ti], (ac[prev] if prev >= 0 else ac[0])
                x = (a_p / a_t) ** 0.5 * x - (a_p - a_t) * e / (a_t * (1 - a_p) ** 0.5 + (a_t * (1 - a_t) * a_p) ** 0.5)
            img = mods["vae_decoder"](x / scaling)
            return (img / 2 + 0.5).clamp(0, 1)

        res["image_ms"], _ = timed(whole, 1, 1)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["threads"] = torch.get_num_threads()
    res["torch"] = torch.__version__
    json.dump(res, sys.stdout)
    print()


if __name__ == "__main__":
    main()
