"""`convert`: a BLIP-Diffusion checkpoint -> TorchScript modules + tokenizer files + manifest.json.

The layout and manifest keys are specified in docs/manifest.md. The output folder appears only
when everything has been written: work happens in a hidden sibling folder that is renamed at the end.
"""

from __future__ import annotations

import gc
import hashlib
import importlib
import json
import os
import re
import shutil
import socket
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from . import signals
from .checkpoint import Checkpoint, read_checkpoint, read_json
from .errors import ExportError
from .module_files import save_module
from .reproducible import reproducible_scripting
from .tokenizers import resolve_qformer_source, write_clip_tokenizer, write_qformer_tokenizer
from .weights import LIST_LIMIT, load_into, read_weights

FORMAT = "blipdiff-torchscript"
FORMAT_VERSION = 2  # 2: each module's tensors live beside it in a safetensors file (module_files.py)
# 0.2.0: attention projections are AdaptableLinear (LoRA fine-tuning).
# 0.3.0: the UNet has forward_edit (prompt-to-prompt attention control); manifest `capabilities`, `attention_control`.
# 0.4.0: every linear layer is layers.Linear, whose `cpu_onednn` switch lets the runtime use oneDNN's matmul on the
#        CPU (same parameters and names; exported switched off); convolution weights are stored channels-last.
# 0.5.0: format_version 2: the tensors of each module are written to <name>.safetensors beside its archive, which
#        keeps placeholders, so that the runtime maps them instead of copying them (module_files.py).
EXPORTER_VERSION = "0.5.0"
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
PUBLISHED_ID = "Salesforce/blipdiffusion"
RANDOM_SEED = 0
TEST_PAUSE_ENV = "BLIPDIFF_TEST_PAUSE_AFTER"
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ModuleSpec:
    name: str  # output file stem and manifest key
    component: str  # checkpoint folder holding config and weights
    module: str  # blipdiff_export submodule
    cls: str
    prefixes: tuple[str, ...] = ()  # only these keys of the component's weights belong to this module


MODULES = (
    ModuleSpec("qformer", "qformer", "qformer", "QFormerModel"),
    ModuleSpec("text_encoder", "text_encoder", "text_encoder", "ContextCLIPTextEncoder"),
    ModuleSpec("unet", "unet", "unet", "UNet2DConditionModel"),
    ModuleSpec("vae_decoder", "vae", "vae", "VAEDecoder", ("post_quant_conv.", "decoder.")),
    ModuleSpec("vae_encoder", "vae", "vae", "VAEEncoder", ("encoder.", "quant_conv.")),
    ModuleSpec("controlnet", "controlnet", "controlnet", "ControlNetModel"),
)


def _log(stream: TextIO | None, message: str) -> None:
    if stream is not None:
        print(message, file=stream, flush=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def module_class(spec: ModuleSpec) -> Callable[[dict[str, Any]], torch.nn.Module]:
    # Imported on use: the module definitions are large and only needed once a checkpoint has been validated.
    try:
        mod = importlib.import_module(f"{__package__}.{spec.module}")
    except ImportError as e:
        raise ExportError(f"cannot import blipdiff_export.{spec.module} (needed for {spec.name}): {e}") from e
    try:
        return getattr(mod, spec.cls)
    except AttributeError as e:
        raise ExportError(f"blipdiff_export.{spec.module} has no class {spec.cls}") from e


# ------------------------------------------------------------------------------------------- sources


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_unreachable() -> str | None:
    """Why the hub cannot be reached (DNS, TCP connect within 3 s), or None if it can or a proxy decides.

    huggingface_hub retries a failed request for about 25 s; this check makes "no network" fail at once.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    endpoint = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as e:
        return f"{host} cannot be reached: {e}"
    return None


def download_from_hub(repo_id: str) -> tuple[Path, str | None]:
    """Downloads the components that `repo_id`'s model_index.json lists; returns (folder, revision)."""
    howto = (
        f"To convert without network access, download the checkpoint where the network allows "
        f"(`huggingface-cli download {repo_id} --local-dir <dir>`, or `git clone https://huggingface.co/{repo_id}`), "
        "copy the folder here and convert it: `blipdiff convert <dir> --out <out>`"
    )
    # Short timeouts: an unreachable hub must fail in seconds, not after minutes of retries.
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
    except ImportError as e:
        raise ExportError(f"{repo_id} is not a local folder and huggingface_hub is not installed. {howto}") from e
    offline = _offline()
    unreachable = None if offline else _hub_unreachable()
    if unreachable is not None:
        raise ExportError(f"{repo_id} is not a local folder, and {unreachable}. {howto}")
    try:
        index = json.loads(Path(hf_hub_download(repo_id, "model_index.json", local_files_only=offline)).read_text())
        listed = sorted(k for k, v in index.items() if isinstance(v, list) and v and v[0] is not None)
        # Leftover folders (vision_encoder/, a controlnet/ the pipeline does not use) are gigabytes: skip them.
        patterns = ["model_index.json", "qformer_tokenizer/*"] + [f"{c}/*" for c in listed]
        folder = Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=offline))
    except Exception as e:  # huggingface_hub raises many unrelated types for "not reachable" / "not cached"
        reason = (
            "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"
            if offline
            else f"downloading it failed ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})"
        )
        raise ExportError(f"{repo_id} is not a local folder, and {reason}. {howto}") from e
    revision = folder.name if folder.parent.name == "snapshots" else None
    return folder, revision


