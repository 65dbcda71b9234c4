"""Scripts for the scripted model: turns, failures and routes, loaded from TOML or JSON, and the bundled ones."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from corral.errors import ModelConfigError, ScriptError

SCRIPT_SUFFIXES = (".toml", ".json")
"""A ``scripted:`` model name ending in one of these names a script file; any other names a bundled script."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScriptUsage(_Strict):
    """Token figures reported for a turn; a figure left out is estimated at about four characters a token.

    ``input_tokens`` counts every input token, cached ones included (as OpenAI reports it); on the
    Anthropic wire the cache reads and writes are subtracted from it, as Anthropic reports it.
    """

    input_tokens: int | None = Field(default=None, ge=0)
    output_tokens: int | None = Field(default=None, ge=0)
    cache_read_tokens: int = Field(default=0, ge=0)
    cache_write_tokens: int = Field(default=0, ge=0)
    reasoning_tokens: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.input_tokens is not None and self.cache_read_tokens + self.cache_write_tokens > self.input_tokens:
            raise ValueError("cache_read_tokens + cache_write_tokens cannot exceed input_tokens")
        if self.output_tokens is not None and self.reasoning_tokens > self.output_tokens:
            raise ValueError("reasoning_tokens cannot exceed output_tokens (they are part of them)")
        return self


class ToolCall(_Strict):
    """A tool call the scripted model makes; ``id`` defaults to ``call_<n>`` (``toolu_<n>`` on Anthropic).

    ``input`` instead of ``args`` calls a *custom* (freeform) tool with that text, as OpenAI models
    call Codex's ``apply_patch``: a ``custom_tool_call`` on the Responses wire, a ``custom`` tool call
    on Chat Completions; Anthropic has no such tools, so there it is a ``tool_use`` of ``{"input": text}``.
    """

    name: str = Field(min_length=1)
    args: dict[str, Any] = Field(default_factory=dict)
    input: str | None = None
    id: str | None = None

    @model_validator(mode="after")
    def _args_or_input(self) -> Self:
        if self.input is not None and self.args:
            raise ValueError("a tool call has args (a function tool) or input (a custom tool), not both")
        return self


class Failure(_Strict):
    """An error answer returned for ``times`` attempts at a turn before it answers normally."""

    status: int = Field(ge=400, le=599)
    retry_after: float | None = Field(default=None, ge=0)
    times: int = Field(default=1, ge=1)
    message: str | None = None


class Turn(_Strict):
    """One answer of the scripted model."""

    text: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    output: Any = None
    output_tool: str | None = None
    delay: float = Field(default=0.0, ge=0)
    fail: list[Failure] = Field(default_factory=list)
    malformed: bool = False
    usage: ScriptUsage | None = None

    @model_validator(mode="after")
    def _answers_something(self) -> Self:
        if self.text is None and self.output is None and not (self.tool_calls or self.fail or self.malformed):
            raise ValueError("a turn needs at least one of text, tool_calls, output, fail or malformed")
        return self

    def failure_at(self, attempt: int) -> Failure | None:
        """The failure answering the ``attempt``-th (0-based) request for this turn, if any."""
        for failure in self.fail:
            if attempt < failure.times:
                return failure
            attempt -= failure.times
        return None


class Route(_Strict):
    """Turns for the conversations whose system prompt or opening user messages contain ``match``."""

    match: str = Field(min_length=1)
    turns: list[Turn] = Field(min_length=1)


class Script(_Strict):
    """A scripted model session: the turns answered in order, and optional per-conversation routes."""

    model: str = "scripted"
    turns: list[Turn] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    _source: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _has_turns(self) -> Self:
        if not self.turns and not self.routes:
            raise ValueError("a script needs at least one turn ([[turns]]) or route ([[routes]])")
        return self

    @property
    def name(self) -> str:
        """The file the script came from, for error messages."""
        return self._source or "<inline script>"

    def turns_for(self, system: str, first_user: str) -> tuple[list[Turn], str]:
        """The turns answering a conversation, and where they sit in the script."""
        for index, route in enumerate(self.routes):
            if route.match in system or route.match in first_user:
                return route.turns, f"routes[{index}].turns"
        return self.turns, "turns"


def _location(loc: tuple[int | str, ...]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".") or "script"


def load_script(path: Path | str) -> Script:
    """Read and validate a TOML or JSON script; raises :class:`ScriptError` naming the file and field."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ScriptError(f"cannot read script {path}: {exc.strerror}") from exc
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(raw.decode())
        elif path.suffix == ".json":
            data = json.loads(raw)
        else:
            raise ScriptError(f"script {path} must end in .toml or .json")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ScriptError(f"script {path} is not valid {path.suffix[1:].upper()}: {exc}") from exc
    try:
        script = Script.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{_location(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ScriptError(f"invalid script {path}: {problems}", hint="see docs/scripted-model.md") from exc
    script._source = str(path)
    return script


def bundled_scripts() -> dict[str, Path]:
    """The scripts that ship with corral, by the name ``scripted:NAME`` uses."""
    from corral.demo import DEMO_SCRIPT

    return {"demo": DEMO_SCRIPT}


def script_file(name: str) -> Path:
    """The script file a ``scripted:NAME`` model serves: a bundled script, or a file (relative: to the cwd).

    Raises :class:`ModelConfigError` when there is no such bundled script or file.
    """
    if not name.endswith(SCRIPT_SUFFIXES):
        bundled = bundled_scripts()
        if name not in bundled:
            raise ModelConfigError(
                f"no bundled script named {name!r} for model 'scripted:{name}' (bundled: {', '.join(sorted(bundled))})",
                hint='a script file\'s name ends in .toml or .json, e.g. model = "scripted:./session.toml"',
            )
        return bundled[name]
    path = Path(name).expanduser().absolute()
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise ModelConfigError(
            f"the script of model 'scripted:{name}' {problem}: {path}",
            hint="a relative script path is read from the directory of the corral.toml that names it "
            "(from the current directory for --model and specs built in Python); see docs/scripted-model.md",
        )
    return path
