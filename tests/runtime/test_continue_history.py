"""The conversation a follow-up continues, as the native engine hands it to pydantic-ai."""

from __future__ import annotations

from typing import Any

from pydantic_ai.messages import ModelRequest, ToolReturnPart, UserPromptPart

from corral.engines.base import Conversation
from corral.engines.native import message_history
from corral.events import ToolReturned


def call(name: str, call_id: str) -> dict[str, Any]:
    return {"part_kind": "tool-call", "tool_name": name, "args": {}, "tool_call_id": call_id}


def ask(text: str) -> dict[str, Any]:
    return {"kind": "request", "parts": [{"part_kind": "user-prompt", "content": text}]}


def answered(conversation: Conversation) -> dict[str, str]:
    """Every tool call's reply in the rebuilt history, by call id."""
    return {
        part.tool_call_id: str(part.content)
        for message in message_history(conversation)
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, ToolReturnPart)
    }


def test_the_calls_of_a_final_typed_answer_are_answered_as_pydantic_ai_does() -> None:
    final = {
        "kind": "response",
        "parts": [call("final_result", "c1"), call("execute", "c2"), call("final_result", "c3")],
    }
    conversation = Conversation(runs=("r1",), messages=(ask("summarize"), final), ended="succeeded")
    assert answered(conversation) == {
        "c1": "Final result processed.",
        "c2": "Tool not executed - a final result was already processed.",
        "c3": "Output tool not used - a final result was already processed.",
    }


def test_calls_a_run_never_answered_get_their_recorded_result_or_a_note() -> None:
    cut = {"kind": "response", "parts": [call("write_file", "c1"), call("execute", "c2")]}
    wrote = ToolReturned(key="tool:0:result", call_id="c1", tool="write_file", ok=True, text="wrote 5 bytes")
    conversation = Conversation(
        runs=("r1",), messages=(ask("work"), cut), ended="cancelled", tool_results={"c1": wrote}
    )
    assert answered(conversation) == {
        "c1": "wrote 5 bytes",
        "c2": "[corral] Not run: the run ended (cancelled) before this call was answered.",
    }


def test_a_conversation_already_answered_is_kept_as_it_was() -> None:
    messages = (
        ask("take notes"),
        {"kind": "response", "parts": [call("write_file", "c1")]},
        {
            "kind": "request",
            "parts": [{"part_kind": "tool-return", "tool_name": "write_file", "tool_call_id": "c1", "content": "ok"}],
        },
        {"kind": "response", "parts": [{"part_kind": "text", "content": "wrote notes"}]},
    )
    history = message_history(Conversation(runs=("r1",), messages=messages, ended="succeeded"))
    assert len(history) == 4
    assert answered(Conversation(runs=("r1",), messages=messages, ended="succeeded")) == {"c1": "ok"}
    first = history[0]
    assert isinstance(first, ModelRequest) and isinstance(first.parts[0], UserPromptPart)
