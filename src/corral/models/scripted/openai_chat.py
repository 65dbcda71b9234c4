"""OpenAI Chat Completions as the scripted model server speaks it (``POST /v1/chat/completions``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from corral.models.scripted.wire import (
    Answer,
    AnswerCall,
    HistoryToolCall,
    Message,
    ParsedBody,
    ScriptedRequest,
    TokenUsage,
    ToolResult,
    ToolSpec,
    WireError,
    WireFormat,
    append_message,
    argument_chunks,
    objects,
    parse_args,
    sse,
    text_chunks,
    text_of,
)

_OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_denied",
    404: "not_found",
    413: "invalid_request_error",
    429: "requests",
    529: "server_error",
}


def openai_error_body(status: int, message: str) -> dict[str, Any]:
    """The error JSON OpenAI's APIs (Chat Completions and Responses) return for ``status``."""
    code = "rate_limit_exceeded" if status == 429 else None
    kind = _OPENAI_ERROR_TYPES.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _call(call: dict[str, Any]) -> HistoryToolCall:
    if call.get("type") == "custom":  # a freeform tool's call: its input is text
        custom = call.get("custom") or {}
        return HistoryToolCall(call.get("id", ""), custom.get("name", ""), parse_args(custom.get("input")))
    function = call.get("function") or {}
    return HistoryToolCall(call.get("id", ""), function.get("name", ""), parse_args(function.get("arguments")))


def _tool_call(c: AnswerCall) -> dict[str, Any]:
    if c.custom:
        return {"id": c.id, "type": "custom", "custom": {"name": c.name, "input": c.arguments}}
    return {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}


def parse(body: dict[str, Any]) -> ParsedBody:
    system: list[str] = []
    messages: list[Message] = []
    for m in objects(body.get("messages"), "messages"):
        role, text = m.get("role"), text_of(m.get("content"))
        if role in ("system", "developer"):
            system.append(text)
        elif role == "assistant":
            calls = tuple(_call(c) for c in m.get("tool_calls") or [] if isinstance(c, dict))
            append_message(messages, Message("assistant", text, calls))
        elif role in ("tool", "function"):
            result = ToolResult(m.get("tool_call_id") or m.get("name") or "", text)
            append_message(messages, Message("tool", tool_results=(result,)))
        elif role == "user":
            append_message(messages, Message("user", text))
        else:
            raise WireError(f"unknown message role {role!r}")
    tools = []
    for t in body.get("tools") or []:
        spec = t.get(t.get("type", "function")) if isinstance(t, dict) else None
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            tools.append(ToolSpec(spec["name"], spec.get("description") or "", spec.get("parameters") or {}))
    return "\n\n".join(system), messages, tools


def _usage(u: TokenUsage) -> dict[str, Any]:
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


def render_body(answer: Answer, request: ScriptedRequest) -> dict[str, Any]:
    content = answer.text if answer.text or not answer.calls else None
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None, "annotations": []}
    if answer.reasoning:
        message["reasoning_content"] = answer.reasoning
    if answer.calls:
        message["tool_calls"] = [_tool_call(c) for c in answer.calls]
    finish = "tool_calls" if answer.calls else "stop"
    return {
        "id": answer.id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": answer.model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": _usage(answer.usage),
        "service_tier": "default",
        "system_fingerprint": None,
    }


def render_stream(answer: Answer, request: ScriptedRequest) -> Iterator[str]:
    completion = render_body(answer, request)
    envelope = {k: v for k, v in completion.items() if k not in ("choices", "usage")}
    envelope |= {"object": "chat.completion.chunk"} | ({"usage": None} if request.include_usage else {})

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return sse({**envelope, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    yield chunk({"role": "assistant", "content": "", "refusal": None})
    yield from (chunk({"reasoning_content": piece}) for piece in text_chunks(answer.reasoning))
    yield from (chunk({"content": piece}) for piece in text_chunks(answer.text))
    for index, call in enumerate(answer.calls):
        kind, field = ("custom", "input") if call.custom else ("function", "arguments")
        opening = {"index": index, "id": call.id, "type": kind, kind: {"name": call.name, field: ""}}
        yield chunk({"tool_calls": [opening]})
        for piece in argument_chunks(call.arguments):
            yield chunk({"tool_calls": [{"index": index, kind: {field: piece}}]})
    yield chunk({}, completion["choices"][0]["finish_reason"])
    if request.include_usage:
        yield sse({**envelope, "choices": [], "usage": completion["usage"]})
    yield "data: [DONE]\n\n"


def malformed_stream() -> Iterator[str]:
    """A stream that starts like a real one and then breaks off in the middle of a JSON event."""
    yield 'data: {"id": "chatcmpl-broken", "choices": [{"delta": \n\n'


WIRE = WireFormat(
    api="openai-chat",
    path="/v1/chat/completions",
    answer_id_prefix="chatcmpl-",
    call_id_prefix="call_",
    parse=parse,
    render_body=render_body,
    render_stream=render_stream,
    error_body=openai_error_body,
    malformed_stream=malformed_stream,
)
