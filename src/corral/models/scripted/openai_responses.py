"""The OpenAI Responses API as the scripted model server speaks it (``POST /v1/responses``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from corral.models.scripted.openai_chat import openai_error_body
from corral.models.scripted.wire import (
    Answer,
    HistoryToolCall,
    Message,
    ParsedBody,
    ScriptedRequest,
    ToolResult,
    WireFormat,
    append_message,
    argument_chunks,
    objects,
    parse_args,
    sse,
    text_chunks,
    text_of,
    tool_spec,
)


def parse(body: dict[str, Any]) -> ParsedBody:
    system = [body["instructions"]] if isinstance(body.get("instructions"), str) else []
    items = body.get("input")
    items = [{"role": "user", "content": items}] if isinstance(items, str) else objects(items, "input")
    messages: list[Message] = []
    for item in items:
        kind = item.get("type", "message")
        if kind == "message" and item.get("role") in ("system", "developer"):
            system.append(text_of(item.get("content")))
        elif kind == "message":
            role = "assistant" if item.get("role") == "assistant" else "user"
            append_message(messages, Message(role, text_of(item.get("content"))))
        elif kind == "reasoning":
            append_message(messages, Message("assistant"))
        elif kind.endswith("_call"):  # function_call, custom_tool_call, shell_call, ...
            args = parse_args(item.get("arguments", item.get("input")))
            call_id = item.get("call_id") or item.get("id") or ""
            call = HistoryToolCall(call_id, item.get("name") or kind, args)
            append_message(messages, Message("assistant", tool_calls=(call,)))
        elif kind.endswith("_output"):
            result = ToolResult(item.get("call_id") or "", text_of(item.get("output")))
            append_message(messages, Message("tool", tool_results=(result,)))
    declared = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    declared += [t for item in items if item.get("type") == "additional_tools" for t in item.get("tools") or []]
    return "\n\n".join(system), messages, [tool_spec(t, "parameters") for t in _flat(declared)]


def _flat(tools: list[Any]) -> Iterator[dict[str, Any]]:
    """Tool definitions with the tools of each ``namespace`` in its place."""
    for t in tools:
        if isinstance(t, dict) and t.get("type") == "namespace":
            yield from _flat(t.get("tools") or [])
        elif isinstance(t, dict):
            yield t


_ECHOED = {
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


def _response(answer: Answer, body: dict[str, Any], status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
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
        **{key: default if body.get(key) is None else body[key] for key, default in _ECHOED.items()},
    }


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _items(answer: Answer) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if answer.reasoning:
        summary = [{"type": "summary_text", "text": answer.reasoning}]
        items.append({"id": f"rs_{answer.id}", "type": "reasoning", "summary": summary})
    if answer.text or not answer.calls:
        content = [_output_text(answer.text)]
        message = {"id": f"msg_{answer.id}", "type": "message", "status": "completed", "content": content}
        items.append(message | {"role": "assistant"})
    for c in answer.calls:
        if c.custom:  # a freeform tool (Codex's apply_patch): its input is the text itself
            call = {"call_id": c.id, "name": c.name, "input": c.arguments}
            items.append({"id": f"ctc_{c.id}", "type": "custom_tool_call", "status": "completed", **call})
        else:
            call = {"arguments": c.arguments, "call_id": c.id, "name": c.name}
            items.append({"id": f"fc_{c.id}", "type": "function_call", "status": "completed", **call})
    return items


def _in_progress(item: dict[str, Any]) -> dict[str, Any]:
    """How an output item looks in its ``output_item.added`` event, before its content streamed."""
    blank = {"summary": [], "content": [], "arguments": "", "input": "", "status": "in_progress"}
    return item | {key: value for key, value in blank.items() if key in item}


def render_body(answer: Answer, request: ScriptedRequest) -> dict[str, Any]:
    return _response(answer, request.body, "completed", _items(answer))


def render_stream(answer: Answer, request: ScriptedRequest) -> Iterator[str]:
    body, seq = request.body, 0

    def event(kind: str, **data: Any) -> str:
        nonlocal seq
        seq += 1
        return sse({"type": kind, "sequence_number": seq - 1, **data}, kind)

    start = _response(answer, body, "in_progress", [])
    yield event("response.created", response=start)
    yield event("response.in_progress", response=start)
    items = _items(answer)
    for index, item in enumerate(items):
        yield event("response.output_item.added", output_index=index, item=_in_progress(item))
        at = {"item_id": item["id"], "output_index": index}
        if item["type"] == "reasoning":
            text, summary_part = answer.reasoning, {"type": "summary_text", "text": ""}
            yield event("response.reasoning_summary_part.added", **at, summary_index=0, part=summary_part)
            for piece in text_chunks(text):
                yield event("response.reasoning_summary_text.delta", **at, summary_index=0, delta=piece)
            yield event("response.reasoning_summary_text.done", **at, summary_index=0, text=text)
            yield event("response.reasoning_summary_part.done", **at, summary_index=0, part=item["summary"][0])
        elif item["type"] == "message":
            yield event("response.content_part.added", **at, content_index=0, part=_output_text(""))
            for piece in text_chunks(answer.text):
                yield event("response.output_text.delta", **at, content_index=0, delta=piece, logprobs=[])
            yield event("response.output_text.done", **at, content_index=0, text=answer.text, logprobs=[])
            yield event("response.content_part.done", **at, content_index=0, part=item["content"][0])
        elif item["type"] == "custom_tool_call":
            for piece in argument_chunks(item["input"]):
                yield event("response.custom_tool_call_input.delta", **at, delta=piece)
            yield event("response.custom_tool_call_input.done", **at, input=item["input"])
        else:
            for piece in argument_chunks(item["arguments"]):
                yield event("response.function_call_arguments.delta", **at, delta=piece)
            yield event("response.function_call_arguments.done", **at, name=item["name"], arguments=item["arguments"])
        yield event("response.output_item.done", output_index=index, item=item)
    yield event("response.completed", response=_response(answer, body, "completed", items))


def malformed_stream() -> Iterator[str]:
    """A stream that starts like a real one and then breaks off in the middle of a JSON event."""
    yield 'event: response.created\ndata: {"type": "response.created", "response": \n\n'


WIRE = WireFormat(
    api="openai-responses",
    path="/v1/responses",
    answer_id_prefix="resp_",
    call_id_prefix="call_",
    parse=parse,
    render_body=render_body,
    render_stream=render_stream,
    error_body=openai_error_body,
    malformed_stream=malformed_stream,
)
