"""The API as a client uses it: specs and their versions, runs paged, events paged and live (resumed
with ``Last-Event-ID`` after a dropped connection), a queued run cancelled, problem details."""

from __future__ import annotations

import json
import threading
import time

import pytest

from corral.events import ToolCalled
from tests.server.conftest import Server

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def sse(lines: list[str]) -> list[dict[str, str]]:
    """Server-sent events from the stream's lines."""
    events, current = [], {}
    for line in lines:
        if not line:
            if current:
                events.append(current)
            current = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            current[name] = value.removeprefix(" ")
    return events


def test_registering_the_same_spec_twice_makes_one_version(served: Server) -> None:
    spec = {"name": "versioned", "model": "openai:gpt-6.1-terra"}
    with served.client("admin") as client:
        first = client.post("/v1/specs", json={"spec": spec}).json()
        again = client.post("/v1/specs", json={"spec": spec}).json()
        second = client.post("/v1/specs", json={"spec": {**spec, "instructions": "Be brief."}}).json()
        assert (first["version"], first["created"], again["version"], again["created"]) == (1, True, 1, False)
        assert second["version"] == 2
        assert client.get("/v1/specs/versioned").json()["spec"]["instructions"] == "Be brief."
        assert client.get("/v1/specs/versioned?version=1").json()["spec_hash"] == first["spec_hash"]
        bad = client.post("/v1/specs", json={"spec": {"name": "broken", "model": "openai:x", "tools": ["nope"]}})
        assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
        assert "nope" in bad.json()["detail"]


def test_runs_page_newest_first_with_a_cursor_new_runs_do_not_shift(served: Server) -> None:
    with served.client("admin") as client:
        made = [
            client.post("/v1/runs", json={"agent": "fixer", "task": f"page {i}", "repo": served.ids["repo"]}).json()
            for i in range(5)
        ]
        first = client.get("/v1/runs", params={"limit": 2}).json()
        client.post("/v1/runs", json={"agent": "fixer", "task": "newer", "repo": served.ids["repo"]})
        second = client.get("/v1/runs", params={"limit": 2, "cursor": first["next_cursor"]}).json()
        newest = [r["id"] for r in reversed(made)]
        assert [r["id"] for r in first["runs"]] == newest[:2]
        assert [r["id"] for r in second["runs"]] == newest[2:4]
        assert all(r["display_status"] == "queued" and r["queue"] == "corral.runs" for r in first["runs"])
        bad = client.get("/v1/runs", params={"cursor": "not-a-cursor"})
        assert bad.status_code == 400 and bad.json()["type"].endswith("/bad-request")
        assert client.get("/v1/runs", params={"status": "nonsense"}).status_code == 400


def test_cancelling_a_run_still_in_its_queue_ends_it_at_once(served: Server) -> None:
    with served.client("admin") as client:
        run = client.post("/v1/runs", json={"agent": "fixer", "task": "never taken", "repo": served.ids["repo"]})
        started = time.monotonic()
        cancelled = client.post(f"/v1/runs/{run.json()['id']}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert time.monotonic() - started < 5
        again = client.post(f"/v1/runs/{run.json()['id']}/cancel")
        assert again.status_code == 409
        assert client.delete(f"/v1/runs/{run.json()['id']}").status_code == 204
        assert client.get(f"/v1/runs/{run.json()['id']}").status_code == 404


def test_events_page_in_order(served: Server) -> None:
    run_id = served.ids["run"]
    for i in range(5):
        served.store.journal.append(run_id, ToolCalled(key=f"page-{i}", call_id=str(i), tool="t", args={}))
    served.store.journal.flush()
    with served.client("admin") as client:
        first = client.get(f"/v1/runs/{run_id}/events", params={"limit": 3}).json()
        rest = client.get(f"/v1/runs/{run_id}/events", params={"after": first["next_after"]}).json()
    seqs = [e["seq"] for e in first["events"] + rest["events"]]
    assert seqs == list(range(1, len(seqs) + 1)) and len(first["events"]) == 3
    assert first["finished"] is False


def test_the_live_stream_resumes_after_a_dropped_connection_without_gap_or_repeat(served: Server) -> None:
    with served.client("admin") as client:
        run_id = client.post("/v1/runs", json={"agent": "fixer", "task": "live", "repo": served.ids["repo"]}).json()[
            "id"
        ]

    def write(start: int, count: int) -> None:
        for i in range(start, start + count):
            served.store.journal.append(run_id, ToolCalled(key=f"live-{i}", call_id=str(i), tool="t", args={"i": i}))
            time.sleep(0.005)
        served.store.journal.flush()

    seen: list[dict[str, str]] = []
    with served.client("admin") as client, client.stream("GET", f"/v1/runs/{run_id}/events/stream") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        writer = threading.Thread(target=write, args=(0, 20))
        writer.start()
        lines: list[str] = []
        for line in stream.iter_lines():
            lines.append(line)
            seen = sse(lines)
            if len(seen) >= 8:
                break  # the client goes away mid-run
        writer.join()
    last_id = seen[-1]["id"]

    write(20, 10)
    served.store.update_run(run_id, status="succeeded", finished_at=time.time())
    with (
        served.client("admin") as client,
        client.stream("GET", f"/v1/runs/{run_id}/events/stream", headers={"Last-Event-ID": last_id}) as stream,
    ):
        rest = sse(list(stream.iter_lines()))
    events = [e for e in seen + rest if e.get("event") != "end"]
    assert [int(e["id"]) for e in events] == list(range(1, 31))  # in order, none lost, none twice
    assert [json.loads(e["data"])["key"] for e in events] == [f"live-{i}" for i in range(30)]
    assert rest[-1]["event"] == "end" and json.loads(rest[-1]["data"]) == {"status": "succeeded"}
    with served.client("admin") as client:
        bad = client.get(f"/v1/runs/{run_id}/events/stream", headers={"Last-Event-ID": "yesterday"})
        assert bad.status_code == 400 and bad.headers["content-type"] == "application/problem+json"


def test_errors_are_problem_details(served: Server) -> None:
    with served.client("admin") as client:
        for response, status in (
            (client.get("/v1/runs/no-such-run"), 404),
            (client.get("/v1/nowhere"), 404),
            (client.put("/v1/runs"), 405),
            (client.post("/v1/runs", json={"agent": "fixer"}), 422),
            (client.post("/v1/runs", json={"agent": "ghost", "task": "t", "repo": "/"}), 404),
            (client.post("/v1/runs", json={"agent": "fixer", "task": "t", "repo": "/no/such/dir"}), 400),
        ):
            assert response.status_code == status, response.text
            assert response.headers["content-type"] == "application/problem+json"
            body = response.json()
            assert body["status"] == status and body["type"].startswith("https://") and body["title"]
        assert client.get("/openapi.json").json()["openapi"].startswith("3.")


def test_costs_add_up_per_agent_and_day(served: Server) -> None:
    with served.client("admin") as client:
        by_agent = client.get("/v1/costs", params={"by": "agent"}).json()
        by_day = client.get("/v1/costs", params={"by": "day"}).json()
        runs = client.get("/v1/runs", params={"limit": 500}).json()["runs"]
    assert sum(r["runs"] for r in by_agent["rows"]) == len(runs) == sum(r["runs"] for r in by_day["rows"])
    assert all(len(r["key"]) == 10 for r in by_day["rows"])  # YYYY-MM-DD
