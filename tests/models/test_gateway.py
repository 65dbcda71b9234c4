"""The model gateway between external engines and providers: the official SDKs call it with a run's
placeholder key; it forwards to the upstream (the scripted model server) with the real key, streams
answers back, meters every call with the native engine's pricing, and refuses unknown keys and
exhausted budgets without forwarding anything."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from corral.engines.external import HOOK
from corral.events import Usage
from corral.models.gateway import GatewayCall, ModelGateway, Upstream
from corral.models.scripted import ScriptedServer
from corral.models.scripted.script import Failure, ScriptUsage, Turn
from corral.policy.budgets import BudgetClock
from corral.sandbox.types import SANDBOX_PYTHON
from corral.spec import Budget, ModelPrice

pytestmark = pytest.mark.anyio

REAL_KEY = "sk-real-provider-key-never-shown-to-the-engine"
USAGE = ScriptUsage(input_tokens=1000, output_tokens=50, cache_read_tokens=200, cache_write_tokens=100)
PRICE = ModelPrice(input_mtok=3, output_mtok=15, cache_read_mtok=0.3, cache_write_mtok=3.75)
# Anthropic: 700 uncached input, 200 read from the cache, 100 written to it, 50 out. OpenAI reports no
# cache writes: 800 uncached, 200 read.
COST = {
    "anthropic": (700 * 3 + 200 * 0.3 + 100 * 3.75 + 50 * 15) / 1e6,
    "openai": (800 * 3 + 200 * 0.3 + 50 * 15) / 1e6,
}


class Sdk:
    """The official SDK clients an engine would use, pointed at the gateway; closed after the test."""

    def __init__(self) -> None:
        self.made: list[anthropic.AsyncAnthropic | openai.AsyncOpenAI] = []

    def claude(self, gateway: ModelGateway, key: str) -> anthropic.AsyncAnthropic:
        client = anthropic.AsyncAnthropic(base_url=gateway.anthropic_base_url, api_key=key, max_retries=0)
        self.made.append(client)
        return client

    def gpt(self, gateway: ModelGateway, key: str) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(base_url=gateway.openai_base_url, api_key=key, max_retries=0)
        self.made.append(client)
        return client


@pytest.fixture
async def sdk() -> AsyncIterator[Sdk]:
    made = Sdk()
    try:
        yield made
    finally:
        for client in made.made:
            await client.close()


def turns(n: int, **fields: object) -> list[Turn]:
    return [Turn(text=f"answer {i}", usage=USAGE, **fields) for i in range(n)]  # type: ignore[arg-type]


def account_for(
    gateway: ModelGateway, upstream: ScriptedServer, calls: list[GatewayCall], budget: Budget | None = None
):
    return gateway.open_account(
        "run-1",
        upstreams={
            "anthropic": Upstream(upstream.anthropic_base_url, REAL_KEY),
            "openai": Upstream(upstream.openai_base_url, REAL_KEY),
        },
        provider="anthropic",
        budget=BudgetClock(budget or Budget(), time.time()),
        on_call=calls.append,
        prices={"claude-test": PRICE, "gpt-test": PRICE},
    )


def assert_only_the_real_key_went_upstream(upstream: ScriptedServer, placeholder: str) -> None:
    sent = json.dumps([request.headers for request in upstream.requests])
    assert placeholder not in sent
    for request in upstream.requests:
        sent_key = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
        assert sent_key == REAL_KEY


def assert_metered(call: GatewayCall, *, kind: str, streamed: bool) -> None:
    assert (call.kind, call.streamed, call.status, call.error) == (kind, streamed, 200, None)
    assert (call.usage.input_tokens, call.usage.output_tokens) == (1000, 50)
    assert call.price_source == "override" and call.usage.cost_usd == pytest.approx(COST[kind.split("-")[0]])


async def test_anthropic_messages_pass_through_with_the_real_key_and_are_metered(sdk: Sdk) -> None:
    calls: list[GatewayCall] = []
    with ScriptedServer(turns(2)) as upstream:
        async with ModelGateway() as gateway:
            account = account_for(gateway, upstream, calls)
            client = sdk.claude(gateway, account.key)
            message = await client.messages.create(
                model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "first"}]
            )
            assert message.content[0].type == "text" and message.content[0].text == "answer 0"
            async with client.messages.stream(
                model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "second"}]
            ) as stream:
                streamed = await stream.get_final_message()
            assert streamed.content[0].type == "text" and streamed.content[0].text.startswith("answer")
            assert streamed.usage.output_tokens == 50
        assert_only_the_real_key_went_upstream(upstream, account.key)
    assert [call.call for call in calls] == [0, 1]
    assert_metered(calls[0], kind="anthropic-messages", streamed=False)
    assert_metered(calls[1], kind="anthropic-messages", streamed=True)
    assert (calls[1].usage.cache_read_tokens, calls[1].usage.cache_write_tokens) == (200, 100)
    assert account.usage.total_tokens == 2 * 1050 and account.calls == 2


async def test_openai_responses_and_chat_pass_through_metered_streamed_or_not(sdk: Sdk) -> None:
    calls: list[GatewayCall] = []
    with ScriptedServer(turns(4)) as upstream:
        async with ModelGateway() as gateway:
            account = account_for(gateway, upstream, calls)
            client = sdk.gpt(gateway, account.key)
            response = await client.responses.create(model="gpt-test", input="one")
            assert response.output_text.startswith("answer")
            stream = await client.responses.create(model="gpt-test", input="two", stream=True)
            kinds = [event.type async for event in stream]
            assert kinds[-1] == "response.completed"
            chat = await client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "3"}])
            assert (chat.choices[0].message.content or "").startswith("answer")
            chunks = await client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "4"}], stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
            assert text.startswith("answer")
        assert_only_the_real_key_went_upstream(upstream, account.key)
        chat_stream = upstream.requests[-1].body or {}
        assert chat_stream["stream_options"] == {"include_usage": True}  # asked, or a stream carries no usage
    assert_metered(calls[0], kind="openai-responses", streamed=False)
    assert_metered(calls[1], kind="openai-responses", streamed=True)
    assert_metered(calls[2], kind="openai-chat", streamed=False)
    assert_metered(calls[3], kind="openai-chat", streamed=True)


async def test_unknown_and_closed_keys_are_refused_and_nothing_is_forwarded(sdk: Sdk) -> None:
    calls: list[GatewayCall] = []
    with ScriptedServer(turns(1)) as upstream:
        async with ModelGateway() as gateway:
            account = account_for(gateway, upstream, calls)
            for key in ("corral-gw-made-up", REAL_KEY):
                client = sdk.claude(gateway, key)
                with pytest.raises(anthropic.AuthenticationError, match="unknown or expired corral gateway key"):
                    await client.messages.create(
                        model="claude-test", max_tokens=10, messages=[{"role": "user", "content": "x"}]
                    )
            gateway.close_account(account)
            client = sdk.gpt(gateway, account.key)
            with pytest.raises(openai.AuthenticationError):
                await client.responses.create(model="gpt-test", input="x")
        assert upstream.requests == []
    assert calls == []


async def test_an_exhausted_budget_is_refused_with_the_reason_and_reported(sdk: Sdk) -> None:
    calls: list[GatewayCall] = []
    with ScriptedServer(turns(3)) as upstream:
        async with ModelGateway() as gateway:
            account = account_for(gateway, upstream, calls, budget=Budget(max_tokens=1500))
            client = sdk.claude(gateway, account.key)
            for prompt in ("one", "two"):  # 1050 tokens after the first: the second still starts
                await client.messages.create(
                    model="claude-test", max_tokens=10, messages=[{"role": "user", "content": prompt}]
                )
            with pytest.raises(
                anthropic.PermissionDeniedError, match=r"budget exhausted: max_tokens = 1500 reached \(2100\)"
            ):
                await client.messages.create(
                    model="claude-test", max_tokens=10, messages=[{"role": "user", "content": "3"}]
                )
        assert len(upstream.requests) == 2
    refused = calls[-1]
    assert (refused.call, refused.status, refused.usage) == (2, 403, Usage())
    assert refused.error is not None and "max_tokens" in refused.error


async def test_upstream_failures_reach_the_engine_as_they_are_and_are_reported(sdk: Sdk) -> None:
    calls: list[GatewayCall] = []
    failing = [Turn(text="late", fail=[Failure(status=529, message="overloaded")], usage=USAGE)]
    with ScriptedServer(failing) as upstream:
        async with ModelGateway() as gateway:
            account = account_for(gateway, upstream, calls)
            client = sdk.claude(gateway, account.key)
            with pytest.raises(anthropic.APIStatusError) as raised:
                await client.messages.create(
                    model="claude-test", max_tokens=10, messages=[{"role": "user", "content": "x"}]
                )
            assert raised.value.status_code == 529
            gone = gateway.open_account(
                "run-2",
                upstreams={"anthropic": Upstream("http://127.0.0.1:9", REAL_KEY)},
                provider="anthropic",
                budget=BudgetClock(Budget(), time.time()),
                on_call=calls.append,
            )
            client = sdk.claude(gateway, gone.key)
            with pytest.raises(anthropic.APIStatusError, match="could not be reached") as unreachable:
                await client.messages.create(
                    model="claude-test", max_tokens=10, messages=[{"role": "user", "content": "x"}]
                )
            assert unreachable.value.status_code == 502
    assert [(call.run_id, call.status) for call in calls] == [("run-1", 529), ("run-2", 502)]
    assert all(call.error for call in calls) and calls[0].usage.total_tokens == 0


async def test_paths_the_gateway_does_not_serve_are_404_and_bodies_must_be_json(sdk: Sdk) -> None:
    import httpx2

    with ScriptedServer(turns(1)) as upstream:
        async with ModelGateway() as gateway:
            account = account_for(gateway, upstream, [])
            async with httpx2.AsyncClient() as client:
                headers = {"x-api-key": account.key}
                other = await client.post(f"{gateway.anthropic_base_url}/v1/files", headers=headers, content=b"{}")
                assert other.status_code == 404 and other.json()["error"]["type"] == "not_found_error"
                garbage = await client.post(f"{gateway.anthropic_base_url}/v1/messages", headers=headers, content=b"[1")
                assert garbage.status_code == 400 and "not a JSON object" in garbage.text
        assert upstream.requests == []


# --- the permission hook's door: POST /corral/permission ----------------------------------------


async def _hook(gateway_url: str, key: str, stdin: bytes) -> tuple[int, dict[str, Any] | None, str]:
    """Run the real hook script, as an engine runs it, with ``stdin`` as the engine's call."""
    process = await asyncio.create_subprocess_exec(
        SANDBOX_PYTHON,
        "-I",
        str(HOOK),
        f"{gateway_url}/corral/permission",
        key,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", "NO_PROXY": "*"},
    )
    out, err = await process.communicate(stdin)
    assert process.returncode is not None
    return process.returncode, json.loads(out) if out.strip() else None, err.decode()


