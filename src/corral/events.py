"""The typed events of a run's journal: one pydantic model per event type.

Every event has a ``key`` that identifies what it records (for example ``model:3:response``): the
journal writes an event once per key, so replaying a durable workflow after a crash regenerates the
events that were lost with the process without duplicating those already written.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from corral.sandbox.types import NetworkProfile


class Usage(BaseModel):
    """Token counts and cost, for one model call or summed over a run."""

    model_config = ConfigDict(frozen=True)

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_calls: int = 0
    """Model calls whose price is unknown (no table entry, no override): their cost is not in ``cost_usd``."""

    @property
    def cost_known(self) -> bool:
        return self.unpriced_calls == 0

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
            unpriced_calls=self.unpriced_calls + other.unpriced_calls,
        )


class BaseEvent(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    ts: float = Field(default_factory=time.time)
    duration_ms: float | None = None


class RunStarted(BaseEvent):
    type: Literal["run.started"] = "run.started"
    agent: str
    task: str
    model: str
    engine: str
    spec_hash: str
    repo: str
    parent_id: str | None = None
    identity: dict[str, Any] | None = None
    """Who the run acts as and its effective grants (``mode``, ``agent``, ``user``, ``team``,
    ``grants``): runs submitted through the API; None for a local run."""


class RunResumed(BaseEvent):
    type: Literal["run.resumed"] = "run.resumed"
    executor_id: str


class SandboxCreated(BaseEvent):
    type: Literal["sandbox.created"] = "sandbox.created"
    backend: str
    workspace: str
    isolated: bool
    network: NetworkProfile | None = None
    """The network profile as the spec wrote it (``@presets`` unexpanded), the upstream proxy's credentials
    removed. None in journals written before it was recorded."""


class ModelRequested(BaseEvent):
    type: Literal["model.request"] = "model.request"
    call: int
    model: str
    message_count: int
    new_messages: list[dict[str, Any]]
    """The messages added since the previous request (the full history is their concatenation)."""
    tools: list[str]


class ModelRetried(BaseEvent):
    type: Literal["model.retry"] = "model.retry"
    call: int
    attempt: int
    error: str
    status_code: int | None = None
    wait_s: float


class ModelResponded(BaseEvent):
    type: Literal["model.response"] = "model.response"
    call: int
    model: str
    parts: list[dict[str, Any]]
    finish_reason: str | None = None
    attempts: int = 1
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0
    price_source: str = "genai-prices"


class ModelCalled(BaseEvent):
    """A model call an external engine made through the model gateway, metered as it ended."""

    type: Literal["model.call"] = "model.call"
    call: int
    model: str
    api: str
    """``anthropic-messages``, ``openai-responses`` or ``openai-chat``."""
    status: int
    """The HTTP status the engine got: the provider's, or the gateway's own refusal (401, 403 budget)."""
    streamed: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0
    price_source: str = "unknown"
    error: str | None = None
    request_digest: str | None = None
    """A digest of what the request asked: its model, conversation and tools."""
    repeats: int | None = None
    """The run's earlier call that asked the same: a CLI that retried, or that resumed its session
    after a crash and repeated a call. None: a request not sent before."""


class ModelFailed(BaseEvent):
    type: Literal["model.error"] = "model.error"
    call: int
    error: str
    error_type: str
    attempts: int


class ToolCalled(BaseEvent):
    type: Literal["tool.call"] = "tool.call"
    call_id: str
    tool: str
    args: dict[str, Any] | str
    parent_call_id: str | None = None
    """The ``eval`` call whose program made this call (None: the model made it)."""


class ProgramLogged(BaseEvent):
    """A line a program wrote with ``log(...)``."""

    type: Literal["program.log"] = "program.log"
    call_id: str
    """The ``eval`` call that ran the program."""
    text: str


class PolicyDecided(BaseEvent):
    """What policy decided about an action before it ran: allow, deny or ask, the rule, and why."""

    type: Literal["policy.decision"] = "policy.decision"
    call_id: str
    tool: str
    kind: str = "tool"
    """``tool`` (a tool call), ``dispatch`` (a program's ``task()``), ``permission`` (an engine's request)."""
    verdict: Literal["allow", "deny", "ask"]
    rule: str | None = None
    """The rule that matched; None when the policy's default decided."""
    reason: str


class RuleOfTwoHeld(BaseEvent):
    """The agent processes untrusted input, holds sensitive data and acts outside: how this run is allowed."""

    type: Literal["rule_of_two"] = "rule_of_two"
    verdict: Literal["gated", "acknowledged"]
    """``gated``: every outbound action needs a person; ``acknowledged``: the spec accepts the risk."""
    ungated: list[str] = []
    """Outbound tools that run without a person (only when acknowledged)."""


