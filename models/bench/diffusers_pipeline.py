"""diffusers' own BlipDiffusionPipeline as a benchmark baseline (scripts/bench-vs-diffusers.mjs runs it beside blipdiff).

Runs the reference implementation itself, from a diffusers source tree (never installed: its `src/` on
PYTHONPATH, or --diffusers-src), with transformers 5 from the local package index. diffusers' BLIP-Diffusion
modules are deprecated and were written for transformers 4; `apply_patches` restores at run time, without
changing any math, the three older behaviours they need (the fixtures README, "How the data were produced"):

  1. the Q-Former attention blocks take their old positional signature and return a tuple;
  2. the CLIP encoder honours `causal_attention_mask` again (else the text encoder is bidirectional);
  3. `invert_attention_mask` and `get_head_mask`, which the Q-Former calls, are restored with their old
     definitions.

The checkpoint is loaded one component folder at a time (fixtures README item 23: at this diffusers commit
`DiffusionPipeline.from_pretrained` does not resolve the BLIP classes), from either the layout
`save_pretrained` writes (safetensors, library "diffusers") or the published one (pickled Q-Former and text
encoder weights, library "blip_diffusion", mean/std in model_index.json). Loading is strict: a missing or
unexpected weight is an error, never a silently random-initialised layer.

Modes (each prints one JSON line on stdout; times in milliseconds, peak RSS from getrusage):
  --cold            import + load + one image: `image_ms` is the in-process time of the pipeline call,
                    `since_process_start_ms` the time from the interpreter's start (/proc) to the image done.
  --warm N          load once, then N timed calls (`image_ms` lists them; the first one is the warm-up call).
  --check-golden F  the fixture F's `cfg` pipeline case (its call arguments and `pipe.latents`) against its
                    golden image; exit 1 when it does not match within the README's tolerances.

  PYTHONPATH=<diffusers checkout>/src .venv/bin/python models/bench/diffusers_pipeline.py --cold \
      --ckpt ../shared/fixtures/tiny-a/ckpt --image ../shared/fixtures/tiny-a/inputs/reference.png \
      --width 32 --height 32 --steps 5 --threads 2

Allocator settings come from the environment (MALLOC_*_ for glibc, THP_MEM_ALLOC_ENABLE for c10); the
benchmark script sets them as scripts/bench.mjs does for the eager baseline. They are echoed in the JSON.
"""

from __future__ import annotations

import time

SCRIPT_START = time.perf_counter()  # before every other import: `since_script_start_ms` includes them

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ALLOCATOR_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "THP_MEM_ALLOC_ENABLE")
QFORMER_FALLBACK_TOKENIZER = "bert-base-uncased"  # what diffusers' Blip2QFormerModel loads without config.tokenizer


class BaselineError(Exception):
    """A problem the user can fix; printed as one `error: ...` line, exit 1."""


