"""Every way a run ends keeps its patch and leaves nothing behind: cancel, budget, deadline, failure."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from corral.models.scripted import ScriptedServer, load_script
from corral.runtime import PATCH_FILE, Runtime
from corral.runtime.runtime import OUTCOME_FILE
from corral.sandbox.base import RUN_ENDED_MARKER
from corral.spec import AgentSpec
from corral.store import RunRecord, RunStatus, Store
from tests.sandbox.conftest import skip_unless_bubblewrap_runs
from tests.sandbox.host import host_footprint, processes_with

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def spec_for(server: ScriptedServer, *, sandbox: str = "bubblewrap", **extra: Any) -> AgentSpec:
    return AgentSpec.model_validate(
        {
            "name": "fixer",
            "model": "openai:gpt-6.1-terra",
            "base_url": server.openai_base_url,
            "sandbox": sandbox,
            "retry": {"initial_backoff_s": 0.01, "max_backoff_s": 0.05},
            **extra,
        }
    )


def session(tmp_path: Path, *turns: str) -> Any:
    path = tmp_path / "script.toml"
    path.write_text("\n".join(turns) + '\n[[turns]]\ntext = "done"\n')
    return load_script(path)


def execute_turn(command: str, timeout: float = 120) -> str:
    return (
        "[[turns]]\n[[turns.tool_calls]]\n"
        f"name = \"execute\"\nargs = {{ command = '{command}', timeout = {timeout} }}\n"
    )


WRITE_TURN = (
    '[[turns]]\n[[turns.tool_calls]]\nname = "write_file"\n'
    'args = { path = "progress.txt", content = "half of the work\\n" }\n'
)


def nothing_left(home: Path) -> dict[str, list[str]]:
    """What the run's sandbox still holds on the host, except the run directory's kept files."""
    footprint = host_footprint(home)
    kept = (PATCH_FILE, OUTCOME_FILE, RUN_ENDED_MARKER)
    footprint["run dir contents"] = [p for p in footprint["run dir contents"] if not p.endswith(kept)]
    return {kind: items for kind, items in footprint.items() if items and kind != "bwrap dirs"}


async def wait_until(predicate: Any, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def assert_partial_patch_kept(record: RunRecord) -> None:
    result = record.result or {}
    assert result["partial"] is True
    assert "+half of the work" in result["patch"], result
    assert result["files_changed"] == 1
    assert "+half of the work" in Path(record.run_dir, PATCH_FILE).read_text()


async def test_cancel_while_a_command_runs_kills_it_keeps_the_patch_and_leaves_nothing(
    tmp_path: Path, home: Path, repo: Path
) -> None:
    skip_unless_bubblewrap_runs()
    token = f"93.{secrets.randbelow(10**6):06d}"
    with ScriptedServer(session(tmp_path, WRITE_TURN, execute_turn(f"sleep {token}"))) as server:
        store = Store.open(home=home)
        try:
            async with Runtime(store) as runtime:
                record = await runtime.submit(spec_for(server), "slow work", repo)
                await wait_until(lambda: processes_with(token) != [])
                started = time.monotonic()
                ended = await runtime.cancel(record.id)
                assert time.monotonic() - started < 10
                assert ended.status is RunStatus.CANCELLED
                assert len(server.requests) == 2  # no model call after the cancel
            assert processes_with(token) == []
            assert_partial_patch_kept(ended)
            assert nothing_left(home) == {}
            finished = [e for e in store.events(record.id) if e.type == "run.finished"]
            assert len(finished) == 1 and finished[0].data["status"] == "cancelled"
        finally:
            store.close()


async def test_cancel_while_a_model_call_is_in_flight_leaves_nothing(tmp_path: Path, home: Path, repo: Path) -> None:
    skip_unless_bubblewrap_runs()
    slow_turn = '[[turns]]\ndelay = 120\ntext = "too late"\n'
    with ScriptedServer(session(tmp_path, WRITE_TURN, slow_turn)) as server:
        store = Store.open(home=home)
        try:
            async with Runtime(store) as runtime:
                record = await runtime.submit(spec_for(server), "slow thinking", repo)
                await wait_until(
                    lambda: any(e.type == "model.request" and e.data["call"] == 1 for e in store.events(record.id))
                )
                await asyncio.sleep(0.3)  # the request is on the wire
                started = time.monotonic()
                ended = await runtime.cancel(record.id)
                assert time.monotonic() - started < 10
            assert ended.status is RunStatus.CANCELLED
            assert_partial_patch_kept(ended)
            assert nothing_left(home) == {}
        finally:
            store.close()


@pytest.mark.parametrize("backend", ["local", "bubblewrap"])
async def test_a_run_stopped_by_its_budget_keeps_its_patch(
    tmp_path: Path, home: Path, repo: Path, backend: str
) -> None:
    if backend == "bubblewrap":
        skip_unless_bubblewrap_runs()
    with ScriptedServer(session(tmp_path, WRITE_TURN, execute_turn("true"), execute_turn("true"))) as server:
        store = Store.open(home=home)
        try:
            async with Runtime(store) as runtime:
                record = await runtime.run(spec_for(server, sandbox=backend, budget={"max_turns": 2}), "work", repo)
            assert record.status is RunStatus.FAILED
            assert record.error_type == "BudgetExceededError"
            assert_partial_patch_kept(record)
            assert nothing_left(home) == {}
        finally:
            store.close()


async def test_the_wall_time_budget_bounds_a_running_command(tmp_path: Path, home: Path, repo: Path) -> None:
    skip_unless_bubblewrap_runs()
    token = f"94.{secrets.randbelow(10**6):06d}"
    with ScriptedServer(session(tmp_path, WRITE_TURN, execute_turn(f"sleep {token}"))) as server:
        store = Store.open(home=home)
        try:
            async with Runtime(store) as runtime:
                spec = spec_for(server, budget={"max_wall_time_s": 4})
                started = time.monotonic()
                record = await runtime.run(spec, "work", repo)
                elapsed = time.monotonic() - started
            assert record.status is RunStatus.FAILED
            assert record.error_type == "BudgetExceededError", record.error
            assert "max_wall_time_s" in (record.error or "")
            assert elapsed < 4 + 5, elapsed  # the command was stopped at the deadline, not after 120 s
            assert processes_with(token) == []
            assert_partial_patch_kept(record)
            budget = [e for e in store.events(record.id) if e.type == "budget.exceeded"]
            assert [e.data["limit"] for e in budget] == ["max_wall_time_s"]
        finally:
            store.close()


def test_cancelling_a_run_whose_process_died_keeps_its_patch_and_leaves_nothing(
    tmp_path: Path, home: Path, repo: Path
) -> None:
    import os
    import signal
    import subprocess

    from tests.e2e.cli_helpers import CORRAL, corral

    skip_unless_bubblewrap_runs()
    slow_turn = '[[turns]]\ndelay = 120\ntext = "too late"\n'
    with ScriptedServer(session(tmp_path, WRITE_TURN, slow_turn)) as server:
        (tmp_path / "corral.toml").write_text(
            f'[agents.fixer]\nmodel = "openai:gpt-6.1-terra"\nbase_url = "{server.openai_base_url}"\n'
            'sandbox = "bubblewrap"\n'
        )
        proc = subprocess.Popen(
            [*CORRAL, "run", "fixer", "work", "--repo", str(repo)],
            cwd=tmp_path,
            env={**os.environ, "CORRAL_HOME": str(home), "OPENAI_API_KEY": "sk-test"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            server.wait_for_requests(1, timeout=60)
            deadline = time.monotonic() + 30
            while not any(p.name == "progress.txt" for p in home.glob("runs/*/workspace/*")):
                assert time.monotonic() < deadline, "the first tool call never wrote its file"
                time.sleep(0.05)
            time.sleep(0.5)  # the second model call is in flight
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        store = Store.open(home=home)
        try:
            (record,) = store.list_runs()
            assert record.interrupted
            cancelled = corral("cancel", record.id, cwd=tmp_path, home=home)
            assert cancelled.returncode == 0, cancelled.stderr
            assert f"run {record.id} cancelled" in cancelled.stdout
            ended = store.get_run(record.id)
            assert ended.status is RunStatus.CANCELLED
            assert_partial_patch_kept(ended)
            assert nothing_left(home) == {}
        finally:
            store.close()
