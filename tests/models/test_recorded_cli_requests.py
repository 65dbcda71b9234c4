"""The first requests the real external CLIs send, recorded against ``corral model serve`` and replayed
here: the scripted model must answer them (directly and through the model gateway), whatever the CLI's
current default model puts in them.

Recorded:

- ``claude -p "say hi" --output-format stream-json --verbose`` (Claude Code 2.1.332, its default model
  ``claude-opus-5-5``), whose messages carry a ``role: "system"`` message (its environment) and whose
  body has ``output_config``, ``thinking`` and ``context_management``;
- ``codex exec --json`` (Codex 0.171.0, model ``gpt-5.5``, a Responses provider), which declares
  ``apply_patch`` as a ``custom`` tool with a grammar; and its request after the model called it (a
  ``custom_tool_call`` and its ``custom_tool_call_output`` in the input);
- ``opencode run --format json`` (OpenCode 1.18.33, an ``@ai-sdk/openai-compatible`` provider): Chat
  Completions, streamed, with its tools.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest

from corral.models.gateway import GatewayCall, ModelGateway, Upstream
from corral.models.scripted import Route, Script, ScriptedServer, ToolCall, Turn
from corral.policy.budgets import BudgetClock
from corral.spec import Budget

pytestmark = pytest.mark.anyio

RECORDED = Path(__file__).parent / "recorded"


def recorded(name: str) -> dict[str, Any]:
    return json.loads((RECORDED / name).read_text())


def events_of(stream: bytes) -> list[dict[str, Any]]:
    found = []
    for block in stream.decode().split("\n\n"):
        data = [line[5:].strip() for line in block.splitlines() if line.startswith("data:")]
        if data and data != ["[DONE]"]:  # Chat Completions' end of stream
            found.append(json.loads("\n".join(data)))
    return found


async def test_claude_codes_first_request_is_answered_directly_and_through_the_gateway() -> None:
    request = recorded("claude-code-2.1.332-first-request.json")
    body = request["body"]
    assert [message["role"] for message in body["messages"]] == ["user", "system"]
    # The route matches text of the system message inside `messages`: it joins the system prompt.
    script = Script(
        routes=[Route(match="Primary working directory", turns=[Turn(text="hi from the route")])],
        turns=[Turn(text="not the route")],
    )
    calls: list[GatewayCall] = []
    with ScriptedServer(script) as upstream:
        async with httpx2.AsyncClient() as client:
            direct = await client.post(
                f"{upstream.anthropic_base_url}{request['path']}",
                headers={**request["headers"], "x-api-key": "placeholder"},
                json=body,
            )
            assert direct.status_code == 200, direct.text
            deltas = [
                e["delta"].get("text", "") for e in events_of(direct.content) if e["type"] == "content_block_delta"
            ]
            assert "".join(deltas) == "hi from the route"
            async with ModelGateway() as gateway:
                account = gateway.open_account(
                    "run-1",
                    upstreams={"anthropic": Upstream(upstream.anthropic_base_url, "real-key")},
                    provider="scripted",
                    budget=BudgetClock(Budget(), time.time()),
                    on_call=calls.append,
                )
                through = await client.post(
                    f"{gateway.anthropic_base_url}{request['path']}",
                    headers={**request["headers"], "x-api-key": account.key},
                    json={**body, "messages": [*body["messages"], {"role": "user", "content": "again"}]},
                )
                assert through.status_code == 200, through.text
                kinds = [e["type"] for e in events_of(through.content)]
                assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    (call,) = calls
    assert (call.kind, call.status, call.streamed, call.model) == ("anthropic-messages", 200, True, "claude-opus-5-5")
    assert call.usage.input_tokens > 0 and call.usage.output_tokens > 0 and call.price_source == "scripted"


async def _through_the_gateway(
    client: httpx2.AsyncClient, upstream: ScriptedServer, request: dict[str, Any]
) -> tuple[httpx2.Response, list[GatewayCall]]:
    """``request`` sent to the gateway (as the CLI sends it to its base URL), upstream the scripted server."""
    calls: list[GatewayCall] = []
    async with ModelGateway() as gateway:
        account = gateway.open_account(
            "run-1",
            upstreams={"openai": Upstream(upstream.openai_base_url, "real-key")},
            provider="scripted",
            budget=BudgetClock(Budget(), time.time()),
            on_call=calls.append,
        )
        answer = await client.post(
            f"{gateway.openai_base_url}{request['path'].removeprefix('/v1')}",
            headers={**request["headers"], "authorization": f"Bearer {account.key}"},
            json=request["body"],
        )
    return answer, calls


PATCH = "*** Begin Patch\n*** Add File: notes.txt\n+hello\n*** End Patch\n"


async def test_codexs_requests_are_answered_with_a_custom_apply_patch_call_and_read_back() -> None:
    first = recorded("codex-0.171.0-first-request.json")
    tools = {tool["name"]: tool for tool in first["body"]["tools"] if "name" in tool}
    assert tools["apply_patch"]["type"] == "custom" and tools["apply_patch"]["format"]["type"] == "grammar"
    after = recorded("codex-0.171.0-after-apply-patch.json")
    kinds = [item.get("type") for item in after["body"]["input"]]
    assert "custom_tool_call" in kinds and "custom_tool_call_output" in kinds
    turns = [
        Turn(tool_calls=[ToolCall(name="exec_command", args={"cmd": "ls"})]),
        Turn(tool_calls=[ToolCall(name="apply_patch", input=PATCH)]),
        Turn(text="patched"),
    ]
    with ScriptedServer(turns) as upstream:
        async with httpx2.AsyncClient() as client:
            answer, calls = await _through_the_gateway(client, upstream, first)
            assert answer.status_code == 200, answer.text
            done = [e for e in events_of(answer.content) if e["type"] == "response.completed"]
            (item,) = done[0]["response"]["output"]
            assert item["type"] == "function_call" and item["name"] == "exec_command"
            # the request after the patch: the history's custom call counts as a turn, so the next one answers
            answer, more = await _through_the_gateway(client, upstream, after)
            assert answer.status_code == 200, answer.text
            texts = [e["delta"] for e in events_of(answer.content) if e["type"] == "response.output_text.delta"]
            assert "".join(texts) == "patched"
            # and a custom call, as Codex reads it, for the request that asks for the second turn
            second = {**first, "body": {**first["body"], "input": after["body"]["input"][:-2]}}
            answer, _ = await _through_the_gateway(client, upstream, second)
            streamed = events_of(answer.content)
            pieces = [e["delta"] for e in streamed if e["type"] == "response.custom_tool_call_input.delta"]
            (finished,) = [e for e in streamed if e["type"] == "response.custom_tool_call_input.done"]
            assert "".join(pieces) == finished["input"] == PATCH
    assert [c.kind for c in [*calls, *more]] == ["openai-responses", "openai-responses"]
    assert all(c.status == 200 and c.usage.input_tokens > 0 for c in [*calls, *more])


async def test_opencodes_first_request_is_answered_through_the_gateway() -> None:
    first = recorded("opencode-1.18.33-first-request.json")
    assert first["body"]["stream"] is True and {t["function"]["name"] for t in first["body"]["tools"]} >= {"bash"}
    with ScriptedServer([Turn(text="hi from the scripted model")]) as upstream:
        async with httpx2.AsyncClient() as client:
            answer, calls = await _through_the_gateway(client, upstream, first)
    assert answer.status_code == 200, answer.text
    chunks = [e for e in events_of(answer.content) if e.get("choices")]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "hi from the scripted model"
    (call,) = calls
    assert (call.kind, call.status, call.streamed) == ("openai-chat", 200, True) and call.usage.output_tokens > 0
