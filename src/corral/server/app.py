"""``corral serve``'s HTTP API: specs, runs, events (paged and live), approvals, costs, tokens.

Every path but ``/v1/health`` and the OpenAPI document needs a bearer token
(:mod:`corral.store.accounts`); each acts for one team and sees that team's runs, specs, approvals
and costs only (another team's run is ``403``, an unknown one ``404``). Errors are RFC 9457 problem
details (:mod:`corral.server.problems`). Runs submitted here go on a run queue that ``corral
worker`` processes execute; this process runs nothing itself.

The handlers are plain functions (FastAPI runs them on its thread pool: the store is synchronous);
the live event stream is asynchronous and reads the journal as it grows.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import datetime as dt
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select

import corral
from corral.errors import ForbiddenError, SpecError, UsageError
from corral.runtime import Runtime, workflow
from corral.server import problems
from corral.server.problems import Conflict, NotFound
from corral.server.watch import JournalWatch
from corral.spec import AgentSpec
from corral.store import RunRecord, Store
from corral.store.accounts import SCOPES, Accounts, Principal, TokenInfo
from corral.store.models import EventRow
from corral.store.records import DISPLAY_STATUSES, ApprovalStatus, EventRecord
from corral.store.registry import SpecRegistry

STREAM_POLL_S = 0.01
"""How often the server reads the journals' heads of the runs its live streams wait on (one query
for all of them, see ``corral.server.watch``)."""
STREAM_DISCONNECT_CHECK_S = 1.0
"""How often a quiet live stream checks that its client is still there."""
STREAM_KEEPALIVE_S = 15.0
PAGE_MAX = 500
INT_MAX = 2**31 - 1
"""The largest value of the store's integer columns: a journal's sequence numbers, a spec's versions."""

_bearer = HTTPBearer(auto_error=False, description="An API token: `corral token create` makes one.")


# -- request and response bodies -----------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SpecIn(_Body):
    name: str | None = Field(None, description="The agent's name (default: the spec's own `name`).")
    spec: dict[str, Any] = Field(description="The agent spec, as in corral.toml's [agents.NAME] (`name` included).")


class SpecOut(BaseModel):
    name: str
    version: int
    spec_hash: str
    created_at: float
    created_by: str
    spec: dict[str, Any] | None = None
    created: bool | None = None


class RunIn(_Body):
    agent: str = Field(min_length=1, max_length=64)
    version: int | None = Field(None, ge=1, le=INT_MAX, description="The spec version (default: the newest).")
    task: str = Field(min_length=1, max_length=1_000_000)
    repo: str = Field(min_length=1, max_length=4096, description="The repository's path, as the workers see it.")
    queue: str | None = Field(None, description="The run queue (default corral.runs).")
    context: str | None = Field(None, max_length=50_000_000, description="A long input kept out of the prompt.")
    acting_as: Literal["user", "agent"] = Field(
        "user",
        description="`user`: on behalf of the caller, with what both the caller and the agent are granted; "
        "`agent`: as the agent's own identity, with its grants.",
    )


class RunOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    agent: str
    status: str
    display_status: str
    team_id: str | None


class RunPage(BaseModel):
    runs: list[RunOut]
    next_cursor: str | None


class EventOut(BaseModel):
    run_id: str
    seq: int
    key: str
    type: str
    ts: float
    duration_ms: float | None
    data: dict[str, Any]


class EventPage(BaseModel):
    events: list[EventOut]
    next_after: int
    finished: bool


class DecisionIn(_Body):
    reason: str | None = Field(None, max_length=10_000)


class ApprovalOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    run_id: str
    tool: str
    status: str


class CostRow(BaseModel):
    key: str
    runs: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: float
    unpriced_calls: int
    sandbox_seconds: float


class CostReport(BaseModel):
    by: str
    rows: list[CostRow]


