"""Reading a diffusers-format BLIP-Diffusion checkpoint folder: model_index.json and each component's config."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ExportError
from .paths import Boundary

PIPELINES = ("BlipDiffusionPipeline", "BlipDiffusionControlNetPipeline")

# component -> (accepted libraries, accepted class names, file read from the component's folder).
# The published Salesforce checkpoints name the BLIP-specific components' library "blip_diffusion";
# save_pretrained of current diffusers writes "diffusers".
COMPONENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "qformer": (("blip_diffusion", "diffusers"), ("Blip2QFormerModel",), "config.json"),
    "text_encoder": (("blip_diffusion", "diffusers"), ("ContextCLIPTextModel",), "config.json"),
    "unet": (("diffusers",), ("UNet2DConditionModel",), "config.json"),
    "vae": (("diffusers",), ("AutoencoderKL",), "config.json"),
    "controlnet": (("diffusers",), ("ControlNetModel",), "config.json"),
    "scheduler": (("diffusers",), (), "scheduler_config.json"),
    "image_processor": (
        ("blip_diffusion", "diffusers", "transformers"),
        ("BlipImageProcessor",),
        "preprocessor_config.json",
    ),
    "tokenizer": (("transformers",), ("CLIPTokenizer", "CLIPTokenizerFast"), ""),
}
REQUIRED = ("qformer", "text_encoder", "unet", "vae", "scheduler", "tokenizer")
# Files the tokenizer code may read from the checkpoint's tokenizer folders (see tokenizers.py).
TOKENIZER_FILES = {
    "tokenizer": ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"),
    "qformer_tokenizer": ("tokenizer.json", "tokenizer_config.json", "vocab.txt"),
}


@dataclass
class Checkpoint:
    """What the exporter needs from a checkpoint folder; configs are the parsed JSON files, unchanged."""

    root: Path
    pipeline_class: str
    diffusers_version: str | None
    ctx_begin_pos: int
    image_mean: list[float]
    image_std: list[float]
    image_size: int
    image_resample: int
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokenizer_dir: Path | None = None
    qformer_tokenizer_dir: Path | None = None
    boundary: Boundary | None = None  # where the checkpoint's files may resolve to (paths.py)

    @property
    def has_controlnet(self) -> bool:
        return "controlnet" in self.configs

    def folder(self, component: str) -> Path:
        return self.root / component


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ExportError(f"{what}: {path} is missing") from e
    except (OSError, ValueError) as e:
        raise ExportError(f"{what}: cannot parse {path}: {e}") from e
    if not isinstance(data, dict):
        raise ExportError(f"{what}: {path} does not hold a JSON object")
    return data


def _entry(index: dict[str, Any], name: str) -> tuple[str, str] | None:
    value = index.get(name)
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (str, type(None))) for v in value)):
        raise ExportError(f"model_index.json: '{name}' must be [library, class name], not {value!r}")
    if value[0] is None or value[1] is None:  # diffusers writes [null, null] for a component left out
        return None
    return value[0], value[1]


def _image_size(proc: dict[str, Any], path: Path) -> int:
    size = proc.get("size", 224)
    if isinstance(size, dict):
        if "height" in size and "width" in size:
            if size["height"] != size["width"]:
                raise ExportError(
                    f"{path}: size {size} is not square; the Q-Former's vision tower needs a square image"
                )
            size = size["height"]
        elif "shortest_edge" in size:
            size = size["shortest_edge"]
        else:
            raise ExportError(f"{path}: unsupported size {size}; expected {{height, width}}")
    if not isinstance(size, int) or size <= 0:
        raise ExportError(f"{path}: unsupported size {size!r}")
    return size


def _floats3(value: Any, what: str) -> list[float]:
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)):
        raise ExportError(f"{what} must be a list of 3 numbers, not {value!r}")
    return [float(v) for v in value]


def read_checkpoint(root: Path, *, with_controlnet: bool | None = None) -> Checkpoint:
    """Reads `root`/model_index.json and the configs of the components it lists.

    Folders the index does not list (the published checkpoint's leftover vision_encoder/, a
    controlnet/ beside a plain pipeline) are ignored. `with_controlnet` overrides whether the
    ControlNet is exported (used for the shipped configs, which describe both pipelines).
    """
    root = Path(root)
    if not root.is_dir():
        raise ExportError(f"{root} is not a folder; give a diffusers-format BLIP-Diffusion checkpoint folder")
    boundary = Boundary(root)
    index_path = root / "model_index.json"
    if not index_path.is_file():
        raise ExportError(
            f"{root} has no model_index.json, so it is not a diffusers-format pipeline folder; "
            "give the folder that holds model_index.json, qformer/, text_encoder/, unet/, vae/, ..."
        )
    boundary.check(index_path, "model_index.json")
    index = read_json(index_path, "model_index.json")
    pipeline = index.get("_class_name")
    if pipeline not in PIPELINES:
        raise ExportError(
            f"model_index.json: _class_name is {pipeline!r}; only {' and '.join(PIPELINES)} checkpoints can be converted"
        )

    listed: dict[str, tuple[str, str]] = {}
    for name, (libraries, classes, _) in COMPONENTS.items():
        entry = _entry(index, name)
        if entry is None:
            continue
        library, cls = entry
        if library not in libraries:
            raise ExportError(
                f"model_index.json: {name} is from library {library!r}; expected {' or '.join(libraries)}"
            )
        if classes and cls not in classes:
            raise ExportError(f"model_index.json: {name} has class {cls!r}; expected {' or '.join(classes)}")
        listed[name] = entry

    wanted = list(REQUIRED)
    explicit = with_controlnet is not None
    if with_controlnet is None:
        with_controlnet = pipeline == "BlipDiffusionControlNetPipeline"
    if with_controlnet:
        wanted.append("controlnet")
    unlisted = [n for n in wanted if n not in listed and not (explicit and n == "controlnet")]
    if unlisted:
        raise ExportError(f"model_index.json does not list {', '.join(unlisted)}; a {pipeline} checkpoint needs them")
    missing = [f"{n}/" for n in wanted if n != "tokenizer" and not (root / n).is_dir()]
    if missing:
        raise ExportError(
            f"{root} lacks the component folder(s) {', '.join(missing)} that model_index.json lists; "
            "download or copy the complete checkpoint"
        )

    configs: dict[str, dict[str, Any]] = {}
    for name in wanted:
        filename = COMPONENTS[name][2]
        if filename:
            boundary.check(root / name / filename, name)
            configs[name] = read_json(root / name / filename, f"{name}")

    ctx_begin_pos = index.get("ctx_begin_pos")
    if not isinstance(ctx_begin_pos, int) or ctx_begin_pos < 0:
        raise ExportError(f"model_index.json: ctx_begin_pos must be a non-negative integer, not {ctx_begin_pos!r}")

    vision = configs["qformer"].get("vision_config", {})
    proc: dict[str, Any] = {}
    proc_path = root / "image_processor" / COMPONENTS["image_processor"][2]
    if "image_processor" in listed or proc_path.is_file():
        boundary.check(proc_path, "image_processor")
        proc = read_json(proc_path, "image_processor")
        configs["image_processor"] = proc
        image_size = _image_size(proc, proc_path)
    else:
        image_size = vision.get("image_size", 224)
    vision_size = vision.get("image_size", 224)
    if image_size != vision_size:
        raise ExportError(
            f"image_processor size {image_size} differs from the vision tower's image_size {vision_size} "
            "(qformer/config.json vision_config); the checkpoint is inconsistent"
        )

    mean, std = index.get("mean"), index.get("std")
    mean = mean if mean is not None else proc.get("image_mean")
    std = std if std is not None else proc.get("image_std")
    if mean is None or std is None:
        raise ExportError(
            "model_index.json has no mean/std and there is no image_processor/preprocessor_config.json "
            "with image_mean/image_std; add one of them"
        )

    tokenizer_dir = root / "tokenizer"
    qformer_tokenizer_dir = root / "qformer_tokenizer"
    for folder in (tokenizer_dir, qformer_tokenizer_dir):
        if folder.is_dir():
            boundary.check(folder, folder.name)
            for filename in TOKENIZER_FILES[folder.name]:
                if os.path.lexists(folder / filename):
                    boundary.check(folder / filename, folder.name)
    return Checkpoint(
        root=root,
        pipeline_class="BlipDiffusionControlNetPipeline" if with_controlnet else "BlipDiffusionPipeline",
        diffusers_version=index.get("_diffusers_version"),
        ctx_begin_pos=ctx_begin_pos,
        image_mean=_floats3(mean, "mean"),
        image_std=_floats3(std, "std"),
        image_size=image_size,
        image_resample=int(proc.get("resample", 3)),
        configs=configs,
        tokenizer_dir=tokenizer_dir if tokenizer_dir.is_dir() else None,
        qformer_tokenizer_dir=qformer_tokenizer_dir if qformer_tokenizer_dir.is_dir() else None,
        boundary=boundary,
    )
