"""Executors: this process's id and heartbeat, and the registry's housekeeping (liveness itself is the store's)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Collection

from corral.store import Store
from corral.store.liveness import live_ids

log = logging.getLogger("corral.runtime")

HEARTBEAT_EVERY_S = 5.0


def new_executor_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def forget_dead_executors(store: Store, *, exclude: str) -> None:
    """Unregister executors that are gone and no longer own an interrupted run.

    Not workers: a worker's runs may still wait in DBOS for recovery with no run row saying so (it
    died between taking a workflow and recording it); the workers that serve its queues recover its
    workflows, then forget it (``recover_workers``).
    """
    executors = store.executors()  # judged as read: one that registers meanwhile is not among them
    live = live_ids(executors) | {exclude}
    owners = {r.executor_id for r in store.interrupted_runs(exclude_executor=exclude)}
    for executor in executors:
        if executor.id not in live and executor.id not in owners and not executor.queues:
            store.unregister_executor(executor.id)


def dead_workers(store: Store, queues: Collection[str], *, exclude: str) -> list[str]:
    """The executors whose runs on ``queues`` need recovering: workers of those queues that are gone,
    and the executors of interrupted runs submitted to them (a worker stopped cleanly unregisters)."""
    executors = store.executors()  # judged as read: one that registers meanwhile is not among them
    live = live_ids(executors) | {exclude}
    gone = {
        executor.id
        for executor in executors
        if executor.id not in live and executor.queues and set(executor.queues) & set(queues)
    }
    gone |= {
        r.executor_id
        for r in store.interrupted_runs(exclude_executor=exclude)
        if r.executor_id is not None and r.queue in queues
    }
    return sorted(gone)


class Heartbeat:
    """Keeps this process's executor row fresh while it executes runs (an async context manager)."""

    def __init__(
        self, store: Store, executor_id: str, *, queues: list[str] | None = None, every_s: float = HEARTBEAT_EVERY_S
    ) -> None:
        self._store = store
        self._executor_id = executor_id
        self._queues = queues
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
                if not self._store.heartbeat(self._executor_id):
                    # Taken for gone (a heartbeat that lagged past STALE_HEARTBEAT_S on another host):
                    # say so, and be seen again rather than run unseen.
                    log.warning("executor %s had been forgotten as gone; registering it again", self._executor_id)
                    self._store.register_executor(
                        self._executor_id, socket.gethostname(), os.getpid(), queues=self._queues
                    )
            except Exception:
                log.exception("executor heartbeat failed")
