"""Runs on a ``scripted:`` model: served by whichever process executes the run, a resumed one included."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.e2e.cli_helpers import CORRAL, corral

from corral.errors import StoreError
from corral.models.providers import close_served_models
from corral.runtime import Runtime
from corral.spec import AgentSpec
from corral.store import RunStatus, Store

TURNS = 6
DELAY_S = 0.3


@pytest.fixture(autouse=True)
def no_servers_left() -> Iterator[None]:
    close_served_models()
    yield
    close_served_models()


@pytest.mark.slow  # a whole run
@pytest.mark.anyio
async def test_a_run_on_a_scripted_model_needs_no_server_of_its_own_and_costs_nothing(
    home: Path, repo: Path, fix_script: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.chdir(fix_script.parent)
    spec = AgentSpec(name="fixer", model=f"scripted:{fix_script.name}", sandbox="local")
    store = Store.open(home=home)
    try:
        async with Runtime(store) as runtime:
            record = await runtime.run(spec, "fix the failing test", repo)
        events = store.events(record.id)
    finally:
        store.close()
    assert record.status is RunStatus.SUCCEEDED, record.error
    assert record.result is not None and record.result["text"] == "Fixed add() to return a + b; the tests pass."
    assert record.spec["model"] == f"scripted:{fix_script}"  # recorded absolute
    responses = [e for e in events if e.type == "model.response"]
    assert len(responses) == 6
    assert {e.data["model"] for e in responses} == {f"scripted:{fix_script}"}
    assert record.usage.cost_usd == 0.0
    assert all(e.data["cost_usd"] == 0.0 for e in responses)


def numbered_script(path: Path) -> Path:
    """Turn ``i`` says ``step i``, so the journal shows which turn answered each model call."""
    turns = [
        f'[[turns]]\ndelay = {DELAY_S}\ntext = "step {i}"\n[[turns.tool_calls]]\nname = "execute"\n'
        f'args = {{ command = "echo step-{i} >> progress.log" }}\n'
        for i in range(TURNS - 1)
    ]
    turns.append(f'[[turns]]\ndelay = {DELAY_S}\ntext = "step {TURNS - 1}"\n')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(turns))
    return path


def model_texts(home: Path, run_id: str) -> list[str]:
    store = Store.open(home=home)
    try:
        responses = [e for e in store.events(run_id) if e.type == "model.response"]
    finally:
        store.close()
    return [p.get("content", "") for e in responses for p in e.data["parts"] if p.get("part_kind") == "text"]


@pytest.mark.slow
def test_a_run_killed_mid_way_resumes_from_another_directory_with_the_next_turn(tmp_path: Path, repo: Path) -> None:
    home = tmp_path / "home"
    project = tmp_path / "project"
    numbered_script(project / "sessions" / "numbered.toml")
    (project / "corral.toml").write_text(
        '[agents.stepper]\nmodel = "scripted:sessions/numbered.toml"\nsandbox = "local"\n'
        "[agents.stepper.retry]\ninitial_backoff_s = 0.01\n"
    )
    env = {**os.environ, "CORRAL_HOME": str(home)}
    proc = subprocess.Popen(
        [*CORRAL, "run", "stepper", "do every step", "--repo", str(repo)],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        run_id = None
        while run_id is None and time.monotonic() < deadline:
            time.sleep(0.05)
            if not (home / "corral.db").exists():
                continue
            try:  # the run's process may still be creating the store
                store = Store.open(home=home)
            except StoreError:
                continue
            runs = store.list_runs()
            store.close()
            if runs and len(model_texts(home, runs[0].id)) >= 2:
                run_id = runs[0].id
        assert run_id is not None, "the run never got two model responses"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    before = model_texts(home, run_id)
    assert 2 <= len(before) < TURNS

    # Another directory: the recorded spec holds the script's absolute path, and this process serves it.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    resumed = corral("resume", cwd=elsewhere, home=home, timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    store = Store.open(home=home)
    record = store.get_run(run_id)
    store.close()
    assert record.status is RunStatus.SUCCEEDED, record.error
    assert record.turns == TURNS
    # A fresh server picked each turn by the conversation's position: no turn repeated, none skipped.
    assert model_texts(home, run_id) == [f"step {i}" for i in range(TURNS)]
