"""The ``eval`` tool's work: a program's host calls are tool calls like the model's own.

Every ``tools.<name>(...)`` a program makes goes through ``call_tool`` — the engine's path for a
tool call: policy, the journal, the durable step — with the eval's call as its parent, so the
trace shows it under the program, a rule on ``execute`` holds inside a program too, and a resumed
run replays finished calls from their steps instead of running them again (a program is
deterministic: no clock, seeded random numbers).
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from corral import events
from corral.orchestration.interpreter import HostCallError, Interpreter, Limits, Outcome, ProgramSession
from corral.orchestration.stubs import LOG_CALL, TASK_CALL, TOOL_CALL, prelude, stubs
from corral.spec import ProgramsSpec
from corral.tools.base import ToolDef

CallTool = Callable[[ToolDef, dict[str, Any], str, str], Awaitable[tuple[bool, str]]]
"""``(tool, arguments, call_id, parent_call_id) -> (ok, text)``: one tool call, as the engine makes it."""


@dataclass(frozen=True)
class TaskCall:
    """One ``task(...)`` a program made, its arguments checked for shape (not yet for policy or limits)."""

    description: str
    agent: str
    schema: dict[str, Any] | None
    label: str | None
    call_id: str
    parent_call_id: str
    number: int
    """This is the program's ``number``-th dispatch (1-based)."""


Dispatch = Callable[[TaskCall], Awaitable[tuple[bool, Any]]]
"""One dispatch, as the engine makes it: ``(True, result)`` (the child's text, or its typed output), or
``(False, message)`` (denied, over a limit, or the child failed): the message ``task()`` raises with."""

EVAL_TOOL = "eval"
TASK_TOOL = "task"
"""How a program's dispatch appears in the journal and to policy (``tool = "task"`` in a rule)."""
CONTEXT = "context"
"""The name a run's long input has inside programs."""
PREVIEW_CHARS = 1_000


def context_note(context: str) -> str:
    """What the model is told of a long input instead of the input itself: its size and how it begins."""
    lines = context.count("\n") + (0 if context.endswith("\n") else 1)
    preview = context[:PREVIEW_CHARS]
    more = f"\n[... {len(context) - PREVIEW_CHARS:,} more characters]" if len(context) > PREVIEW_CHARS else ""
    return (
        f"[corral] This task comes with a long input that is not in this conversation: it is bound to "
        f"`{CONTEXT}` (a str of {len(context):,} characters, {lines:,} lines) inside `{EVAL_TOOL}` programs. "
        "Read it with code (slices, splitlines, searches) and work on it in parts; print only what you need. "
        f"It begins:\n{preview}{more}"
    )


EVAL_DESCRIPTION = """\
Run a short Python program (a subset of Python 3: no classes with inheritance, no generators) in a
sandboxed interpreter. Use it to call tools many times, in parallel, and to filter, count or
aggregate their results in code instead of in the conversation: only what the program prints and
its last expression come back to you.

Inside the program:
- `await tools.<name>(arg=...)` calls a tool (keyword arguments, as the tool takes them) and returns
  its text; a failed call raises `ToolError` (catch it with `except ToolError as e`).
  Available: {tools}.
- `await asyncio.gather(*[...])` runs calls at the same time.
- `log(...)` writes a line to the run's journal; `print(...)` output comes back to you.
- No files, network, environment or clock of its own: everything goes through `tools`.
- Programs are type-checked before they run: a type error comes back instead of any side effect.
Limits: {cpu_s:g} s of interpreter time, {memory_mb} MB, {host_calls} tool calls, {wall_s:g} s in all.
"""

TASK_DESCRIPTION = """- `await task(description, agent="{default}", schema=None, label=None)` hands a piece of work to a
  subagent (a child run with its own context) and returns its answer: its final text, or a dict
  when its type returns typed output or you pass a JSON `schema` (an object schema) for it.
  A failed or refused dispatch raises `TaskError`. Dispatch many at once with `asyncio.gather`;
  give each everything it needs in `description` (it sees nothing of this conversation).
  Subagent types: {types}.
  At most {max_dispatches} dispatches per program.
"""


def limits_of(spec: ProgramsSpec) -> Limits:
    return Limits(
        cpu_s=spec.cpu_s,
        memory_mb=spec.memory_mb,
        wall_s=spec.wall_s,
        host_calls=spec.host_calls,
        output_chars=spec.output_chars,
    )


