"""The engine contract: what the runtime hands an engine, and what an engine gives back."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

from corral.events import BaseEvent, Usage
from corral.sandbox.base import Sandbox
from corral.spec import AgentSpec
from corral.tools.base import ToolDef

T = TypeVar("T")


class Steps(Protocol):
    """Durable execution of the side-effecting parts of a loop.

    A completed step is never executed again: after a crash its recorded result is returned.
    ``key`` names the step uniquely within the run; the idempotency key handed to the step function
    is stable across re-executions of the same step.
    """

    async def model_call(self, fn: Callable[[], Awaitable[T]]) -> T: ...

    async def tool_call(self, fn: Callable[[str], Awaitable[T]]) -> T: ...


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
    started_at: float
    on_usage: Callable[[Usage, int], None] = field(default=lambda usage, turns: None)
    """Called with the run's running usage and model-call count after every model call."""


@dataclass(frozen=True)
class EngineResult:
    text: str
    output: dict[str, Any] | None = None
    turns: int = 0


class Engine(ABC):
    """Drives one agent loop to its end; emits the same events whatever the underlying harness."""

    name: ClassVar[str]

    @abstractmethod
    async def run(self, ctx: EngineContext) -> EngineResult: ...
