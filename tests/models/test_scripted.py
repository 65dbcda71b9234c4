"""The scripted model server, driven through the real openai and anthropic SDKs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from corral.errors import ScriptError
from corral.models.scripted import (
    Failure,
    Route,
    Script,
    ScriptedRequest,
    ScriptedServer,
    ScriptUsage,
    ToolCall,
    Turn,
    read_recording,
)

OpenAIFactory = Callable[..., openai.OpenAI]
AnthropicFactory = Callable[..., anthropic.Anthropic]

USER = [{"role": "user", "content": "fix the bug"}]
GLOB = ToolCall(name="glob", args={"pattern": "**/*.py"})
USAGE = ScriptUsage(input_tokens=1200, output_tokens=80, cache_read_tokens=1000, cache_write_tokens=100)
TWO_TURNS = [Turn(text="Looking first.", tool_calls=[GLOB], usage=USAGE), Turn(text="done")]


def chat(client: openai.OpenAI, messages: list[dict[str, Any]] = USER, **kw: Any) -> Any:
    return client.chat.completions.create(model="gpt-test", messages=messages, **kw)  # type: ignore[arg-type]


def claude(client: anthropic.Anthropic, messages: list[dict[str, Any]] = USER, **kw: Any) -> Any:
    return client.messages.create(model="claude-test", max_tokens=100, messages=messages, **kw)  # type: ignore[arg-type]


# --- OpenAI Chat Completions -------------------------------------------------------------------


def test_chat_completion_carries_text_tool_calls_and_usage(openai_for: OpenAIFactory) -> None:
    with ScriptedServer(TWO_TURNS) as server:
        completion = chat(openai_for(server))
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Looking first."
    call = choice.message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == ("call_1", "glob", GLOB.args)
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (1200, 80, 1280)
    assert usage.prompt_tokens_details.cached_tokens == 1000
    assert usage.completion_tokens_details.reasoning_tokens == 0
    assert completion.model == "scripted"


def test_chat_stream_sends_deltas_then_a_usage_chunk_then_done(openai_for: OpenAIFactory) -> None:
    with ScriptedServer(TWO_TURNS) as server:
        chunks = list(chat(openai_for(server), stream=True, stream_options={"include_usage": True}))
        raw = httpx2.post(
            server.openai_base_url + "/chat/completions",
            json={"model": "m", "messages": USER, "stream": True},
        ).text
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    arguments = "".join(
        tc.function.arguments or "" for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []
    )
    assert text == "Looking first."
    assert json.loads(arguments) == GLOB.args
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == 1200
    assert raw.endswith("data: [DONE]\n\n")
    assert '"usage"' not in raw  # no usage chunk unless stream_options.include_usage asks for it


# --- OpenAI Responses --------------------------------------------------------------------------


def test_responses_create_returns_message_and_function_call_items(openai_for: OpenAIFactory) -> None:
    with ScriptedServer(TWO_TURNS) as server:
        response = openai_for(server).responses.create(model="gpt-test", input="fix the bug")
    message, call = response.output
    assert message.type == "message"
    assert response.output_text == "Looking first."
    assert call.type == "function_call"
    assert call.name == "glob"
    assert call.call_id == "call_1"
    assert json.loads(call.arguments) == GLOB.args
    assert response.usage.input_tokens == 1200
    assert response.usage.input_tokens_details.cached_tokens == 1000
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    assert response.status == "completed"


def test_responses_stream_emits_the_real_event_sequence(openai_for: OpenAIFactory) -> None:
    script = [Turn(text="Looking first.", reasoning="check the tests", tool_calls=[GLOB], usage=USAGE)]
    with (
        ScriptedServer(script) as server,
        openai_for(server).responses.stream(model="m", input="go") as stream,
    ):
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    for kind in (
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.reasoning_summary_text.delta",
    ):
        assert kind in kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call"]
    assert final.output_text == "Looking first."
    assert final.usage.output_tokens == 80


def test_responses_previous_response_id_continues_the_conversation(openai_for: OpenAIFactory) -> None:
    with ScriptedServer(TWO_TURNS) as server:
        client = openai_for(server)
        first = client.responses.create(model="m", input="go")
        output = {"type": "function_call_output", "call_id": "call_1", "output": "a.py"}
        second = client.responses.create(model="m", previous_response_id=first.id, input=[output])
        with pytest.raises(openai.BadRequestError, match="not found"):
            client.responses.create(model="m", previous_response_id="resp_unknown", input="go")
    assert second.output_text == "done"
    assert [r.position for r in server.requests] == [0, 1, None]


# --- Anthropic Messages ------------------------------------------------------------------------


def test_anthropic_message_carries_blocks_stop_reason_and_cache_usage(
    anthropic_for: AnthropicFactory,
) -> None:
    with ScriptedServer(TWO_TURNS) as server:
        message = claude(anthropic_for(server))
    text, tool_use = message.content
    assert text.type == "text"
    assert text.text == "Looking first."
    assert tool_use.type == "tool_use"
    assert tool_use.name == "glob"
    assert tool_use.input == GLOB.args
    assert tool_use.id.startswith("toolu_")
    assert message.stop_reason == "tool_use"
    # Anthropic reports input tokens without the cache reads and writes.
    usage = message.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (
        100,
        1000,
        100,
    )


def test_anthropic_stream_accumulates_to_the_same_message(anthropic_for: AnthropicFactory) -> None:
    script = [Turn(text="Looking first.", reasoning="hmm", tool_calls=[GLOB], usage=USAGE)]
    with ScriptedServer(script) as server:
        client = anthropic_for(server)
        with client.messages.stream(model="claude-test", max_tokens=100, messages=USER) as stream:
            kinds = [event.type for event in stream]
            message = stream.get_final_message()
    assert kinds[0] == "message_start"
    assert "content_block_delta" in kinds
    assert "message_delta" in kinds
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use"]
    assert message.content[0].thinking == "hmm"
    assert message.content[2].input == GLOB.args
    assert message.stop_reason == "tool_use"
    assert message.usage.output_tokens == 80


@pytest.mark.anyio
async def test_async_clients_stream_too() -> None:
    with ScriptedServer([Turn(text="hello from the script")]) as server:
        async with openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="k", max_retries=0) as oai:
            stream = await oai.chat.completions.create(model="m", messages=USER, stream=True)  # type: ignore[arg-type]
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        ant = anthropic.AsyncAnthropic(base_url=server.anthropic_base_url, api_key="k", max_retries=0)
        async with ant, ant.messages.stream(model="c", max_tokens=10, messages=USER) as s:  # type: ignore[arg-type]
            anthropic_text = "".join([t async for t in s.text_stream])
    assert text == anthropic_text == "hello from the script"


# --- turn selection ----------------------------------------------------------------------------


def test_turn_is_chosen_by_position_so_resent_requests_get_the_same_turn(openai_for: OpenAIFactory) -> None:
    later = [*USER, {"role": "assistant", "content": "earlier"}, {"role": "user", "content": "and now?"}]
    with ScriptedServer([Turn(text="first"), Turn(text="second")]) as server:
        client = openai_for(server)
        answers = [chat(client).choices[0].message.content for _ in range(2)]
        answers.append(chat(client, later).choices[0].message.content)
        answers.append(chat(client, [{"role": "user", "content": "another conversation"}]).choices[0].message.content)
    assert answers == ["first", "first", "second", "first"]


def test_responses_position_counts_parallel_function_calls_as_one_turn(openai_for: OpenAIFactory) -> None:
    calls = [{"type": "function_call", "call_id": f"c{i}", "name": "glob", "arguments": "{}"} for i in range(3)]
    outputs = [{"type": "function_call_output", "call_id": f"c{i}", "output": "ok"} for i in range(3)]
    history = [{"role": "user", "content": "go"}, {"type": "reasoning", "id": "rs_1", "summary": []}]
    with ScriptedServer([Turn(text="first"), Turn(text="second")]) as server:
        response = openai_for(server).responses.create(model="m", input=[*history, *calls, *outputs])  # type: ignore[arg-type]
    assert response.output_text == "second"


def test_routes_give_each_agent_its_own_turns(anthropic_for: AnthropicFactory) -> None:
    script = Script(
        turns=[Turn(text="main agent")],
        routes=[Route(match="You review code", turns=[Turn(text="reviewer agent")])],
    )
    with ScriptedServer(script) as server:
        client = anthropic_for(server)
        main = claude(client, system="You write code.")
        reviewer = claude(client, system="You review code. Be strict.")
        by_first_message = claude(client, [{"role": "user", "content": "You review code: a.py"}])
    assert [m.content[0].text for m in (main, reviewer, by_first_message)] == [
        "main agent",
        "reviewer agent",
        "reviewer agent",
    ]


def test_request_past_the_end_of_the_script_is_a_recorded_400(openai_for: OpenAIFactory) -> None:
    history = [*USER, {"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]
    with (
        ScriptedServer([Turn(text="only")]) as server,
        pytest.raises(openai.BadRequestError, match=r"<inline script> has no turn at position 1") as info,
    ):
        chat(openai_for(server), history)
    assert info.value.status_code == 400
    assert "turns holds 1 turns" in str(info.value)
    assert [(r.position, r.status) for r in server.requests] == [(1, 400)]


# --- failures and garbage ----------------------------------------------------------------------


def test_rate_limit_then_success_is_retried_by_the_sdk(openai_for: OpenAIFactory) -> None:
    turn = Turn(text="done", fail=[Failure(status=429, retry_after=0.01), Failure(status=500, retry_after=0.01)])
    with ScriptedServer([turn]) as server:
        completion = chat(openai_for(server, max_retries=2))
        headers = httpx2.post(server.openai_base_url + "/chat/completions", json={"model": "m", "messages": USER})
    assert completion.choices[0].message.content == "done"
    assert [r.status for r in server.requests] == [429, 500, 200, 200]
    assert headers.status_code == 200  # the failures are used up: later attempts answer normally


def test_rate_limit_error_has_each_apis_shape_and_retry_after(anthropic_for: AnthropicFactory) -> None:
    turn = Turn(text="done", fail=[Failure(status=429, retry_after=2, times=2)])
    with ScriptedServer([turn]) as server:
        with pytest.raises(anthropic.RateLimitError) as info:
            claude(anthropic_for(server))
        raw = httpx2.post(server.openai_base_url + "/chat/completions", json={"model": "m", "messages": USER})
    assert info.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert info.value.response.headers["retry-after"] == "2"
    assert raw.status_code == 429
    assert raw.json()["error"]["code"] == "rate_limit_exceeded"


def test_a_turn_that_always_fails_exhausts_the_sdk_retries(
    openai_for: OpenAIFactory, anthropic_for: AnthropicFactory
) -> None:
    turn = Turn(fail=[Failure(status=500, times=1000, retry_after=0.01)])
    with ScriptedServer([turn]) as server:
        with pytest.raises(openai.InternalServerError):
            chat(openai_for(server, max_retries=2))
        with pytest.raises(anthropic.InternalServerError):
            claude(anthropic_for(server, max_retries=1))
    assert [r.status for r in server.requests] == [500] * 5


@pytest.mark.parametrize("stream", [False, True])
def test_malformed_answers_make_every_sdk_raise(
    stream: bool, openai_for: OpenAIFactory, anthropic_for: AnthropicFactory
) -> None:
    with ScriptedServer([Turn(malformed=True)]) as server:
        client = openai_for(server)
        calls = [
            lambda: chat(client, stream=stream),
            lambda: client.responses.create(model="m", input="go", stream=stream),
            lambda: claude(anthropic_for(server), stream=stream),
        ]
        for call in calls:
            with pytest.raises(ValueError, match="Expecting value"):
                _consume(call())
    assert [r.status for r in server.requests] == [200, 200, 200]


def _consume(result: Any) -> None:
    if isinstance(result, openai.Stream | anthropic.Stream):
        list(result)


@pytest.mark.slow  # waits out a real time limit: the full suite runs it, the fast lane does not
def test_delay_holds_the_answer_back(openai_for: OpenAIFactory) -> None:
    with ScriptedServer([Turn(text="slow", delay=0.2)]) as server:
        started = time.monotonic()
        chunks = chat(openai_for(server), stream=True)
        elapsed_to_headers = time.monotonic() - started
        list(chunks)
    assert elapsed_to_headers >= 0.2


# --- structured output without an output tool --------------------------------------------------


def test_output_without_an_output_tool_is_json_text(openai_for: OpenAIFactory) -> None:
    output = {"summary": "fixed", "files_changed": 1}
    tool = {"type": "function", "function": {"name": "final_result_Fix", "parameters": {"type": "object"}}}
    with ScriptedServer([Turn(output=output)]) as server:
        client = openai_for(server)
        as_text = chat(client).choices[0].message
        as_tool = chat(client, tools=[tool]).choices[0].message
    assert json.loads(as_text.content) == output
    assert as_tool.tool_calls[0].function.name == "final_result_Fix"
    assert json.loads(as_tool.tool_calls[0].function.arguments) == output


# --- the policy callable -----------------------------------------------------------------------


def test_policy_sees_normalized_requests_from_every_api(
    openai_for: OpenAIFactory, anthropic_for: AnthropicFactory
) -> None:
    seen: list[ScriptedRequest] = []

    def policy(request: ScriptedRequest) -> Turn | str:
        seen.append(request)
        if request.position == 0:
            return Turn(tool_calls=[ToolCall(name=request.tool_names[0], args={"pattern": "*"})])
        return f"got {request.last_tool_results[0].content}"

    tools_chat = [{"type": "function", "function": {"name": "glob", "parameters": {"type": "object"}}}]
    tools_claude = [{"name": "glob", "description": "find files", "input_schema": {"type": "object"}}]
    with ScriptedServer(policy=policy) as server:
        oai, ant = openai_for(server), anthropic_for(server)
        first = chat(oai, tools=tools_chat, messages=[{"role": "system", "content": "be brief"}, *USER])
        call = first.choices[0].message.tool_calls[0]
        history = [
            {"role": "system", "content": "be brief"},
            *USER,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "a.py"},
        ]
        second = chat(oai, history, tools=tools_chat)
        use = claude(ant, tools=tools_claude).content[0]
        result = {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "b.py"}],
        }
        third = claude(ant, [*USER, {"role": "assistant", "content": [use.model_dump()]}, result])
    assert second.choices[0].message.content == "got a.py"
    assert third.content[0].text == "got b.py"
    chat_request = seen[1]
    assert (chat_request.api, chat_request.position, chat_request.system) == ("openai-chat", 1, "be brief")
    assert [m.role for m in chat_request.messages] == ["user", "assistant", "tool"]
    assert chat_request.messages[1].tool_calls[0].args == {"pattern": "*"}
    assert seen[2].tools[0].parameters == {"type": "object"}
    assert seen[2].tools[0].description == "find files"
    assert [m.role for m in seen[3].messages] == ["user", "assistant", "tool"]


@pytest.mark.anyio
async def test_async_policy_and_a_policy_error_answer_500() -> None:
    async def policy(request: ScriptedRequest) -> Turn:
        if request.stream:
            raise RuntimeError("no streams here")
        return Turn(text=f"model was {request.model}")

    with ScriptedServer(policy=policy) as server:
        async with openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="k", max_retries=0) as client:
            completion = await client.chat.completions.create(model="gpt-x", messages=USER)  # type: ignore[arg-type]
            with pytest.raises(openai.InternalServerError, match="no streams here"):
                await client.chat.completions.create(model="gpt-x", messages=USER, stream=True)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == "model was gpt-x"
    assert completion.model == "gpt-x"  # a policy server echoes the requested model


def test_server_needs_exactly_one_of_script_and_policy() -> None:
    with pytest.raises(ScriptError):
        ScriptedServer()
    with pytest.raises(ScriptError):
        ScriptedServer([Turn(text="x")], policy=lambda request: "x")


# --- recording, lifecycle, the separate process -------------------------------------------------


def test_requests_are_recorded_and_appended_to_jsonl(tmp_path: Path, openai_for: OpenAIFactory) -> None:
    record = tmp_path / "requests.jsonl"
    with ScriptedServer(TWO_TURNS, record_path=record) as server:
        chat(openai_for(server))
        httpx2.post(server.url + "/v1/messages", content=b"not json", headers={"x-api-key": "sk-ant-1"})
        assert len(read_recording(record)) == 2  # flushed per request, while the server runs
        recorded = server.wait_for_requests(2, timeout=1)
        with pytest.raises(TimeoutError):
            server.wait_for_requests(3, timeout=0.05)
    first, second = recorded
    assert first.api == "openai-chat"
    assert first.path == "/v1/chat/completions"
    assert first.headers["authorization"] == "Bearer sk-test"
    assert first.body is not None
    assert first.body["messages"] == USER
    assert first.position == 0
    assert (second.api, second.status, second.body, second.headers["x-api-key"]) == (
        "anthropic",
        400,
        None,
        "sk-ant-1",
    )
    assert read_recording(record) == recorded


def test_port_zero_gives_distinct_free_ports_and_stop_joins_the_thread(openai_for: OpenAIFactory) -> None:
    with ScriptedServer([Turn(text="a")]) as one, ScriptedServer([Turn(text="b")]) as two:
        assert one.port != two.port
        assert one.anthropic_base_url == one.url
        assert one.openai_base_url == one.url + "/v1"
        models = openai_for(one).models.list()
        assert [m.id for m in models.data] == ["scripted"]
        threads = [t for t in threading.enumerate() if t.name == "scripted-model"]
    assert len(threads) >= 2
    assert not any(t.is_alive() for t in threads)
    with pytest.raises(ScriptError, match="not running"):
        _ = one.url


def test_a_port_in_use_is_a_script_error() -> None:
    with ScriptedServer([Turn(text="a")]) as server, pytest.raises(ScriptError, match="Address already in use"):
        ScriptedServer([Turn(text="b")], port=server.port).start()


def test_module_runs_as_a_separate_process(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"model": "proc", "turns": [{"text": "from another process"}]}))
    record = tmp_path / "requests.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "corral.models.scripted", str(script), "--port", "0", "--record", str(record)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("scripted model server on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        reply = httpx2.post(url + "/v1/chat/completions", json={"model": "m", "messages": USER})
        assert reply.json()["choices"][0]["message"]["content"] == "from another process"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()
    assert [r.status for r in read_recording(record)] == [200]


# --- custom (freeform) tools: Codex's apply_patch -----------------------------------------------

PATCH = "*** Begin Patch\n*** Add File: a.txt\n+hello\n*** End Patch\n"
CUSTOM = ToolCall(name="apply_patch", input=PATCH)


def test_a_custom_tool_call_is_a_custom_tool_call_item_streamed_with_its_input_events(
    openai_for: OpenAIFactory,
) -> None:
    with (
        ScriptedServer([Turn(tool_calls=[CUSTOM])]) as server,
        openai_for(server).responses.stream(model="m", input="go") as stream,
    ):
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert "response.custom_tool_call_input.delta" in kinds and "response.custom_tool_call_input.done" in kinds
    deltas = "".join(e.delta for e in events if e.type == "response.custom_tool_call_input.delta")
    (call,) = final.output
    assert call.type == "custom_tool_call" and call.name == "apply_patch" and call.input == PATCH == deltas


def test_a_custom_tool_call_on_chat_and_anthropic_and_back_in_the_history(
    openai_for: OpenAIFactory, anthropic_for: AnthropicFactory
) -> None:
    with ScriptedServer([Turn(tool_calls=[CUSTOM]), Turn(text="done")]) as server:
        completion = chat(openai_for(server))
        (call,) = completion.choices[0].message.tool_calls
        assert call.type == "custom" and call.custom.name == "apply_patch" and call.custom.input == PATCH
        streamed = chat(openai_for(server), stream=True)
        pieces = [c.choices[0].delta.tool_calls for c in streamed if c.choices and c.choices[0].delta.tool_calls]
        assert pieces[0][0].type == "custom"
        message = claude(anthropic_for(server))
        (block,) = message.content
        assert block.type == "tool_use" and block.input == {"input": PATCH}  # Anthropic has no freeform tools
        # the call and its output sent back: the next turn answers
        history = [
            {"type": "message", "role": "user", "content": "go"},
            {"type": "custom_tool_call", "call_id": "call_1", "name": "apply_patch", "input": PATCH},
            {"type": "custom_tool_call_output", "call_id": "call_1", "output": "Done!"},
        ]
        response = openai_for(server).responses.create(model="m", input=history)  # type: ignore[arg-type]
    assert response.output_text == "done"
    assert server.requests[-1].body["input"][1]["type"] == "custom_tool_call"


def test_tools_declared_in_additional_tools_items_and_namespaces_are_the_requests_tools(
    openai_for: OpenAIFactory,
) -> None:
    seen: list[list[str]] = []

    def policy(request: ScriptedRequest) -> Turn:
        seen.append(request.tool_names)
        return Turn(text="ok")

    declared = {
        "type": "additional_tools",
        "role": "developer",
        "tools": [
            {"type": "namespace", "name": "functions", "tools": [{"type": "custom", "name": "exec"}]},
            {"type": "function", "name": "wait", "parameters": {"type": "object"}},
        ],
    }
    with ScriptedServer(policy=policy) as server:
        openai_for(server).responses.create(model="m", input=[declared, {"role": "user", "content": "go"}])  # type: ignore[list-item]
    assert seen == [["exec", "wait"]]


def test_a_tool_call_takes_args_or_input_not_both() -> None:
    with pytest.raises(ValueError, match=r"args .* or input"):
        ToolCall(name="apply_patch", args={"a": 1}, input="x")
