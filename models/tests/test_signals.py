"""Interrupting `python -m blipdiff_export convert`: one line, the right exit code, no staging folder left.

The exporter is paused after its first module (BLIPDIFF_TEST_PAUSE_AFTER), so every signal lands in a
running export. test/cli/convert.test.ts checks the same through `blipdiff convert`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT

PAUSED = "qformer"
LINE = "interrupted: nothing was written"


def start(fixture, parent, command_prefix=(), **env):
    full_env = {**os.environ, "PYTHONPATH": str(ROOT / "models"), "BLIPDIFF_TEST_PAUSE_AFTER": PAUSED, **env}
    command = [sys.executable, "-m", "blipdiff_export", "convert", str(fixture.ckpt), "--out", str(parent / "model")]
    return subprocess.Popen([*command_prefix, *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env)


def wait_for_pause(proc) -> list[str]:
    """stderr lines up to the paused module's progress line."""
    lines = []
    while True:
        line = proc.stderr.readline().decode()
        assert line, f"the exporter ended before pausing: {''.join(lines)}"
        lines.append(line)
        if line.startswith(f"{PAUSED}: "):
            return lines


def assert_clean(stdout: bytes, stderr: str, parent) -> None:
    assert [line for line in stderr.splitlines() if "interrupt" in line.lower()] == [LINE], stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert stdout == b""
    assert list(parent.iterdir()) == []  # neither the output nor .model.partial-<pid>


@pytest.mark.parametrize(
    "signals,gap,code",
    [
        ([signal.SIGINT], 0, 130),
        ([signal.SIGTERM], 0, 143),
        # A burst: later signals land in the handler or the cleanup and are ignored.
        ([signal.SIGINT, signal.SIGINT, signal.SIGTERM, signal.SIGINT], 0, 130),
        # Signals delivered together are handled in signal-number order, so this one needs a gap.
        ([signal.SIGTERM, signal.SIGINT], 0.1, 143),
    ],
    ids=["int", "term", "int-burst", "term-then-int"],
)
def test_signal_stops_the_export_cleanly(fixture, tmp_path, signals, gap, code):
    parent = tmp_path / "dest"
    parent.mkdir()
    proc = start(fixture, parent)
    lines = wait_for_pause(proc)
    for s in signals:
        proc.send_signal(s)
        time.sleep(gap)
    stdout, rest = proc.communicate(timeout=60)
    assert proc.returncode == code, "".join(lines) + rest.decode()
    assert_clean(stdout, "".join(lines) + rest.decode(), parent)


def test_exporter_stops_when_its_parent_dies(fixture, tmp_path):
    """BLIPDIFF_PARENT_PID: the exporter's parent (here a shell, in blipdiff a Node process) is killed."""
    parent = tmp_path / "dest"
    parent.mkdir()
    # The shell exports its own pid, starts the exporter and waits; SIGKILL gives it no chance to pass anything on.
    shell = ["sh", "-c", 'BLIPDIFF_PARENT_PID=$$ "$@" & wait', "sh"]
    proc = start(fixture, parent, command_prefix=shell)
    lines = wait_for_pause(proc)
    killed = time.monotonic()
    proc.kill()
    proc.wait(timeout=10)
    rest = proc.stderr.read().decode()  # EOF once the exporter, which shares the pipe, has exited
    assert time.monotonic() - killed < 20  # without the watchdog it would export on for a minute
    assert_clean(proc.stdout.read(), "".join(lines) + rest, parent)


def test_variable_of_a_grandparent_is_ignored(fixture, tmp_path):
    """An inherited BLIPDIFF_PARENT_PID that names another process does not stop the export."""
    parent = tmp_path / "dest"
    parent.mkdir()
    proc = start(fixture, parent, BLIPDIFF_PARENT_PID="1", BLIPDIFF_TEST_PAUSE_AFTER="none")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr.decode()
    assert stdout.decode() == f"{parent / 'model'}\n"
