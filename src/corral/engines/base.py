"""The engine contract: what the runtime hands an engine, and what an engine gives back."""

from __future__ import annotations

import functools
import itertools
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, ClassVar, Protocol, TypeVar

from corral.errors import UnknownEngineError
from corral.events import BaseEvent, ToolReturned, Usage
from corral.policy.budgets import BudgetClock
from corral.policy.decide import Action, Decision
from corral.sandbox.base import Sandbox
from corral.spec import AgentSpec
from corral.tools.base import ToolDef

T = TypeVar("T")

ENTRY_POINT_GROUP = "corral.engines"


class Steps(Protocol):
    """Durable execution of the side-effecting parts of a loop.

    A completed step is never executed again: after a crash its recorded result is returned.
    ``key`` names the step uniquely within the run; the idempotency key handed to the step function
    is stable across re-executions of the same step.
    """

    async def model_call(self, fn: Callable[[], Awaitable[T]]) -> T: ...

    async def tool_call(self, fn: Callable[[str], Awaitable[T]]) -> T: ...


class LocalSteps:
    """:class:`Steps` that run each function at once and remember nothing: no durability.

    For tests of engines and for embedding an engine where a crash may simply start over.
    """

    def __init__(self, run_id: str = "local") -> None:
        self._run_id = run_id
        self._ids = itertools.count(1)
        self.model_calls = 0
        self.tool_calls = 0

    async def model_call(self, fn: Callable[[], Awaitable[T]]) -> T:
        self.model_calls += 1
        return await fn()

    async def tool_call(self, fn: Callable[[str], Awaitable[T]]) -> T:
        self.tool_calls += 1
        return await fn(f"{self._run_id}:{next(self._ids)}")


@dataclass(frozen=True)
class Conversation:
    """What a follow-up run continues: the conversation of the runs before it, oldest first.

    The messages as the journals of the chain of runs record them: each ``model.request`` event's
    ``new_messages`` and each ``model.response`` event's parts, which are pydantic-ai's message
    dicts. Already redacted.
    """

    runs: tuple[str, ...]
    """The runs the messages come from, the first run first; the last is the run being continued."""
    messages: tuple[dict[str, Any], ...]
    ended: str
    """How the continued run ended (``succeeded``, ``failed``, ``cancelled``): the tool calls its
    last response left unanswered were its final result (succeeded) or were cut off."""
    input_tokens: int = 0
    """The input tokens of the conversation's last model call: how full its context was."""
    tool_results: Mapping[str, ToolReturned] = field(default_factory=dict)
    """What tool calls returned, by call id: a call that returned after the run's last model call
    (it was cancelled before the next one) has its result only here."""


@dataclass(frozen=True)
class ChildRequest:
    """A subagent a program dispatched: a child run of ``spec`` on ``task``."""

    call_id: str
    """The ``task`` call that dispatches it: names the child for good (a resumed run finds it again)."""
    spec: AgentSpec
    task: str
    label: str | None = None


@dataclass(frozen=True)
class ChildResult:
    """How a child run ended, as its parent's program sees it."""

    run_id: str
    status: str
    """``succeeded``, ``failed`` or ``cancelled``."""
    text: str | None = None
    output: dict[str, Any] | None = None
    error: str | None = None
    patch_files: int = 0
    conflict: str | None = None
    """A writer's patch that did not apply to the parent's workspace: git's report (None: applied, or none)."""

    @property
    def ok(self) -> bool:
        return self.status == "succeeded" and self.conflict is None


NO_ONE_TO_ASK = Decision(verdict="deny", reason="policy asks a person, and this engine runs without a runtime to ask")
"""What stands for an action policy would ask a person about when there is no one to ask (no runtime)."""

DispatchFn = Callable[[ChildRequest], Awaitable[ChildResult]]
"""Run a child to its end (or find the one that already ran) and say how it ended."""

AskFn = Callable[[Action, Decision, str], Awaitable[Decision]]
"""``ask(action, decision, call_id)``: what a person decided about an action policy sent to them."""