def resolve_source(source: str) -> tuple[Path, str, str | None]:
    """(folder, label for the manifest, hub revision) for a checkpoint folder or a hub id."""
    path = Path(source)
    if path.exists():
        if not path.is_dir():
            raise ExportError(f"{source} is a file; give the checkpoint folder that holds model_index.json")
        resolved = path.resolve()
        return resolved, "/".join(resolved.parts[-2:]), None
    if not HUB_ID.match(source):
        raise ExportError(f"{source}: no such folder (and not a Hugging Face hub id of the form owner/name)")
    folder, revision = download_from_hub(source)
    return folder, source, revision


# -------------------------------------------------------------------------------------------- export


def check_consistency(ckpt: Checkpoint) -> None:
    """The pipeline wiring between components; a mismatch here would only fail at generation time."""
    c = ckpt.configs
    text_hidden = c["text_encoder"]["hidden_size"]
    qformer_hidden = c["qformer"]["qformer_config"]["hidden_size"]
    cross = c["unet"]["cross_attention_dim"]
    problems = []
    if qformer_hidden != text_hidden:
        problems.append(f"Q-Former hidden_size {qformer_hidden} != text encoder hidden_size {text_hidden}")
    if cross != text_hidden:
        problems.append(f"UNet cross_attention_dim {cross} != text encoder hidden_size {text_hidden}")
    if c["vae"].get("latent_channels", 4) != c["unet"]["in_channels"]:
        problems.append(
            f"VAE latent_channels {c['vae'].get('latent_channels')} != UNet in_channels {c['unet']['in_channels']}"
        )
    nq, length = c["qformer"]["num_query_tokens"], c["text_encoder"]["max_position_embeddings"]
    if not 0 <= ckpt.ctx_begin_pos < length - nq:
        problems.append(
            f"ctx_begin_pos {ckpt.ctx_begin_pos} leaves no room for {nq} query tokens in {length} positions"
        )
    if "controlnet" in c:
        cn = c["controlnet"]
        for key in ("block_out_channels", "cross_attention_dim", "in_channels", "layers_per_block", "down_block_types"):
            if cn.get(key) != c["unet"].get(key):
                problems.append(f"ControlNet {key} {cn.get(key)} != UNet {key} {c['unet'].get(key)}")
    if problems:
        raise ExportError("the checkpoint's components do not fit together: " + "; ".join(problems))


def build_manifest_config(ckpt: Checkpoint) -> dict[str, Any]:
    from .qformer import max_text_length

    c = ckpt.configs
    unet, vae = c["unet"], c["vae"]
    return {
        "num_query_tokens": c["qformer"]["num_query_tokens"],
        "ctx_begin_pos": ckpt.ctx_begin_pos,
        "text_max_length": c["text_encoder"]["max_position_embeddings"],
        "text_hidden_size": c["text_encoder"]["hidden_size"],
        "cross_attention_dim": unet["cross_attention_dim"],
        "qformer_hidden_size": c["qformer"]["qformer_config"]["hidden_size"],
        "qformer_max_text_length": max_text_length(c["qformer"]),
        "image_size": ckpt.image_size,
        "image_mean": ckpt.image_mean,
        "image_std": ckpt.image_std,
        "image_resample": ckpt.image_resample,
        "latent_channels": unet["in_channels"],
        "latent_scale": 2 ** (len(unet["block_out_channels"]) - 1),
        "vae_scaling_factor": vae.get("scaling_factor", 0.18215),
        "vae_scale": 2 ** (len(vae["block_out_channels"]) - 1),
        "unet_sample_size": unet.get("sample_size"),
        # Channels of each UNet level: the runtime bounds the LoRA rank by the narrowest attention.
        "unet_block_out_channels": list(unet["block_out_channels"]),
        "has_controlnet": ckpt.has_controlnet,
    }