class TokenIn(_Body):
    user: str
    team: str
    scopes: list[str] = Field(min_length=1)
    name: str = Field("", max_length=100)
    expires_in_s: float | None = Field(None, gt=0, le=10 * 365 * 86_400)


class TokenOut(TokenInfo):
    token: str | None = Field(None, description="The token itself: shown once, when it is made.")


class NameIn(_Body):
    name: str
    teams: list[str] = Field(default_factory=list, description="For a user: the teams it belongs to.")


class GrantsIn(_Body):
    grants: list[str] = Field(
        min_length=1, max_length=100, description="Each `secret:NAME` (one secret) or `secret:*` (every secret)."
    )


class HolderOut(BaseModel):
    """A member or an agent of the caller's team, and what it is granted there."""

    name: str
    grants: list[str]


class GrantsOut(BaseModel):
    team: str
    users: list[HolderOut] = Field(description="The team's members: a run on their behalf holds what both hold.")
    agents: list[HolderOut] = Field(description="Agents with an identity of their own (`acting_as: agent`).")


class VerificationOut(BaseModel):
    run_id: str
    intact: bool
    events: int
    head: dict[str, Any]
    problems: list[dict[str, Any]]


class Health(BaseModel):
    status: Literal["ok"]
    version: str


# -- who is asking ------------------------------------------------------------------------------


def _principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    accounts: Accounts = request.app.state.accounts
    return accounts.authenticate(credentials.credentials if credentials else None)


def _needs(scope: str) -> Any:
    def check(who: Annotated[Principal, Depends(_principal)]) -> Principal:
        who.require(scope)
        return who

    return Depends(check)


Reader = Annotated[Principal, _needs("runs:read")]
Writer = Annotated[Principal, _needs("runs:write")]
Decider = Annotated[Principal, _needs("approvals:decide")]
SpecWriter = Annotated[Principal, _needs("specs:write")]
Admin = Annotated[Principal, _needs("admin")]


def _own_run(store: Store, run_id: str, who: Principal) -> RunRecord:
    """A run of the caller's team (``404`` unknown, ``403`` another team's), ``interrupted`` worked out."""
    record = store.find_run(run_id)
    if record is None:
        raise NotFound(f"no run {run_id!r}")
    if record.team_id != who.team_id:
        raise ForbiddenError(f"run {run_id!r} is not your team's")
    return store.get_run(record.id)


def _streamed_run(run_id: str, request: Request, who: Reader) -> RunRecord:
    """The run a stream reads, checked before the stream's first byte (a refusal is a problem, not a 200)."""
    return _own_run(request.app.state.store, run_id, who)


StreamedRun = Annotated[RunRecord, Depends(_streamed_run)]


def _stream_start(
    last_event_id: Annotated[str | None, Header(description="Resume after this event's `seq`.")] = None,
    after: Annotated[int, Query(ge=0, le=INT_MAX, description="Start after this `seq` (without Last-Event-ID).")] = 0,
) -> int:
    """Where a stream starts: after ``Last-Event-ID`` (what a reconnecting client sends back), else ``after``."""
    if last_event_id is None or not last_event_id.strip():
        return after
    try:
        seq = int(last_event_id.strip())
    except ValueError:
        raise UsageError(f"Last-Event-ID {last_event_id!r} is not an event's seq") from None
    if not 0 <= seq <= INT_MAX:
        raise UsageError(f"Last-Event-ID {last_event_id!r} is not an event's seq")
    return seq


StreamStart = Annotated[int, Depends(_stream_start)]


# -- the application -----------------------------------------------------------------------------


