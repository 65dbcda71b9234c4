"""Tools as the model sees them: a typed definition, a context, and ``run_tool``, which never raises."""

from __future__ import annotations

import hashlib
import inspect
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast, get_type_hints

from pydantic import BaseModel, ValidationError

from corral.errors import SandboxError, ToolError
from corral.policy.rules import Capability
from corral.sandbox.base import EXEC_TIMEOUT, OUTPUT_LIMIT, Sandbox
from corral.sandbox.workspace import SCRATCH_DIRNAME
from corral.secrets.scanner import Scanned

OUTPUTS_DIR = f"{SCRATCH_DIRNAME}/outputs"
"""Workspace-relative directory where results too long for the model are saved in full."""

P = TypeVar("P", bound=BaseModel)


def _no_redaction(text: str) -> str:
    return text


@dataclass
class ToolContext:
    """Everything a tool may use, handed to it on each call instead of globals."""

    sandbox: Sandbox
    run_id: str
    idempotency_key: str
    """Stable per tool call across retries and resume; derived from the durable step by the runtime."""
    redact: Callable[[str], str] = field(default=_no_redaction)
    """Applied by ``run_tool`` to every result before it leaves the tool layer."""
    scan: Callable[[str, str | None], Scanned] | None = None
    """The secret scanner, applied by ``run_tool`` to what the model will see; None: no scan."""
    output_limit: int = 20_000
    """Characters of a result the model may see; longer results are spilled to a file."""
    exec_timeout: float = EXEC_TIMEOUT
    """Default and maximum seconds for ``execute``."""
    exec_output_limit: int = OUTPUT_LIMIT
    """Most bytes of each stream of a command shown to the model; ``output_limit`` usually binds first."""


@dataclass(frozen=True)
class ToolReply:
    """What a tool may return instead of plain text: the text plus facts the journal records."""

    text: str
    exit_code: int | None = None
    """A command's exit code (None: it was killed before it exited)."""
    spilled_to: str | None = None
    """Workspace-relative path where the tool saved a whole output that ``text`` shows only part of."""
    source: str | None = None
    """The workspace file ``text`` shows (``read_file``): the secret scanner reads it in that file's format."""


ToolFn = Callable[[ToolContext, BaseModel], Awaitable["str | ToolReply"]]


@dataclass(frozen=True)
class ToolDef:
    """A tool: its name, the description and argument schema the model reads, and what it can do."""

    name: str
    description: str
    params: type[BaseModel]
    capabilities: frozenset[Capability]
    fn: ToolFn

    def json_schema(self) -> dict[str, Any]:
        """The JSON schema of the arguments, as sent to the model."""
        return self.params.model_json_schema()


class ToolDecorator(Protocol):
    def __call__(self, fn: Callable[[ToolContext, P], Awaitable[str | ToolReply]], /) -> ToolDef: ...


def tool(*, name: str | None = None, capabilities: Iterable[Capability] = ()) -> ToolDecorator:
    """Turn ``async def f(ctx: ToolContext, args: SomeParams) -> str`` into a ToolDef.

    The docstring is the description the model reads; ``SomeParams`` (a pydantic model) is the
    argument schema. Declare every capability the tool has: policy relies on them.
    """

    def decorate(fn: Callable[[ToolContext, P], Awaitable[str | ToolReply]]) -> ToolDef:
        tool_name = name or fn.__name__
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"tool {tool_name!r} must be an async function")
        description = inspect.getdoc(fn)
        if not description:
            raise TypeError(f"tool {tool_name!r} needs a docstring: it is the description the model reads")
        # The defining scope resolves string annotations of classes local to a function.
        params = _params_model(fn, tool_name, localns=sys._getframe(1).f_locals)
        return ToolDef(
            name=tool_name,
            description=description,
            params=params,
            capabilities=frozenset(Capability(capability) for capability in capabilities),
            fn=cast(ToolFn, fn),
        )

    return decorate


def _params_model(fn: Callable[..., Any], tool_name: str, *, localns: dict[str, Any]) -> type[BaseModel]:
    parameters = list(inspect.signature(fn).parameters)
    if len(parameters) != 2:
        raise TypeError(f"tool {tool_name!r} must take exactly (ctx, args), got ({', '.join(parameters)})")
    try:
        annotation = get_type_hints(fn, localns=dict(localns)).get(parameters[1])
    except NameError as exc:
        raise TypeError(f"tool {tool_name!r}: cannot resolve the type of {parameters[1]!r}: {exc}") from None
    if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        raise TypeError(f"tool {tool_name!r}: annotate its second parameter with a pydantic model")
    return annotation


@dataclass(frozen=True)
class ToolOutcome:
    """The result of one tool call, ready for the model and the journal."""

    ok: bool
    text: str
    """What the model sees: redacted; a preview plus a pointer when spilled; the error when not ok."""
    error: str | None
    """The error class name when not ok."""
    spilled_to: str | None
    """Workspace-relative path of the full output when it was too long to show."""
    duration_ms: float
    exit_code: int | None = None
    """The exit code of the command a tool ran (``execute``); None for other tools or a killed command."""
    secrets: list[dict[str, Any]] = field(default_factory=list)
    """What the secret scanner found and replaced in ``text`` (type and line, never the value)."""