def since_process_start_ms() -> float | None:
    """Milliseconds since this process started (the kernel's start time, 10 ms resolution), or None."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22, counted after the ")" that closes the command name
        now = time.clock_gettime(time.CLOCK_BOOTTIME)
        return (now - start_ticks / os.sysconf("SC_CLK_TCK")) * 1000
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ------------------------------------------------------------------------------------------------ patches


def apply_patches() -> None:
    """Restores the transformers-4 behaviour diffusers' BLIP-Diffusion modules rely on (see the module docstring).

    Idempotent. Patches classes of the installed transformers in this process only; the fetched diffusers
    source is not edited.
    """
    import torch
    from transformers import modeling_utils
    from transformers.models.blip_2 import modeling_blip_2
    from transformers.models.clip import modeling_clip

    # (1) diffusers' Blip2QFormerLayer calls attention(hidden, attention_mask, head_mask, encoder_hidden,
    # encoder_mask, past_key_value=..., output_attentions=...) and reads out[0] (the output), out[1:-1] (the
    # attention probabilities) and out[-1] (the key/value cache). transformers 5 takes (hidden, attention_mask,
    # encoder_hidden, encoder_mask) and returns a bare tensor, so cross-attention would run as self-attention.
    attention_cls = modeling_blip_2.Blip2QFormerAttention
    if not getattr(attention_cls.forward, "_blipdiff_patched", False):

        def qformer_attention_forward(
            self,
            hidden_states,
            attention_mask=None,
            head_mask=None,
            encoder_hidden_states=None,
            encoder_attention_mask=None,
            past_key_value=None,
            output_attentions=False,
        ):
            if head_mask is not None or past_key_value is not None:
                raise NotImplementedError("head masks and key/value caches are not supported by this patch")
            attn_output, attn_weights = self.attention(
                hidden_states=hidden_states,
                attention_mask=attention_mask,
                encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_attention_mask,
            )
            attention_output = self.output(attn_output, hidden_states)
            return (attention_output, attn_weights, None) if output_attentions else (attention_output, None)

        qformer_attention_forward._blipdiff_patched = True
        attention_cls.forward = qformer_attention_forward

    # (2) transformers 4's CLIPAttention added causal_attention_mask to the scores, then attention_mask;
    # transformers 5's CLIPEncoder has no such parameter and drops it with the other keyword arguments.
    encoder_cls = modeling_clip.CLIPEncoder
    if not getattr(encoder_cls.forward, "_blipdiff_patched", False):
        encoder_forward = encoder_cls.forward

        def clip_encoder_forward(self, inputs_embeds, attention_mask=None, causal_attention_mask=None, **kwargs):
            if causal_attention_mask is not None:
                attention_mask = (
                    causal_attention_mask if attention_mask is None else causal_attention_mask + attention_mask
                )
            return encoder_forward(self, inputs_embeds, attention_mask, **kwargs)

        clip_encoder_forward._blipdiff_patched = True
        encoder_cls.forward = clip_encoder_forward

    # (3) Removed from PreTrainedModel (ModuleUtilsMixin) in transformers 5; the transformers-4 definitions.
    model_cls = modeling_utils.PreTrainedModel

    def invert_attention_mask(self, encoder_attention_mask):
        if encoder_attention_mask.dim() == 3:
            extended = encoder_attention_mask[:, None, :, :]
        if encoder_attention_mask.dim() == 2:
            extended = encoder_attention_mask[:, None, None, :]
        extended = extended.to(dtype=self.dtype)
        return (1.0 - extended) * torch.finfo(self.dtype).min

    def get_head_mask(self, head_mask, num_hidden_layers, is_attention_chunked=False):
        if head_mask is None:
            return [None] * num_hidden_layers
        if head_mask.dim() == 1:
            head_mask = head_mask.unsqueeze(0).unsqueeze(0).unsqueeze(-1).unsqueeze(-1)
            head_mask = head_mask.expand(num_hidden_layers, -1, -1, -1, -1)
        elif head_mask.dim() == 2:
            head_mask = head_mask.unsqueeze(1).unsqueeze(-1).unsqueeze(-1)
        assert head_mask.dim() == 5, f"head_mask.dim != 5, instead {head_mask.dim()}"
        head_mask = head_mask.to(dtype=self.dtype)
        return head_mask.unsqueeze(-1) if is_attention_chunked else head_mask

    for name, fn in (("invert_attention_mask", invert_attention_mask), ("get_head_mask", get_head_mask)):
        if not hasattr(model_cls, name):
            setattr(model_cls, name, fn)


# ------------------------------------------------------------------------------------------------ loading


def import_diffusers(src: Path | None):
    """Imports diffusers (from `src` when given, else from PYTHONPATH) and the BLIP-Diffusion classes."""
    if src is not None:
        if not (src / "diffusers" / "__init__.py").is_file():
            raise BaselineError(
                f"--diffusers-src {src} has no diffusers/__init__.py; give the src/ folder of a diffusers checkout"
            )
        sys.path.insert(0, str(src))
    try:
        import transformers  # noqa: F401
    except ImportError as e:
        raise BaselineError(
            f"transformers is not installed ({e}); install it from the local index: "
            ".venv/bin/pip install --no-index --find-links /opt/pypi/files transformers==5.17.0"
        ) from e
    try:
        import diffusers
        from diffusers.pipelines.deprecated.blip_diffusion import (
            Blip2QFormerModel,
            BlipDiffusionPipeline,
            BlipImageProcessor,
            ContextCLIPTextModel,
        )
    except ImportError as e:
        raise BaselineError(
            f"cannot import diffusers' BLIP-Diffusion pipeline ({e}); put a diffusers checkout's src/ on PYTHONPATH "
            "or pass --diffusers-src (see docs/benchmarks.md)"
        ) from e
    return diffusers, BlipDiffusionPipeline, Blip2QFormerModel, ContextCLIPTextModel, BlipImageProcessor


def _strict(component: str, info: dict) -> None:
    """Fails on weights the model expected but the checkpoint lacks, or the reverse (position_ids aside)."""
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = [k if isinstance(k, str) else k[0] for k in info.get(kind) or []]
        keys = [k for k in keys if not k.endswith("position_ids")]
        if keys:
            problems.append(f"{len(keys)} {kind.replace('_', ' ')} ({', '.join(sorted(keys)[:5])})")
    if problems:
        raise BaselineError(f"{component}: the weights do not fit its config.json: {'; '.join(problems)}")


def load_pipeline(ckpt: Path, qformer_tokenizer: str | None, attn: str, diffusers_src: Path | None):
    """Imports, patches and loads the pipeline from `ckpt`, one component folder at a time.

    Returns (pipeline, info): info holds import_ms (diffusers and transformers; torch is imported before),
    load_ms, load_ms_by_component and the library versions.
    """
    start = time.perf_counter()
    import torch
    import transformers

    diffusers, BlipDiffusionPipeline, Blip2QFormerModel, ContextCLIPTextModel, BlipImageProcessor = import_diffusers(
        diffusers_src
    )
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import Blip2Config, CLIPTokenizer

    apply_patches()
    import_ms = (time.perf_counter() - start) * 1000
    # stderr: errors only (the strict weight check below replaces the libraries' warnings about weights)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()

    index_path = ckpt / "model_index.json"
    if not index_path.is_file():
        raise BaselineError(f"{ckpt} has no model_index.json; give a diffusers-format BLIP-Diffusion checkpoint folder")
    index = json.loads(index_path.read_text())
    if qformer_tokenizer is None:
        local = ckpt / "qformer_tokenizer"
        qformer_tokenizer = str(local) if local.is_dir() else QFORMER_FALLBACK_TOKENIZER
    # transformers 5 builds an empty-vocabulary BertTokenizer, silently, from a folder or hub id it cannot read.
    if Path(qformer_tokenizer).is_dir():
        if not any((Path(qformer_tokenizer) / f).is_file() for f in ("vocab.txt", "tokenizer.json")):
            raise BaselineError(f"--qformer-tokenizer {qformer_tokenizer} holds neither vocab.txt nor tokenizer.json")
    else:
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(qformer_tokenizer, "vocab.txt"), str):
            raise BaselineError(
                f"{ckpt} has no qformer_tokenizer/ and {qformer_tokenizer} is not in the Hugging Face cache; pass "
                "--qformer-tokenizer <folder with the bert-base-uncased vocab.txt>"
            )

    times: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        times[name] = (now - t) * 1000
        t = now

    tokenizer = CLIPTokenizer.from_pretrained(str(ckpt / "tokenizer"))
    if len(tokenizer) <= len(tokenizer.all_special_tokens):
        raise BaselineError(
            f"{ckpt / 'tokenizer'} holds no CLIP vocabulary (tokenizer.json, or vocab.json + merges.txt)"
        )
    lap("tokenizer")
    config = Blip2Config.from_pretrained(str(ckpt / "qformer"))
    config.tokenizer = qformer_tokenizer  # read by diffusers' Blip2QFormerModel.__init__ (a BertTokenizer)
    qformer, info = Blip2QFormerModel.from_pretrained(
        str(ckpt / "qformer"), config=config, attn_implementation=attn, dtype=torch.float32, output_loading_info=True
    )
    _strict("qformer", info)
    if len(qformer.tokenizer) <= len(qformer.tokenizer.all_special_tokens):
        raise BaselineError(f"the Q-Former tokenizer {qformer_tokenizer} has no vocabulary; pass --qformer-tokenizer")
    lap("qformer")
    text_encoder, info = ContextCLIPTextModel.from_pretrained(
        str(ckpt / "text_encoder"), attn_implementation=attn, dtype=torch.float32, output_loading_info=True
    )
    _strict("text_encoder", info)
    lap("text_encoder")
    unet, info = UNet2DConditionModel.from_pretrained(str(ckpt / "unet"), output_loading_info=True)
    _strict("unet", info)
    lap("unet")
    vae, info = AutoencoderKL.from_pretrained(str(ckpt / "vae"), output_loading_info=True)
    _strict("vae", info)
    lap("vae")
    scheduler = PNDMScheduler.from_pretrained(str(ckpt / "scheduler"))
    image_processor = BlipImageProcessor.from_pretrained(str(ckpt / "image_processor"))
    pipe = BlipDiffusionPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        unet=unet,
        scheduler=scheduler,
        qformer=qformer,
        image_processor=image_processor,
        ctx_begin_pos=index.get("ctx_begin_pos", 2),
        mean=index.get("mean"),
        std=index.get("std"),
    )
    pipe.set_progress_bar_config(disable=True)
    lap("scheduler_processor_pipeline")
    for name, module in (("qformer", qformer), ("text_encoder", text_encoder), ("unet", unet), ("vae", vae)):
        module.eval()
        dtype = next(module.parameters()).dtype
        if dtype != torch.float32:
            raise BaselineError(f"{name} loaded as {dtype}; this benchmark compares float32")
    return pipe, {
        "import_ms": import_ms,
        "load_ms": sum(times.values()),
        "load_ms_by_component": times,
        "qformer_tokenizer": qformer_tokenizer,
        "attn_implementation": attn,
        "diffusers": diffusers.__version__,
        "diffusers_path": str(Path(diffusers.__file__).parent),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }


# ------------------------------------------------------------------------------------------------ images


class StageTimer:
    """Times the pipeline's stages by wrapping its bound methods and modules (one perf_counter pair per call)."""

    def __init__(self, pipe):
        self.ms: dict[str, float] = {}
        self.unet_calls = 0
        self._wrap(pipe, "get_query_embeddings", "subject")
        self._wrap(pipe.text_encoder, "forward", "text")  # both text encoder calls (cond, uncond)
        self._wrap(pipe.unet, "forward", "denoise", count=True)
        self._wrap(pipe.vae, "decode", "decode")

    def _wrap(self, obj, attr: str, key: str, count: bool = False) -> None:
        fn = getattr(obj, attr)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.ms[key] = self.ms.get(key, 0.0) + (time.perf_counter() - start) * 1000
                if count:
                    self.unet_calls += 1

        setattr(obj, attr, timed)

    def take(self) -> dict[str, float]:
        out = {f"{k}_ms": v for k, v in self.ms.items()}
        out["unet_calls"] = self.unet_calls
        self.ms, self.unet_calls = {}, 0
        return out


