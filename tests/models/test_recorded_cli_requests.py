"""The first requests the real external CLIs send, recorded against ``corral model serve`` and replayed
here: the scripted model must answer them (directly and through the model gateway), whatever the CLI's
current default model puts in them.

Recorded: ``claude -p "say hi" --output-format stream-json --verbose`` (Claude Code 2.1.332, its
default model ``claude-opus-5-5``), whose messages carry a ``role: "system"`` message (its environment)
and whose body has ``output_config``, ``thinking`` and ``context_management``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest

from corral.models.gateway import GatewayCall, ModelGateway, Upstream
from corral.models.scripted import Route, Script, ScriptedServer, Turn
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
        if data:
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