class ApprovalRequested(BaseEvent):
    """Policy said ``ask``: the run waits for a person (``corral approve``/``deny``) or the timeout."""

    type: Literal["approval.requested"] = "approval.requested"
    approval_id: str
    call_id: str
    tool: str
    rule: str | None = None
    reason: str
    expires_at: float


class ApprovalDecided(BaseEvent):
    """How an approval request ended: a person approved or denied it, or its timeout denied it."""

    type: Literal["approval.decided"] = "approval.decided"
    approval_id: str
    call_id: str
    outcome: Literal["approved", "denied", "expired", "withdrawn"]
    by: str | None = None
    reason: str | None = None


class ToolReturned(BaseEvent):
    type: Literal["tool.result"] = "tool.result"
    call_id: str
    tool: str
    ok: bool
    text: str
    error: str | None = None
    spilled_to: str | None = None
    exit_code: int | None = None
    """The exit code of the command the tool ran (``execute``; None otherwise or when it was killed)."""


class TaskDispatched(BaseEvent):
    """A program's ``task()`` started a child run (or found it already started, when the run resumed)."""

    type: Literal["task.dispatch"] = "task.dispatch"
    call_id: str
    """The ``task`` call (its ``tool.call`` event has the program's ``eval`` call as parent)."""
    child_id: str
    agent: str
    """The subagent type."""
    label: str | None = None
    mode: Literal["light", "workflow"]
    """``light``: read-only, run inside its parent's process and step; ``workflow``: its own durable
    workflow on the children's queue, with its own sandbox."""


class TaskFinished(BaseEvent):
    """A dispatched child run ended; what its parent's program received (a writer's patch merged or not)."""

    type: Literal["task.finished"] = "task.finished"
    call_id: str
    child_id: str
    status: str
    """The child's status: ``succeeded``, ``failed`` or ``cancelled``."""
    reused: bool = False
    """The child had finished before (a resumed run): its result came from the store; it did not run again."""
    patch_files: int = 0
    merged: bool | None = None
    """For a child that changed files: whether its patch applied to its parent's workspace."""
    conflict: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


class SecretsDetected(BaseEvent):
    """The secret scanner found secrets nobody registered: replaced before anything saw them (but a patch's)."""

    type: Literal["secret.detected"] = "secret.detected"
    where: Literal["tool", "result", "output", "patch"]
    """A tool's result (before the model got it), the final text, the typed output, or the patch (flagged only)."""
    findings: list[dict[str, Any]]
    """``{type, line}`` each (``file`` too for the patch; ``field`` for the typed output): never the value."""
    call_id: str | None = None
    tool: str | None = None


class EgressAttempted(BaseEvent):
    type: Literal["egress"] = "egress"
    host: str
    port: int
    allowed: bool
    reason: str
    method: str | None = None
    path: str | None = None
    bytes_sent: int = 0
    bytes_received: int = 0
    secrets_used: list[str] = []


class ContextCompacted(BaseEvent):
    type: Literal["context.compacted"] = "context.compacted"
    evicted_messages: int
    kept_messages: int
    saved_to: str
    input_tokens_before: int


class BudgetExceeded(BaseEvent):
    type: Literal["budget.exceeded"] = "budget.exceeded"
    limit: str
    value: float
    maximum: float


class RunFinished(BaseEvent):
    type: Literal["run.finished"] = "run.finished"
    status: str
    text: str | None = None
    output: Any = None
    patch_files: int = 0
    error: str | None = None
    error_type: str | None = None
    turns: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


Event = Annotated[
    RunStarted
    | RunResumed
    | SandboxCreated
    | ModelRequested
    | ModelRetried
    | ModelResponded
    | ModelFailed
    | ModelCalled
    | ToolCalled
    | ProgramLogged
    | PolicyDecided
    | RuleOfTwoHeld
    | ApprovalRequested
    | ApprovalDecided
    | ToolReturned
    | TaskDispatched
    | TaskFinished
    | SecretsDetected
    | EgressAttempted
    | ContextCompacted
    | BudgetExceeded
    | RunFinished,
    Field(discriminator="type"),
]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)

_COMMON = {"key", "ts", "duration_ms", "type"}


def event_payload(event: BaseEvent) -> dict[str, Any]:
    """The type-specific fields of an event, as JSON-ready data (what the ``data`` column holds)."""
    return event.model_dump(mode="json", exclude=_COMMON)


def parse_event(type_: str, key: str, ts: float, duration_ms: float | None, data: dict[str, Any]) -> Event:
    """Rebuild the typed event from its stored columns."""
    return EVENT_ADAPTER.validate_python({**data, "type": type_, "key": key, "ts": ts, "duration_ms": duration_ms})
