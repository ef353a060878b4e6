"""Eager-PyTorch baseline of blipdiff's fine-tuning step (scripts/bench-finetune.mjs runs it beside blipdiff).

Builds the exporter's own modules from a diffusers checkpoint folder as plain eager nn.Modules (not scripted),
as models/bench/eager_baseline.py does for generation, and runs the recipe of issue #7 / the fixtures README
("Fine-tuning goldens"; finetune.json `spec`) step by step:

  VAE posterior sample (no grad) -> DDPM add_noise at the step's timesteps -> text encoder on the unpadded
  caption with the trainable subject embedding spliced in -> UNet epsilon MSE -> backward -> AdamW with
  LAVIS's decay groups.

Modes: `full` trains the whole UNet and the embedding; `lora` wraps every attention to_q/to_k/to_v/to_out.0 of
the UNet as y = W x + b + (alpha / r) B (A x) (A kaiming-uniform, B zero, alpha = r) and trains A, B and the
embedding with the base UNet frozen. Prints one JSON document on stdout (per-step seconds, the first step
apart, the median of the others, peak RSS, parameters trained).

Full size, the weights of the `--random-weights` export (same configs, same seed):
  PYTHONPATH=models .venv/bin/python models/bench/eager_finetune.py --random-weights \
      --tokenizer-dir ../shared/fixtures/tiny-a/ckpt/tokenizer --mode lora --resolution 256 --batch 1
Replaying the fixture's draws (tests/test_eager_finetune.py checks the losses against the goldens):
  PYTHONPATH=models .venv/bin/python models/bench/eager_finetune.py --ckpt ../shared/fixtures/tiny-a/ckpt \
      --fixture ../shared/fixtures/tiny-a/finetune.safetensors --mode full --lr 1e-3 --weight-decay 1.0
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from blipdiff_export.checkpoint import Checkpoint, read_checkpoint
from blipdiff_export.export import CONFIGS_DIR, MODULES, build_module
from blipdiff_export.unet_blocks import Attention
from torch import Tensor, nn

# The allocator settings blipdiff's runtime applies (native/src/core/model.cc mallopt; cpu_allocator.cc huge
# pages), as the environment variables that mean the same to glibc and to c10's CPU allocator. They are read
# at process start, so the script re-executes itself with them (see `apply_allocator`).
MALLOC_TUNED = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30), "MALLOC_TOP_PAD_": str(64 << 20)}
THP = {"THP_MEM_ALLOC_ENABLE": "1"}  # c10: madvise(MADV_HUGEPAGE) on allocations of 2 MiB and more
ALLOCATORS = {
    "tuned": {**MALLOC_TUNED, **THP},  # blipdiff's defaults
    "tuned-nothp": MALLOC_TUNED,  # what scripts/bench.mjs gives eager_baseline.py
    "glibc": {},  # glibc's and c10's defaults (blipdiff with BLIPDIFF_MALLOC_TUNING=0)
}
REEXEC_MARK = "BLIPDIFF_EAGER_FT_ALLOCATOR"

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
NO_DECAY = ("bias", "ln", "bn")  # LAVIS base_model.get_optimizer_params
STEP_MODULES = ("text_encoder", "unet", "vae_encoder")
PIPELINE_MODULES = (*STEP_MODULES, "qformer", "vae_decoder")  # what a loaded BlipDiffusionPipeline holds


def apply_allocator(choice: str) -> None:
    """Re-executes this script with `choice`'s allocator environment unless it is already in effect."""
    if choice == "inherit" or os.environ.get(REEXEC_MARK) == choice:
        return
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_TUNED and k not in THP}
    env.update(ALLOCATORS[choice])
    env[REEXEC_MARK] = choice
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


# ------------------------------------------------------------------------------------------------ modules


def build_modules(ckpt: Checkpoint, names: tuple[str, ...], random_weights: bool) -> dict[str, nn.Module]:
    """Eager modules with the checkpoint's weights, or the exporter's seeded random weights (the same as a
    `--random-weights` export of the same configs)."""
    mods: dict[str, nn.Module] = {}
    cache: dict[str, dict[str, Tensor]] = {}
    for spec in MODULES:
        if spec.name not in names:
            continue
        module, _ = build_module(spec, ckpt, random_weights, cache)
        for p in module.parameters():
            p.requires_grad_(False)
        mods[spec.name] = module
    return mods