def create_app(store: Store) -> FastAPI:
    """The API over ``store`` (its runs go to the workers through DBOS queues in the same database)."""
    accounts = Accounts(store.engine)
    registry = SpecRegistry(store.engine)
    runtime = Runtime(store)  # never launched: it records, queues, cancels and decides; workers execute
    app = FastAPI(
        title="corral",
        version=corral.__version__,
        summary="Runs of coding agents: submit, watch, approve, account. Errors are RFC 9457 problem details.",
        responses={
            401: {"model": problems.Problem, "description": "No valid token"},
            403: {"model": problems.Problem, "description": "The token may not do this"},
        },
    )
    problems.install(app)
    app.state.accounts = accounts
    app.state.store = store
    watch = JournalWatch(store, poll_s=STREAM_POLL_S)

    def own_run(run_id: str, who: Principal) -> RunRecord:
        return _own_run(store, run_id, who)

    # -- health -----------------------------------------------------------------------------------

    @app.get("/v1/health", response_model=Health, tags=["server"])
    def health() -> dict[str, Any]:
        """Whether the server answers (no token needed)."""
        return {"status": "ok", "version": corral.__version__}

    # -- specs ------------------------------------------------------------------------------------

    @app.post("/v1/specs", response_model=SpecOut, status_code=201, tags=["specs"])
    def register_spec(body: SpecIn, who: SpecWriter) -> dict[str, Any]:
        """Register an agent spec for the team: a new version, or the one already holding it."""
        data = dict(body.spec)
        name = body.name or data.get("name")
        if not isinstance(name, str) or not name:
            raise SpecError("the spec needs a name (`name`, or the body's `name`)")
        data["name"] = name
        try:
            spec = AgentSpec.model_validate(data)
        except ValidationError as err:
            raise SpecError(f"agent '{name}': {err.error_count()} invalid field(s): {_first_error(err)}") from None
        runtime.check_spec(spec, environment=False)
        version, created = registry.register(
            who.team_id, spec.name, spec.model_dump(mode="json"), spec.content_hash(), by=who.user
        )
        return {**version.to_json(), "created": created}

    @app.get("/v1/specs", response_model=list[SpecOut], tags=["specs"])
    def list_specs(who: Reader, name: str | None = None) -> list[dict[str, Any]]:
        """The team's spec versions (of one agent, or all), newest first per agent."""
        return [v.to_json(with_spec=False) for v in registry.versions(who.team_id, name)]

    @app.get("/v1/specs/{name}", response_model=SpecOut, tags=["specs"])
    def get_spec(
        name: str, who: Reader, version: Annotated[int | None, Query(ge=1, le=INT_MAX)] = None
    ) -> dict[str, Any]:
        """One version of an agent's spec (the newest by default)."""
        return registry.get(who.team_id, name, version).to_json()

    # -- runs -------------------------------------------------------------------------------------

    @app.post("/v1/runs", response_model=RunOut, status_code=201, tags=["runs"])
    def submit_run(body: RunIn, who: Writer) -> dict[str, Any]:
        """Submit a run of a registered agent: recorded, and queued for the workers.

        The run acts on behalf of the caller (``acting_as: user``) or as the agent (``agent``); the
        secrets its spec reads must be among the effective grants (403 otherwise)."""
        registered = registry.get(who.team_id, body.agent, body.version)
        spec = AgentSpec.model_validate(registered.spec)
        record = asyncio.run(
            runtime.enqueue(
                spec,
                body.task,
                Path(body.repo),
                queue=body.queue or workflow.RUN_QUEUE,
                context=body.context,
                team_id=who.team_id,
                submitted_by=who.user_id,
                identity=accounts.identity(who, spec.name, body.acting_as),
            )
        )
        return run_json(record)

    @app.get("/v1/runs", response_model=RunPage, tags=["runs"])
    def list_runs(
        who: Reader,
        status: Annotated[str | None, Query(description=f"One of {', '.join(DISPLAY_STATUSES)}.")] = None,
        agent: str | None = None,
        since: Annotated[float | None, Query(description="Created at or after (Unix time).")] = None,
        before: Annotated[float | None, Query(description="Created before (Unix time).")] = None,
        limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 50,
        cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
    ) -> dict[str, Any]:
        """The team's runs, newest first, a page at a time."""
        records = store.list_runs(
            limit=limit + 1,
            status=status,
            agent=agent,
            since=since,
            before=before,
            team_id=who.team_id,
            older_than=_decode_cursor(cursor),
        )
        page = records[:limit]
        more = len(records) > limit
        return {"runs": [run_json(r) for r in page], "next_cursor": _encode_cursor(page[-1]) if more else None}

    @app.get("/v1/runs/{run_id}", response_model=RunOut, tags=["runs"])
    def get_run(run_id: str, who: Reader) -> dict[str, Any]:
        """One run: its status, task, result, usage and cost."""
        return run_json(own_run(run_id, who))

    @app.get("/v1/runs/{run_id}/children", response_model=list[RunOut], tags=["runs"])
    def run_children(run_id: str, who: Reader) -> list[dict[str, Any]]:
        """The runs its programs dispatched (and its follow-ups)."""
        return [run_json(r) for r in store.children(own_run(run_id, who).id)]

    @app.post("/v1/runs/{run_id}/cancel", response_model=RunOut, tags=["runs"])
    def cancel_run(run_id: str, who: Writer) -> dict[str, Any]:
        """Cancel a run wherever it executes; answers once it has ended (or after a few seconds)."""
        record = own_run(run_id, who)
        if record.status.finished:
            raise Conflict(f"run {record.id} already {record.status.value}")
        return run_json(asyncio.run(runtime.cancel(record.id)))

    @app.post("/v1/runs/{run_id}/resume", response_model=RunOut, status_code=202, tags=["runs"])
    def resume_run(run_id: str, who: Writer) -> dict[str, Any]:
        """Resume an interrupted run: its queue's workers take it on from its last completed step."""
        record = own_run(run_id, who)
        if record.status.finished:
            raise Conflict(f"run {record.id} already {record.status.value}; only interrupted runs resume")
        if not record.interrupted:
            raise Conflict(f"run {record.id} is {record.display_status}, not interrupted")
        if record.dispatched_by is not None:
            raise Conflict(f"run {record.id} is a subagent of run {record.dispatched_by}: it resumes with it")
        # Its workers recover it within seconds of its worker being gone; this only asks it of them now.
        if record.executor_id is not None:
            store.unregister_executor(record.executor_id)
        return run_json(store.get_run(record.id))

    @app.delete("/v1/runs/{run_id}", status_code=204, tags=["runs"])
    def delete_run(run_id: str, who: Writer) -> None:
        """Delete a finished run with the runs under it: rows, journals (its files stay with the workers)."""
        record = own_run(run_id, who)
        tree = store.run_trees([record.id])
        unfinished = [r.id for r in tree if not r.status.finished]
        if unfinished:
            raise Conflict(f"run {unfinished[0]} has not finished; cancel it first")
        followers = store.followers([r.id for r in tree])
        if any(f.team_id != who.team_id for f in followers):
            raise Conflict(f"run {record.id} is continued by another team's run")
        store.remove_runs([r.id for r in tree])

    @app.get("/v1/runs/{run_id}/verify", response_model=list[VerificationOut], tags=["runs"])
    def verify_run(run_id: str, who: Reader) -> list[dict[str, Any]]:
        """Check the journals of the run and of the runs under it against their hash chains."""
        record = own_run(run_id, who)
        return [store.verify_journal(r.id).to_json() for r in store.run_trees([record.id])]

    # -- events -----------------------------------------------------------------------------------

    @app.get("/v1/runs/{run_id}/events", response_model=EventPage, tags=["events"])
    def run_events(
        run_id: str,
        who: Reader,
        after: Annotated[int, Query(ge=0, le=INT_MAX, description="Only events with a greater `seq`.")] = 0,
        limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 200,
    ) -> dict[str, Any]:
        """A page of the run's journal, in order; ``next_after`` continues it."""
        record = own_run(run_id, who)
        events = _events_after(store, record.id, after, limit)
        return {
            "events": [e.to_json() for e in events],
            "next_after": events[-1].seq if events else after,
            "finished": record.status.finished,
        }

    @app.get(
        "/v1/runs/{run_id}/events/stream",
        response_class=EventSourceResponse,
        tags=["events"],
        responses={200: {"content": {"text/event-stream": {}}, "description": "The journal as server-sent events"}},
    )
    async def stream_events(
        run_id: str,
        request: Request,
        record: StreamedRun,
        cursor: StreamStart,
    ) -> AsyncIterator[ServerSentEvent]:
        """The run's journal live: every event so far after ``Last-Event-ID`` (or ``after``), then each
        event as it is committed (``id`` = its ``seq``, ``event`` = its type), then ``end``."""
        quiet_since, ended = time.monotonic(), False
        while True:
            events = await asyncio.to_thread(_events_after, store, record.id, cursor, PAGE_MAX)
            for event in events:
                yield ServerSentEvent(id=str(event.seq), event=event.type, data=event.to_json())
                cursor = event.seq
            if events:
                quiet_since = time.monotonic()
                continue
            if ended:  # the journal was read once more after the run's row said it had ended
                current = await asyncio.to_thread(store.find_run, record.id)
                yield ServerSentEvent(event="end", data={"status": current.status.value if current else "deleted"})
                return
            if await request.is_disconnected():
                return
            keepalive_in = STREAM_KEEPALIVE_S - (time.monotonic() - quiet_since)
            if keepalive_in <= 0:
                yield ServerSentEvent(comment="keep-alive")
                quiet_since = time.monotonic()
                continue
            # Until the journal has more or the run ends (one reader for every stream), at most
            # STREAM_DISCONNECT_CHECK_S at a time: a client gone meanwhile is noticed that soon.
            try:
                async with asyncio.timeout(min(keepalive_in, STREAM_DISCONNECT_CHECK_S)):
                    ended = (await watch.wait(record.id, cursor)).ended
            except TimeoutError:
                pass

    # -- approvals --------------------------------------------------------------------------------

    @app.get("/v1/approvals", response_model=list[ApprovalOut], tags=["approvals"])
    def list_approvals(
        who: Reader,
        status: Annotated[ApprovalStatus | None, Query(description="Default: pending.")] = ApprovalStatus.PENDING,
        run_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """The team's approval requests, oldest first."""
        return [a.model_dump(mode="json") for a in store.approvals(status=status, run_id=run_id, team_id=who.team_id)]

    def decide(approval_id: str, approve: bool, body: DecisionIn | None, who: Principal) -> dict[str, Any]:
        try:
            request = store.get_approval(approval_id)
        except UsageError:
            raise NotFound(f"no approval request {approval_id!r}") from None
        run = store.find_run(request.run_id)
        if run is None or run.team_id != who.team_id:
            raise ForbiddenError(f"approval {approval_id!r} is not your team's")
        try:
            decided = runtime.decide(approval_id, approve, (body.reason if body else None), by=who.user)
        except UsageError as err:
            raise Conflict(err.message, hint=err.hint) from None
        return decided.model_dump(mode="json")

    @app.post("/v1/approvals/{approval_id}/approve", response_model=ApprovalOut, tags=["approvals"])
    def approve(approval_id: str, who: Decider, body: DecisionIn | None = None) -> dict[str, Any]:
        """Approve a pending request: the waiting run goes on with the action."""
        return decide(approval_id, True, body, who)

    @app.post("/v1/approvals/{approval_id}/deny", response_model=ApprovalOut, tags=["approvals"])
    def deny(approval_id: str, body: DecisionIn, who: Decider) -> dict[str, Any]:
        """Deny a pending request, with a reason the agent reads."""
        return decide(approval_id, False, body, who)

    # -- costs ------------------------------------------------------------------------------------

    @app.get("/v1/costs", response_model=CostReport, tags=["costs"])
    def costs(
        who: Reader,
        by: Literal["run", "agent", "team", "day"] = "agent",
        since: float | None = None,
        before: float | None = None,
    ) -> dict[str, Any]:
        """What the team's runs spent: tokens, model cost and sandbox seconds, per run, agent, team or day
        (UTC, by creation). Sandbox seconds: the wall time of runs that had a sandbox of their own."""
        runs = store.list_runs(limit=None, since=since, before=before, team_id=who.team_id)
        boxed = _runs_with_sandbox(store, [r.id for r in runs])
        rows: dict[str, collections.defaultdict[str, float]] = collections.defaultdict(
            lambda: collections.defaultdict(float)
        )
        for run in runs:
            key = {
                "run": run.id,
                "agent": run.agent,
                "team": who.team,
                "day": dt.datetime.fromtimestamp(run.created_at, dt.UTC).date().isoformat(),
            }[by]
            row = rows[key]
            row["runs"] += 1
            for name in _USAGE_COUNTS:
                row[name] += getattr(run.usage, name)
            row["cost_usd"] += run.usage.cost_usd
            if run.id in boxed and run.started_at is not None:
                row["sandbox_seconds"] += (run.finished_at or time.time()) - run.started_at
        return {
            "by": by,
            "rows": [
                {
                    "key": key,
                    **{name: int(row[name]) for name in ("runs", *_USAGE_COUNTS)},
                    "cost_usd": round(float(row["cost_usd"]), 6),
                    "sandbox_seconds": round(float(row["sandbox_seconds"]), 3),
                }
                for key, row in sorted(rows.items())
            ],
        }

    # -- teams, users and tokens (admin) ----------------------------------------------------------

    @app.post("/v1/teams", status_code=201, tags=["admin"])
    def create_team(body: NameIn, who: Admin) -> dict[str, str]:
        """A new team (empty: its members and tokens are made by an admin of it, or with `corral token`)."""
        return {"id": accounts.create_team(body.name), "name": body.name}

    @app.post("/v1/users", status_code=201, tags=["admin"])
    def create_user(body: NameIn, who: Admin) -> dict[str, str]:
        """A new user, member of the teams named (the caller's own team only)."""
        foreign = [t for t in body.teams if t != who.team]
        if foreign:
            raise ForbiddenError(f"an admin of team {who.team!r} cannot add members to team {foreign[0]!r}")
        return {"id": accounts.create_user(body.name, body.teams), "name": body.name}

    @app.post("/v1/tokens", response_model=TokenOut, status_code=201, tags=["admin"])
    def create_token(body: TokenIn, who: Admin) -> dict[str, Any]:
        """A new token for a user of the caller's team; the token itself is in this answer only."""
        if body.team != who.team:
            raise ForbiddenError(f"an admin of team {who.team!r} cannot make tokens for team {body.team!r}")
        expires = time.time() + body.expires_in_s if body.expires_in_s else None
        token, info = accounts.create_token(
            user=body.user, team=body.team, scopes=body.scopes, name=body.name, expires_at=expires
        )
        return {**info.to_json(), "token": token}

    @app.get("/v1/tokens", response_model=list[TokenOut], response_model_exclude_none=True, tags=["admin"])
    def list_tokens(who: Admin) -> list[dict[str, Any]]:
        """The team's tokens (never their secrets)."""
        return [t.to_json() for t in accounts.tokens(team=who.team)]

    @app.delete("/v1/tokens/{token_id}", status_code=204, tags=["admin"])
    def revoke_token(token_id: str, who: Admin) -> None:
        """Revoke one of the team's tokens, at once."""
        if not accounts.revoke(token_id, team_id=who.team_id):
            if any(t.id == token_id for t in accounts.tokens(team=who.team)):
                raise Conflict(f"token {token_id!r} was revoked already")
            if any(t.id == token_id for t in accounts.tokens()):
                raise ForbiddenError(f"token {token_id!r} is not your team's")
            raise NotFound(f"no token {token_id!r}")

    # -- grants (admin): what a run may use, per member and per agent of the caller's team ---------

    def require_member(who: Principal, user: str) -> None:
        if user not in dict(accounts.members(who.team)):
            raise NotFound(f"no user {user!r} in team {who.team!r}")

    def holder(name: str, grants: list[str]) -> dict[str, Any]:
        return {"name": name, "grants": grants}

    @app.get("/v1/grants", response_model=GrantsOut, tags=["admin"])
    def list_grants(who: Admin) -> dict[str, Any]:
        """What the team's members and its agents are granted."""
        return {
            "team": who.team,
            "users": [holder(name, grants) for name, grants in accounts.members(who.team)],
            "agents": [holder(name, grants) for name, grants in accounts.agents(who.team)],
        }

    @app.post("/v1/users/{user}/grants", response_model=HolderOut, tags=["admin"])
    def grant_user(user: str, body: GrantsIn, who: Admin) -> dict[str, Any]:
        """Grant a member of the team more (runs submitted from now on); what it holds after."""
        require_member(who, user)
        return holder(user, accounts.grant_user(user, who.team, body.grants))

    @app.delete("/v1/users/{user}/grants/{grant}", response_model=HolderOut, tags=["admin"])
    def ungrant_user(user: str, grant: str, who: Admin) -> dict[str, Any]:
        """Take a grant back from a member of the team; what it holds after."""
        require_member(who, user)
        return holder(user, accounts.grant_user(user, who.team, [grant], revoke=True))

    @app.post("/v1/agents/{agent}/grants", response_model=HolderOut, tags=["admin"])
    def grant_agent(agent: str, body: GrantsIn, who: Admin) -> dict[str, Any]:
        """Give an agent an identity of its own in the team, or grant it more; what it holds after."""
        return holder(agent, accounts.grant_agent(agent, who.team, body.grants))

    @app.delete("/v1/agents/{agent}/grants/{grant}", response_model=HolderOut, tags=["admin"])
    def ungrant_agent(agent: str, grant: str, who: Admin) -> dict[str, Any]:
        """Take a grant back from an agent's own identity in the team; what it holds after."""
        if agent not in dict(accounts.agents(who.team)):
            raise NotFound(f"agent {agent!r} has no identity of its own in team {who.team!r}")
        return holder(agent, accounts.grant_agent(agent, who.team, [grant], revoke=True))

    app.state.scopes = SCOPES
    return app


# -- helpers ------------------------------------------------------------------------------------


#: The whole-number usage fields a cost report adds up (``Usage``'s names).
_USAGE_COUNTS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "unpriced_calls")


