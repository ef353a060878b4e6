"""Writes a diffusers-layout BLIP-Diffusion checkpoint that holds the weights of `convert --random-weights`.

`blipdiff convert --random-weights` builds every module from configs (the shipped full-size ones, or a
checkpoint's) under `torch.manual_seed(RANDOM_SEED)` and writes only TorchScript files, so diffusers' own
pipeline has nothing to load. This builds the same modules the same way (the exporter's own classes and
seeding, as export.py's `_export_modules` does) and saves their state dicts, whose names are the checkpoint's
(the exporter loads checkpoints strictly by those names), in the published layout:

  model_index.json, {qformer,text_encoder}/config.json + model.safetensors,
  {unet,vae}/config.json + diffusion_pytorch_model.safetensors, scheduler/, image_processor/,
  tokenizer/ (copied from --tokenizer-dir), qformer_tokenizer/ (copied from --qformer-tokenizer-dir),
  blipdiff_random_weights.json (seed, exporter version and configs, for scripts/bench-vs-diffusers.mjs).

So `blipdiff convert OUT` exports exactly the weights of `blipdiff convert --random-weights` of the same
configs (models/tests/test_random_diffusers_ckpt.py checks this), and diffusers and blipdiff compute with the
same weights. The ControlNet is left out (BlipDiffusionPipeline does not use it). Full size, beside the
lead's `.bench/full` export (about 6.2 GB of disk; one module in memory at a time, about 7 GB peak for the UNet):

  PYTHONPATH=models .venv/bin/python models/bench/random_diffusers_ckpt.py --out .bench/full-diffusers \
      --tokenizer-dir ../shared/fixtures/tiny-a/ckpt/tokenizer \
      --qformer-tokenizer-dir ../shared/fixtures/tiny-a/ckpt/qformer_tokenizer
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from blipdiff_export.checkpoint import COMPONENTS, TOKENIZER_FILES, read_checkpoint
from blipdiff_export.errors import ExportError
from blipdiff_export.export import CONFIGS_DIR, EXPORTER_VERSION, MODULES, PUBLISHED_ID, RANDOM_SEED, module_class
from safetensors.torch import save_file

MARKER = "blipdiff_random_weights.json"
WEIGHT_FILE = {  # the names transformers / diffusers save_pretrained use
    "qformer": "model.safetensors",
    "text_encoder": "model.safetensors",
    "unet": "diffusion_pytorch_model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
}


def random_state(ckpt, component: str) -> dict[str, torch.Tensor]:
    """The state dict of every exported module of `component`, built exactly as the exporter builds it."""
    state: dict[str, torch.Tensor] = {}
    for spec in MODULES:
        if spec.component != component:
            continue
        torch.manual_seed(RANDOM_SEED)  # export.py: a fixed seed per module, independent of module order
        module = module_class(spec)(ckpt.configs[component]).eval()
        part = module.state_dict()
        if spec.prefixes:
            part = {k: v for k, v in part.items() if k.startswith(spec.prefixes)}
        overlap = sorted(set(part) & set(state))
        if overlap:
            raise ExportError(f"{component}: modules share weight names ({', '.join(overlap[:5])})")
        state.update(part)
    return {k: v.contiguous() for k, v in state.items()}


def copy_files(src: Path, dst: Path, names: tuple[str, ...], what: str) -> list[str]:
    present = [n for n in names if (src / n).is_file()]
    if not present:
        raise ExportError(f"{what} {src} holds none of {', '.join(names)}")
    dst.mkdir(parents=True, exist_ok=True)
    for n in present:
        shutil.copyfile(src / n, dst / n)
    return present


def write(configs: Path, out: Path, tokenizer_dir: Path, qformer_tokenizer_dir: Path, force: bool) -> Path:
    if out.exists() and any(out.iterdir()):
        if not force:
            raise ExportError(f"--out {out} exists and is not empty; pass --force to replace it")
        shutil.rmtree(out)
    configs = configs.resolve()  # read_checkpoint checks files against an absolute folder
    ckpt = read_checkpoint(configs, with_controlnet=False)
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        shutil.copyfile(configs / "model_index.json", staging / "model_index.json")
        for component in ("qformer", "text_encoder", "unet", "vae", "scheduler", "image_processor"):
            src = configs / component / COMPONENTS[component][2]
            if not src.is_file():
                continue
            (staging / component).mkdir()
            shutil.copyfile(src, staging / component / src.name)
            if component in WEIGHT_FILE:
                start = time.perf_counter()
                state = random_state(ckpt, component)
                save_file(state, str(staging / component / WEIGHT_FILE[component]), metadata={"format": "pt"})
                size = sum(v.numel() * v.element_size() for v in state.values())
                del state
                gc.collect()
                print(f"{component}: {time.perf_counter() - start:.1f} s, {size / 1e6:.1f} MB", file=sys.stderr)
        copy_files(tokenizer_dir, staging / "tokenizer", TOKENIZER_FILES["tokenizer"], "--tokenizer-dir")
        copy_files(
            qformer_tokenizer_dir,
            staging / "qformer_tokenizer",
            TOKENIZER_FILES["qformer_tokenizer"],
            "--qformer-tokenizer-dir",
        )
        marker = {
            "random_weights": True,
            "random_seed": RANDOM_SEED,
            "exporter_version": EXPORTER_VERSION,
            # what `convert --random-weights` records as source.checkpoint for these configs
            "checkpoint": PUBLISHED_ID
            if configs.resolve() == CONFIGS_DIR.resolve()
            else "/".join(configs.resolve().parts[-2:]),
            "torch_version": str(torch.__version__),
        }
        (staging / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    p.add_argument(
        "--configs",
        type=Path,
        default=CONFIGS_DIR,
        help="checkpoint folder whose configs to use (default: the shipped full-size configs, as "
        "`convert --random-weights` without a checkpoint)",
    )
    p.add_argument("--tokenizer-dir", type=Path, required=True, help="CLIP tokenizer folder to copy")
    p.add_argument(
        "--qformer-tokenizer-dir", type=Path, required=True, help="Q-Former tokenizer folder (vocab.txt ...) to copy"
    )
    p.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    args = p.parse_args(argv)
    try:
        out = write(args.configs, args.out.absolute(), args.tokenizer_dir, args.qformer_tokenizer_dir, args.force)
    except (ExportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
