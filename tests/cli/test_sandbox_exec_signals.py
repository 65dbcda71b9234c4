"""``corral sandbox exec`` stopped mid-command leaves nothing behind: SIGINT and SIGTERM remove the sandbox before
the command exits (130, 143, "interrupted"), and after SIGKILL ``corral sandbox prune`` removes all of it."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.sandbox.conftest import skip_unless_bubblewrap_runs
from tests.sandbox.host import host_footprint, processes_with

pytestmark = pytest.mark.slow  # each case starts the real `corral` entry point and a bubblewrap sandbox

NOTHING = {
    "mounts": [],
    "cgroups": [],
    "portals": [],
    "disk images": [],
    "loop devices": [],
    "uid claims": [],
    "run dir contents": [],
}


def start_exec(tmp: Path, token: str, home: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "TMPDIR": str(tmp), "CORRAL_HOME": str(home), "PYTHONFAULTHANDLER": "1"}
    command = [sys.executable, "-m", "corral", "sandbox", "exec", "--", "sh", "-c", f"echo started; sleep {token}"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def sleeping_inside(token: str) -> bool:
    """Whether the sandboxed ``sleep TOKEN`` itself runs (corral's and bwrap's command lines hold the token too)."""
    wanted = f"sleep\0{token}\0".encode()
    for pid in processes_with(token):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes() == wanted:
                return True
        except OSError:  # gone meanwhile
            continue
    return False


def wait_running(proc: subprocess.Popen[str], token: str) -> None:
    """Until the command runs in the sandbox: bwrap has set up its death signals by then (a kill while bwrap
    is still starting can leave its sandbox to ``corral sandbox prune``, which kills it through its cgroup)."""
    deadline = time.monotonic() + 60
    while not sleeping_inside(token):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the sandboxed command never started"
        time.sleep(0.05)


def finish(proc: subprocess.Popen[str]) -> str:
    """The stopped command's stderr; if it does not end, its Python stack (faulthandler) and the process tree."""
    try:
        return proc.communicate(timeout=60)[1]
    except subprocess.TimeoutExpired:
        tree = subprocess.run(["ps", "-ef", "--forest"], capture_output=True, text=True).stdout
        proc.send_signal(signal.SIGABRT)
        stack = proc.communicate(timeout=30)[1]
        pytest.fail(f"corral did not exit after the signal:\n{stack[-6000:]}\n{tree[-6000:]}")


def footprint(tmp: Path, run_dirs: list[Path]) -> dict[str, list[str]]:
    found = host_footprint(tmp, run_dirs)
    found.pop("bwrap dirs")  # other tests' sandboxes share /tmp/.bubblewrap-*
    return found


def describe_processes(pids: list[int]) -> str:
    """What is left of each process: its parent, state and command line (for a failure's message)."""
    lines = []
    for pid in pids:
        try:
            status = dict(
                line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line
            )
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        lines.append(f"{pid} ppid={status.get('PPid')} state={status.get('State')} {cmdline}")
    return "\n".join(lines)


def wait_gone(token: str, within_s: float = 15.0) -> list[int]:
    """The processes still carrying ``token`` once they are gone, or after ``within_s`` (a loaded machine
    takes seconds to reap a killed tree)."""
    for _ in range(int(within_s / 0.05)):
        if not processes_with(token):
            break
        time.sleep(0.05)
    return processes_with(token)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)])
def test_a_stop_signal_removes_the_sandbox_and_says_interrupted(tmp_path: Path, signum: int, code: int) -> None:
    skip_unless_bubblewrap_runs()
    token = f"91.{secrets.randbelow(10**6):06d}"
    proc = start_exec(tmp_path, token, tmp_path / "home")
    try:
        wait_running(proc, token)
        run_dirs = [path / "run" for path in tmp_path.glob("corral-exec-*")]
        assert run_dirs
        proc.send_signal(signum)
        err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    assert f"interrupted by {signal.Signals(signum).name}; the sandbox was removed" in err
    assert "timed out" not in err
    assert wait_gone(token) == []
    assert footprint(tmp_path, run_dirs) == NOTHING
    assert list(tmp_path.glob("corral-exec-*")) == []


def test_after_sigkill_prune_removes_everything_the_one_shot_sandbox_left(tmp_path: Path) -> None:
    skip_unless_bubblewrap_runs()
    token = f"92.{secrets.randbelow(10**6):06d}"
    home = tmp_path / "home"
    proc = start_exec(tmp_path, token, home)
    try:
        wait_running(proc, token)
        run_dirs = [path / "run" for path in tmp_path.glob("corral-exec-*")]
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = wait_gone(token)
    assert left == [], describe_processes(left)  # bwrap --die-with-parent: the command dies with corral
    assert footprint(tmp_path, run_dirs)["mounts"], "SIGKILL skipped cleanup: the sandbox should still be there"

    env = {**os.environ, "CORRAL_HOME": str(home)}
    pruned = subprocess.run(
        [sys.executable, "-m", "corral", "sandbox", "prune"], env=env, capture_output=True, text=True, timeout=120
    )
    assert pruned.returncode == 0, pruned.stderr
    # Another process's first sandbox sweeps too, so the prune may find the work done: what counts is the end state.
    assert "resumable" not in pruned.stdout
    assert footprint(tmp_path, run_dirs) == NOTHING
    assert list(tmp_path.glob("corral-exec-*")) == []
