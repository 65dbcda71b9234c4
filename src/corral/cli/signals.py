"""Stopping a command cleanly: SIGINT, SIGTERM and SIGHUP cancel its work, whose ``finally`` blocks then run."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Ctrl-C, ``kill`` and a closed terminal: each stops the command the same way."""


class Interrupted(Exception):
    """A stop signal ended the command's work before it finished; its cleanup has run."""

    def __init__(self, signum: int, run_ids: list[str] | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.run_ids = list(run_ids or [])

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # as a shell reports a process the signal ended: 130, 143, 129


async def until_signal(work: Callable[[], Awaitable[T]]) -> T:
    """Await ``work()``; the first stop signal cancels it and raises :class:`Interrupted` once it has unwound.

    Without this, SIGTERM and SIGHUP end the interpreter at once and no ``finally`` runs: a sandbox
    would stay mounted. Signals that arrive while the work unwinds are ignored, so cleanup is not cut short
    (a second Ctrl-C does not leave half a sandbox; SIGKILL still can, and the sweep handles that).
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []

    def stop(signum: int) -> None:
        if not received:
            received.append(signum)
            task.cancel()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop, signum)
    try:
        return await work()
    except asyncio.CancelledError:
        if received:
            raise Interrupted(received[0]) from None
        raise
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