class ProgramTool:
    """Runs the programs of one run: the tools they may call, their limits, their journal lines."""

    def __init__(
        self,
        *,
        spec: ProgramsSpec,
        tools: Mapping[str, ToolDef],
        call_tool: CallTool,
        emit: Callable[[events.BaseEvent], None],
        redact: Callable[[str], str],
        interpreter: Interpreter,
        context: str | None = None,
        dispatch: Dispatch | None = None,
        subagents: Mapping[str, str] | None = None,
        typed_subagents: frozenset[str] = frozenset(),
    ) -> None:
        self._spec = spec
        self._tools = dict(tools)
        self._call_tool = call_tool
        self._emit = emit
        self._redact = redact
        self._interpreter = interpreter
        self._inputs = {CONTEXT: context} if context is not None else {}
        self._dispatch = dispatch
        # type -> what it is for (its first line of instructions), for the tool's description
        self._subagents = dict(subagents or {}) if dispatch is not None else {}
        self._default = next(iter(self._subagents), None)
        self._stubs = stubs(
            {name: tool.json_schema() for name, tool in self._tools.items()},
            inputs=self._inputs,
            subagents={name: name in typed_subagents for name in self._subagents},
            default_subagent=self._default,
        )
        self._prelude = prelude(self._tools, default_subagent=self._default)
        self._session: ProgramSession | None = None
        self._session_turn: int | None = None

    def description(self) -> str:
        spec = self._spec
        names = ", ".join(f"`{name}`" for name in sorted(self._tools)) or "none"
        text = EVAL_DESCRIPTION.format(
            tools=names, cpu_s=spec.cpu_s, memory_mb=spec.memory_mb, host_calls=spec.host_calls, wall_s=spec.wall_s
        )
        if self._subagents:
            types = "; ".join(f"`{name}`: {about}" for name, about in self._subagents.items())
            head, sep, limits = text.rpartition("Limits:")
            task = TASK_DESCRIPTION.format(default=self._default, types=types, max_dispatches=spec.max_dispatches)
            text = head + task + sep + limits
        return text

    async def close(self) -> None:
        """Give back the interpreter session kept across programs (``turn`` and ``thread`` persistence)."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _session_for(self, turn: int | None) -> ProgramSession:
        """The session this program runs in: the run's (thread), the turn's (turn), or a new one (call)."""
        if self._session is not None and (self._spec.persistence == "thread" or turn == self._session_turn):
            return self._session
        await self.close()
        self._session = self._interpreter.open_session(
            prelude=self._prelude, stubs=self._stubs, limits=limits_of(self._spec), persistent=True
        )
        self._session_turn = turn
        return self._session

    async def run(self, program: str, call_id: str, turn: int | None = None) -> Outcome:
        """Run one program for the eval call ``call_id`` (made in model turn ``turn``); its tool calls are
        journaled as that call's children."""
        numbers = itertools.count(1)

        async def call(name: str, arguments: dict[str, Any]) -> str:
            tool = self._tools.get(name) if isinstance(name, str) else None
            if tool is None:  # the prelude only calls allowlisted tools; a program calling the host directly may not
                allowed = ", ".join(sorted(self._tools)) or "none"
                raise HostCallError(f"tool {name!r} is not available to programs (available: {allowed})")
            if not isinstance(arguments, dict):
                raise HostCallError(f"tool {name}: arguments must be keyword arguments")
            ok, text = await self._call_tool(tool, dict(arguments), f"{call_id}.{next(numbers)}", call_id)
            if not ok:
                raise HostCallError(text)
            return text

        async def log(text: str) -> None:
            key = f"{call_id}:log:{next(numbers)}"
            self._emit(events.ProgramLogged(key=key, call_id=call_id, text=self._redact(str(text))))

        dispatches = itertools.count(1)

        async def task(description: Any, agent: Any, schema: Any = None, label: Any = None) -> Any:
            if self._dispatch is None:
                raise HostCallError("this agent cannot dispatch subagents")
            if not isinstance(agent, str) or agent not in self._subagents:
                available = ", ".join(self._subagents)
                raise HostCallError(f"no subagent type {agent!r} in this agent's spec (available: {available})")
            if not isinstance(description, str) or not description.strip():
                raise HostCallError("task(): the description must be a non-empty string")
            if schema is not None and not isinstance(schema, dict):
                raise HostCallError("task(): schema must be a JSON schema (a dict) or None")
            if label is not None and not isinstance(label, str):
                raise HostCallError("task(): label must be a string or None")
            number = next(dispatches)
            request = TaskCall(description, agent, schema, label, f"{call_id}.{next(numbers)}", call_id, number)
            ok, value = await self._dispatch(request)
            if not ok:
                raise HostCallError(str(value))
            return value

        functions = {TOOL_CALL: call, LOG_CALL: log, TASK_CALL: task}
        if self._spec.persistence == "call":
            outcome = await self._interpreter.run(
                program,
                functions=functions,
                prelude=self._prelude,
                stubs=self._stubs,
                inputs=self._inputs,
                limits=limits_of(self._spec),
            )
        else:
            session = await self._session_for(turn)
            outcome = await session.run(program, functions=functions, inputs=self._inputs)
        error = outcome.error or ""
        if outcome.error_kind == "type" and self._subagents and "`task`" in error:
            types = ", ".join(self._subagents)
            outcome = replace(outcome, error=f"{error.rstrip()}\n(task(): the subagent types are: {types})")
        return outcome
