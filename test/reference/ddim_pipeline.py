"""Reference for `blipdiff generate --scheduler ddim`: the fixture's `cfg` pipeline case run with DDIM.

An independent DDIM (eta 0) written from the DDIM update rule, driven by the exported TorchScript UNet and
VAE decoder, so it checks the runtime's scheduler choice and settings, not the modules. The DDIM is built
as a user swapping the scheduler would: from the model's own scheduler config (the pipeline ships a
PNDMScheduler config), with `clip_sample` false unless that config sets it (Stable Diffusion 1.5 and LAVIS
run DDIM with clip_sample false). `--clip-sample` forces the clamp of x0 to [-1, 1], to show that the
setting matters for these inputs.

Inputs are the fixture's goldens for the `cfg` case: the UNet's encoder states `pipe.cfg.text_embeddings`
([uncond; cond], built from the case's prompt, subject and negative prompt) and the initial latents
`pipe.latents` (what `--seed <latents_seed>` draws). Prints one JSON document on stdout:
{"timesteps", "shape" (N, H, W, C), "image_u8" (base64, NHWC), "latents" (final, flattened)}.

    python test/reference/ddim_pipeline.py --fixture <fixture dir> --model <exported model dir> [--steps N]
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "models"))
from blipdiff_export.module_files import load_module  # noqa: E402  (module files keep their weights beside them)


def first(value):
    return value[0] if isinstance(value, (tuple, list)) else value


def ddim_timesteps(config: dict, steps: int) -> list[int]:
    total = int(config.get("num_train_timesteps", 1000))
    spacing = config.get("timestep_spacing", "leading")
    if spacing != "leading":
        raise SystemExit(f"this reference implements leading spacing only, not {spacing}")
    ratio = total // steps
    offset = int(config.get("steps_offset", 0))
    return [i * ratio + offset for i in reversed(range(steps))]


def alphas_cumprod(config: dict) -> torch.Tensor:
    total = int(config.get("num_train_timesteps", 1000))
    if config.get("beta_schedule") != "scaled_linear":
        raise SystemExit("this reference implements the scaled_linear beta schedule only")
    start, end = float(config["beta_start"]), float(config["beta_end"])
    betas = torch.linspace(start**0.5, end**0.5, total, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixture", required=True, type=Path)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--steps", type=int, default=None, help="default: the cfg case's num_inference_steps")
    ap.add_argument("--clip-sample", action="store_true", help="clamp x0 to [-1, 1] (what clip_sample true does)")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.backends.nnpack.set_flags(False)  # else libtorch logs "Could not initialize NNPACK!" on some CPUs
    golden = json.loads((args.fixture / "golden.json").read_text().replace("-Infinity", "null").replace("NaN", "null"))
    kwargs = golden["cases"]["pipeline"]["cases"]["cfg"]["call_kwargs"]
    manifest = json.loads((args.model / "manifest.json").read_text().replace("-Infinity", "null"))
    config = manifest["scheduler"]
    clip = args.clip_sample or bool(config.get("clip_sample") or False)
    steps = args.steps or int(kwargs["num_inference_steps"])
    guidance = float(kwargs["guidance_scale"])

    tensors = load_file(str(args.fixture / "golden.safetensors"))
    states = tensors["pipe.cfg.text_embeddings"]
    x = tensors["pipe.latents"].clone()
    unet = load_module(args.model / manifest["modules"]["unet"]["file"], map_location="cpu").eval()
    decoder = load_module(args.model / manifest["modules"]["vae_decoder"]["file"], map_location="cpu").eval()

    ac = alphas_cumprod(config)
    final_alpha = torch.tensor(1.0) if config.get("set_alpha_to_one") else ac[0]
    ratio = int(config.get("num_train_timesteps", 1000)) // steps
    timesteps = ddim_timesteps(config, steps)
    with torch.inference_mode():
        for t in timesteps:
            eps = first(unet(torch.cat([x, x]), torch.tensor(t, dtype=torch.long), states, None, None))
            uncond, cond = eps.chunk(2)
            eps = uncond + guidance * (cond - uncond)
            a_t = ac[t]
            a_prev = ac[t - ratio] if t - ratio >= 0 else final_alpha
            x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
            if clip:
                x0 = x0.clamp(-1.0, 1.0)
            x = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps
        decoded = first(decoder(x / float(manifest["config"]["vae_scaling_factor"])))
    image = ((decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1) * 255).round().to(torch.uint8).contiguous()
    json.dump(
        {
            "timesteps": timesteps,
            "shape": list(image.shape),
            "image_u8": base64.b64encode(image.numpy().tobytes()).decode("ascii"),
            "latents": x.flatten().tolist(),
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
