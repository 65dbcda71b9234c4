"""SQLAlchemy tables of the store. Changes here need an Alembic migration in store/migrations/."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Where Alembic records the schema's revision (named for corral, so it can share a Postgres database).
ALEMBIC_VERSION_TABLE = "corral_alembic_version"


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}


class RunRow(Base):
    __tablename__ = "corral_runs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("corral_runs.id"), index=True)
    root_id: Mapped[str] = mapped_column(String(40), index=True)
    continues_id: Mapped[str | None] = mapped_column(String(40))
    """The finished run this one follows up (``corral continue``): its conversation and workspace."""
    agent: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    spec_hash: Mapped[str] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(Text)
    repo: Mapped[str] = mapped_column(Text)
    run_dir: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(24), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    executor_id: Mapped[str | None] = mapped_column(String(80))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    error_type: Mapped[str | None] = mapped_column(String(80))
    turns: Mapped[int] = mapped_column(Integer, default=0)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(Integer, default=0)
    reasoning_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    unpriced_calls: Mapped[int] = mapped_column(Integer, default=0)
    team_id: Mapped[str | None] = mapped_column(String(40), index=True)
    """The team the run belongs to (runs submitted through the API); None: a local run, no team's."""
    submitted_by: Mapped[str | None] = mapped_column(String(40))
    """The user whose token submitted it (through the API)."""
    queue: Mapped[str | None] = mapped_column(String(80))
    """The run queue its tree was submitted to, for ``corral worker``s (None: run by the process that
    started it). Children inherit it."""
    journal_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """The journal's head: the sequence number of its last event (``corral.store.chain``)."""
    journal_head: Mapped[str | None] = mapped_column(String(64))
    """The journal's head: the hash of its last event."""
    identity: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """Who the run acts as (``corral.store.records.Identity``): set for runs submitted through the API."""


class EventRow(Base):
    __tablename__ = "corral_events"
    __table_args__ = (
        UniqueConstraint("run_id", "seq", name="uq_corral_events_run_seq"),
        UniqueConstraint("run_id", "key", name="uq_corral_events_run_key"),
        Index("ix_corral_events_type", "type"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("corral_runs.id"))
    seq: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(40))
    ts: Mapped[float] = mapped_column(Float)
    duration_ms: Mapped[float | None] = mapped_column(Float)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    """The hash of the run's event before this one ("" for its first; NULL: written before the chain)."""
    hash: Mapped[str | None] = mapped_column(String(64))
    """This event's hash (``corral.store.chain.event_hash``)."""


class ExecutorRow(Base):
    __tablename__ = "corral_executors"

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float)
    queues: Mapped[list[str] | None] = mapped_column(JSON)
    """The run queues a worker serves (``corral worker``); None for a process running its own runs."""


class ApprovalRow(Base):
    """A request for a person's decision on one action of a run (policy said ``ask``)."""

    __tablename__ = "corral_approvals"
    __table_args__ = (Index("ix_corral_approvals_status", "status"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("corral_runs.id"), index=True)
    call_id: Mapped[str] = mapped_column(String(200))
    agent: Mapped[str] = mapped_column(String(64))
    tool: Mapped[str] = mapped_column(String(80))
    arguments: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The action's arguments, redacted: what the person decides on."""
    rule: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    """``pending``, then ``approved``, ``denied`` or ``expired`` (the timeout's default decision)."""
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    decided_at: Mapped[float | None] = mapped_column(Float)
    decided_by: Mapped[str | None] = mapped_column(String(200))
    decision_reason: Mapped[str | None] = mapped_column(Text)


class TeamRow(Base):
    """A team: every run and spec submitted through the API belongs to one, and tokens act for one."""

    __tablename__ = "corral_teams"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)


class UserRow(Base):
    __tablename__ = "corral_users"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)


class MemberRow(Base):
    """A user's membership of a team (a token acts for one user in one team)."""

    __tablename__ = "corral_members"

    user_id: Mapped[str] = mapped_column(ForeignKey("corral_users.id"), primary_key=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("corral_teams.id"), primary_key=True)
    grants: Mapped[list[str] | None] = mapped_column(JSON)
    """What the user may let a run use in this team (``secret:NAME``, ``secret:*``); None: nothing."""


class AgentRow(Base):
    """An agent's own identity in a team: the grants its runs have when they act as the agent."""

    __tablename__ = "corral_agents"

    team_id: Mapped[str] = mapped_column(ForeignKey("corral_teams.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    grants: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)


class TokenRow(Base):
    """An API token: only its argon2 hash is stored; the token is shown once, when it is made."""

    __tablename__ = "corral_tokens"

    id: Mapped[str] = mapped_column(String(24), primary_key=True)
    """The token's public part (``corral_<id>_<secret>``): how it is found, never a secret."""
    secret_hash: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(100))
    user_id: Mapped[str] = mapped_column(ForeignKey("corral_users.id"), index=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("corral_teams.id"), index=True)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float | None] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float)
    last_used_at: Mapped[float | None] = mapped_column(Float)


class SpecRow(Base):
    """A version of an agent spec registered with the server, by team and name (content-addressed)."""

    __tablename__ = "corral_specs"
    __table_args__ = (UniqueConstraint("team_id", "name", "spec_hash", name="uq_corral_specs_team_name_hash"),)

    team_id: Mapped[str] = mapped_column(ForeignKey("corral_teams.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    spec_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(40))
