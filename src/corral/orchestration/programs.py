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
from typing import Any

from corral import events
from corral.orchestration.interpreter import HostCallError, Interpreter, Limits, Outcome
from corral.orchestration.stubs import LOG_CALL, TOOL_CALL, prelude, stubs
from corral.spec import ProgramsSpec
from corral.tools.base import ToolDef

CallTool = Callable[[ToolDef, dict[str, Any], str, str], Awaitable[tuple[bool, str]]]
"""``(tool, arguments, call_id, parent_call_id) -> (ok, text)``: one tool call, as the engine makes it."""

EVAL_TOOL = "eval"
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
    ) -> None:
        self._spec = spec
        self._tools = dict(tools)
        self._call_tool = call_tool
        self._emit = emit
        self._redact = redact
        self._interpreter = interpreter
        self._inputs = {CONTEXT: context} if context is not None else {}
        self._stubs = stubs({name: tool.json_schema() for name, tool in self._tools.items()}, inputs=self._inputs)
        self._prelude = prelude(self._tools)

    def description(self) -> str:
        spec = self._spec
        names = ", ".join(f"`{name}`" for name in sorted(self._tools)) or "none"
        return EVAL_DESCRIPTION.format(
            tools=names, cpu_s=spec.cpu_s, memory_mb=spec.memory_mb, host_calls=spec.host_calls, wall_s=spec.wall_s
        )

    async def run(self, program: str, call_id: str) -> Outcome:
        """Run one program for the eval call ``call_id``; its tool calls are journaled as that call's children."""
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

        return await self._interpreter.run(
            program,
            functions={TOOL_CALL: call, LOG_CALL: log},
            prelude=self._prelude,
            stubs=self._stubs,
            inputs=self._inputs,
            limits=limits_of(self._spec),
        )
