"""Interrupts of the `convert` command line: one clean stop, never a half-done cleanup.

`blipdiff convert` runs this exporter in its own process group, so a terminal's Ctrl-C reaches
only Node, which forwards exactly one SIGINT. Here the first SIGINT or SIGTERM raises
`Interrupted` in the main thread; every later one is ignored, so the cleanup that follows (removing
the staging folder) runs once and to its end. Once the finished export is being moved into place
(`committing`), signals are ignored as well: the output is complete, and a rename cut in half
would lose the folder that --force replaces.

When Node starts the exporter it sets BLIPDIFF_PARENT_PID; if that process goes away (Node killed),
a watchdog thread sends this process SIGTERM, so the exporter never runs on as an orphan.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)
PARENT_ENV = "BLIPDIFF_PARENT_PID"
WATCH_INTERVAL_S = 0.5


class Interrupted(BaseException):
    """SIGINT or SIGTERM: a BaseException, like KeyboardInterrupt, so `except Exception` does not swallow it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's code for a process ended by the signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


class _State:
    stopping: int | None = None  # the first signal received
    raised = False  # whether `Interrupted` was raised for it
    shield = 0  # depth of `shielded` blocks
    committing = False
    installed = False


def _ignore_signals() -> None:
    # SIG_IGN, not a no-op handler: Python resets its own handlers to SIG_DFL while it shuts down, and a
    # signal landing then would kill the process instead of letting it exit with its code.
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def _handler(signum: int, frame: FrameType | None) -> None:
    # Later signals land here too and are dropped. The handler stays installed rather than switching to
    # SIG_IGN: a signal already caught at the C level while Python's handler changes to SIG_IGN is reported
    # by CPython as "OSError: Signal N ignored due to race condition" at an arbitrary point (seen with bursts).
    if _State.stopping is not None or _State.committing:
        return
    _State.stopping = signum
    if _State.shield == 0:
        _State.raised = True
        raise Interrupted(signum)


def ignore_for_exit() -> None:
    """Called as the process ends, after any cleanup: signals from here on cannot kill it or print a traceback."""
    if _State.installed:
        with contextlib.suppress(OSError):
            _ignore_signals()


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """A signal that lands inside (cleanup) is held back and raised at its end, so the block always completes."""
    _State.shield += 1
    try:
        yield
    finally:
        _State.shield -= 1
    if _State.shield == 0 and _State.stopping is not None and not _State.raised:
        _State.raised = True
        raise Interrupted(_State.stopping)


@contextlib.contextmanager
def committing() -> Iterator[None]:
    """The finished output is moved into place: from here on, signals no longer stop the export."""
    _State.committing = True  # the handler drops signals from here on
    yield


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCH_INTERVAL_S)
    os.kill(os.getpid(), signal.SIGTERM)


def install() -> None:
    """Installs the handlers (and the parent watchdog when BLIPDIFF_PARENT_PID names our parent).

    For the command line only, from the main thread, for the rest of the process: a signal that
    lands after `main` returned must not turn into a KeyboardInterrupt traceback.
    """
    _State.stopping, _State.raised, _State.shield, _State.committing = None, False, 0, False
    _State.installed = True
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        parent = int(os.environ.get(PARENT_ENV, ""))
    except ValueError:
        parent = None
    # The variable is inherited by grandchildren too: only the process Node started watches Node.
    if parent is not None and parent == os.getppid():
        threading.Thread(target=_watch_parent, args=(parent,), name="blipdiff-parent-watchdog", daemon=True).start()
