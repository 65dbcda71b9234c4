"""What the runtime gives an external engine (Claude Code, Codex, OpenCode): the model gateway and a key.

One ``ModelGateway`` per runtime, started when the first external engine runs and closed with the
runtime. Each run of an external engine gets an account for the length of its engine's run: the
upstream its spec's model names (the provider, with the key from the environment; or this process's
scripted model server), the run's budget clock, and a callback that journals every call as a
``model.call`` event and keeps the run's usage. The engine's process reaches the gateway from its
sandbox by the name ``corral-gateway`` through the sandbox's egress proxy (``SandboxRequest.routes``):
on a network with only that route, the gateway is all it can reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from corral import events as ev
from corral.engines.base import ModelAccess
from corral.events import Usage
from corral.policy.budgets import BudgetClock
from corral.sandbox.base import get_backend
from corral.spec import AgentSpec

if TYPE_CHECKING:  # imported when an external engine first runs: every `corral` command imports this module
    from corral.models.gateway import GatewayCall, ModelGateway, PermissionHandler

ROUTE = "corral-gateway"
"""The name the gateway has inside a sandbox (an egress-proxy route: plain HTTP, port 80)."""


class Gateways:
    """The runtime's model gateway: started on first use, closed with the runtime."""

    def __init__(self) -> None:
        self._gateway: ModelGateway | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> ModelGateway:
        async with self._lock:
            if self._gateway is None:
                from corral.models.gateway import ModelGateway

                self._gateway = await ModelGateway().start()
            return self._gateway

    async def close(self) -> None:
        gateway, self._gateway = self._gateway, None
        if gateway is not None:
            await gateway.close()


def routes(gateway: ModelGateway) -> dict[str, str]:
    """The sandbox routes an external engine's sandbox gets: the gateway, by name."""
    return {ROUTE: gateway.url.removeprefix("http://")}


@dataclass(frozen=True)
class Spent:
    """What a run's engine spent and sent through the gateway before it was resumed."""

    usage: Usage = field(default_factory=Usage)
    calls: int = 0
    sent: Mapping[str, int] = field(default_factory=dict)
    """Each request's digest and the first call that sent it."""


def spent_before(journal: Iterable[ev.BaseEvent]) -> Spent:
    """What a resumed run's engine spent before, from its journaled model calls: their usage, how many
    there were (its new account numbers its calls after them, and its budget counts from there), and
    the requests they sent (a call sent again is marked as a repeat)."""
    usage, calls, sent = Usage(), 0, {}
    for event in journal:
        if isinstance(event, ev.ModelCalled):
            usage += Usage(
                input_tokens=event.input_tokens,
                output_tokens=event.output_tokens,
                cache_read_tokens=event.cache_read_tokens,
                cache_write_tokens=event.cache_write_tokens,
                reasoning_tokens=event.reasoning_tokens,
                cost_usd=event.cost_usd,
                unpriced_calls=int(event.price_source == "unknown"),
            )
            calls = max(calls, event.call + 1)
            if event.request_digest:
                sent.setdefault(event.request_digest, event.call)
    return Spent(usage, calls, sent)


@contextlib.asynccontextmanager
async def model_access(
    gateway: ModelGateway,
    run_id: str,
    spec: AgentSpec,
    budget: BudgetClock,
    emit: Callable[[ev.BaseEvent], None],
    on_usage: Callable[[Usage, int], None],
    permit: PermissionHandler | None = None,
    spent: Spent | None = None,
) -> AsyncIterator[ModelAccess]:
    """An account for the run's engine while it runs; its key stops working when the block ends.

    ``permit`` answers the engine's permission hook. It runs in the context this block was entered in
    (the run's workflow), not the gateway's: a decision that waits for a person is a durable wait of
    the run's workflow, as a native tool call's is. ``spent``: the usage and model calls of the run
    before it was resumed (``spent_before``).
    """
    from corral.models.providers import api_key_for, gateway_upstreams, resolve_target

    target = resolve_target(spec.model, base_url=spec.base_url, api_key_env=spec.api_key_env)
    upstreams = gateway_upstreams(target, api_key_for(target))

    def on_call(call: GatewayCall) -> None:
        usage = call.usage
        emit(
            ev.ModelCalled(
                key=f"model.call:{call.call}",
                duration_ms=call.duration_ms,
                call=call.call,
                model=call.model,
                api=call.kind,
                status=call.status,
                streamed=call.streamed,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_read_tokens=usage.cache_read_tokens,
                cache_write_tokens=usage.cache_write_tokens,
                reasoning_tokens=usage.reasoning_tokens,
                cost_usd=usage.cost_usd,
                price_source=call.price_source,
                error=call.error,
                request_digest=call.digest or None,
                repeats=call.repeats,
            )
        )
        on_usage(account.usage, account.calls)

    account = gateway.open_account(
        run_id,
        upstreams=upstreams,
        provider=target.pricing_provider,
        budget=budget,
        on_call=on_call,
        prices=spec.prices,
        price_ref=target.ref,
        usage=spent.usage if spent else None,
        calls=spent.calls if spent else 0,
        sent=spent.sent if spent else None,
    )
    deciding: set[asyncio.Task[dict[str, str]]] = set()
    if permit is not None:
        workflow_context = contextvars.copy_context()

        async def on_permission(call: dict[str, Any]) -> dict[str, str]:
            async def decide() -> dict[str, str]:
                return await permit(call)

            task = asyncio.get_running_loop().create_task(decide(), context=workflow_context.copy())
            deciding.add(task)
            try:
                return await task
            finally:
                deciding.discard(task)

        account.on_permission = on_permission
    try:
        # Inside an isolated sandbox the gateway is a route through its egress proxy; commands on the
        # host's network (the local backend, network "host") reach its address directly.
        isolated = get_backend(spec.sandbox.backend).isolated and spec.sandbox.network.mode != "host"
        base = f"http://{ROUTE}" if isolated else gateway.url
        yield ModelAccess(
            anthropic_base_url=f"{base}/anthropic",
            openai_base_url=f"{base}/openai/v1",
            api_key=account.key,
            model=None if target.provider == "scripted" else target.name,
            provider=target.provider,
            permission_url=f"{base}/corral/permission",
        )
    finally:
        gateway.close_account(account)
        for task in deciding:  # a hook still waiting (for a person) when the engine ended: nobody will ask
            task.cancel()
        if deciding:
            await asyncio.gather(*deciding, return_exceptions=True)
