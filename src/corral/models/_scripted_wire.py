"""Wire formats of the scripted model server: parse requests and render answers for each API."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
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
        return next((m.text for m in self.messages if m.role == "user"), "")

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
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Answer:
    """A model answer ready to render in any API's wire format."""

    id: str
    model: str
    text: str
    reasoning: str
    calls: list[AnswerCall]
    usage: TokenUsage


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


_ANSWER_ID_PREFIX = {"openai-chat": "chatcmpl-", "openai-responses": "resp_", "anthropic": "msg_"}


def answer_id(api: Api) -> str:
    return new_id(_ANSWER_ID_PREFIX[api])


def call_id_prefix(api: Api) -> str:
    return "toolu_" if api == "anthropic" else "call_"


# --- request parsing -------------------------------------------------------------------------


def _text_of(content: Any) -> str:
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


def _args(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments or "{}")
    except (TypeError, ValueError):
        return {"__raw__": arguments}
    return value if isinstance(value, dict) else {"__raw__": value}


def _append(messages: list[Message], message: Message) -> None:
    """Append, merging consecutive assistant messages and consecutive tool-result messages."""
    last = messages[-1] if messages else None
    if last is None or last.role != message.role or message.role == "user":
        messages.append(message)
        return
    text = "\n".join(t for t in (last.text, message.text) if t)
    calls, results = last.tool_calls + message.tool_calls, last.tool_results + message.tool_results
    messages[-1] = Message(last.role, text, calls, results)


