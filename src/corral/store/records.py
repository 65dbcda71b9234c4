"""Plain, typed views of store rows that the rest of corral passes around."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from corral.events import Event, Usage, event_payload


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING_APPROVAL = "waiting_approval"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


INTERRUPTED = "interrupted"
#: The statuses a person sees (``RunRecord.display_status``): the stored ones, and ``interrupted``.
DISPLAY_STATUSES: tuple[str, ...] = (*(s.value for s in RunStatus), INTERRUPTED)


class Identity(BaseModel):
    """Who a run submitted through the API acts as, and what it may use (``corral.store.identity``).

    ``agent`` mode (agent-as-employee): the agent's own grants. ``user`` mode (on behalf of the
    submitting user): what both the user and the agent are granted.
    """

    model_config = ConfigDict(frozen=True)

    mode: Literal["agent", "user"]
    agent: str
    user: str
    """The user who submitted the run (in ``agent`` mode too: who asked is always known)."""
    team: str
    grants: tuple[str, ...]
    """The effective grants (``secret:NAME``, ``secret:*``)."""

    def describe(self) -> str:
        if self.mode == "agent":
            return f"as agent {self.agent} (submitted by {self.user})"
        return f"on behalf of {self.user} (agent {self.agent})"


class RunRecord(BaseModel):
    """One run as stored."""

    model_config = ConfigDict(frozen=True)

    id: str
    parent_id: str | None
    root_id: str
    continues_id: str | None = None
    """The finished run this one follows up (``corral continue``), else None."""
    agent: str
    spec: dict[str, Any]
    spec_hash: str
    task: str
    repo: str
    run_dir: str
    status: RunStatus
    created_at: float
    started_at: float | None
    finished_at: float | None
    executor_id: str | None
    result: dict[str, Any] | None
    error: str | None
    error_type: str | None
    turns: int
    usage: Usage
    team_id: str | None = None
    """The team it belongs to (submitted through the API); None for a local run."""
    submitted_by: str | None = None
    """The user whose token submitted it."""
    queue: str | None = None
    """The run queue its tree was submitted to (``corral run --submit``, the API): a worker runs it."""
    identity: Identity | None = None
    """Who it acts as, with its effective grants (submitted through the API); None: a local run."""
    journal_seq: int = 0
    """The ``seq`` of its last event written (its journal holds events 1 to ``journal_seq``); 0 also
    for a run none of whose events was written since the journal's chain (migration ``0004``)."""
    interrupted: bool = False
    """Unfinished, and the process executing it is gone (see ``Store.interrupted_runs``); a run still
    waiting in its queue is not."""

    @property
    def dispatched_by(self) -> str | None:
        """The run whose program dispatched this one (``task()``), or None: a root run, or a follow-up
        (``corral continue``), whose parent is the run it continues."""
        if self.parent_id is None or self.parent_id == self.continues_id:
            return None
        return self.parent_id

    @property
    def waiting_in_queue(self) -> bool:
        """Submitted to a run queue and not taken by a worker yet (the store's SQL says the same)."""
        return self.queue is not None and self.executor_id is None and self.status is RunStatus.QUEUED

    @property
    def display_status(self) -> str:
        """What to show a person: the stored status, or ``interrupted`` when its process is gone."""
        return INTERRUPTED if self.interrupted else self.status.value

    @property
    def elapsed_s(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.finished_at or time.time()) - self.started_at


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One journal entry: its place in the run's journal, and the typed event it records.

    Read it by matching on the event: ``match record.event: case ToolReturned(ok=False): ...``.
    """

    run_id: str
    seq: int
    event: Event

    @property
    def type(self) -> str:
        return self.event.type

    @property
    def key(self) -> str:
        return self.event.key

    @property
    def ts(self) -> float:
        return self.event.ts

    @property
    def duration_ms(self) -> float | None:
        return self.event.duration_ms

    @property
    def data(self) -> dict[str, Any]:
        """The event's type-specific fields as JSON-ready data (the stored ``data`` column)."""
        return event_payload(self.event)

    def to_json(self) -> dict[str, Any]:
        """The stable JSON form (``corral trace --json``): run_id, seq, key, type, ts, duration_ms, data."""
        return {
            "run_id": self.run_id,
            "seq": self.seq,
            "key": self.key,
            "type": self.type,
            "ts": self.ts,
            "duration_ms": self.duration_ms,
            "data": self.data,
        }


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    """The request's timeout passed first: its default decision (deny) was taken."""
    WITHDRAWN = "withdrawn"
    """The run ended (cancelled) while it waited: nobody can decide any more."""


class ApprovalRecord(BaseModel):
    """One request for a person's decision, as stored (read straight from its row)."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    id: str
    run_id: str
    call_id: str
    agent: str
    tool: str
    arguments: dict[str, Any]
    rule: str | None
    reason: str
    status: ApprovalStatus
    created_at: float
    expires_at: float
    decided_at: float | None = None
    decided_by: str | None = None
    decision_reason: str | None = None