class LoRALinear(nn.Module):
    """y = W x + b + (alpha / r) * B (A x) around a frozen nn.Linear; A [r, in], B [out, r] starts at zero."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, a_init: Tensor | None, generator: torch.Generator):
        super().__init__()
        self.base = base
        self.down = nn.Parameter(torch.empty(rank, base.in_features))
        self.up = nn.Parameter(torch.zeros(base.out_features, rank))
        with torch.no_grad():
            if a_init is None:
                nn.init.kaiming_uniform_(self.down, a=math.sqrt(5), generator=generator)  # nn.Linear's / peft's
            else:
                if tuple(a_init.shape) != (rank, base.in_features):
                    raise ValueError(f"LoRA A has shape {list(a_init.shape)}, expected {[rank, base.in_features]}")
                self.down.copy_(a_init)
        self.scale = alpha / rank

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scale * F.linear(F.linear(x, self.down), self.up)


def add_lora(
    unet: nn.Module, rank: int, alpha: float, a_init: dict[str, Tensor], generator: torch.Generator
) -> dict[str, LoRALinear]:
    """Wraps every to_q/to_k/to_v/to_out.0 of the UNet's attention modules; returns them by diffusers module name.

    `a_init` maps module names to initial A matrices; modules not in it draw A from `generator` (in module order).
    """
    wrapped: dict[str, LoRALinear] = {}
    for prefix, attn in list(unet.named_modules()):
        if not isinstance(attn, Attention):
            continue
        for target in LORA_TARGETS:
            name = f"{prefix}.{target}"
            parent, attr = (attn.to_out, 0) if target == "to_out.0" else (attn, target)
            base = parent[attr] if isinstance(attr, int) else getattr(parent, attr)
            lora = LoRALinear(base, rank, alpha, a_init.get(name), generator)
            if isinstance(attr, int):
                parent[attr] = lora
            else:
                setattr(parent, attr, lora)
            wrapped[name] = lora
    unknown = sorted(set(a_init) - set(wrapped))
    if unknown:
        raise ValueError(f"initial LoRA A given for modules the UNet does not have: {', '.join(unknown[:5])}")
    return wrapped


def decay_groups(named: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """LAVIS's AdamW groups: decay on parameters with ndim >= 2 whose name has none of bias/ln/bn."""
    decay = [p for n, p in named if p.ndim >= 2 and not any(s in n for s in NO_DECAY)]
    ids = {id(p) for p in decay}
    rest = [p for _, p in named if id(p) not in ids]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def alphas_cumprod(scheduler: dict) -> Tensor:
    """DDPMScheduler's alphas_cumprod for the scheduler config (float32, as diffusers computes it)."""
    n = scheduler.get("num_train_timesteps", 1000)
    start, end = scheduler.get("beta_start", 0.0001), scheduler.get("beta_end", 0.02)
    kind = scheduler.get("beta_schedule", "linear")
    if scheduler.get("trained_betas") is not None:
        betas = torch.tensor(scheduler["trained_betas"], dtype=torch.float32)
    elif kind == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float32) ** 2
    elif kind == "linear":
        betas = torch.linspace(start, end, n, dtype=torch.float32)
    else:
        raise ValueError(f"beta_schedule {kind!r} is not supported by this baseline")
    return torch.cumprod(1.0 - betas, dim=0)


# --------------------------------------------------------------------------------------------- training


