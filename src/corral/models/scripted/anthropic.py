"""Anthropic Messages as the scripted model server speaks it (``POST /v1/messages``)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

from corral.models.scripted.wire import (
    Answer,
    HistoryToolCall,
    Message,
    ParsedBody,
    ScriptedRequest,
    TokenUsage,
    ToolResult,
    WireError,
    WireFormat,
    append_message,
    argument_chunks,
    new_id,
    objects,
    parse_args,
    sse,
    text_chunks,
    text_of,
    tool_spec,
)

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def error_body(status: int, message: str) -> dict[str, Any]:
    """The error JSON Anthropic returns for ``status``."""
    error = {"type": _ERROR_TYPES.get(status, "api_error"), "message": message}
    return {"type": "error", "error": error, "request_id": new_id("req_")}


def parse(body: dict[str, Any]) -> ParsedBody:
    """The conversation in a request. ``system`` messages inside ``messages`` (the SDK's ``MessageParam``
    allows them; Claude Code sends its environment that way) join the system prompt, in order."""
    messages: list[Message] = []
    system = [text_of(body.get("system"))]
    for m in objects(body.get("messages"), "messages"):
        if m.get("role") == "system":
            system.append(text_of(m.get("content")))
            continue
        if m.get("role") not in ("user", "assistant"):
            raise WireError(f"unknown message role {m.get('role')!r}")
        content = m.get("content")
        blocks = (
            [b for b in content if isinstance(b, dict)]
            if isinstance(content, list)
            else [{"type": "text", "text": text_of(content)}]
        )
        kinds: dict[str, list[dict[str, Any]]] = {"text": [], "tool_use": [], "tool_result": [], "other": []}
        for b in blocks:
            kinds.get(b.get("type", ""), kinds["other"]).append(b)
        if m["role"] == "assistant":
            calls = tuple(
                HistoryToolCall(b.get("id", ""), b.get("name", ""), parse_args(b.get("input")))
                for b in kinds["tool_use"]
            )
            append_message(messages, Message("assistant", text_of(kinds["text"]), calls))
            continue
        results = tuple(
            ToolResult(b.get("tool_use_id", ""), text_of(b.get("content")), bool(b.get("is_error")))
            for b in kinds["tool_result"]
        )
        if results:
            append_message(messages, Message("tool", tool_results=results))
        if kinds["text"] or kinds["other"] or not results:
            append_message(messages, Message("user", text_of(kinds["text"] + kinds["other"])))
    tools = [tool_spec(t, "input_schema") for t in body.get("tools") or [] if isinstance(t, dict)]
    return "\n\n".join(part for part in system if part), messages, tools


def _usage(u: TokenUsage) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "input_tokens": max(0, u.input - u.cache_read - u.cache_write),
        "cache_creation_input_tokens": u.cache_write,
        "cache_read_input_tokens": u.cache_read,
        "output_tokens": u.output,
    }
    return usage | ({"output_tokens_details": {"thinking_tokens": u.reasoning}} if u.reasoning else {})


def _blocks(answer: Answer) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if answer.reasoning:
        signature = uuid.uuid5(uuid.NAMESPACE_OID, answer.reasoning).hex
        blocks.append({"type": "thinking", "thinking": answer.reasoning, "signature": signature})
    if answer.text or not answer.calls:
        blocks.append({"type": "text", "text": answer.text})
    blocks.extend({"type": "tool_use", "id": c.id, "name": c.name, "input": c.args} for c in answer.calls)
    return blocks


def render_body(answer: Answer, request: ScriptedRequest) -> dict[str, Any]:
    return {
        "id": answer.id,
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": _blocks(answer),
        "stop_reason": "tool_use" if answer.calls else "end_turn",
        "stop_sequence": None,
        "usage": _usage(answer.usage),
    }


def _deltas(block: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A content block as ``content_block_start`` opens it, and the deltas that fill it."""
    if block["type"] == "thinking":
        deltas = [{"type": "thinking_delta", "thinking": p} for p in text_chunks(block["thinking"])]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
        return block | {"thinking": "", "signature": ""}, deltas
    if block["type"] == "text":
        return block | {"text": ""}, [{"type": "text_delta", "text": p} for p in text_chunks(block["text"])]
    pieces = argument_chunks(json.dumps(block["input"]))
    return block | {"input": {}}, [{"type": "input_json_delta", "partial_json": p} for p in pieces]


def render_stream(answer: Answer, request: ScriptedRequest) -> Iterator[str]:
    message = render_body(answer, request)
    start = message | {"content": [], "stop_reason": None, "usage": message["usage"] | {"output_tokens": 1}}
    yield sse({"type": "message_start", "message": start}, "message_start")
    for index, block in enumerate(message["content"]):
        opening, deltas = _deltas(block)
        yield sse({"type": "content_block_start", "index": index, "content_block": opening}, "content_block_start")
        if index == 0:
            yield sse({"type": "ping"}, "ping")
        for delta in deltas:
            yield sse({"type": "content_block_delta", "index": index, "delta": delta}, "content_block_delta")
        yield sse({"type": "content_block_stop", "index": index}, "content_block_stop")
    stop = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    yield sse({"type": "message_delta", "delta": stop, "usage": message["usage"]}, "message_delta")
    yield sse({"type": "message_stop"}, "message_stop")


def malformed_stream() -> Iterator[str]:
    """A stream that starts like a real one and then breaks off in the middle of a JSON event."""
    yield 'event: message_start\ndata: {"type": "message_start", "message": {"id": \n\n'


WIRE = WireFormat(
    api="anthropic",
    path="/v1/messages",
    answer_id_prefix="msg_",
    call_id_prefix="toolu_",
    parse=parse,
    render_body=render_body,
    render_stream=render_stream,
    error_body=error_body,
    malformed_stream=malformed_stream,
)
