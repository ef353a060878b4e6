"""Containment of checkpoint paths: nothing the exporter reads for a checkpoint lies outside its folder.

Names that come from checkpoint files (shard names in a `*.index.json`) and every file the exporter
opens in a checkpoint are checked before anything is read: absolute names and `..` parts are
refused, and the path, with its symlinks resolved, must lie inside the checkpoint folder. A
Hugging Face cache snapshot (`models--<owner>--<name>/snapshots/<revision>/`) is a folder of
symlinks into the repository's `blobs/`, so for that layout `blobs/` is inside too.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from .errors import ExportError


class Boundary:
    """The folders a checkpoint's files may resolve into: the checkpoint folder (and its HF cache blobs/)."""

    def __init__(self, root: Path):
        self.root = Path(os.path.realpath(root))
        self.folders = [self.root]
        blobs = hf_blobs_folder(self.root)
        if blobs is not None:
            self.folders.append(blobs)

    def contains(self, path: Path) -> bool:
        return any(path == f or f in path.parents for f in self.folders)

    def check(self, path: Path, what: str) -> Path:
        """`path` (inside the checkpoint folder, possibly through symlinks) resolved; an ExportError if it leaves."""
        path = Path(path)
        if not path.is_absolute():
            path = self.root / path
        resolved = Path(os.path.realpath(path))
        if not self.contains(resolved):
            shown = self.relative(path)
            raise ExportError(
                f"{what}: {shown} resolves to {resolved}, outside the checkpoint folder {self.root}; "
                "copy the file into the checkpoint folder instead of linking to it"
            )
        return resolved

    def relative(self, path: Path) -> str:
        """`path` as the user knows it: relative to the checkpoint folder when it is written under it."""
        try:
            return Path(os.path.abspath(path)).relative_to(self.root).as_posix()
        except ValueError:
            return str(path)


def hf_blobs_folder(root: Path) -> Path | None:
    """`models--x--y/blobs` when `root` is (inside) a Hugging Face cache snapshot `models--x--y/snapshots/<rev>`."""
    parts = root.parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == "snapshots" and parts[i - 1].startswith("models--"):
            return Path(*parts[:i]) / "blobs"
    return None


def check_relative_name(name: object, what: str) -> str:
    """`name` if it is a relative file name without `..` parts; otherwise an ExportError, before any read."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise ExportError(f"{what}: {name!r} is not a file name")
    windows = PureWindowsPath(name)
    if PurePosixPath(name).is_absolute() or windows.is_absolute() or windows.drive or windows.root:
        raise ExportError(f"{what}: {name!r} is an absolute path; only names relative to the checkpoint are accepted")
    if ".." in windows.parts:  # PureWindowsPath splits at both / and \
        raise ExportError(f"{what}: {name!r} contains '..'; only names inside the checkpoint folder are accepted")
    return name
