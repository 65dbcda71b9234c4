"""``corral runs`` and ``corral show``: a run whose process was killed shows as interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from corral.models.scripted import Script, ScriptedServer, ToolCall, Turn
from tests.e2e.cli_helpers import CORRAL, corral, corral_json, write_config
from tests.store.executor_process import executor_process, sigkill

pytestmark = pytest.mark.slow


def row_of(table: str, run_id: str) -> str:
    (line,) = [line for line in table.splitlines() if line.split() and line.split()[0] == run_id]
    return line


def test_runs_and_show_say_interrupted_when_the_executor_was_killed(tmp_path: Path, home: Path) -> None:
    with (
        executor_process(home, "ex-killed", "run-killed") as killed,
        executor_process(home, "ex-live", "run-live"),
    ):
        sigkill(killed)

        listed = {r["id"]: r for r in corral_json("runs", cwd=tmp_path, home=home)}
        assert (listed["run-killed"]["status"], listed["run-killed"]["interrupted"]) == ("running", True)
        assert (listed["run-live"]["status"], listed["run-live"]["interrupted"]) == ("running", False)

        table = corral("runs", cwd=tmp_path, home=home)
        assert table.returncode == 0, table.stderr
        assert "interrupted" in row_of(table.stdout, "run-killed")
        assert "running" in row_of(table.stdout, "run-live")
        assert "interrupted" not in row_of(table.stdout, "run-live")

        shown = corral("show", "run-killed", cwd=tmp_path, home=home)
        assert shown.returncode == 0, shown.stderr
        assert "interrupted (was running; `corral resume run-killed` continues it)" in shown.stdout
        assert corral_json("show", "run-killed", cwd=tmp_path, home=home)["interrupted"] is True
        live = corral("show", "run-live", cwd=tmp_path, home=home)
        assert "running" in live.stdout and "interrupted" not in live.stdout
        assert corral_json("trace", "run-killed", cwd=tmp_path, home=home)["run"]["interrupted"] is True


def test_a_corral_run_killed_mid_way_is_listed_as_interrupted(tmp_path: Path, repo: Path) -> None:
    home = tmp_path / "home"
    # The second model call is in flight for 5 s: long enough to look at the run, then kill it.
    slow = Script(
        turns=[
            Turn(tool_calls=[ToolCall(name="execute", args={"command": "echo step"})]),
            Turn(text="done", delay=5),
        ]
    )
    with ScriptedServer(slow) as server:
        write_config(tmp_path, base_url=server.openai_base_url)
        proc = subprocess.Popen(
            [*CORRAL, "run", "fixer", "a slow task", "--repo", str(repo)],
            cwd=tmp_path,
            env={**os.environ, "CORRAL_HOME": str(home)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            server.wait_for_requests(1, timeout=60)
            (during,) = corral_json("runs", cwd=tmp_path, home=home)
            assert (during["status"], during["interrupted"]) == ("running", False)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    (after,) = corral_json("runs", cwd=tmp_path, home=home)
    assert (after["id"], after["status"], after["interrupted"]) == (during["id"], "running", True)


def test_runs_json_keeps_its_keys(tmp_path: Path, home: Path) -> None:
    with executor_process(home, "ex", "run-1"):
        proc = corral("runs", "--json", cwd=tmp_path, home=home)
    (run,) = json.loads(proc.stdout)
    assert {"id", "agent", "status", "interrupted", "task", "usage", "cost_usd", "result"} <= set(run)
    assert (run["continues_id"], run["cost_known"]) == (None, True)  # keys added by issue 8
