"""Following a run's journal with the runs its program dispatches (what ``corral --server URL run --json``
streams): every run's events in order, runs found as they are dispatched, and an end even when a
dispatched run was never made or its process died."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.cli import inspection
from corral.cli.inspection import journal_until_end, journals_until_end
from corral.events import BaseEvent, RunFinished, RunStarted, TaskDispatched
from corral.store import EventRecord, Store
from tests.store.runs import add_run


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    monkeypatch.setattr(inspection, "FOLLOW_POLL_S", 0.02)
    monkeypatch.setattr(inspection, "FINISH_GRACE_S", 0.15)
    opened = Store.open(home=tmp_path / "home")
    yield opened
    opened.close()


def started(agent: str = "a") -> RunStarted:
    return RunStarted(key="run.started", agent=agent, task="t", model="m", engine="native", spec_hash="h", repo="/r")


def dispatched(child: str) -> TaskDispatched:
    return TaskDispatched(key=f"task:{child}:dispatch", call_id=child, child_id=child, agent="b", mode="workflow")


def finished() -> RunFinished:
    return RunFinished(key="run.finished", status="succeeded")


def write(store: Store, run_id: str, *events: BaseEvent) -> None:
    for event in events:
        store.journal.append(run_id, event)
    store.journal.flush()


def per_run(entries: list[EventRecord]) -> dict[str, list[tuple[str, int]]]:
    runs: dict[str, list[tuple[str, int]]] = {}
    for entry in entries:
        runs.setdefault(entry.run_id, []).append((entry.event.type, entry.seq))
    return runs


def test_the_dispatched_runs_are_followed_too_at_any_depth(store: Store) -> None:
    add_run(store, "root")
    write(store, "root", started(), dispatched("child"))

    def the_tree_goes_on() -> None:  # as the process executing it would, while the reader follows
        time.sleep(0.05)
        add_run(store, "child", parent_id="root")
        write(store, "child", started("b"), dispatched("grandchild"))
        time.sleep(0.05)
        add_run(store, "grandchild", parent_id="child")
        write(store, "grandchild", started("c"), finished())
        write(store, "child", finished())
        write(store, "root", finished())

    going_on = threading.Thread(target=the_tree_goes_on)
    going_on.start()
    try:
        entries = list(journals_until_end(store, {"root": 0}, children=True))
    finally:
        going_on.join()
    assert per_run(entries) == {
        "root": [("run.started", 1), ("task.dispatch", 2), ("run.finished", 3)],
        "child": [("run.started", 1), ("task.dispatch", 2), ("run.finished", 3)],
        "grandchild": [("run.started", 1), ("run.finished", 2)],
    }
    # Without children: the run's own journal only, as `corral trace --follow` shows it.
    assert per_run(list(journal_until_end(store, "root"))) == {"root": per_run(entries)["root"]}


def test_a_dispatched_run_never_made_is_not_waited_for(store: Store) -> None:
    """Its dispatcher ended first (cancelled before the child's row was written): nothing to wait for."""
    add_run(store, "root")
    write(store, "root", started(), dispatched("never-made"), finished())
    begun = time.monotonic()
    assert per_run(list(journals_until_end(store, {"root": 1}, children=True))) == {
        "root": [("task.dispatch", 2), ("run.finished", 3)]
    }
    assert time.monotonic() - begun < 5


@pytest.mark.slow  # waits out the grace: the full suite runs it, the fast lane does not
def test_a_dispatched_run_left_unfinished_after_its_dispatcher_ended_is_followed_for_a_grace_only(
    store: Store,
) -> None:
    """Its process died mid-write: the follower waits the grace (here 0.15 s), not forever."""
    add_run(store, "root")
    add_run(store, "child", parent_id="root")
    write(store, "root", started(), dispatched("child"), finished())
    write(store, "child", started("b"))
    begun = time.monotonic()
    entries = list(journals_until_end(store, {"root": 0}, children=True))
    assert per_run(entries)["child"] == [("run.started", 1)]
    assert 0.15 <= time.monotonic() - begun < 5


def test_a_run_that_is_not_there_is_an_error(store: Store) -> None:
    from corral.errors import RunNotFoundError

    with pytest.raises(RunNotFoundError):
        list(journals_until_end(store, {"nope": 0}, children=True))
