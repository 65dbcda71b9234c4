"""The one reader of journal heads behind every live stream: it wakes a stream when its run's journal
passes the stream's ``seq`` or the run ends, and reads the database once per poll however many
streams wait."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event

from corral.events import ToolCalled
from corral.server.watch import Head, JournalWatch
from corral.store import RunStatus, Store
from tests.store.runs import add_run

pytestmark = pytest.mark.anyio

POLL_S = 0.02
KEYS = itertools.count()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(home=tmp_path / "home")
    yield opened
    opened.close()


def append(store: Store, run_id: str, n: int) -> None:
    """``n`` more events in the run's journal."""
    for _ in range(n):
        key = f"call-{next(KEYS)}"
        store.journal.append(run_id, ToolCalled(key=key, call_id=key, tool="execute", args={}))
    store.journal.flush()


async def waited(watch: JournalWatch, run_id: str, after: int, seconds: float = 5.0) -> Head | None:
    try:
        async with asyncio.timeout(seconds):
            return await watch.wait(run_id, after)
    except TimeoutError:
        return None


async def test_a_stream_is_woken_when_its_journal_grows_or_its_run_ends(store: Store) -> None:
    watch = JournalWatch(store, poll_s=POLL_S)
    add_run(store, "r1")
    append(store, "r1", 2)
    assert await waited(watch, "r1", after=0) == Head(seq=2, status="running")  # already past: at the first poll
    assert await waited(watch, "r1", after=2, seconds=0.1) is None  # nothing new: it waits on

    growing = asyncio.create_task(waited(watch, "r1", after=2))
    await asyncio.sleep(0.05)
    await asyncio.to_thread(append, store, "r1", 1)
    assert await growing == Head(seq=3, status="running")

    ending = asyncio.create_task(waited(watch, "r1", after=3))
    await asyncio.sleep(0.05)
    store.update_run("r1", status=RunStatus.SUCCEEDED)
    head = await ending
    assert head is not None and head.ended and head.seq == 3

    gone = await waited(watch, "no-such-run", after=0)  # deleted (or never there): ended
    assert gone == Head(seq=0, status=None) and gone.ended


@pytest.mark.slow  # waits out real timeouts: the full suite runs it, the fast lane does not
async def test_many_waiting_streams_cost_one_query_per_poll(store: Store) -> None:
    watch = JournalWatch(store, poll_s=POLL_S)
    for n in range(50):
        add_run(store, f"run-{n}")
    queries: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        queries.append(statement)

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        streams = [asyncio.create_task(waited(watch, f"run-{n}", after=0, seconds=0.3)) for n in range(50)]
        assert await asyncio.gather(*streams) == [None] * 50  # quiet runs: every stream waited its time out
    finally:
        event.remove(store.engine, "before_cursor_execute", count)
    polls = len(queries)
    assert 1 <= polls <= 0.3 / POLL_S + 5, polls  # one per poll for all 50 (not 50 per poll)
    assert all("corral_runs" in q and "journal_seq" in q for q in queries)
    for _ in range(200):  # nobody waits: the reader stops after its poll
        if watch._task is not None and watch._task.done():
            break
        await asyncio.sleep(POLL_S)
    assert watch._task is not None and watch._task.done()


async def test_a_failing_read_is_said_once_and_the_streams_wait_on(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    watch = JournalWatch(store, poll_s=POLL_S)
    add_run(store, "r1")
    real = watch._heads
    failing = {"left": 5}

    def heads(run_ids: list[str]) -> dict[str, Head]:
        if failing["left"]:
            failing["left"] -= 1
            raise OSError("connection reset by peer")
        return real(run_ids)

    monkeypatch.setattr(watch, "_heads", heads)
    append(store, "r1", 1)
    with caplog.at_level(logging.WARNING, logger="corral.server"):
        assert await waited(watch, "r1", after=0) == Head(seq=1, status="running")
    warnings = [r.getMessage() for r in caplog.records if "journals' heads" in r.getMessage()]
    assert warnings == ["reading the journals' heads failed (retrying): connection reset by peer"]


@pytest.mark.slow  # waits out real timeouts: the full suite runs it, the fast lane does not
async def test_a_stream_that_starts_waiting_during_a_read_waits_for_the_next_one(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read in flight did not ask for its run: it must not take the run's absence for a deletion."""
    watch = JournalWatch(store, poll_s=POLL_S)
    add_run(store, "r1")
    add_run(store, "r2")
    real, reading, go_on = watch._heads, threading.Event(), threading.Event()

    def slow_first_read(run_ids: list[str]) -> dict[str, Head]:
        if not go_on.is_set():
            reading.set()
            go_on.wait(10)
        return real(run_ids)

    monkeypatch.setattr(watch, "_heads", slow_first_read)
    first = asyncio.create_task(waited(watch, "r1", after=0, seconds=0.3))
    assert await asyncio.to_thread(reading.wait, 10)  # the read of r1's head is in flight
    second = asyncio.create_task(waited(watch, "r2", after=0, seconds=0.15))
    await asyncio.sleep(0.02)
    go_on.set()
    assert await second is None  # quiet r2: it waited its time out, not woken as deleted
    assert await first is None
