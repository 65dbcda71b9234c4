"""Durability: a run killed with SIGKILL mid-way resumes from its last completed step, in a new process."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from corral.models.scripted import ScriptedServer, load_script
from corral.store import RunStatus, Store
from tests.e2e.cli_helpers import CORRAL, corral, step_script, write_config

pytestmark = pytest.mark.slow

TURNS = 8
DELAY_S = 0.4


@pytest.mark.parametrize("attempt", [0, 4])  # killed after 2 and after 6 responses: early and late
def test_sigkill_mid_run_then_resume_never_resends_a_completed_model_step(
    attempt: int, tmp_path: Path, repo: Path, database: str
) -> None:
    home = tmp_path / "home"
    kill_after = 2 + attempt  # model responses delivered before the kill
    with ScriptedServer(load_script(step_script(tmp_path, turns=TURNS, delay_s=DELAY_S))) as server:
        write_config(tmp_path, base_url=server.openai_base_url)
        env = {**os.environ, "CORRAL_HOME": str(home)}
        proc = subprocess.Popen(
            [*CORRAL, "run", "fixer", "do all the steps", "--repo", str(repo)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            server.wait_for_requests(kill_after, timeout=60)
            time.sleep(DELAY_S / 2)  # the next model request is now in flight
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
        store = Store.open(home=home)
        (record,) = store.list_runs()
        assert record.status is RunStatus.RUNNING
        responses_before = [e for e in store.events(record.id) if e.type == "model.response"]
        assert len(responses_before) < TURNS
        store.close()

        resumed = corral("resume", cwd=tmp_path, home=home, timeout=120)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        requests = server.requests

    store = Store.open(home=home)
    record = store.get_run(record.id)
    assert record.status is RunStatus.SUCCEEDED, record.error
    assert record.result is not None and record.result["text"] == "all steps done"
    assert record.turns == TURNS

    events = store.events(record.id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), "journal has a gap"
    chain = store.verify_journal(record.id)  # two processes wrote it: still one unbroken hash chain
    assert chain.intact and chain.head_seq == len(events), chain.problems
    keys = [e.key for e in events]
    assert len(keys) == len(set(keys)), "journal has a duplicate"
    types = [e.type for e in events]
    assert types.count("model.response") == TURNS
    assert types.count("run.finished") == 1
    assert "run.resumed" in types

    # Completed model steps were never sent again: only the request in flight at the kill may repeat.
    per_position = collections.Counter(r.position for r in requests)
    assert sorted(per_position) == list(range(TURNS))
    for position, count in per_position.items():
        if position == kill_after:
            assert count <= 2
        else:
            assert count == 1, f"model step {position} was requested {count} times"

    # Tool side effects: every step's command ran, and none of the completed ones ran twice.
    progress = (Path(record.run_dir) / "patch.diff").read_text()
    for i in range(TURNS - 1):
        assert f"+step-{i}" in progress
    assert progress.count("+step-0\n") == 1
    store.close()


def test_corral_run_runs_only_its_own_run_and_names_the_interrupted_one(tmp_path: Path, repo: Path) -> None:
    home = tmp_path / "home"
    with ScriptedServer(load_script(step_script(tmp_path, turns=TURNS, delay_s=DELAY_S))) as server:
        write_config(tmp_path, base_url=server.openai_base_url)
        env = {**os.environ, "CORRAL_HOME": str(home)}
        proc = subprocess.Popen(
            [*CORRAL, "run", "fixer", "first task", "--repo", str(repo)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server.wait_for_requests(2, timeout=60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        second = corral("run", "fixer", "second task", "--repo", str(repo), cwd=tmp_path, home=home, timeout=180)
        assert second.returncode == 0, second.stdout + second.stderr
        store = Store.open(home=home)
        runs = {r.task: r for r in store.list_runs()}
        first_id = runs["first task"].id
        # Another process's interrupted run is named with the command that resumes it, not adopted.
        assert f"1 interrupted run(s) wait for `corral resume`: {first_id}" in second.stderr
        assert first_id not in second.stdout
        assert runs["first task"].status is RunStatus.RUNNING
        assert runs["second task"].status is RunStatus.SUCCEEDED
        resumed = corral("resume", cwd=tmp_path, home=home, timeout=180)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert store.get_run(first_id).status is RunStatus.SUCCEEDED
    store.close()