CALL = json.dumps(
    {"hook_event_name": "PreToolUse", "tool_name": "Bash", "tool_input": {"command": "git push"}, "tool_use_id": "c1"}
).encode()


async def test_the_permission_hook_gets_the_runs_answer_in_the_hooks_format() -> None:
    asked: list[dict[str, Any]] = []

    async def on_permission(call: dict[str, Any]) -> dict[str, str]:
        asked.append(call)
        push = "push" in call["input"]["command"]
        return {"decision": "deny" if push else "allow", "reason": "no pushes" if push else "fine"}

    with ScriptedServer(turns(1)) as upstream:
        async with ModelGateway() as gateway:
            account = account_for(gateway, upstream, [])
            account.on_permission = on_permission
            code, answer, _ = await _hook(gateway.url, account.key, CALL)
            assert code == 0 and answer == {
                "hookSpecificOutput": {
                    "hookEventName": "PreToolUse",
                    "permissionDecision": "deny",
                    "permissionDecisionReason": "no pushes",
                }
            }
            allowed = CALL.replace(b"git push", b"git status")
            code, answer, _ = await _hook(gateway.url, account.key, allowed)
            assert code == 0 and answer is not None
            assert answer["hookSpecificOutput"]["permissionDecision"] == "allow"
    assert asked[0] == {"tool": "Bash", "input": {"command": "git push"}, "id": "c1"}