async def run_tool(tooldef: ToolDef, ctx: ToolContext, raw_args: dict[str, Any] | str) -> ToolOutcome:
    """Validate arguments, call the tool and shape its result; every failure becomes ok=False."""
    started = time.monotonic()
    ok, error, exit_code, saved, source = True, None, None, None, None
    try:
        args = _validate(tooldef, raw_args)
        reply = await tooldef.fn(ctx, args)
        if isinstance(reply, ToolReply):
            text, exit_code, saved, source = reply.text, reply.exit_code, reply.spilled_to, reply.source
        elif isinstance(reply, str):
            text = reply
        else:
            raise TypeError(f"returned {type(reply).__name__}, expected str or ToolReply")
    except _InvalidArguments as exc:
        ok, error, text = False, "ValidationError", str(exc)
    except (ToolError, SandboxError) as exc:  # PathEscapeError is a SandboxError
        ok, error, text = False, type(exc).__name__, str(exc)
    except Exception as exc:
        ok, error = False, type(exc).__name__
        text = f"tool {tooldef.name} crashed: {type(exc).__name__}: {exc}"
    text, spilled_to = await _fit(ctx, _redact(ctx, text))
    text, secrets = scan_result(ctx.scan, text, source)  # a spilled file is scanned when it is read
    return ToolOutcome(
        ok=ok,
        text=text,
        secrets=secrets,
        error=error,
        spilled_to=spilled_to or saved,
        duration_ms=(time.monotonic() - started) * 1000,
        exit_code=exit_code,
    )


class _InvalidArguments(Exception):
    pass


def _validate(tooldef: ToolDef, raw_args: dict[str, Any] | str) -> BaseModel:
    try:
        if isinstance(raw_args, str):
            return tooldef.params.model_validate_json(raw_args or "{}")
        return tooldef.params.model_validate(raw_args)
    except ValidationError as exc:
        lines = [f"invalid arguments for tool {tooldef.name}:"]
        for problem in exc.errors(include_url=False):
            where = ".".join(str(part) for part in problem["loc"]) or "(arguments)"
            lines.append(f"- {where}: {problem['msg']}")
        fields = ", ".join(tooldef.params.model_fields) or "none"
        lines.append(f"expected fields: {fields}")
        raise _InvalidArguments("\n".join(lines)) from None


def _redact(ctx: ToolContext, text: str) -> str:
    try:
        return ctx.redact(text)
    except Exception as exc:
        # Never fall back to the unredacted text.
        return f"tool result withheld: redaction failed ({type(exc).__name__})"


def scan_result(
    scan: Callable[[str, str | None], Scanned] | None, text: str, source: str | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """``text`` as the model may see it, and the findings as journaled; None: no scan.

    A scanner that fails withholds the text: it never falls back to the unscanned text.
    """
    if scan is None:
        return text, []
    try:
        scanned = scan(text, source)
    except Exception as exc:
        # Never fall back to the unscanned text.
        return f"tool result withheld: the secret scan failed ({type(exc).__name__})", []
    return scanned.text, [finding.to_json() for finding in scanned.findings]


async def _fit(ctx: ToolContext, text: str) -> tuple[str, str | None]:
    """Return text as is if short enough; otherwise save it and return a preview and the file's path."""
    if len(text) <= ctx.output_limit:
        return text, None
    spill_path = f"{OUTPUTS_DIR}/{_safe_name(ctx.idempotency_key)}.txt"
    try:
        await ctx.sandbox.write_file(spill_path, text.encode("utf-8"))
    except (SandboxError, OSError) as exc:
        note = f"[output truncated: {len(text)} chars; it could not be saved ({exc})]"
        return _preview(text, ctx.output_limit) + "\n" + note, None
    note = f"[full output ({len(text)} chars) saved to {spill_path}; read it with read_file and line ranges]"
    return _preview(text, ctx.output_limit) + "\n" + note, spill_path


def _safe_name(key: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("._")[:120]
    if safe != key:
        # Different keys must not collide after sanitizing.
        safe = f"{safe or 'output'}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    return safe


def _preview(text: str, limit: int) -> str:
    """Whole head and tail lines within about half and a quarter of the limit, with a gap marker."""
    lines = text.splitlines(keepends=True)
    head: list[str] = []
    budget = max(limit // 2, 1)
    for line in lines:
        if len(line) > budget:
            if not head:
                head.append(line[:budget] + "…\n")
            break
        head.append(line)
        budget -= len(line)
    tail: list[str] = []
    budget = max(limit // 4, 1)
    for line in reversed(lines[len(head) :]):
        if len(line) > budget:
            break
        tail.insert(0, line)
        budget -= len(line)
    omitted = len(lines) - len(head) - len(tail)
    gap = f"\n[... {omitted} lines omitted ...]\n" if omitted > 0 else "\n[...]\n"
    return "".join(head).rstrip("\n") + gap + "".join(tail).rstrip("\n")
