"""Scripting whose .pt bytes depend only on the sources, not on the process or the machine.

Two inputs of torch.jit.script would otherwise leak into the files:

* the string hash seed: TorchScript collects each module's constants (`__constants__`, Final
  attributes) in a set and writes them in its iteration order, which for strings depends on
  PYTHONHASHSEED;
* the location of the sources: the debug info (`code/**.debug_pkl`, read back for error messages)
  records the file name of every function it compiled, as an absolute path, for the exporter's
  own modules and for torch's (`.../site-packages/torch/nn/functional.py`). Exports made from two
  checkouts differed, and users' home paths ended up in shared models.

Not covered: class names carry `___torch_mangle_<n>` suffixes from a process-wide counter, so
bytes are reproducible only from a fresh process (as the CLI always is), not after other
scripting in the same process. The numerics are the same either way.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# models/: the exporter's sources are named relative to it (`blipdiff_export/unet.py`).
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


class _SortedSet(set):
    """A set that iterates in sorted order (by str), independent of PYTHONHASHSEED."""

    def __iter__(self):
        return iter(sorted(super().__iter__(), key=str))


def _roots() -> list[str]:
    """Folders that source names are made relative to, longest first (so the most specific wins)."""
    roots = {str(PACKAGE_ROOT)}
    for entry in sys.path:
        if entry:
            roots.add(os.path.abspath(entry))
            roots.add(os.path.realpath(entry))
    return sorted(roots, key=len, reverse=True)


def portable_source_name(filename: str | None, module: str | None = None, roots: list[str] | None = None) -> str | None:
    """`filename` as its import name spells it (`torch/nn/functional.py` for module `torch.nn.functional`).

    Without a matching module name, the path relative to the longest import root it lies under; a
    file outside every import root keeps only its base name. Never an absolute path.
    """
    if filename is None:
        return None
    posix = Path(filename).as_posix()
    if module and module != "__main__":
        by_name = module.replace(".", "/") + ("/__init__.py" if posix.endswith("/__init__.py") else ".py")
        if posix == by_name or posix.endswith("/" + by_name):
            return by_name
    candidates = {os.path.abspath(filename), os.path.realpath(filename)}
    for root in roots if roots is not None else _roots():
        for path in candidates:
            if path.startswith(root + os.sep):
                return Path(os.path.relpath(path, root)).as_posix()
    return os.path.basename(filename)


@contextlib.contextmanager
def reproducible_scripting() -> Iterator[None]:
    """Within it, torch.jit.script sees sorted constant sets and portable source file names.

    TorchScript reads every source location through `torch._sources.get_source_lines_and_file`,
    which three modules imported by name; each binding is replaced while the block runs. If torch
    moves that lookup, nothing is renamed and the byte-identity test (test_reproducible.py) fails.
    """
    import torch._jit_internal as jit_internal
    import torch._sources as sources
    import torch.jit._recursive as recursive
    import torch.jit.annotations as annotations
    import torch.jit.frontend as frontend

    original = sources.get_source_lines_and_file
    roots = _roots()

    def get_source_lines_and_file(obj: Any, error_msg: str | None = None) -> tuple[list[str], int, str | None]:
        lines, lineno, filename = original(obj, error_msg)
        module = getattr(inspect.getmodule(obj), "__name__", None)
        return lines, lineno, portable_source_name(filename, module, roots)

    patched = [m for m in (sources, jit_internal, frontend, annotations) if hasattr(m, "get_source_lines_and_file")]
    for module in patched:
        module.get_source_lines_and_file = get_source_lines_and_file
    recursive.set = _SortedSet  # a module global shadows the builtin inside torch.jit._recursive
    try:
        yield
    finally:
        del recursive.set
        for module in patched:
            module.get_source_lines_and_file = original
