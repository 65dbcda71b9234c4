"""Plain, typed views of store rows that the rest of corral passes around."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict


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


class Usage(BaseModel):
    """Token counts and cost, for one model call or summed over a run."""

    model_config = ConfigDict(frozen=True)

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
        )


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
