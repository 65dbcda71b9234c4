"""The control plane end to end: PostgreSQL, ``corral serve`` and three ``corral worker``s as real
processes; runs submitted over the API finish through a worker's SIGKILL, each completed model step
requested once, and a client follows one run live over SSE through a dropped connection."""

from __future__ import annotations

import collections
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from corral.models.scripted import ScriptedServer, load_script
from corral.store import RunStatus, Store
from tests.e2e.cli_helpers import (
    executor_of,
    kill_worker_mid_run,
    output_of,
    start_worker,
    step_script,
    stop_workers,
    wait_until,
)
from tests.server.conftest import start_server, stop

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

RUNS = 30
TURNS = 5
DELAY_S = 0.2
WORKERS = 3
FINISHED = {s.value for s in RunStatus if s.finished}


def sse_events(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """Server-sent events, each as it completes, from a stream's lines (comments skipped)."""
    current: dict[str, str] = {}
    for line in lines:
        if not line:
            if current:
                yield current
            current = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            current[name] = value.removeprefix(" ")


def journal(client: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    """A run's whole journal, paged through ``GET /v1/runs/{id}/events``."""
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        page = client.get(f"/v1/runs/{run_id}/events", params={"after": after, "limit": 100})
        assert page.status_code == 200, page.text
        body = page.json()
        if not body["events"]:
            return events
        events += body["events"]
        after = body["next_after"]


def follow_with_a_dropped_connection(client: httpx.Client, run_id: str) -> tuple[list[dict[str, str]], str]:
    """Stream a run's events; go away once two model steps are seen (mid-run), come back with
    ``Last-Event-ID`` after the journal grew meanwhile, and read on to ``end``. Every SSE event seen,
    and the status the run had when the connection dropped."""
    seen: list[dict[str, str]] = []
    path = f"/v1/runs/{run_id}/events/stream"
    with client.stream("GET", path) as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        for event in sse_events(stream.iter_lines()):
            seen.append(event)
            if [e.get("event") for e in seen].count("model.response") == 2:
                break  # the client goes away mid-run: leaving the block closes the connection
    dropped_while = client.get(f"/v1/runs/{run_id}").json()["status"]
    last_id = seen[-1]["id"]
    wait_until(
        lambda: client.get(f"/v1/runs/{run_id}/events", params={"after": last_id}).json()["events"],
        30,
        "the run to go on while nobody watched",
    )
    with client.stream("GET", path, headers={"Last-Event-ID": last_id}) as stream:
        assert stream.status_code == 200
        seen += sse_events(stream.iter_lines())  # the server ends the stream after `end`
    return seen, dropped_while


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
def test_runs_submitted_over_the_api_finish_once_each_through_a_killed_worker_and_stream_live(
    tmp_path: Path, repo: Path, home: Path, database: str
) -> None:
    store = Store(database, home=home)
    workers: list[subprocess.Popen[str]] = []
    server: subprocess.Popen[str] | None = None
    client: httpx.Client | None = None
    with ScriptedServer(load_script(step_script(tmp_path, turns=TURNS, delay_s=DELAY_S))) as model:
        try:
            workers += [start_worker(tmp_path, home, "--concurrency", "2") for _ in range(WORKERS)]
            server, address, admin_token = start_server(database, home, tmp_path)

            # The team's admin registers the agent and makes a token that may only submit and read runs.
            with httpx.Client(base_url=address, headers={"Authorization": f"Bearer {admin_token}"}) as admin:
                spec = {
                    "name": "stepper",
                    "model": "openai:gpt-6.1-terra",
                    "base_url": model.openai_base_url,
                    "sandbox": "local",
                    "retry": {"initial_backoff_s": 0.01, "max_backoff_s": 0.05},
                }
                registered = admin.post("/v1/specs", json={"spec": spec})
                assert registered.status_code == 201, registered.text
                made = admin.post(
                    "/v1/tokens",
                    json={"user": "admin", "team": "default", "scopes": ["runs:read", "runs:write"], "name": "ci"},
                )
                assert made.status_code == 201, made.text
            client = httpx.Client(
                base_url=address, headers={"Authorization": f"Bearer {made.json()['token']}"}, timeout=30
            )
            ids = [executor_of(store, w) for w in workers]

            run_ids = []
            for i in range(RUNS):
                run = {"agent": "stepper", "task": f"task-{i:02d}", "repo": str(repo)}
                submitted = client.post("/v1/runs", json=run)
                assert submitted.status_code == 201, submitted.text
                assert submitted.json()["status"] == "queued"
                run_ids.append(submitted.json()["id"])

            # Kill the first worker once one of its runs is mid-way: some model steps done, some to come.
            victim, victim_id = workers[0], ids[0]

            def on_victim() -> set[str]:
                return {
                    r.id for r in store.list_runs(limit=None) if r.executor_id == victim_id and not r.status.finished
                }

            def victim_mid_way() -> bool:
                return any(
                    [e.type for e in store.events(run_id)].count("model.response") >= 2 for run_id in on_victim()
                )

            wait_until(victim_mid_way, 60, "the first worker to be mid-way through a run")
            killed_mid_way, in_flight = kill_worker_mid_run(store, victim, victim_id)

            # Follow the last run submitted (still queued behind the others) live, dropping the connection once.
            watched = run_ids[-1]
            streamed, dropped_while = follow_with_a_dropped_connection(client, watched)

            def statuses() -> dict[str, str]:
                page = client.get("/v1/runs", params={"limit": 2 * RUNS})
                assert page.status_code == 200, page.text
                return {r["id"]: r["status"] for r in page.json()["runs"]}

            wait_until(lambda: set(statuses().values()) <= FINISHED, 120, "every run to end")
            requests = model.requests
            stop_workers(workers)
            for worker in workers[1:]:
                assert worker.returncode == 0, output_of(worker)

            # Every run succeeded, on a worker that lived.
            runs = [client.get(f"/v1/runs/{run_id}").json() for run_id in run_ids]
            assert statuses().keys() == set(run_ids)
            assert [r["status"] for r in runs] == ["succeeded"] * RUNS, [r["error"] for r in runs]
            assert {r["executor_id"] for r in runs} <= set(ids[1:])

            # Journals: gap-free, no event twice, every step answered once, hash chains intact.
            journals = {run_id: journal(client, run_id) for run_id in run_ids}
            for run_id, events in journals.items():
                assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), f"{run_id}: journal has a gap"
                assert len({e["key"] for e in events}) == len(events), f"{run_id}: journal has a duplicate"
                types = [e["type"] for e in events]
                assert types.count("model.response") == TURNS and types.count("run.finished") == 1, (run_id, types)
                verified = client.get(f"/v1/runs/{run_id}/verify").json()
                assert [v["intact"] for v in verified] == [True], verified
                assert verified[0]["events"] == len(events)
                if run_id in killed_mid_way:
                    assert "run.resumed" in types, f"{run_id} was the killed worker's: another worker resumed it"
                if "run.resumed" in types:
                    assert run_id in in_flight, f"{run_id} resumed, but the killed worker did not run it"

            # Each model step was requested once; only a step in flight when the worker died may repeat.
            for i, run_id in enumerate(run_ids):
                per_step = collections.Counter(r.position for r in requests if f"task-{i:02d}" in json.dumps(r.body))
                assert sorted(per_step) == list(range(TURNS)), (run_id, per_step)
                repeated = [step for step, count in per_step.items() if count > 1]
                if run_id in in_flight:
                    assert len(repeated) <= 1 and max(per_step.values()) <= 2, (run_id, per_step)
                else:
                    assert not repeated, (run_id, per_step)

            # The live stream: dropped mid-run, resumed, every event once and in order, then `end`.
            assert dropped_while not in FINISHED, "the stream ended before the connection dropped: nothing resumed"
            *events, end = streamed
            assert end["event"] == "end" and json.loads(end["data"]) == {"status": "succeeded"}, end
            assert [int(e["id"]) for e in events] == list(range(1, len(events) + 1))  # none lost, none twice
            assert [json.loads(e["data"]) for e in events] == journals[watched]
            assert [e["event"] for e in events] == [e["type"] for e in journals[watched]]

            # A gone worker is forgotten once its runs are recovered.
            assert victim_id not in {e.id for e in store.executors()}
        finally:
            if client is not None:
                client.close()
            stop_workers(workers)
            if server is not None:
                stop(server)
            store.close()
