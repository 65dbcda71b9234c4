"""``corral worker``: runs submitted to a queue are executed by several worker processes; a worker
killed with SIGKILL has its runs finished by the others, from their last completed step."""

from __future__ import annotations

import asyncio
import collections
import json
import time
from pathlib import Path

import pytest

from corral.models.scripted import ScriptedServer, load_script
from corral.runtime import Runtime
from corral.spec import load_config
from corral.store import RunStatus, Store
from tests.e2e.cli_helpers import (
    corral,
    executor_of,
    kill_worker_mid_run,
    output_of,
    start_worker,
    step_script,
    stop_workers,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.slow

RUNS = 12
TURNS = 5
DELAY_S = 0.3


def test_workers_share_a_queue_and_finish_a_killed_workers_runs(
    tmp_path: Path, repo: Path, home: Path, database: str
) -> None:
    with ScriptedServer(load_script(step_script(tmp_path, turns=TURNS, delay_s=DELAY_S))) as server:
        config = write_config(tmp_path, base_url=server.openai_base_url)
        spec = load_config(config).agent("fixer")
        store = Store.open(home=home)
        workers = [start_worker(tmp_path, home, "--concurrency", "2") for _ in range(3)]
        try:
            ids = [executor_of(store, w) for w in workers]

            async def submit() -> list[str]:
                runtime = Runtime(store)
                return [(await runtime.enqueue(spec, f"task-{i:02d}", repo)).id for i in range(RUNS)]

            run_ids = asyncio.run(submit())
            victim, victim_id = workers[0], ids[0]
            # Kill the first worker while it runs at least one of them, mid-way through its model steps.
            wait_until(
                lambda: any(
                    r.executor_id == victim_id and r.status is RunStatus.RUNNING for r in store.list_runs(limit=None)
                ),
                60,
                "the first worker to take a run",
            )
            time.sleep(DELAY_S * 2.5)

            killed_mid_way, in_flight = kill_worker_mid_run(store, victim, victim_id)

            wait_until(lambda: all(store.get_run(r).status.finished for r in run_ids), 120, "every run to end")
            requests = server.requests
        finally:
            stop_workers(workers)

        for worker in workers[1:]:
            assert worker.returncode == 0, output_of(worker)

        records = [store.get_run(r) for r in run_ids]
        assert [r.status for r in records] == [RunStatus.SUCCEEDED] * RUNS, [r.error for r in records]
        assert {r.executor_id for r in records} <= set(ids[1:])  # every run ended on a live worker
        for record in records:
            events = store.events(record.id)
            assert [e.seq for e in events] == list(range(1, len(events) + 1)), f"{record.id}: journal has a gap"
            assert len({e.key for e in events}) == len(events), f"{record.id}: journal has a duplicate"
            assert [e.type for e in events].count("model.response") == TURNS
            assert store.verify_journal(record.id).intact, store.verify_journal(record.id).problems
            resumed = [e for e in events if e.type == "run.resumed"]
            if record.id in killed_mid_way:
                assert resumed, f"{record.id} was the killed worker's: another worker resumed it"
            if resumed:
                assert record.id in in_flight, f"{record.id} resumed, but the killed worker did not run it"

        # Each model step was requested once; only a step in flight when the worker died may repeat.
        for i, record in enumerate(records):
            per_step = collections.Counter(r.position for r in requests if f"task-{i:02d}" in json.dumps(r.body))
            assert sorted(per_step) == list(range(TURNS)), (record.id, per_step)
            repeated = [step for step, count in per_step.items() if count > 1]
            if record.id in in_flight:
                assert len(repeated) <= 1 and max(per_step.values()) <= 2, (record.id, per_step)
            else:
                assert not repeated, (record.id, per_step)

        # The runs list says who runs what; a gone worker is forgotten once its runs are recovered.
        listed = corral("runs", "--json", "--limit", "50", cwd=tmp_path, home=home)
        assert listed.returncode == 0, listed.stderr
        assert {r["status"] for r in json.loads(listed.stdout)} == {"succeeded"}
        assert victim_id not in {e.id for e in store.executors()}
        store.close()


def test_a_submitted_run_waits_queued_until_a_worker_takes_it(tmp_path: Path, repo: Path, home: Path) -> None:
    with ScriptedServer(load_script(step_script(tmp_path, turns=TURNS, delay_s=DELAY_S))) as server:
        write_config(tmp_path, base_url=server.openai_base_url)
        submitted = corral("run", "fixer", "task-0", "--repo", str(repo), "--submit", "--json", cwd=tmp_path, home=home)
        assert submitted.returncode == 0, submitted.stderr
        run = json.loads(submitted.stdout)
        assert (run["status"], run["queue"]) == ("queued", "corral.runs")

        # Not interrupted, not taken by a `corral run` process: queued until a worker serves it.
        store = Store.open(home=home)
        assert store.get_run(run["id"]).display_status == "queued"
        assert [r.id for r in store.list_runs(status="queued")] == [run["id"]]
        assert store.list_runs(status="interrupted") == []
        other = corral("run", "fixer", "task-1", "--repo", str(repo), "--json", cwd=tmp_path, home=home)
        assert other.returncode == 0, other.stderr
        assert store.get_run(run["id"]).display_status == "queued"

        worker = start_worker(tmp_path, home)
        try:
            wait_until(lambda: store.get_run(run["id"]).status.finished, 60, "the worker to run it")
        finally:
            worker.terminate()
            worker.wait(30)
        assert store.get_run(run["id"]).status is RunStatus.SUCCEEDED
        store.close()

        human = corral("run", "fixer", "task-2", "--repo", str(repo), "--submit", cwd=tmp_path, home=home)
        assert human.returncode == 0 and "queued on corral.runs" in human.stdout
        assert "corral trace" in human.stderr + human.stdout

        bad = corral(
            "run", "fixer", "t", "--repo", str(repo), "--submit", "--queue", "Bad Name", cwd=tmp_path, home=home
        )
        assert bad.returncode == 2 and "cannot name a run queue" in bad.stderr
        lonely = corral("run", "fixer", "t", "--repo", str(repo), "--queue", "q", cwd=tmp_path, home=home)
        assert lonely.returncode == 2 and "--submit" in lonely.stderr