def run_json(record: RunRecord) -> dict[str, Any]:
    """A run as the API gives it: every field of the record (``RunRecord.model_validate`` reads it back)."""
    return {**record.model_dump(mode="json"), "display_status": record.display_status}


def _events_after(store: Store, run_id: str, after: int, limit: int) -> list[EventRecord]:
    store.journal.flush()
    events: list[EventRecord] = []
    for event in store.iter_events(run_id, after_seq=after):
        events.append(event)
        if len(events) >= limit:
            break
    return events


def _runs_with_sandbox(store: Store, run_ids: list[str]) -> set[str]:
    found: set[str] = set()
    with store.engine.connect() as conn:
        for start in range(0, len(run_ids), 500):
            chunk = run_ids[start : start + 500]
            query = select(EventRow.run_id).where(EventRow.run_id.in_(chunk), EventRow.type == "sandbox.created")
            found.update(conn.execute(query.distinct()).scalars())
    return found


def _encode_cursor(record: RunRecord) -> str:
    return base64.urlsafe_b64encode(f"{record.created_at!r}|{record.id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> tuple[float, str] | None:
    if not cursor:
        return None
    try:
        created, run_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split("|", 1)
        return float(created), run_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise UsageError(f"cursor {cursor!r} is not one this server gave") from None


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "spec"
    return f"{where}: {first.get('msg', '')}"