def attention_control_entries(ckpt: Checkpoint) -> dict[str, Any]:
    """The manifest's `capabilities` and, when the UNet has edit layers, `attention_control` (edit_layers.py)."""
    from .edit_layers import attention_table

    try:
        table = attention_table(ckpt.configs["unet"])
    except ExportError:  # no cross-attention down block: the UNet generates, but cannot be edited
        return {"capabilities": []}
    return {"capabilities": ["attention_control"], "attention_control": table.manifest_entry()}


def store_channels_last(module: torch.nn.Module) -> None:
    """Stores the 4-D (convolution) weights channels-last, the layout the runtime runs them in on the CPU, so that
    loading does not copy them again (2.4 GB at full size; the weights file keeps their memory order). The
    runtime makes them contiguous where it wants that layout (CUDA, BLIPDIFF_CHANNELS_LAST=0)."""
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() == 4 and p.is_floating_point():
                p.data = p.data.contiguous(memory_format=torch.channels_last)


def build_module(
    spec: ModuleSpec, ckpt: Checkpoint, random_weights: bool, cache: dict[str, dict[str, torch.Tensor]]
) -> tuple[torch.nn.Module, set[str]]:
    """The eager module of `spec` in eval mode: the checkpoint's weights (each component read once through
    `cache`), or with `random_weights` the exporter's seeded random ones. Returns it and the weight names it took.
    The benchmarks' eager baselines build their modules with this too, so they run exactly what is exported."""
    # A fixed seed per module: random exports are reproducible and independent of module order.
    torch.manual_seed(RANDOM_SEED)
    module = module_class(spec)(ckpt.configs[spec.component])
    module.eval()
    if random_weights:
        return module, set()
    if spec.component not in cache:
        cache[spec.component] = read_weights(ckpt.folder(spec.component), spec.component, ckpt.boundary)
    state = cache[spec.component]
    if spec.prefixes:
        state = {k: v for k, v in state.items() if k.startswith(spec.prefixes)}
    load_into(module, state, spec.name)
    return module, set(state)


def _export_modules(
    ckpt: Checkpoint, staging: Path, random_weights: bool, log: TextIO | None
) -> dict[str, dict[str, str]]:
    modules: dict[str, dict[str, str]] = {}
    specs = [s for s in MODULES if s.component in ckpt.configs]
    cache: dict[str, dict[str, torch.Tensor]] = {}  # the VAE's weights serve two modules; read them once
    used: dict[str, set[str]] = {}
    for spec in specs:
        start = time.perf_counter()
        module, taken = build_module(spec, ckpt, random_weights, cache)
        if not random_weights:
            used.setdefault(spec.component, set()).update(taken)
            if spec.component not in [s.component for s in specs[specs.index(spec) + 1 :]]:
                leftover = sorted(set(cache.pop(spec.component)) - used[spec.component])
                if leftover:
                    shown = ", ".join(leftover[:LIST_LIMIT])
                    raise ExportError(
                        f"{spec.component}: {len(leftover)} unexpected weight(s) that no exported module uses: {shown}"
                    )
        try:
            with reproducible_scripting():
                scripted = torch.jit.script(module)
        except Exception as e:  # TorchScript compile errors are RuntimeErrors with multi-line context
            raise ExportError(f"{spec.name}: torch.jit.script failed: {e}") from e
        path = staging / f"{spec.name}.pt"
        store_channels_last(scripted)
        weights = save_module(scripted, path)
        del scripted, module
        gc.collect()
        size = path.stat().st_size + weights.stat().st_size
        modules[spec.name] = {
            "file": path.name,
            "sha256": sha256_file(path),
            "weights": {"file": weights.name, "sha256": sha256_file(weights)},
        }
        _log(
            log, f"{spec.name}: {time.perf_counter() - start:.1f} s, {size / 1e6:.1f} MB -> {path.name}, {weights.name}"
        )
        if os.environ.get(TEST_PAUSE_ENV) == spec.name:
            time.sleep(60)  # tests interrupt the export here (see __main__.py)
    return modules


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists():
        if not out.is_dir():
            raise ExportError(f"--out {out} is a file; give a folder path")
        if any(out.iterdir()) and not force:
            raise ExportError(f"--out {out} exists and is not empty; pass --force to replace it")


