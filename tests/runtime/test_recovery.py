"""Housekeeping of the executor registry never takes a live executor for gone, whatever registers meanwhile.

Each test makes another process's step happen at the worst moment, between the reads the
housekeeping makes, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from corral.runtime.recovery import Heartbeat, dead_workers, forget_dead_executors
from corral.store import Store
from tests.store.runs import add_run

pytestmark = [pytest.mark.usefixtures("database"), pytest.mark.anyio]

HOST = socket.gethostname()


def test_executors_registering_meanwhile_are_neither_recovered_nor_forgotten(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store.open(home=home)
    store.register_executor("worker-a", HOST, os.getpid(), queues=["q"])
    read = store.executors

    def executors() -> list:
        # A worker and a `corral run` process start just before the registry is read.
        if "worker-b" not in {e.id for e in read()}:
            store.register_executor("worker-b", HOST, os.getpid(), queues=["q"])
            store.register_executor("run-c", HOST, os.getpid())
        return read()

    monkeypatch.setattr(store, "executors", executors)
    assert dead_workers(store, ["q"], exclude="worker-a") == []
    forget_dead_executors(store, exclude="worker-a")
    assert {e.id for e in read()} == {"worker-a", "worker-b", "run-c"}
    store.close()


def test_a_run_taken_by_an_executor_registered_meanwhile_is_not_interrupted(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store.open(home=home)
    live = store.live_executor_ids

    def live_executor_ids() -> set[str]:
        found = live()
        # Right after liveness is read, a new worker registers and takes a run.
        if "late" not in {e.id for e in store.executors()}:
            store.register_executor("late", HOST, os.getpid(), queues=["q"])
            add_run(store, "late-run", executor_id="late", queue="q")
        return found

    monkeypatch.setattr(store, "live_executor_ids", live_executor_ids)
    assert store.interrupted_runs() == []
    assert dead_workers(store, ["q"], exclude="worker-a") == []
    assert store.list_runs(status="interrupted") == []
    assert not store.get_run("late-run").interrupted
    store.close()


async def test_a_forgotten_executor_registers_again_at_its_next_heartbeat(home: Path) -> None:
    store = Store.open(home=home)
    assert not store.heartbeat("never-registered")
    store.register_executor("w", HOST, os.getpid(), queues=["q"])
    async with Heartbeat(store, "w", queues=["q"], every_s=0.02):
        store.unregister_executor("w")  # taken for gone by another worker
        for _ in range(250):
            if store.executors():
                break
            await asyncio.sleep(0.02)
    [again] = store.executors()
    assert (again.id, again.pid, again.queues) == ("w", os.getpid(), ["q"])
    store.close()
