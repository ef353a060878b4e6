"""blipdiff's exporter: diffusers-format BLIP-Diffusion checkpoints -> TorchScript modules + manifest."""

from .errors import ExportError

__all__ = ["ExportError"]