async def test_the_permission_hook_blocks_the_call_whenever_no_decision_comes() -> None:
    async def broken(call: dict[str, Any]) -> dict[str, str]:
        raise RuntimeError("the journal is gone")

    async def garbage(call: dict[str, Any]) -> dict[str, str]:
        return {"decision": "maybe"}

    with ScriptedServer(turns(1)) as upstream:
        async with ModelGateway() as gateway:
            account = account_for(gateway, upstream, [])
            # no handler for the run: the hook has nobody to ask
            code, answer, err = await _hook(gateway.url, account.key, CALL)
            assert (code, answer) == (2, None) and "blocked" in err and "404" in err
            account.on_permission = broken
            code, answer, err = await _hook(gateway.url, account.key, CALL)
            assert (code, answer) == (2, None) and "500" in err
            account.on_permission = garbage
            code, answer, err = await _hook(gateway.url, account.key, CALL)
            assert (code, answer) == (2, None) and "unknown decision" in err
            code, answer, err = await _hook(gateway.url, "corral-gw-made-up", CALL)  # not a run's key
            assert (code, answer) == (2, None) and "401" in err
            code, answer, err = await _hook(gateway.url, account.key, b"not json")
            assert (code, answer) == (2, None) and "blocked" in err
            async with httpx2.AsyncClient() as client:  # a body that names no tool
                headers = {"Authorization": f"Bearer {account.key}"}
                answered = await client.post(f"{gateway.url}/corral/permission", content=b"[1]", headers=headers)
                assert answered.status_code == 400
            url = gateway.url
        code, answer, err = await _hook(url, account.key, CALL)  # the gateway is gone
        assert (code, answer) == (2, None) and "blocked" in err


async def test_a_request_that_asks_the_same_again_is_reported_as_a_repeat_also_across_accounts(sdk: Sdk) -> None:
    calls: list[GatewayCall] = []
    with ScriptedServer(turns(4)) as upstream:
        async with ModelGateway() as gateway:
            account = account_for(gateway, upstream, calls)
            client = sdk.gpt(gateway, account.key)
            for attempt, text in enumerate(("first", "second", "first")):  # metadata differs: still a repeat
                await client.responses.create(model="gpt-test", input=text, metadata={"attempt": str(attempt)})
            gateway.close_account(account)
            # the run resumed in a new process: its new account knows what the journal says was sent
            resumed = gateway.open_account(
                "run-1",
                upstreams=account.upstreams,
                provider="anthropic",
                budget=account.budget,
                on_call=calls.append,
                calls=account.calls,
                sent=account.sent,
            )
            await sdk.gpt(gateway, resumed.key).responses.create(model="gpt-test", input="second")
    assert [(c.call, c.repeats) for c in calls] == [(0, None), (1, None), (2, 0), (3, 1)]
    assert calls[0].digest == calls[2].digest != calls[1].digest
