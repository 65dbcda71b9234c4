"""Escape attempts against the model gateway from inside an engine's sandbox: a command there can reach
the gateway (by its route) and nothing else, and through it only the run's own upstream, with the run's
own key. Made-up keys, paths that climb out, other ports, the gateway's address itself and every other
host are refused; the upstream sees none of them, and never the gateway key."""

from __future__ import annotations

import time

import pytest

from corral.models.gateway import GatewayCall, ModelGateway, Upstream
from corral.models.scripted import ScriptedServer, Turn
from corral.policy.budgets import BudgetClock
from corral.spec import Budget
from tests.security.sandbox.conftest import SandboxFactory

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60), pytest.mark.slow]

CURL = ["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}", "--path-as-is"]


async def test_a_sandbox_reaches_only_its_runs_upstream_through_the_gateway(make_sandbox: SandboxFactory) -> None:
    calls: list[GatewayCall] = []
    with ScriptedServer([Turn(text="hello")] * 3) as upstream:
        async with ModelGateway() as gateway:
            account = gateway.open_account(
                "run-1",
                upstreams={"anthropic": Upstream(upstream.anthropic_base_url, "the-real-provider-key")},
                provider="scripted",
                budget=BudgetClock(Budget(), time.time()),
                on_call=calls.append,
            )
            port = gateway.url.rsplit(":", 1)[1]
            sandbox = await make_sandbox(routes={"corral-gateway": f"127.0.0.1:{port}"})
            base = "http://corral-gateway"
            body = '{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'
            post = ["-X", "POST", "-H", "content-type: application/json", "-d", body]
            key, bearer = ["-H", f"x-api-key: {account.key}"], ["-H", f"authorization: Bearer {account.key}"]
            attempts = {
                "made-up key": [*post, "-H", "x-api-key: corral-gw-made-up", f"{base}/anthropic/v1/messages"],
                "no key": [*post, f"{base}/anthropic/v1/messages"],
                "climbing path": [*post, *key, f"{base}/anthropic/v1/../../v1/messages"],
                "other path": [*key, f"{base}/anthropic/v1/files"],
                "no upstream for openai": [*post, *bearer, f"{base}/openai/v1/responses"],
                "other port": [*key, "http://corral-gateway:8080/anthropic/v1/models"],
                "the gateway's address": [*key, f"{gateway.url}/anthropic/v1/models"],
                "over tls": [*key, "https://corral-gateway/anthropic/v1/models"],
            }
            statuses = {}
            for what, args in attempts.items():
                result = await sandbox.exec([*CURL, *args])
                statuses[what] = result.stdout.strip()
            allowed = await sandbox.exec(
                [*CURL, *post, "-H", f"x-api-key: {account.key}", f"{base}/anthropic/v1/messages"]
            )
        recorded = upstream.requests
    assert statuses == {
        "made-up key": "401",
        "no key": "401",
        "climbing path": "404",
        "other path": "404",
        "no upstream for openai": "404",
        "other port": "403",
        "the gateway's address": "000",  # 127.0.0.1 in the sandbox is its own loopback: nothing listens
        "over tls": "000",  # the CONNECT is refused (403): curl reports no HTTP status of the target
    }, statuses
    assert allowed.stdout.strip() == "200"
    assert len(recorded) == 1, "ESCAPE: a refused request reached the upstream"
    assert recorded[0].headers.get("x-api-key") == "the-real-provider-key"
    assert [call.status for call in calls] == [200]
