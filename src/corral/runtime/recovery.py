"""The executor registry: which processes execute runs, whether they are alive, which runs they left behind."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid

from corral.store import RunRecord, RunStatus, Store

log = logging.getLogger("corral.runtime")

STALE_HEARTBEAT_S = 30.0
HEARTBEAT_EVERY_S = 5.0


def new_executor_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dead_executors(store: Store, *, exclude: str | None = None) -> set[str]:
    """Executors whose process is gone: a dead pid on this host, or a stale heartbeat elsewhere."""
    host, now = socket.gethostname(), time.time()
    dead = set()
    for ex in store.executors():
        if ex.id == exclude:
            continue
        gone = not pid_alive(ex.pid) if ex.host == host else now - ex.heartbeat_at > STALE_HEARTBEAT_S
        if gone:
            dead.add(ex.id)
    return dead


def interrupted_runs(store: Store, *, exclude: str | None = None) -> list[RunRecord]:
    """Unfinished runs whose executing process is gone (``exclude``: this process's executor id)."""
    dead = dead_executors(store, exclude=exclude)
    live = {ex.id for ex in store.executors()} - dead
    unfinished = [
        r
        for status in (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING_APPROVAL)
        for r in store.list_runs(limit=10_000, status=status)
    ]
    return [r for r in unfinished if r.executor_id is None or r.executor_id not in live]


def forget_dead_executors(store: Store, *, exclude: str | None = None) -> None:
    """Unregister dead executors that no longer own an interrupted run."""
    owners = {r.executor_id for r in interrupted_runs(store, exclude=exclude)}
    for dead in dead_executors(store, exclude=exclude):
        if dead not in owners:
            store.unregister_executor(dead)


class Heartbeat:
    """Keeps this process's executor row fresh while it executes runs (an async context manager)."""

    def __init__(self, store: Store, executor_id: str, every_s: float = HEARTBEAT_EVERY_S) -> None:
        self._store = store
        self._executor_id = executor_id
        self._every_s = every_s
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Heartbeat:
        self._task = asyncio.get_running_loop().create_task(self._beat(), name="corral-heartbeat")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._every_s)
            try:
                self._store.heartbeat(self._executor_id)
            except Exception:
                log.exception("executor heartbeat failed")
