"""What every wire format of the scripted model server shares: the normalized request, the answer, SSE helpers."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

Api = Literal["openai-chat", "openai-responses", "anthropic"]
Role = Literal["user", "assistant", "tool"]


class WireError(Exception):
    """A request body is not a valid request for its API; answered with HTTP 400."""


@dataclass(frozen=True)
class HistoryToolCall:
    """A tool call the assistant made earlier in the conversation."""

    id: str
    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class ToolResult:
    """A tool's result sent back to the model."""

    call_id: str
    content: str
    is_error: bool = False


@dataclass(frozen=True)
class Message:
    """One message of a conversation, the same shape whichever API carried it."""

    role: Role
    text: str = ""
    tool_calls: tuple[HistoryToolCall, ...] = ()
    tool_results: tuple[ToolResult, ...] = ()


@dataclass(frozen=True)
class ToolSpec:
    """A tool the request offers the model."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScriptedRequest:
    """A model request as the server (and a policy function) sees it, the same shape for every API.

    ``position`` is the number of assistant turns before this request: the index of the turn answering it.
    """

    api: Api
    position: int
    model: str
    system: str
    messages: list[Message]
    tools: list[ToolSpec]
    stream: bool
    body: dict[str, Any] = field(repr=False)
    include_usage: bool = False
    previous_response_id: str | None = None

    @property
    def first_user_text(self) -> str:
        """The conversation's opening: its user messages before the first answer (a CLI may send several,
        its context first and the task last)."""
        opening: list[str] = []
        for message in self.messages:
            if message.role != "user":
                break
            opening.append(message.text)
        return "\n".join(opening)

    @property
    def tool_names(self) -> list[str]:
        return [t.name for t in self.tools]

    @property
    def last_tool_results(self) -> tuple[ToolResult, ...]:
        return self.messages[-1].tool_results if self.messages else ()

    def tool_calls_so_far(self) -> int:
        return sum(len(m.tool_calls) for m in self.messages)


@dataclass(frozen=True)
class TokenUsage:
    """Token figures of one answer; ``input`` includes the cached tokens."""

    input: int
    output: int
    cache_read: int = 0
    cache_write: int = 0
    reasoning: int = 0


@dataclass(frozen=True)
class AnswerCall:
    """A tool call in an answer, its arguments already a JSON string."""

    id: str
    name: str
    arguments: str
    """The arguments as a JSON string; a custom tool's input text when ``custom``."""
    custom: bool = False

    @property
    def args(self) -> dict[str, Any]:
        """The arguments as an object (a custom tool's input as ``{"input": text}``)."""
        return {"input": self.arguments} if self.custom else parse_args(self.arguments)


@dataclass(frozen=True)
class Answer:
    """A model answer ready to render in any API's wire format."""

    id: str
    model: str
    text: str
    reasoning: str
    calls: list[AnswerCall]
    usage: TokenUsage


ParsedBody = tuple[str, list[Message], list[ToolSpec]]
"""A request body as an API module reads it: system prompt, messages, tools."""


@dataclass(frozen=True)
class WireFormat:
    """One model API as the server speaks it; each API module defines one (``WIRE``)."""

    api: Api
    path: str
    answer_id_prefix: str
    call_id_prefix: str
    parse: Callable[[dict[str, Any]], ParsedBody]
    render_body: Callable[[Answer, ScriptedRequest], dict[str, Any]]
    render_stream: Callable[[Answer, ScriptedRequest], Iterator[str]]
    error_body: Callable[[int, str], dict[str, Any]]
    malformed_stream: Callable[[], Iterator[str]]

    def answer_id(self) -> str:
        return new_id(self.answer_id_prefix)


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


# --- reading requests ------------------------------------------------------------------------


def text_of(content: Any) -> str:
    """Flatten a content value (string or list of parts) to text; non-text parts become ``[type]``."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        return str(content)
    parts: list[str] = []
    for part in content:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, dict) and isinstance(part.get("text"), str):
            parts.append(part["text"])
        elif isinstance(part, dict) and "type" in part:
            parts.append(f"[{part['type']}]")
    return "\n".join(parts)


def parse_args(arguments: Any) -> dict[str, Any]:
    """Tool-call arguments as a dict, whether they came as an object or a JSON string."""
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments or "{}")
    except (TypeError, ValueError):
        return {"__raw__": arguments}
    return value if isinstance(value, dict) else {"__raw__": value}


def append_message(messages: list[Message], message: Message) -> None:
    """Append, merging consecutive assistant messages and consecutive tool-result messages."""
    last = messages[-1] if messages else None
    if last is None or last.role != message.role or message.role == "user":
        messages.append(message)
        return
    text = "\n".join(t for t in (last.text, message.text) if t)
    calls, results = last.tool_calls + message.tool_calls, last.tool_results + message.tool_results
    messages[-1] = Message(last.role, text, calls, results)


def objects(value: Any, what: str) -> list[dict[str, Any]]:
    """``value`` as a list of JSON objects, or a :class:`WireError` naming the field."""
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise WireError(f"'{what}' must be a list of objects")
    return value


def tool_spec(t: dict[str, Any], schema_key: str) -> ToolSpec:
    """A tool definition whose name, description and schema sit at the top level of ``t``."""
    return ToolSpec(t.get("name") or t.get("type", ""), t.get("description") or "", t.get(schema_key) or {})


# corral's history compaction leaves this note where it removed turns; counting them keeps positions right.
_COMPACTED = re.compile(r"\[corral\][^\n]*?\((\d+) model turns? removed\)")


def compacted_turns(messages: list[Message]) -> int:
    """How many assistant turns corral's context compaction removed from this history."""
    return sum(int(n) for m in messages if m.role == "user" for n in _COMPACTED.findall(m.text))


def parse_request(wire: WireFormat, body: dict[str, Any]) -> ScriptedRequest:
    """Normalize a request body; raises :class:`WireError` when it is not a valid request for ``wire``."""
    if not isinstance(body.get("model"), str):
        raise WireError("'model' is required")
    system, messages, tools = wire.parse(body)
    return ScriptedRequest(
        api=wire.api,
        position=sum(1 for m in messages if m.role == "assistant") + compacted_turns(messages),
        model=body["model"],
        system=system,
        messages=messages,
        tools=tools,
        stream=bool(body.get("stream")),
        body=body,
        include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
        previous_response_id=body.get("previous_response_id") if wire.api == "openai-responses" else None,
    )


# --- writing answers -------------------------------------------------------------------------


def text_chunks(text: str) -> list[str]:
    """Split text into a few word-sized pieces for streaming deltas."""
    words = re.findall(r"\s*\S+\s*", text)
    if "".join(words) != text:
        return [text] if text else []
    return ["".join(words[i : i + 3]) for i in range(0, len(words), 3)]


def argument_chunks(arguments: str) -> list[str]:
    """Split a JSON argument string into about three pieces for streaming deltas."""
    size = max(8, len(arguments) // 3 + 1)
    return [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]


def sse(data: dict[str, Any], event: str | None = None) -> str:
    """One server-sent event."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n"


MALFORMED_BODY = '{"id": "scripted-malformed", "object": , "choices": [{"message": '
"""A non-streaming answer body that is not JSON (the same for every API)."""