def _objects(value: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise WireError(f"'{what}' must be a list of objects")
    return value


# corral's history compaction leaves this note where it removed turns; counting them keeps positions right.
_COMPACTED = re.compile(r"\[corral\][^\n]*?\((\d+) model turns? removed\)")


def compacted_turns(messages: list[Message]) -> int:
    """How many assistant turns corral's context compaction removed from this history."""
    return sum(int(n) for m in messages if m.role == "user" for n in _COMPACTED.findall(m.text))


def parse_request(api: Api, body: dict[str, Any]) -> ScriptedRequest:
    """Normalize a request body; raises :class:`WireError` when it is not a valid request for ``api``."""
    if not isinstance(body.get("model"), str):
        raise WireError("'model' is required")
    parse = {"openai-chat": _parse_chat, "openai-responses": _parse_responses, "anthropic": _parse_anthropic}
    system, messages, tools = parse[api](body)
    return ScriptedRequest(
        api=api,
        position=sum(1 for m in messages if m.role == "assistant") + compacted_turns(messages),
        model=body["model"],
        system=system,
        messages=messages,
        tools=tools,
        stream=bool(body.get("stream")),
        body=body,
        include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
        previous_response_id=body.get("previous_response_id") if api == "openai-responses" else None,
    )


_Parsed = tuple[str, list[Message], list[ToolSpec]]


def _chat_call(call: dict[str, Any]) -> HistoryToolCall:
    function = call.get("function") or {}
    return HistoryToolCall(call.get("id", ""), function.get("name", ""), _args(function.get("arguments")))


def _parse_chat(body: dict[str, Any]) -> _Parsed:
    system: list[str] = []
    messages: list[Message] = []
    for m in _objects(body.get("messages"), "messages"):
        role, text = m.get("role"), _text_of(m.get("content"))
        if role in ("system", "developer"):
            system.append(text)
        elif role == "assistant":
            calls = tuple(_chat_call(c) for c in m.get("tool_calls") or [] if isinstance(c, dict))
            _append(messages, Message("assistant", text, calls))
        elif role in ("tool", "function"):
            result = ToolResult(m.get("tool_call_id") or m.get("name") or "", text)
            _append(messages, Message("tool", tool_results=(result,)))
        elif role == "user":
            _append(messages, Message("user", text))
        else:
            raise WireError(f"unknown message role {role!r}")
    tools = []
    for t in body.get("tools") or []:
        spec = t.get(t.get("type", "function")) if isinstance(t, dict) else None
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            tools.append(ToolSpec(spec["name"], spec.get("description") or "", spec.get("parameters") or {}))
    return "\n\n".join(system), messages, tools


def _parse_responses(body: dict[str, Any]) -> _Parsed:
    system = [body["instructions"]] if isinstance(body.get("instructions"), str) else []
    items = body.get("input")
    items = [{"role": "user", "content": items}] if isinstance(items, str) else _objects(items, "input")
    messages: list[Message] = []
    for item in items:
        kind = item.get("type", "message")
        if kind == "message" and item.get("role") in ("system", "developer"):
            system.append(_text_of(item.get("content")))
        elif kind == "message":
            role = "assistant" if item.get("role") == "assistant" else "user"
            _append(messages, Message(role, _text_of(item.get("content"))))
        elif kind == "reasoning":
            _append(messages, Message("assistant"))
        elif kind.endswith("_call"):  # function_call, custom_tool_call, shell_call, ...
            args = _args(item.get("arguments", item.get("input")))
            call_id = item.get("call_id") or item.get("id") or ""
            call = HistoryToolCall(call_id, item.get("name") or kind, args)
            _append(messages, Message("assistant", tool_calls=(call,)))
        elif kind.endswith("_output"):
            result = ToolResult(item.get("call_id") or "", _text_of(item.get("output")))
            _append(messages, Message("tool", tool_results=(result,)))
    tools = [_tool(t, "parameters") for t in body.get("tools") or [] if isinstance(t, dict)]
    return "\n\n".join(system), messages, tools


def _tool(t: dict[str, Any], schema_key: str) -> ToolSpec:
    return ToolSpec(t.get("name") or t.get("type", ""), t.get("description") or "", t.get(schema_key) or {})


def _parse_anthropic(body: dict[str, Any]) -> _Parsed:
    messages: list[Message] = []
    for m in _objects(body.get("messages"), "messages"):
        if m.get("role") not in ("user", "assistant"):
            raise WireError(f"unknown message role {m.get('role')!r}")
        content = m.get("content")
        blocks = (
            [b for b in content if isinstance(b, dict)]
            if isinstance(content, list)
            else [{"type": "text", "text": _text_of(content)}]
        )
        kinds = {"text": [], "tool_use": [], "tool_result": [], "other": []}
        for b in blocks:
            kinds.get(b.get("type", ""), kinds["other"]).append(b)
        if m["role"] == "assistant":
            calls = tuple(
                HistoryToolCall(b.get("id", ""), b.get("name", ""), _args(b.get("input"))) for b in kinds["tool_use"]
            )
            _append(messages, Message("assistant", _text_of(kinds["text"]), calls))
            continue
        results = tuple(
            ToolResult(b.get("tool_use_id", ""), _text_of(b.get("content")), bool(b.get("is_error")))
            for b in kinds["tool_result"]
        )
        if results:
            _append(messages, Message("tool", tool_results=results))
        if kinds["text"] or kinds["other"] or not results:
            _append(messages, Message("user", _text_of(kinds["text"] + kinds["other"])))
    tools = [_tool(t, "input_schema") for t in body.get("tools") or [] if isinstance(t, dict)]
    return _text_of(body.get("system")), messages, tools


# --- rendering ------------------------------------------------------------------------------


def _chunks(text: str) -> list[str]:
    """Split text into a few word-sized pieces for streaming deltas."""
    words = re.findall(r"\s*\S+\s*", text)
    if "".join(words) != text:
        return [text] if text else []
    return ["".join(words[i : i + 3]) for i in range(0, len(words), 3)]


def _arg_chunks(arguments: str) -> list[str]:
    size = max(8, len(arguments) // 3 + 1)
    return [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]


def _sse(data: dict[str, Any], event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n"


def render_body(answer: Answer, request: ScriptedRequest) -> dict[str, Any]:
    """The non-streaming JSON body answering ``request``."""
    if request.api == "openai-chat":
        return _chat_completion(answer)
    if request.api == "openai-responses":
        return _responses_object(answer, request.body, "completed", _responses_items(answer))
    return _anthropic_message(answer)


def render_stream(answer: Answer, request: ScriptedRequest) -> Iterator[str]:
    """The SSE stream answering ``request``, event by event, as the real API emits it."""
    if request.api == "openai-chat":
        return _chat_stream(answer, request.include_usage)
    if request.api == "openai-responses":
        return _responses_stream(answer, request.body)
    return _anthropic_stream(answer)


# Chat Completions


def _chat_usage(u: TokenUsage) -> dict[str, Any]:
    prompt: dict[str, int] = {"cached_tokens": u.cache_read, "audio_tokens": 0}
    if u.cache_write:
        prompt["cache_write_tokens"] = u.cache_write
    return {
        "prompt_tokens": u.input,
        "completion_tokens": u.output,
        "total_tokens": u.input + u.output,
        "prompt_tokens_details": prompt,
        "completion_tokens_details": {"reasoning_tokens": u.reasoning, "audio_tokens": 0},
    }


def _chat_completion(answer: Answer) -> dict[str, Any]:
    content = answer.text if answer.text or not answer.calls else None
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None, "annotations": []}
    if answer.reasoning:
        message["reasoning_content"] = answer.reasoning
    if answer.calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in answer.calls
        ]
    finish = "tool_calls" if answer.calls else "stop"
    return {
        "id": answer.id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": answer.model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": _chat_usage(answer.usage),
        "service_tier": "default",
        "system_fingerprint": None,
    }


def _chat_stream(answer: Answer, include_usage: bool) -> Iterator[str]:
    completion = _chat_completion(answer)
    envelope = {k: v for k, v in completion.items() if k not in ("choices", "usage")}
    envelope |= {"object": "chat.completion.chunk"} | ({"usage": None} if include_usage else {})

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return _sse({**envelope, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    yield chunk({"role": "assistant", "content": "", "refusal": None})
    yield from (chunk({"reasoning_content": piece}) for piece in _chunks(answer.reasoning))
    yield from (chunk({"content": piece}) for piece in _chunks(answer.text))
    for index, call in enumerate(answer.calls):
        function = {"name": call.name, "arguments": ""}
        yield chunk({"tool_calls": [{"index": index, "id": call.id, "type": "function", "function": function}]})
        for piece in _arg_chunks(call.arguments):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    yield chunk({}, completion["choices"][0]["finish_reason"])
    if include_usage:
        yield _sse({**envelope, "choices": [], "usage": completion["usage"]})
    yield "data: [DONE]\n\n"


# Responses

_RESPONSE_ECHOED = {
    "instructions": None,
    "max_output_tokens": None,
    "metadata": {},
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "store": True,
    "temperature": 1.0,
    "tool_choice": "auto",
    "tools": [],
    "top_p": 1.0,
}


def _responses_object(
    answer: Answer, body: dict[str, Any], status: str, output: list[dict[str, Any]]
) -> dict[str, Any]:
    done = status == "completed"
    usage = {
        "input_tokens": answer.usage.input,
        "input_tokens_details": {
            "cached_tokens": answer.usage.cache_read,
            "cache_write_tokens": answer.usage.cache_write,
        },
        "output_tokens": answer.usage.output,
        "output_tokens_details": {"reasoning_tokens": answer.usage.reasoning},
        "total_tokens": answer.usage.input + answer.usage.output,
    }
    return {
        "id": answer.id,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "model": answer.model,
        "output": output,
        "reasoning": {"effort": None, "summary": None},
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "truncation": "disabled",
        "usage": usage if done else None,
        "user": None,
        **{key: default if body.get(key) is None else body[key] for key, default in _RESPONSE_ECHOED.items()},
    }


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _responses_items(answer: Answer) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if answer.reasoning:
        items.append(
            {
                "id": f"rs_{answer.id}",
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": answer.reasoning}],
            }
        )
    if answer.text or not answer.calls:
        content = [_output_text(answer.text)]
        items.append(
            {
                "id": f"msg_{answer.id}",
                "type": "message",
                "status": "completed",
                "content": content,
                "role": "assistant",
            }
        )
    for c in answer.calls:
        call = {"arguments": c.arguments, "call_id": c.id, "name": c.name}
        items.append({"id": f"fc_{c.id}", "type": "function_call", "status": "completed", **call})
    return items


def _in_progress(item: dict[str, Any]) -> dict[str, Any]:
    """How an output item looks in its ``output_item.added`` event, before its content streamed."""
    blank = {"summary": [], "content": [], "arguments": "", "status": "in_progress"}
    return item | {key: value for key, value in blank.items() if key in item}


def _responses_stream(answer: Answer, body: dict[str, Any]) -> Iterator[str]:
    seq = 0

    def event(kind: str, **data: Any) -> str:
        nonlocal seq
        seq += 1
        return _sse({"type": kind, "sequence_number": seq - 1, **data}, kind)

    start = _responses_object(answer, body, "in_progress", [])
    yield event("response.created", response=start)
    yield event("response.in_progress", response=start)
    items = _responses_items(answer)
    for index, item in enumerate(items):
        yield event("response.output_item.added", output_index=index, item=_in_progress(item))
        at = {"item_id": item["id"], "output_index": index}
        if item["type"] == "reasoning":
            text, summary_part = answer.reasoning, {"type": "summary_text", "text": ""}
            yield event("response.reasoning_summary_part.added", **at, summary_index=0, part=summary_part)
            for piece in _chunks(text):
                yield event("response.reasoning_summary_text.delta", **at, summary_index=0, delta=piece)
            yield event("response.reasoning_summary_text.done", **at, summary_index=0, text=text)
            yield event("response.reasoning_summary_part.done", **at, summary_index=0, part=item["summary"][0])
        elif item["type"] == "message":
            yield event("response.content_part.added", **at, content_index=0, part=_output_text(""))
            for piece in _chunks(answer.text):
                yield event("response.output_text.delta", **at, content_index=0, delta=piece, logprobs=[])
            yield event("response.output_text.done", **at, content_index=0, text=answer.text, logprobs=[])
            yield event("response.content_part.done", **at, content_index=0, part=item["content"][0])
        else:
            for piece in _arg_chunks(item["arguments"]):
                yield event("response.function_call_arguments.delta", **at, delta=piece)
            yield event("response.function_call_arguments.done", **at, name=item["name"], arguments=item["arguments"])
        yield event("response.output_item.done", output_index=index, item=item)
    yield event("response.completed", response=_responses_object(answer, body, "completed", items))


# Anthropic Messages


def _anthropic_usage(u: TokenUsage) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "input_tokens": max(0, u.input - u.cache_read - u.cache_write),
        "cache_creation_input_tokens": u.cache_write,
        "cache_read_input_tokens": u.cache_read,
        "output_tokens": u.output,
    }
    return usage | ({"output_tokens_details": {"thinking_tokens": u.reasoning}} if u.reasoning else {})


def _anthropic_message(answer: Answer) -> dict[str, Any]:
    return {
        "id": answer.id,
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": _anthropic_blocks(answer),
        "stop_reason": "tool_use" if answer.calls else "end_turn",
        "stop_sequence": None,
        "usage": _anthropic_usage(answer.usage),
    }


def _anthropic_blocks(answer: Answer) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if answer.reasoning:
        signature = uuid.uuid5(uuid.NAMESPACE_OID, answer.reasoning).hex
        blocks.append({"type": "thinking", "thinking": answer.reasoning, "signature": signature})
    if answer.text or not answer.calls:
        blocks.append({"type": "text", "text": answer.text})
    blocks.extend({"type": "tool_use", "id": c.id, "name": c.name, "input": _args(c.arguments)} for c in answer.calls)
    return blocks


def _anthropic_deltas(block: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A content block as ``content_block_start`` opens it, and the deltas that fill it."""
    if block["type"] == "thinking":
        deltas = [{"type": "thinking_delta", "thinking": p} for p in _chunks(block["thinking"])]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
        return block | {"thinking": "", "signature": ""}, deltas
    if block["type"] == "text":
        return block | {"text": ""}, [{"type": "text_delta", "text": p} for p in _chunks(block["text"])]
    pieces = _arg_chunks(json.dumps(block["input"]))
    return block | {"input": {}}, [{"type": "input_json_delta", "partial_json": p} for p in pieces]


def _anthropic_stream(answer: Answer) -> Iterator[str]:
    message = _anthropic_message(answer)
    start = message | {"content": [], "stop_reason": None, "usage": message["usage"] | {"output_tokens": 1}}
    yield _sse({"type": "message_start", "message": start}, "message_start")
    for index, block in enumerate(message["content"]):
        opening, deltas = _anthropic_deltas(block)
        yield _sse({"type": "content_block_start", "index": index, "content_block": opening}, "content_block_start")
        if index == 0:
            yield _sse({"type": "ping"}, "ping")
        for delta in deltas:
            yield _sse({"type": "content_block_delta", "index": index, "delta": delta}, "content_block_delta")
        yield _sse({"type": "content_block_stop", "index": index}, "content_block_stop")
    stop = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    yield _sse({"type": "message_delta", "delta": stop, "usage": message["usage"]}, "message_delta")
    yield _sse({"type": "message_stop"}, "message_stop")


# --- errors and garbage ---------------------------------------------------------------------

_ERROR_TYPES = {  # status: (OpenAI error type, Anthropic error type)
    400: ("invalid_request_error", "invalid_request_error"),
    401: ("invalid_request_error", "authentication_error"),
    403: ("permission_denied", "permission_error"),
    404: ("not_found", "not_found_error"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("requests", "rate_limit_error"),
    529: ("server_error", "overloaded_error"),
}


def error_body(api: Api, status: int, message: str) -> dict[str, Any]:
    """The error JSON each API returns for ``status``."""
    openai_type, anthropic_type = _ERROR_TYPES.get(status, ("server_error", "api_error"))
    if api == "anthropic":
        error = {"type": anthropic_type, "message": message}
        return {"type": "error", "error": error, "request_id": new_id("req_")}
    code = "rate_limit_exceeded" if status == 429 else None
    return {"error": {"message": message, "type": openai_type, "param": None, "code": code}}


MALFORMED_BODY = '{"id": "scripted-malformed", "object": , "choices": [{"message": '


def malformed_stream(api: Api) -> Iterator[str]:
    """A stream that starts like a real one and then breaks off in the middle of a JSON event."""
    if api == "anthropic":
        yield 'event: message_start\ndata: {"type": "message_start", "message": {"id": \n\n'
    elif api == "openai-responses":
        yield 'event: response.created\ndata: {"type": "response.created", "response": \n\n'
    else:
        yield 'data: {"id": "chatcmpl-broken", "choices": [{"delta": \n\n'
