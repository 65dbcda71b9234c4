"""``corral trace RUN --follow`` streams the journal of a run that another process executes, until it ends."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from corral.events import ModelRequested, RunFinished
from corral.store import RunStatus, Store
from tests.e2e.cli_helpers import CORRAL, corral, corral_json
from tests.store.runs import add_run, finished_run_events

pytestmark = pytest.mark.slow

SLOW_SCRIPT = """
[[turns]]
text = "Running the slow suite."
tool_calls = [{ name = "execute", args = { command = "sleep 3; echo slow done" } }]

[[turns]]
text = "All done."
"""


def start(args: list[str], *, cwd: Path, home: Path) -> subprocess.Popen[str]:
    """``corral ARGS`` in a process of its own, its output piped."""
    return launch([*CORRAL, *args], cwd=cwd, home=home)


def launch(argv: list[str], *, cwd: Path, home: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "CORRAL_HOME": str(home), "COLUMNS": "120"}
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_event(home: Path, event_type: str, timeout: float = 60) -> str:
    """The id of the first run of the store once its journal has an event of ``event_type``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (home / "corral.db").exists():
            store = Store.open(home=home)
            try:
                for run in store.list_runs():
                    if any(e.type == event_type for e in store.events(run.id)):
                        return run.id
            finally:
                store.close()
        time.sleep(0.1)
    raise TimeoutError(f"no {event_type} event")


@pytest.fixture
def slow_run(tmp_path: Path, repo: Path, home: Path):
    """A real run executed by a second `corral run` process; its model waits on a 3 s command."""
    (tmp_path / "slow.toml").write_text(SLOW_SCRIPT)
    (tmp_path / "corral.toml").write_text('[agents.fixer]\nmodel = "scripted:slow.toml"\nsandbox = "local"\n')
    proc = start(["run", "fixer", "run the slow suite", "--repo", str(repo)], cwd=tmp_path, home=home)
    try:
        yield proc, wait_for_event(home, "run.started")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def read_until(proc: subprocess.Popen[str], needle: str, timeout: float = 60) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} never came; got {lines}")


def test_follow_prints_events_as_another_process_runs_them_and_exits_with_its_status(
    slow_run, tmp_path: Path, home: Path
) -> None:
    run_proc, run_id = slow_run
    follower = start(["trace", run_id, "--follow"], cwd=tmp_path, home=home)
    try:
        early = read_until(follower, 'execute(command="sleep 3; echo slow done")')
        assert run_proc.poll() is None, "the run ended before its tool call was shown: nothing was followed"
        assert early[0].startswith(f"run {run_id} fixer")
        out, err = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, err
    lines = early + out.splitlines()
    assert any("execute  ✓ exit 0" in line for line in lines)
    assert any("run.finished  status=succeeded" in line for line in lines)
    assert lines[-1].startswith(f"run {run_id} fixer · succeeded")
    assert "Traceback" not in err


def test_follow_json_prints_one_event_per_line_as_trace_json_has_them(slow_run, tmp_path: Path, home: Path) -> None:
    _, run_id = slow_run
    follower = start(["trace", run_id[:10], "--follow", "--json"], cwd=tmp_path, home=home)
    out, err = follower.communicate(timeout=90)
    assert follower.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert {line.pop("v") for line in lines} == {1}  # the event lines of `corral run --json`
    assert [e["seq"] for e in lines] == list(range(1, len(lines) + 1))
    assert lines[-1]["type"] == "run.finished" and lines[-1]["data"]["status"] == "succeeded"
    assert lines == corral_json("trace", run_id, cwd=tmp_path, home=home)["events"]
    assert out.isascii()


def test_follow_json_stops_when_its_reader_goes_away(tmp_path: Path, home: Path) -> None:
    store = Store.open(home=home)
    add_run(store, "stuck", status=RunStatus.RUNNING)  # interrupted: followed until resumed, or the reader goes
    store.journal.append("stuck", finished_run_events()[0])
    store.journal.flush()
    command = shlex.join([*CORRAL, "trace", "stuck", "--follow", "--json"])
    pipeline = launch(["/bin/bash", "-c", f"{command} | head -n 1; exit ${{PIPESTATUS[0]}}"], cwd=tmp_path, home=home)
    try:
        assert pipeline.stdout is not None
        assert json.loads(pipeline.stdout.readline())["type"] == "run.started"  # head has its line
        # The next event it writes finds nobody reading: it stops.
        for n in range(100):
            if pipeline.poll() is not None:
                break
            store.journal.append("stuck", ModelRequested(**{**MORE_REQUEST, "key": f"model:{n + 1}:request"}))
            store.journal.flush()
            time.sleep(0.2)
        _, err = pipeline.communicate(timeout=30)
    finally:
        store.close()
        if pipeline.poll() is None:
            pipeline.kill()
    assert pipeline.returncode == 141, err
    assert "Traceback" not in err


MORE_REQUEST = {"call": 1, "model": "m", "message_count": 1, "new_messages": [], "tools": []}


@pytest.mark.parametrize(("status", "code"), [("succeeded", 0), ("failed", 1), ("cancelled", 3)])
def test_following_a_finished_run_prints_its_journal_and_exits_by_its_status(
    status: str, code: int, tmp_path: Path, home: Path
) -> None:
    store = Store.open(home=home)
    add_run(store, "done-run", status=RunStatus(status))
    for event in [*finished_run_events()[:-1], RunFinished(key="run.finished", status=status)]:
        store.journal.append("done-run", event)
    store.close()
    proc = corral("trace", "done-run", "--follow", "--json", cwd=tmp_path, home=home)
    assert proc.returncode == code, proc.stderr
    assert len(proc.stdout.splitlines()) == 6


def test_ctrl_c_stops_following_cleanly(tmp_path: Path, home: Path) -> None:
    store = Store.open(home=home)
    add_run(store, "stuck", status=RunStatus.RUNNING)  # no process: interrupted, so it never ends by itself
    for event in finished_run_events()[:2]:
        store.journal.append("stuck", event)
    store.close()
    follower = start(["trace", "stuck", "--follow"], cwd=tmp_path, home=home)
    try:
        read_until(follower, "model call 1 requested")
        dispositions = _signal_state(follower.pid)  # a SIGINT ignored or blocked here is the caller's doing
        follower.send_signal(signal.SIGINT)
        try:
            _, err = follower.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            mine = (signal.getsignal(signal.SIGINT), signal.pthread_sigmask(signal.SIG_BLOCK, []))
            raise AssertionError(f"SIGINT did not stop it; its signals: {dispositions}; ours: {mine}") from None
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 130
    assert "run stuck is interrupted (its process is gone); following it until it is resumed" in err
    assert "stopped following run stuck; it goes on" in err
    assert "Traceback" not in err


def _signal_state(pid: int) -> str:
    """The SigBlk/SigIgn/SigCgt lines of a process (bit 1 is SIGINT)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError as exc:
        return f"unreadable: {exc}"
    return "; ".join(line for line in status.splitlines() if line.startswith(("SigBlk", "SigIgn", "SigCgt")))