@dataclass
class Draws:
    """Per-step draws; either the fixture's (all steps given) or drawn step by step from a seeded generator."""

    index: Tensor | None = None  # [steps, batch] int64
    timesteps: Tensor | None = None  # [steps, batch] int64
    eps_vae: Tensor | None = None  # [steps, batch, C, h, w]
    noise: Tensor | None = None  # [steps, batch, C, h, w]
    generator: torch.Generator | None = None
    num_images: int = 1
    num_train_timesteps: int = 1000
    latent_shape: tuple[int, int, int] = (4, 1, 1)

    def step(self, s: int, batch: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if self.index is not None:
            return self.index[s], self.timesteps[s], self.eps_vae[s], self.noise[s]
        g = self.generator
        index = torch.randint(0, self.num_images, (batch,), generator=g)
        t = torch.randint(0, self.num_train_timesteps, (batch,), generator=g)
        eps = torch.randn(batch, *self.latent_shape, generator=g)
        noise = torch.randn(batch, *self.latent_shape, generator=g)
        return index, t, eps, noise


@dataclass
class Setup:
    mods: dict[str, nn.Module]
    ckpt: Checkpoint
    mode: str
    targets: Tensor  # [N, 3, S, S] in [-1, 1]
    caption_ids: Tensor  # [1, L]
    cache: nn.Parameter  # [1, Q, D]
    draws: Draws
    batch: int
    lr: float
    weight_decay: float
    rank: int = 4
    alpha: float | None = None
    lora_init: dict[str, Tensor] = field(default_factory=dict)
    seed: int = 0
    channels_last: bool = False
    cache_vae: bool = False  # encode each picture once (as blipdiff does) instead of every step (as LAVIS does)


@dataclass
class Trainer:
    setup: Setup
    optimizer: torch.optim.Optimizer
    trained: list[tuple[str, nn.Parameter]]
    lora: dict[str, LoRALinear]
    acp: Tensor
    scaling: float
    posterior: tuple[Tensor, Tensor] | None = None  # with cache_vae: (mean, std) of every picture

    @property
    def trained_params(self) -> int:
        return sum(p.numel() for _, p in self.trained)


def make_trainer(s: Setup) -> Trainer:
    unet = s.mods["unet"]
    lora: dict[str, LoRALinear] = {}
    if s.mode == "full":
        for p in unet.parameters():
            p.requires_grad_(True)
        trained = [("ctx_embeddings_cache", s.cache)] + [(f"unet.{n}", p) for n, p in unet.named_parameters()]
    elif s.mode == "lora":
        g = torch.Generator().manual_seed(s.seed)
        lora = add_lora(unet, s.rank, s.alpha if s.alpha is not None else s.rank, s.lora_init, g)
        trained = [("ctx_embeddings_cache", s.cache)]
        for name, m in lora.items():
            trained += [(f"unet.{name}.lora.down.weight", m.down), (f"unet.{name}.lora.up.weight", m.up)]
    else:
        raise ValueError(f"mode must be full or lora, not {s.mode!r}")
    if s.channels_last:
        unet.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(decay_groups(trained, s.weight_decay), lr=s.lr, betas=(0.9, 0.999), eps=1e-8)
    vae = s.ckpt.configs["vae"]
    return Trainer(
        s, optimizer, trained, lora, alphas_cumprod(s.ckpt.configs["scheduler"]), vae.get("scaling_factor", 0.18215)
    )


def train_step(tr: Trainer, step: int, record: dict | None = None) -> tuple[float, dict[str, float]]:
    """One optimizer step; returns the loss (before the update) and the seconds of its phases."""
    s = tr.setup
    mods = s.mods
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    index, t, eps, noise = s.draws.step(step, s.batch)
    with torch.no_grad():
        if s.cache_vae:
            if tr.posterior is None:
                mean, logvar = mods["vae_encoder"](s.targets)
                tr.posterior = (mean, torch.exp(0.5 * logvar))
            latents = (tr.posterior[0][index] + tr.posterior[1][index] * eps) * tr.scaling
        else:
            mean, logvar = mods["vae_encoder"](s.targets[index])  # logvar comes clamped to [-30, 20]
            latents = (mean + torch.exp(0.5 * logvar) * eps) * tr.scaling
        a = tr.acp[t].to(latents.dtype)
        noisy = a.sqrt().view(-1, 1, 1, 1) * latents + (1 - a).sqrt().view(-1, 1, 1, 1) * noise
    if s.channels_last:
        noisy = noisy.contiguous(memory_format=torch.channels_last)
    t1 = time.perf_counter()
    ids = s.caption_ids.expand(s.batch, -1)
    states = mods["text_encoder"](ids, s.cache.expand(s.batch, -1, -1), s.ckpt.ctx_begin_pos)
    pred = mods["unet"](noisy, t, states, None, None)
    loss = F.mse_loss(pred, noise)
    t2 = time.perf_counter()
    tr.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    t3 = time.perf_counter()
    if record is not None:
        record.update(latents=latents, noisy=noisy, states=states.detach().clone())
        record["grads"] = {n: p.grad.detach().clone() for n, p in tr.trained if p.grad is not None}
    tr.optimizer.step()
    t4 = time.perf_counter()
    times.update(data=t1 - t0, forward=t2 - t1, backward=t3 - t2, optimizer=t4 - t3, total=t4 - t0)
    return loss.item(), times


def trained_tensors(tr: Trainer, dtype: torch.dtype) -> dict[str, Tensor]:
    """What blipdiff's output file holds: the embedding (float32) and the UNet or LoRA tensors in `dtype`."""
    out = {"ctx_embeddings_cache": tr.setup.cache.detach().float().contiguous()}
    for name, p in tr.trained[1:]:
        out[name] = p.detach().to(dtype).contiguous()
    return out


# ------------------------------------------------------------------------------------------------- inputs


def caption_ids(tokenizer_dir: Path, subject: str) -> Tensor:
    """CLIP ids of "a {subject}" without padding (BOS ... EOS), as LAVIS tokenizes the training caption."""
    from tokenizers import Tokenizer

    path = tokenizer_dir / "tokenizer.json"
    if not path.is_file():
        raise SystemExit(
            f"error: {path} is missing; pass --tokenizer-dir <folder with the CLIP tokenizer.json> "
            "(e.g. ../shared/fixtures/tiny-a/ckpt/tokenizer or an export's tokenizer/)"
        )
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.no_truncation()
    return torch.tensor([tok.encode(f"a {subject}").ids], dtype=torch.int64)


def qformer_ids(ckpt: Checkpoint, subject: str) -> Tensor:
    """[CLS] subject [SEP] from the checkpoint's WordPiece vocab.txt, or bert-base-uncased's ids for "dog"."""
    vocab_path = ckpt.root / "qformer_tokenizer" / "vocab.txt"
    if vocab_path.is_file():
        vocab = {w: i for i, w in enumerate(vocab_path.read_text(encoding="utf-8").splitlines())}
        words = [vocab.get(w, vocab["[UNK]"]) for w in subject.lower().split()]
        return torch.tensor([[vocab["[CLS]"], *words, vocab["[SEP]"]]])
    return torch.tensor([[101, 3899, 102]])  # only the cost matters here: the embedding is trained anyway


def initial_cache(mods: dict[str, nn.Module], ckpt: Checkpoint, targets: Tensor, subject: str) -> Tensor:
    """The mean Q-Former output over the pictures (the targets resized to the vision tower's size stand in for
    the subject preprocessing: this prepares the start of training, it is not timed as a step)."""
    size = ckpt.image_size
    pixels = F.interpolate(targets * 0.5 + 0.5, size=(size, size), mode="bicubic", align_corners=False)
    mean = torch.tensor(ckpt.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(ckpt.image_std).view(1, 3, 1, 1)
    pixels = (pixels.clamp(0, 1) - mean) / std
    ids = qformer_ids(ckpt, subject).expand(pixels.shape[0], -1)
    with torch.no_grad():
        return mods["qformer"](pixels, ids, torch.ones_like(ids)).mean(dim=0, keepdim=True)


def fixture_inputs(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    data = load_file(str(path))
    missing = [
        k
        for k in (
            "ft.data.targets",
            "ft.data.index",
            "ft.data.timesteps",
            "ft.data.eps_vae",
            "ft.data.noise",
            "ft.cache_init",
            "ft.caption_ids",
        )
        if k not in data
    ]
    if missing:
        raise SystemExit(f"error: {path} lacks {', '.join(missing)}; give a fixture's finetune.safetensors")
    return data


def make_setup(args: argparse.Namespace) -> tuple[Setup, float]:
    """Builds the modules and the inputs; returns the setup and the seconds spent building modules."""
    ckpt_dir = args.ckpt.resolve() if args.ckpt is not None else CONFIGS_DIR  # Boundary needs absolute paths
    ckpt = read_checkpoint(ckpt_dir, with_controlnet=False)
    names = PIPELINE_MODULES if args.modules == "pipeline" else STEP_MODULES
    start = time.perf_counter()
    mods = build_modules(ckpt, names, args.random_weights)
    build_s = time.perf_counter() - start
    unet_cfg = ckpt.configs["unet"]
    f = 2 ** (len(unet_cfg["block_out_channels"]) - 1)
    c = unet_cfg["in_channels"]
    lora_init: dict[str, Tensor] = {}
    if args.fixture is not None:
        data = fixture_inputs(args.fixture)
        index = data["ft.data.index"]
        for flag, value, have in (
            ("--batch", args.batch, index.shape[1]),
            ("--steps", args.steps, index.shape[0]),
            ("--resolution", args.resolution, data["ft.data.targets"].shape[-1]),
        ):
            if value is not None and value != have:
                raise SystemExit(f"error: {flag} {value} disagrees with the fixture's draws ({have}); leave it out")
        args.batch, args.steps = index.shape[1], index.shape[0]
        draws = Draws(index, data["ft.data.timesteps"], data["ft.data.eps_vae"], data["ft.data.noise"])
        targets, ids, cache0 = data["ft.data.targets"], data["ft.caption_ids"], data["ft.cache_init"]
        lora_init = {k[len("lora.init.") : -len(".A")]: v for k, v in data.items() if k.startswith("lora.init.")}
        if args.rank is None and lora_init:
            args.rank = next(iter(lora_init.values())).shape[0]
    else:
        args.batch = args.batch if args.batch is not None else 1
        args.steps = args.steps if args.steps is not None else 4
        res = args.resolution if args.resolution is not None else 256
        if res % f:
            raise SystemExit(f"error: --resolution {res} is not a multiple of the latent scale {f}")
        g = torch.Generator().manual_seed(args.seed)
        targets = torch.rand(args.images, 3, res, res, generator=g) * 2 - 1
        draws = Draws(
            generator=g,
            num_images=args.images,
            num_train_timesteps=ckpt.configs["scheduler"].get("num_train_timesteps", 1000),
            latent_shape=(c, res // f, res // f),
        )
        tok_dir = args.tokenizer_dir if args.tokenizer_dir is not None else ckpt.root / "tokenizer"
        ids = caption_ids(tok_dir, args.subject)
        if "qformer" in mods:
            cache0 = initial_cache(mods, ckpt, targets, args.subject)
        else:
            q = ckpt.configs["qformer"]["num_query_tokens"]
            cache0 = torch.randn(1, q, ckpt.configs["text_encoder"]["hidden_size"], generator=g)
    args.rank = args.rank if args.rank is not None else 4
    setup = Setup(
        mods=mods,
        ckpt=ckpt,
        mode=args.mode,
        targets=targets,
        caption_ids=ids,
        cache=nn.Parameter(cache0.clone().float()),
        draws=draws,
        batch=args.batch,
        lr=args.lr,
        weight_decay=args.weight_decay,
        rank=args.rank,
        alpha=args.alpha,
        lora_init=lora_init,
        seed=args.seed,
        channels_last=args.channels_last,
        cache_vae=args.cache_vae,
    )
    return setup, build_s


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", type=Path, help="diffusers checkpoint folder (default: the shipped full-size configs)")
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="do not read weights: the exporter's seeded random weights (as `convert --random-weights`)",
    )
    p.add_argument("--tokenizer-dir", type=Path, help="folder with the CLIP tokenizer.json (default: <ckpt>/tokenizer)")
    p.add_argument("--mode", choices=("full", "lora"), default="full")
    p.add_argument("--rank", type=int, help="LoRA rank (default 4; with --fixture, its lora.init rank)")
    p.add_argument("--alpha", type=float, help="LoRA alpha (default: the rank)")
    p.add_argument("--resolution", type=int, help="training resolution (default 256)")
    p.add_argument("--batch", type=int, help="samples per step (default 1)")
    p.add_argument("--steps", type=int, help="optimizer steps (default 4: one cold, three timed warm)")
    p.add_argument("--images", type=int, default=4, help="training pictures (random, default 4)")
    p.add_argument("--subject", default="dog")
    p.add_argument("--lr", type=float, default=5e-6, help="default 5e-6 (LAVIS)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="default 0.01 (LAVIS)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--modules",
        choices=("pipeline", "step"),
        default="pipeline",
        help="pipeline: also hold the Q-Former (which makes the initial embedding) and the VAE decoder, "
        "as a loaded BlipDiffusionPipeline does (default); step: only what a step uses",
    )
    p.add_argument("--channels-last", action="store_true", help="UNet weights and inputs in channels-last layout")
    p.add_argument(
        "--cache-vae",
        action="store_true",
        help="encode each picture with the VAE once (as blipdiff does) instead of every step (as LAVIS does)",
    )
    p.add_argument(
        "--allocator",
        choices=(*ALLOCATORS, "inherit"),
        default="tuned",
        help="tuned: blipdiff's settings (MALLOC_* as its mallopt, THP_MEM_ALLOC_ENABLE as its huge "
        "pages; default); tuned-nothp: without huge pages; glibc: defaults; inherit: leave the "
        "environment alone",
    )
    p.add_argument(
        "--fixture", type=Path, help="replay a fixture's finetune.safetensors draws (ft.data.*, lora.init.*)"
    )
    p.add_argument(
        "--out", type=Path, help="write the trained tensors as blipdiff would (safetensors) to report its size"
    )
    p.add_argument(
        "--save-dtype",
        choices=("float16", "float32"),
        help="dtype of the UNet/LoRA tensors in --out (default: float16 full, float32 lora)",
    )
    args = p.parse_args(argv)
    for name in ("rank", "resolution", "batch", "steps", "images", "threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name} must be a positive integer, not {v}")
    return args


def main() -> None:
    args = parse_args()
    apply_allocator(args.allocator)
    torch.set_num_threads(args.threads)
    setup, build_s = make_setup(args)
    start = time.perf_counter()
    tr = make_trainer(setup)
    prepare_s = time.perf_counter() - start

    losses: list[float] = []
    phases: list[dict[str, float]] = []
    for step in range(args.steps):
        loss, times = train_step(tr, step)
        losses.append(loss)
        phases.append(times)
        print(f"step {step + 1}/{args.steps}: loss {loss:.6f}, {times['total']:.2f} s", file=sys.stderr, flush=True)

    step_s = [p["total"] for p in phases]
    warm = phases[1:]
    res: dict[str, object] = {
        "mode": args.mode,
        "rank": args.rank if args.mode == "lora" else None,
        "resolution": int(setup.targets.shape[-1]),
        "batch": setup.batch,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "modules": sorted(setup.mods),
        "channels_last": args.channels_last,
        "allocator": os.environ.get(REEXEC_MARK, "inherit"),
        "allocator_env": {k: os.environ[k] for k in (*MALLOC_TUNED, *THP) if k in os.environ},
        "trained_params": tr.trained_params,
        "losses": losses,
        "step_s": step_s,
        "first_step_s": step_s[0],
        "median_step_s": statistics.median(step_s[1:]) if len(step_s) > 1 else None,
        "median_phase_s": {k: statistics.median(p[k] for p in warm) for k in warm[0]} if warm else None,
        "build_s": build_s,
        "prepare_s": prepare_s,
    }
    if args.out is not None:
        from safetensors.torch import save_file

        default = torch.float16 if args.mode == "full" else torch.float32
        dtype = getattr(torch, args.save_dtype) if args.save_dtype else default
        save_file(trained_tensors(tr, dtype), str(args.out), metadata={"format": "eager-finetune-baseline"})
        res["output_bytes"] = args.out.stat().st_size
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["torch"] = torch.__version__
    json.dump(res, sys.stdout)
    print()


if __name__ == "__main__":
    main()
