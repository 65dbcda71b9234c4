"""``corral run`` stopped mid-command in the bubblewrap sandbox holds nothing on the host afterwards.

SIGTERM (or Ctrl-C): the run is interrupted and resumable; its sandbox's files stay, but no process, mount,
cgroup, portal or loop device does. SIGKILL: nothing could run; ``corral cancel`` ends the run and removes all
of it, and ``corral sandbox prune`` finds nothing left of it.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.cli.run_support import run_corral, start_corral, stored
from tests.sandbox.conftest import skip_unless_bubblewrap_runs
from tests.sandbox.host import host_footprint, processes_with

pytestmark = pytest.mark.slow  # the real entry point, a bubblewrap sandbox

SCRIPT = """
[[turns]]
text = "running the slow suite"
[[turns.tool_calls]]
name = "execute"
args = { command = "echo started > started; sleep %s" }

[[turns]]
text = "done"
"""

HOST_RESOURCES = ("mounts", "cgroups", "portals", "loop devices")


def project(directory: Path, token: str) -> Path:
    directory.mkdir(parents=True)
    (directory / "script.toml").write_text(SCRIPT % token)
    (directory / "corral.toml").write_text('[agents.fixer]\nmodel = "scripted:script.toml"\n')
    return directory


def run_until_the_command_runs(home: Path, cwd: Path, repo: Path, token: str) -> subprocess.Popen[str]:
    proc = start_corral("--home", str(home), "run", "fixer", "task", "--repo", str(repo), cwd=cwd, home=None)
    deadline = time.monotonic() + 90
    while not processes_with(f"sleep {token}") or not list(home.glob("runs/*/workspace/started")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.1)
    return proc


def footprint(home: Path) -> dict[str, list[str]]:
    found = host_footprint(home, [path for path in home.glob("runs/*") if path.is_dir()])
    return {name: found[name] for name in (*HOST_RESOURCES, "disk images", "uid claims")}


def gone(token: str) -> bool:
    for _ in range(100):
        if not processes_with(token):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_run_keeps_its_files_and_holds_nothing_else(tmp_path: Path, signum: signal.Signals) -> None:
    skip_unless_bubblewrap_runs()
    token = f"93.{time.monotonic_ns() % 10**6:06d}"
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README").write_text("hi\n")
    home = tmp_path / "home"
    proc = run_until_the_command_runs(home, project(tmp_path / "project", token), repo, token)
    try:
        proc.send_signal(signum)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signum, err
    assert "its sandbox is kept" in err
    assert gone(token)
    left = footprint(home)
    assert {name: left[name] for name in HOST_RESOURCES} == {name: [] for name in HOST_RESOURCES}

    record, _ = stored(home)
    cancelled = run_corral("--home", str(home), "cancel", record.id, cwd=tmp_path, home=None)
    assert cancelled.returncode == 0, cancelled.stderr
    assert footprint(home) == {name: [] for name in left}
    assert "b/started" in stored(home)[0].result["patch"]


def test_after_sigkill_cancel_removes_the_sandbox_and_prune_finds_nothing_of_it(tmp_path: Path) -> None:
    skip_unless_bubblewrap_runs()
    token = f"94.{time.monotonic_ns() % 10**6:06d}"
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README").write_text("hi\n")
    home = tmp_path / "home"
    proc = run_until_the_command_runs(home, project(tmp_path / "project", token), repo, token)
    proc.kill()
    proc.wait(timeout=30)
    assert gone(token)  # bwrap --die-with-parent
    assert footprint(home)["mounts"], "SIGKILL skipped cleanup: the sandbox should still be there"

    record, _ = stored(home)
    cancelled = run_corral("--home", str(home), "cancel", record.id, cwd=tmp_path, home=None)
    assert cancelled.returncode == 0, cancelled.stderr
    pruned = run_corral("--home", str(home), "sandbox", "prune", cwd=tmp_path, home=None)
    assert pruned.returncode == 0, pruned.stderr
    assert str(home) not in pruned.stdout  # nothing of this run was left to prune, or kept
    assert footprint(home) == {name: [] for name in footprint(home)}
    ended, _ = stored(home)
    assert ended.status.value == "cancelled"
    assert "b/started" in ended.result["patch"]  # the work done before the kill is kept
