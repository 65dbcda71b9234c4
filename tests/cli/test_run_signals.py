"""Ctrl-C and SIGTERM stop ``corral run`` and ``corral resume`` cleanly: the run is interrupted, its sandbox kept,
and the one command that resumes it is printed, ready to paste."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli.run_support import json_lines, paste, run_corral, scripted_project, start_corral, stored
from tests.e2e.test_demo_kill import wait_until_gone

pytestmark = pytest.mark.slow  # every case starts the real `corral` entry point

# The command counts its starts in the workspace: the first two sleep (to be interrupted), the third ends.
SLOW = """
[[turns]]
text = "running the slow suite"
[[turns.tool_calls]]
name = "execute"
args = { command = "n=$(cat starts 2>/dev/null || echo 0); echo $((n+1)) > starts; [ $n -ge 2 ] || sleep 120" }

[[turns]]
text = "the suite passed"
"""


def starts(home: Path) -> int:
    """How many times the slow command has started in the run's workspace."""
    found = list(home.glob("runs/*/workspace/starts"))
    return int(found[0].read_text() or 0) if found else 0


def interrupt(
    args: list[str], *, cwd: Path, signum: signal.Signals, ready: Callable[[], bool]
) -> subprocess.CompletedProcess[str]:
    """Start ``corral ARGS``, send it ``signum`` once ``ready()``, and return how it ended."""
    proc = start_corral(*args, cwd=cwd, home=None)
    try:
        deadline = time.monotonic() + 60
        while not ready():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the command never got ready to be interrupted"
            time.sleep(0.1)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def assert_interrupted(done: subprocess.CompletedProcess[str], home: Path, signum: signal.Signals) -> str:
    """The command ended as a signal asks, said so, and named the command that resumes the run; returns that."""
    assert done.returncode == 128 + signum, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    record, _ = stored(home)
    resume = f"corral --home '{home}' resume {record.id}"  # not the default store, and a space: named and quoted
    assert f"interrupted by {signum.name}: run {record.id} stopped; its sandbox is kept" in done.stderr
    assert f"resume: {resume}\n" in done.stderr

    (listed,) = json.loads(run_corral("--home", str(home), "runs", "--json", cwd=home.parent, home=None).stdout)
    assert listed["interrupted"] is True and listed["status"] == "running"
    (workspace,) = home.glob("runs/*/workspace")
    assert (workspace / "starts").exists()  # the sandbox is kept for the resume
    assert wait_until_gone(workspace) == []  # ... and nothing runs in it any more
    return resume


@pytest.mark.parametrize(("signum", "json_out"), [(signal.SIGINT, False), (signal.SIGTERM, True)])
def test_a_signal_interrupts_the_run_and_the_printed_command_resumes_it(
    tmp_path: Path, repo: Path, signum: signal.Signals, json_out: bool
) -> None:
    project = scripted_project(tmp_path / "project", SLOW.replace("[ $n -ge 2 ]", "[ $n -ge 1 ]"))
    home = tmp_path / "my store"
    args = ["--home", str(home), "run", "fixer", "task", "--repo", str(repo), *(["--json"] * json_out)]
    done = interrupt(args, cwd=project, signum=signum, ready=lambda: starts(home) == 1)
    resume = assert_interrupted(done, home, signum)
    if json_out:
        *_, result = json_lines(done.stdout)
        assert (result["type"], result["status"], result["exit_code"]) == ("result", "interrupted", 143)
        assert result["resume_command"] == resume

    resumed = paste(resume, cwd=project)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "the suite passed" in resumed.stdout
    assert stored(home)[0].status.value == "succeeded"


def test_a_signal_interrupts_a_resume_too(tmp_path: Path, repo: Path) -> None:
    project = scripted_project(tmp_path / "project", SLOW)
    home = tmp_path / "my store"
    args = ["--home", str(home), "run", "fixer", "task", "--repo", str(repo)]
    resume = assert_interrupted(
        interrupt(args, cwd=project, signum=signal.SIGTERM, ready=lambda: starts(home) == 1), home, signal.SIGTERM
    )
    again = interrupt(shlex.split(resume)[1:], cwd=project, signum=signal.SIGINT, ready=lambda: starts(home) == 2)
    assert assert_interrupted(again, home, signal.SIGINT) == resume

    resumed = paste(resume, cwd=project)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert stored(home)[0].status.value == "succeeded"