@dataclass(frozen=True)
class ModelAccess:
    """How an external engine reaches models: through the model gateway, with this run's key.

    The base URLs are as the engine's process sees them from inside its sandbox (a routed name through
    the sandbox's egress proxy, or the gateway's loopback address where commands share the host's
    network). The key is a placeholder the gateway knows for this run only: never a provider's key.
    """

    anthropic_base_url: str
    openai_base_url: str
    api_key: str = field(repr=False)
    model: str | None
    """The model to ask for (the spec's, without its provider), or None for the CLI's default."""
    provider: str = ""
    """The spec's model provider (``anthropic``, ``openai``, ``scripted``…): the wire a CLI that speaks
    several should use."""
    permission_url: str = ""
    """Where the engine's permission hook asks what policy says about a tool call (same key)."""


@dataclass
class EngineContext:
    """Everything an engine may use: no globals, no store, no DBOS."""

    run_id: str
    spec: AgentSpec
    task: str
    sandbox: Sandbox
    steps: Steps
    emit: Callable[[BaseEvent], None]
    redact: Callable[[str], str]
    tools: dict[str, ToolDef]
    budget: BudgetClock
    """The run's budget and wall-clock deadline (shared with the runtime, which enforces it too)."""
    on_usage: Callable[[Usage, int], None] = field(default=lambda usage, turns: None)
    """Called with the run's running usage and model-call count after every model call."""
    history: Conversation | None = None
    """The conversation this run follows up (``corral continue``); None for a new run. ``task`` is
    the next prompt. An engine that keeps its own session may ignore it."""
    context: str | None = None
    """A long input kept out of the prompt: programs read it as ``context`` (None: the run has none)."""
    ask: AskFn | None = None
    """Put an action policy said ``ask`` about before a person and wait (durably) for the answer: the
    decision that stands, ``allow`` or ``deny``. None (no runtime, no store): such actions are denied."""
    dispatch: DispatchFn | None = None
    """Start a child run for a program's ``task()`` and wait for it. None (no runtime): ``task()`` fails."""
    depth: int = 0
    """Where this run sits in its tree: 0 for a root run, 1 for its children, ..."""
    models: ModelAccess | None = None
    """For an external engine (``Engine.external``): its door to the models. None for the others."""


@dataclass(frozen=True)
class EngineResult:
    text: str
    output: dict[str, Any] | None = None
    turns: int = 0


class Engine(ABC):
    """Drives one agent loop to its end; emits the same events whatever the underlying harness."""

    name: ClassVar[str]
    external: ClassVar[bool] = False
    """Runs a program of its own inside the run's sandbox (Claude Code, Codex, OpenCode): the runtime
    gives it ``ctx.models`` (the model gateway) and mounts ``sandbox_mounts()`` read-only in the sandbox."""

    def sandbox_mounts(self) -> tuple[str, ...]:
        """Host directories the engine's program needs inside the sandbox, read-only (its installed CLI)."""
        return ()

    @abstractmethod
    async def run(self, ctx: EngineContext) -> EngineResult: ...


@functools.cache
def _entry_points() -> dict[str, EntryPoint]:
    """The group's entry points, read from the installed packages' metadata once per process (a read
    costs milliseconds, and every run asks)."""
    found: dict[str, EntryPoint] = {}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry_point.name, entry_point)
    return found


def available_engines() -> tuple[str, ...]:
    """Names of the installed engines."""
    return tuple(sorted(_entry_points()))


def get_engine(name: str) -> Engine:
    """An instance of the engine registered as ``name`` in the ``corral.engines`` entry point group."""
    found = _entry_points()
    if name not in found:
        raise UnknownEngineError(name, tuple(sorted(found)))
    engine_class = found[name].load()
    if not (isinstance(engine_class, type) and issubclass(engine_class, Engine)):
        raise UnknownEngineError(name, tuple(sorted(found)))
    return engine_class()