def make_image(pipe, args: argparse.Namespace, reference, latents=None):
    """One pipeline call as a user makes it: a seeded CPU generator draws the latents unless `latents` is given."""
    import torch

    generator = None if latents is not None else torch.Generator("cpu").manual_seed(args.seed)
    return pipe(
        prompt=args.prompt,
        reference_image=reference,
        source_subject_category=args.subject,
        target_subject_category=args.target_subject or args.subject,
        guidance_scale=args.guidance,
        height=args.height,
        width=args.width,
        num_inference_steps=args.steps,
        generator=generator,
        latents=latents,
        neg_prompt=args.negative_prompt,
        prompt_strength=args.prompt_strength,
        prompt_reps=args.prompt_reps,
        output_type=args.output_type,
    ).images


def check_golden(args: argparse.Namespace) -> dict:
    """Runs the fixture's `cfg` case and compares the image with its goldens (README tolerances)."""
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    fixture = args.check_golden
    case = json.loads((fixture / "golden.json").read_text())["cases"]["pipeline"]["cases"]["cfg"]
    kw = case["call_kwargs"]
    golden = load_file(str(fixture / "golden.safetensors"))
    pipe, info = load_pipeline(fixture / case["checkpoint"], args.qformer_tokenizer, args.attn, args.diffusers_src)
    call = argparse.Namespace(
        prompt=kw["prompt"],
        subject=kw["source_subject_category"],
        target_subject=kw["target_subject_category"],
        guidance=kw["guidance_scale"],
        height=kw["height"],
        width=kw["width"],
        steps=kw["num_inference_steps"],
        seed=kw["latents_seed"],
        negative_prompt=kw["neg_prompt"],
        prompt_strength=kw["prompt_strength"],
        prompt_reps=kw["prompt_reps"],
        output_type=kw["output_type"],
    )
    reference = Image.open(fixture / kw["reference_image"])
    # `pipe.latents` is what the seed draws (README); passing it checks the image, the seed path is checked below.
    image = make_image(pipe, call, reference, latents=golden[kw["latents"]].clone())
    got = torch.from_numpy(np.ascontiguousarray(image))
    expected = golden[f"{case['tensors_prefix']}image"]
    got_u8 = (got * 255).round().to(torch.uint8)
    expected_u8 = golden[f"{case['tensors_prefix']}image_u8"]
    u8_diff = (got_u8.int() - expected_u8.int()).abs()
    from_seed = torch.from_numpy(np.ascontiguousarray(make_image(pipe, call, reference)))
    result = {
        "fixture": str(fixture),
        "case": "cfg",
        "image_max_abs_diff": (got - expected).abs().max().item(),
        "image_u8_max_diff": u8_diff.max().item(),
        "image_u8_pixels_off": int((u8_diff > 0).sum().item()),
        "seed_equals_latents": bool(torch.equal(from_seed, got)),
        **{k: info[k] for k in ("diffusers", "transformers", "torch", "attn_implementation")},
    }
    # README tolerances (float32, CPU): image atol 1e-4; uint8 off by at most 1 on a handful of values.
    result["ok"] = bool(
        result["image_max_abs_diff"] <= 1e-4
        and result["image_u8_max_diff"] <= 1
        and result["image_u8_pixels_off"] <= max(8, got_u8.numel() // 1000)
        and result["seed_equals_latents"]
    )
    return result


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--cold", action="store_true", help="import + load + one image")
    mode.add_argument("--warm", type=int, metavar="N", help="load once, then N timed images (N >= 1)")
    mode.add_argument("--check-golden", type=Path, metavar="FIXTURE", help="a fixture folder (holding golden.json)")
    p.add_argument("--ckpt", type=Path, help="diffusers-format BLIP-Diffusion checkpoint folder")
    p.add_argument("--image", type=Path, help="picture of the subject")
    p.add_argument("--subject", default="dog", help="category word of the subject (default dog)")
    p.add_argument("--target-subject", help="category word in the output (default --subject)")
    p.add_argument("--prompt", default="swimming in a pool")
    p.add_argument("--negative-prompt", default="", help="(default empty, as diffusers' and blipdiff's)")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="PNDM steps (steps + 1 UNet calls)")
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--prompt-strength", type=float, default=1.0)
    p.add_argument("--prompt-reps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument(
        "--attn",
        choices=("sdpa", "eager"),
        default="sdpa",
        help="transformers attention for the Q-Former and text encoder (default sdpa, transformers' default; "
        "the fixtures were made with eager)",
    )
    p.add_argument(
        "--qformer-tokenizer",
        help="Q-Former BertTokenizer folder (default CKPT/qformer_tokenizer, "
        f"else {QFORMER_FALLBACK_TOKENIZER} from the Hugging Face cache)",
    )
    p.add_argument("--diffusers-src", type=Path, help="a diffusers checkout's src/ folder (default: PYTHONPATH)")
    p.add_argument("--out", type=Path, help="write the (last) image here as PNG, after the timing")
    args = p.parse_args(argv)
    args.output_type = "pil"
    if args.check_golden is None:
        missing = [f"--{n}" for n in ("ckpt", "image") if getattr(args, n) is None]
        if missing:
            p.error(f"{' and '.join(missing)} required with --cold and --warm")
    if args.warm is not None and args.warm < 1:
        p.error("--warm N needs N >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local folders only: never wait on the network
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        import_start = time.perf_counter()
        import torch

        torch_import_ms = (time.perf_counter() - import_start) * 1000
        torch.set_num_threads(args.threads)
        if args.check_golden is not None:
            result = check_golden(args)
            print(json.dumps(result))
            return 0 if result["ok"] else 1

        from PIL import Image

        if not args.image.is_file():
            raise BaselineError(f"--image {args.image}: file not found")
        pipe, info = load_pipeline(args.ckpt, args.qformer_tokenizer, args.attn, args.diffusers_src)
        info["import_ms"] += torch_import_ms
        stages = StageTimer(pipe)
        reference = Image.open(args.image)
        reference.load()
        runs = []
        image = None
        for _ in range(1 if args.cold else args.warm):
            start = time.perf_counter()
            image = make_image(pipe, args, reference)[0]
            runs.append({"image_ms": (time.perf_counter() - start) * 1000, **stages.take()})
        done = time.perf_counter()
        process_ms = since_process_start_ms()
        result = {
            "mode": "cold" if args.cold else "warm",
            **info,
            "image_ms": [r["image_ms"] for r in runs],
            "stages": runs,
            "since_script_start_ms": (done - SCRIPT_START) * 1000,
            "since_process_start_ms": process_ms,
            "peak_rss_mb": peak_rss_mb(),
            "threads": torch.get_num_threads(),
            "allocator_env": {k: os.environ[k] for k in ALLOCATOR_ENV if k in os.environ},
            "settings": {
                k: getattr(args, k)
                for k in ("width", "height", "steps", "guidance", "seed", "prompt", "subject", "negative_prompt")
            },
        }
        if args.out is not None:
            image.save(args.out)
            result["out"] = str(args.out)
        print(json.dumps(result))
        return 0
    except BaselineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
