"""Scripts for the scripted model in which each turn runs a program with ``eval``."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.e2e.cli_helpers import CORRAL


def eval_script(*programs: str, answer: str = "done") -> str:
    """A script: one ``eval`` call per program (a turn each), then ``answer``."""
    turns = [
        f"[[turns]]\n[[turns.tool_calls]]\nname = \"eval\"\nargs = {{ program = '''{program}''' }}\n"
        for program in programs
    ]
    return "\n".join([*turns, f"[[turns]]\ntext = {answer!r}\n"])


def run_then_kill(
    tmp_path: Path, home: Path, args: list[str], ready: Callable[[], bool], *, what: str, settle_s: float = 0.0
) -> None:
    """``corral run ARGS`` in its own process (cwd ``tmp_path``, store ``home``), SIGKILLed once ``ready()``
    (and ``settle_s`` more seconds): the crash a durable run must survive. Fails naming ``what`` if the
    process ends first or nothing is ready within a minute."""
    proc = subprocess.Popen(
        [*CORRAL, "run", *args],
        cwd=tmp_path,
        env={**os.environ, "CORRAL_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready():
            assert time.monotonic() < deadline and proc.poll() is None, f"{what} never happened"
            time.sleep(0.05)
        time.sleep(settle_s)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
