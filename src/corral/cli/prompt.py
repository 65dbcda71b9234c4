"""``corral run --interactive``: the person at the terminal decides the run's approval requests inline.

Like Claude Code's permission prompt, but the request stays the durable one: answering here is the
same :meth:`Runtime.decide` that ``corral approve`` calls, so a decision taken meanwhile in another
terminal (or the timeout) settles it too — the prompt then says so and goes away. "Later" leaves the
request pending for ``corral approve``. Input is read without blocking the event loop, so the run's
other work (and its heartbeat) goes on while the question waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rich.console import Console
from rich.text import Text

from corral.cli.text import clean
from corral.errors import UsageError
from corral.events import ApprovalDecided, ApprovalRequested, BaseEvent

if TYPE_CHECKING:
    from corral.cli.views import LiveRunView
    from corral.runtime import Runtime
    from corral.store.records import ApprovalRecord

ARGUMENT_SHOWN_CHARS = 500
ANSWERS = "[y]es · [n]o (you give the agent a reason) · [l]ater (leave it for corral approve)"


def check_terminal() -> None:
    """``--interactive`` needs a person at a terminal; without one the run waits for ``corral approve``."""
    if not sys.stdin.isatty():
        raise UsageError(
            "--interactive needs a terminal on stdin",
            hint="without one, a run that asks waits: decide with `corral approve ID` or `corral deny ID --reason …`",
        )


@dataclass
class ApprovalPrompter:
    """Asks about each approval request of ``run_ids`` in turn, on ``console``, reading answers from stdin."""

    runtime: Runtime
    console: Console
    run_ids: list[str]
    view: LiveRunView | None = None
    by: str = ""
    _queue: asyncio.Queue[ApprovalRequested] = field(default_factory=asyncio.Queue)
    _asking: str | None = None
    _answering: asyncio.Task[None] | None = None
    _deciding: bool = False
    _loop: asyncio.AbstractEventLoop | None = None
    _asked: set[str] = field(default_factory=set)

    def on_event(self, run_id: str, event: BaseEvent) -> None:
        """A runtime listener: queue this session's requests; drop a question someone else answered."""
        if run_id not in self.run_ids or self._loop is None:
            return
        if isinstance(event, ApprovalRequested):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        elif isinstance(event, ApprovalDecided):
            self._loop.call_soon_threadsafe(self._settled_elsewhere, event)

    async def ask_pending(self) -> None:
        """Queue the requests this session's runs already wait on (a resumed run asked before it stopped)."""
        self._loop = asyncio.get_running_loop()
        pending = await asyncio.to_thread(self.runtime.store.approvals)
        for request in pending:
            if request.run_id in self.run_ids:
                self._queue.put_nowait(
                    ApprovalRequested(
                        key=f"pending:{request.id}",
                        approval_id=request.id,
                        call_id=request.call_id,
                        tool=request.tool,
                        rule=request.rule,
                        reason=request.reason,
                        expires_at=request.expires_at,
                    )
                )

    async def serve(self) -> None:
        """Ask, one request at a time, until cancelled."""
        self._loop = asyncio.get_running_loop()
        while True:
            request = await self._queue.get()
            if request.approval_id in self._asked:
                continue  # queued twice: pending at the start, and asked again by the resumed run
            self._asked.add(request.approval_id)
            record = await asyncio.to_thread(self.runtime.store.get_approval, request.approval_id)
            if record.status.value != "pending":
                continue  # decided before its turn came
            self._asking = record.id
            with self._paused():
                self._answering = asyncio.create_task(self._ask(record))
                try:
                    await self._answering
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():  # serve itself is being stopped
                        raise
                    # else: the question was settled elsewhere, and dropped; on to the next one
                finally:
                    self._asking, self._answering = None, None

    def _settled_elsewhere(self, event: ApprovalDecided) -> None:
        if event.approval_id != self._asking or self._deciding or self._answering is None:
            return
        self._asking = None
        who = f" by {clean(event.by)}" if event.by else ""
        self.console.print(Text(f"\n  {clean(event.approval_id)} was {event.outcome}{who} meanwhile"), style="dim")
        self._answering.cancel()

    async def _ask(self, request: ApprovalRecord) -> None:
        rule = f"rule {request.rule}" if request.rule else "the default"
        self.console.print(
            Text.assemble(
                ("? ", "bold yellow"),
                (f"{clean(request.tool)} needs your approval", "bold"),
                f" ({clean(rule)}: {clean(request.reason)})",
            ),
            soft_wrap=True,
        )
        for name, value in request.arguments.items():
            shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            if len(shown) > ARGUMENT_SHOWN_CHARS:
                shown = shown[:ARGUMENT_SHOWN_CHARS] + f"… ({len(shown)} characters)"
            self.console.print(Text(f"  {clean(name)}: {clean(shown)}"), soft_wrap=True)
        self.console.print(Text(f"  {ANSWERS}", style="dim"), soft_wrap=True)
        while True:
            said = await self._read("  approve? ")
            answer = None if said is None else said.lower()
            if answer is None or answer in ("l", "later"):
                self.console.print(
                    Text(
                        f"  left pending: corral approve {request.id} · corral deny {request.id} --reason …",
                        style="dim",
                    )
                )
                return
            if answer in ("y", "yes"):
                await self._decide(request, approve=True, reason=None)
                return
            if answer in ("n", "no"):
                reason = ""
                while not reason:
                    said = await self._read("  reason (the agent reads it): ")
                    if said is None:
                        return
                    reason = said
                await self._decide(request, approve=False, reason=reason)
                return
            self.console.print(Text("  answer y, n or l", style="yellow"))

    async def _decide(self, request: ApprovalRecord, *, approve: bool, reason: str | None) -> None:
        self._deciding = True
        try:
            settled = await asyncio.to_thread(self.runtime.decide, request.id, approve, reason, self.by)
        except UsageError as err:  # decided elsewhere, expired, the run ended: nothing changed
            self.console.print(Text(f"  {err}", style="yellow"), soft_wrap=True)
            return
        finally:
            self._deciding = False
        verb = "approved" if approve else "denied"
        self.console.print(Text(f"  {verb} {settled.id}", style="green" if approve else "red"))

    async def _read(self, prompt: str) -> str | None:
        """One line from stdin, stripped, or None at end of input."""
        self.console.print(Text(prompt), end="")
        self.console.file.flush()
        line = await read_line(sys.stdin.fileno())
        return None if line is None else line.strip()

    @contextlib.contextmanager
    def _paused(self) -> Iterator[None]:
        if self.view is None:
            yield
            return
        with self.view.paused():
            yield


async def read_line(fd: int) -> str | None:
    """Read one line from ``fd`` without blocking the loop (a terminal hands over whole lines)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[str | None] = loop.create_future()
    buffer = bytearray()

    def readable() -> None:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            chunk = b""
        if not chunk:
            if not done.done():
                done.set_result(buffer.decode(errors="replace") if buffer else None)
            return
        buffer.extend(chunk)
        if b"\n" in buffer and not done.done():
            done.set_result(buffer.split(b"\n", 1)[0].decode(errors="replace"))

    loop.add_reader(fd, readable)
    try:
        return await done
    finally:
        loop.remove_reader(fd)
