"""Plain, typed views of store rows that the rest of corral passes around."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from corral.events import Usage


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


class RunRecord(BaseModel):
    """One run as stored."""

    model_config = ConfigDict(frozen=True)

    id: str
    parent_id: str | None
    root_id: str
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

    @property
    def elapsed_s(self) -> float | None:
        if self.started_at is None:
            return None
        import time

        return (self.finished_at or time.time()) - self.started_at


class EventRecord(BaseModel):
    """One journal entry as stored: ``data`` holds the typed event's fields."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    seq: int
    key: str
    type: str
    ts: float
    duration_ms: float | None
    data: dict[str, Any]