def _commit(staging: Path, out: Path) -> None:
    """Moves the finished staging folder to `out`, replacing what was there."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, old)
    os.rename(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def convert(
    source: str | None,
    out: Path,
    *,
    qformer_vocab: Path | None = None,
    tokenizer_dir: Path | None = None,
    random_weights: bool = False,
    with_controlnet: bool = False,
    force: bool = False,
    log: TextIO | None = sys.stderr,
) -> Path:
    """Exports `source` (a checkpoint folder or hub id) to `out`; returns the absolute output folder.

    With `random_weights`, weights are not read: without `source` the model is built from the
    published configs in blipdiff_export/configs, otherwise from `source`'s configs.
    """
    out = Path(out).absolute()
    _prepare_out(out, force)

    revision = None
    if source is None:
        if not random_weights:
            raise ExportError("give a checkpoint folder or hub id, or --random-weights")
        folder, label = CONFIGS_DIR, PUBLISHED_ID
    else:
        folder, label, revision = resolve_source(source)
    ckpt = read_checkpoint(folder, with_controlnet=True if with_controlnet else None)
    check_consistency(ckpt)

    qformer_src = resolve_qformer_source(ckpt.qformer_tokenizer_dir, qformer_vocab)
    clip_src = tokenizer_dir if tokenizer_dir is not None else ckpt.tokenizer_dir
    if clip_src is None and source is None:
        raise ExportError(
            "--random-weights needs the CLIP tokenizer files: pass --tokenizer-dir <folder with tokenizer.json "
            "or vocab.json + merges.txt> (e.g. a checkpoint's tokenizer/ folder)"
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        clip = write_clip_tokenizer(clip_src, staging / "tokenizer" / "tokenizer.json")
        text_vocab = ckpt.configs["text_encoder"].get("vocab_size")
        if text_vocab is not None and clip.pop("max_id") >= text_vocab:
            raise ExportError(
                f"the CLIP tokenizer has ids beyond the text encoder's vocab_size {text_vocab}; "
                "the tokenizer does not belong to this text encoder"
            )
        qformer_tok = write_qformer_tokenizer(
            qformer_src,
            staging / "qformer_tokenizer" / "tokenizer.json",
            ckpt.configs["qformer"]["qformer_config"].get("vocab_size"),
            allow_smaller=random_weights,
        )
        if "warning" in qformer_tok:
            _log(log, f"warning: {qformer_tok.pop('warning')}")
        tokenizers = {
            "clip": {"file": "tokenizer/tokenizer.json", **clip},
            "qformer": {"file": "qformer_tokenizer/tokenizer.json", **qformer_tok},
        }
        for entry in tokenizers.values():
            entry["sha256"] = sha256_file(staging / entry["file"])

        total = time.perf_counter()
        modules = _export_modules(ckpt, staging, random_weights, log)
        _log(log, f"all modules: {time.perf_counter() - total:.1f} s")

        source_info: dict[str, Any] = {
            "checkpoint": label,
            "pipeline_class": ckpt.pipeline_class,
            "diffusers_version": ckpt.diffusers_version,
            "random_weights": random_weights,
            "exporter_version": EXPORTER_VERSION,
            "torch_version": str(torch.__version__),
        }
        if revision is not None:
            source_info["revision"] = revision
        if random_weights:
            source_info["random_seed"] = RANDOM_SEED
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "source": source_info,
            "modules": modules,
            "tokenizers": tokenizers,
            "config": build_manifest_config(ckpt),
            "scheduler": ckpt.configs["scheduler"],
            **attention_control_entries(ckpt),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        with signals.committing():  # the output is complete: an interrupt no longer stops it
            _prepare_out(out, force)  # something may have appeared there during a long export
            _commit(staging, out)
    except BaseException:
        with signals.shielded():  # a second interrupt must not cut the cleanup short
            shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def read_manifest(folder: Path) -> dict[str, Any]:
    return read_json(Path(folder) / "manifest.json", "manifest")
