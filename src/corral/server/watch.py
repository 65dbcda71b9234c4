"""One reader of the journals' heads for every live event stream of a server process.

A live stream that has sent everything so far waits for its run's journal to grow or for the run to
end. Rather than each stream querying the journal at every poll, one task reads the head of every
watched run (``corral_runs.journal_seq``, written in the transaction that commits the events, and
the run's status) in one query per poll, and wakes the streams whose run moved. A server with a
thousand quiet streams open reads the database once per poll, not a thousand times.

The task runs while some stream waits and stops when none does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from sqlalchemy import select

from corral.store import RunStatus, Store
from corral.store.models import RunRow

log = logging.getLogger("corral.server")

_CHUNK = 500  # run ids per query (bound parameters)


@dataclass(frozen=True, slots=True)
class Head:
    """Where a run's journal stands: its last event's ``seq``, and whether the run is over."""

    seq: int
    status: str | None
    """The run's status; None: the run was deleted."""

    @property
    def ended(self) -> bool:
        return self.status is None or RunStatus(self.status).finished


@dataclass(slots=True)
class _Waiter:
    after: int
    woken: asyncio.Future[Head]


class JournalWatch:
    """Wakes waiting streams when their run's journal passes the ``seq`` they have, or the run ends."""

    def __init__(self, store: Store, *, poll_s: float) -> None:
        self._store = store
        self._poll_s = poll_s
        self._waiting: dict[str, list[_Waiter]] = {}
        self._task: asyncio.Task[None] | None = None

    async def wait(self, run_id: str, after: int) -> Head:
        """The run's head once its journal has an event after ``after`` or the run has ended (bound the
        wait with ``asyncio.timeout``)."""
        waiter = _Waiter(after, asyncio.get_running_loop().create_future())
        self._waiting.setdefault(run_id, []).append(waiter)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._watch(), name="corral-journal-watch")
        try:
            return await waiter.woken
        finally:
            waiters = self._waiting.get(run_id, [])
            with contextlib.suppress(ValueError):
                waiters.remove(waiter)
            if not waiters:
                self._waiting.pop(run_id, None)

    async def _watch(self) -> None:
        failures = 0
        while self._waiting:
            run_ids = list(self._waiting)
            try:
                heads = await asyncio.to_thread(self._heads, run_ids)
            except Exception as exc:  # the database is away for a moment: the streams wait on, say so once
                failures += 1
                if failures == 1:
                    log.warning("reading the journals' heads failed (retrying): %s", exc)
            else:
                failures = 0
                self._wake(run_ids, heads)
            await asyncio.sleep(self._poll_s)

    def _wake(self, run_ids: list[str], heads: dict[str, Head]) -> None:
        """Wake the waiters of ``run_ids`` (the runs read: one first waited on meanwhile waits for the next
        read) whose run moved; a run the read did not find was deleted."""
        for run_id in run_ids:
            head = heads.get(run_id, Head(seq=0, status=None))
            for waiter in self._waiting.get(run_id, []):
                if (head.seq > waiter.after or head.ended) and not waiter.woken.done():
                    waiter.woken.set_result(head)

    def _heads(self, run_ids: list[str]) -> dict[str, Head]:
        heads: dict[str, Head] = {}
        with self._store.engine.connect() as conn:
            for start in range(0, len(run_ids), _CHUNK):
                query = select(RunRow.id, RunRow.journal_seq, RunRow.status).where(
                    RunRow.id.in_(run_ids[start : start + _CHUNK])
                )
                for run_id, seq, status in conn.execute(query):
                    heads[run_id] = Head(seq=seq or 0, status=status)
        return heads
