"""``corral runs``, ``show`` and ``trace`` are readable at 80 and 120 columns, in a terminal and in a pipe.

A terminal is a real pseudo-terminal of that size (the real entry point sees a TTY and asks it for
its width); a pipe is stdout redirected with ``COLUMNS`` set. Readable means: every run id whole on
one line, one line per run with the task's first words on it (no column squeezed to a word per
line), every line of a patch whole, and in a pipe plain text (no boxes, no escape sequences).
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest

from corral.events import ToolCalled, ToolReturned
from corral.store import RunStatus, Store
from tests.e2e.cli_helpers import CORRAL, corral
from tests.store.runs import add_run, finished_run_events

pytestmark = pytest.mark.slow

#: rich's own styling: Select Graphic Rendition sequences. Nothing else may start with ESC.
SGR = re.compile(rb"\x1b\[[0-9;]*m")

LONG_LINE = "+    return sum(value for value in values if value is not None and value > threshold)  # " + "x" * 60
PATCH = f"""diff --git a/calc.py b/calc.py
index 3b18e51..a8c4d1f 100644
--- a/calc.py
+++ b/calc.py
@@ -1,3 +1,3 @@
 def total(values, threshold):
-    return sum(values)
{LONG_LINE}
"""
TASKS = {
    "agrecaaaaaaaaaaaa1": "make the failing test in tests/test_calc.py pass without touching the tests themselves",
    "agrecaaaaaaaaaaaa2": "Refactor the payment module.\nKeep the public API.\n" + "Details follow. " * 80,
    "agrecaaaaaaaaaaaa3": "short task",
}


def run_in_terminal(
    args: list[str],
    *,
    columns: int,
    rows: int = 40,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> tuple[int, bytes]:
    """Run ``args`` with a pseudo-terminal of ``columns`` x ``rows`` as stdin, stdout and stderr.

    Returns the exit code and everything written to the terminal (its CR LF line ends made LF).
    """
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    unsized = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR")}
    proc = subprocess.Popen(
        args,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=cwd,
        env={**unsized, "TERM": "xterm-256color", **(env or {})},
        start_new_session=True,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError(f"{args} did not finish within {timeout}s")
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
    return proc.returncode, b"".join(chunks).replace(b"\r\n", b"\n")


def corral_in_terminal(*args: str, home: Path, cwd: Path, columns: int) -> str:
    """The text a person sees: rich's styling removed, after checking it is the only escape sequence."""
    code, raw = run_in_terminal([*CORRAL, *args], columns=columns, cwd=cwd, env={"CORRAL_HOME": str(home)})
    assert code == 0, raw.decode(errors="replace")
    unstyled = SGR.sub(b"", raw)
    assert b"\x1b" not in unstyled, unstyled
    return unstyled.decode()


def corral_in_pipe(*args: str, home: Path, cwd: Path, columns: int) -> str:
    proc = corral(*args, cwd=cwd, home=home, env={"COLUMNS": str(columns)})
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout + proc.stderr
    assert not set("╭╮╰╯│─┌┐└┘├") & set(proc.stdout)  # no boxes, panels or tree guides
    return proc.stdout


@pytest.fixture
def store_home(home: Path) -> Path:
    add_sample_runs(home)
    return home


def add_sample_runs(home: Path) -> None:
    """Three finished runs: a long one-line task, a long many-line task, a short one; each with a patch."""
    store = Store.open(home=home)
    for n, (run_id, task) in enumerate(TASKS.items()):
        add_run(
            store,
            run_id,
            status=RunStatus.SUCCEEDED,
            task=task,
            agent="fixer",
            created_at=time.time() - 3600 * n,
            started_at=1.0,
            finished_at=3.5,
            result={"text": "Fixed it.", "patch": PATCH, "files_changed": 1},
            turns=4,
            input_tokens=12_345,
        )
        for event in finished_run_events(task=task):
            store.journal.append(run_id, event)
        store.journal.append(
            run_id,
            ToolCalled(key="tool:1:call", call_id="c1", tool="execute", args={"command": "python -m pytest -q " * 5}),
        )
        store.journal.append(
            run_id,
            ToolReturned(key="tool:1:result", call_id="c1", tool="execute", ok=True, text="", exit_code=1),
        )
    store.close()


CAPTURES = [
    pytest.param(corral_in_terminal, 80, id="terminal-80"),
    pytest.param(corral_in_terminal, 120, id="terminal-120"),
    pytest.param(corral_in_pipe, 80, id="pipe-80"),
    pytest.param(corral_in_pipe, 120, id="pipe-120"),
]


@pytest.mark.parametrize(("capture", "columns"), CAPTURES)
def test_runs_lists_one_line_per_run_with_whole_ids_and_readable_tasks(
    capture, columns: int, store_home: Path, tmp_path: Path
) -> None:
    lines = capture("runs", home=store_home, cwd=tmp_path, columns=columns).splitlines()
    assert len(lines) == 1 + len(TASKS)  # a header and one line per run: nothing wrapped
    assert lines[0].split()[:2] == ["run", "started"] and lines[0].split()[-1] == "task"
    task_at = lines[0].index("task")
    for run_id, task in TASKS.items():
        (line,) = [line for line in lines if run_id in line]
        assert line.startswith(run_id + " ")
        shown = line[task_at:]
        words = task.split()[:3]
        assert shown.startswith(" ".join(words)), shown  # several words, not a one-word column
        if capture is corral_in_terminal:
            assert len(line) <= columns
        else:
            assert shown == task.splitlines()[0]  # a pipe gets the whole first line


@pytest.mark.parametrize(("capture", "columns"), CAPTURES)
def test_show_keeps_patch_lines_whole_and_abbreviates_long_tasks(
    capture, columns: int, store_home: Path, tmp_path: Path
) -> None:
    text = capture("show", "agrecaaaaaaaaaaaa2", home=store_home, cwd=tmp_path, columns=columns)
    lines = text.splitlines()
    assert any(line.split()[:2] == ["run", "agrecaaaaaaaaaaaa2"] for line in lines)
    for patch_line in PATCH.splitlines():
        assert patch_line in lines, patch_line  # whole, on a line of its own: nothing cut or folded
    left = len(TASKS["agrecaaaaaaaaaaaa2"].rstrip()) - 500
    notice = f"({left} more characters; `corral show agrecaaaaaaaaaaaa2 --json` has it all)"
    assert notice in " ".join(text.split())  # possibly wrapped at word boundaries in a terminal
    assert "Fixed it." in text


@pytest.mark.parametrize(("capture", "columns"), CAPTURES)
def test_trace_shows_whole_ids_and_exit_codes(capture, columns: int, store_home: Path, tmp_path: Path) -> None:
    text = capture("trace", "agrecaaaaaaaaaaaa1", home=store_home, cwd=tmp_path, columns=columns)
    assert text.splitlines()[0].startswith("run agrecaaaaaaaaaaaa1 fixer · succeeded")
    flat = " ".join(text.split())
    assert "✓ exit 0 3 ms" in flat and "✗ exit 1 -" in flat
    assert "#3 model call 1" in flat
