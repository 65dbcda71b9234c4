"""The model gateway: the one door an external engine (Claude Code, Codex, OpenCode) has to a model API.

An external engine is a CLI corral does not control from inside, so its model calls go through a
loopback HTTP service that corral does control. Each run gets an *account*: a placeholder key the
engine is configured with, the real upstream (base URL and key) its calls go to, its budget, its
prices, and where each call is reported. For every request the gateway

1. finds the account by the key the engine sent (``x-api-key`` or ``Authorization: Bearer``); an
   unknown or closed key is refused (401) and nothing is forwarded;
2. checks the run's budget (``policy/budgets.py``, the same check the native engine makes before a
   model call); an exhausted budget is refused (403, with the reason in the API's own error format)
   and nothing is forwarded;
3. forwards the request to the upstream with the real key (the placeholder never leaves), and
   streams the answer back unchanged, byte for byte;
4. reads the usage from the answer as it passes (a streamed answer's ``message_start`` and
   ``message_delta``, ``response.completed``, or the last chat chunk), prices it with the native
   engine's code (``models/pricing.py``), adds it to the account, and reports the call
   (``GatewayCall``) — also when it failed upstream, was cut off, or was refused.

Paths: ``/anthropic/v1/messages`` (``ANTHROPIC_BASE_URL=<gateway>/anthropic``), and
``/openai/v1/responses`` and ``/openai/v1/chat/completions`` (``base_url = <gateway>/openai/v1``);
``…/models`` and Anthropic's ``count_tokens`` are forwarded without being counted as model calls.
A Chat Completions stream is asked for its usage (``stream_options.include_usage``): without it a
streamed chat answer carries none.

``POST /corral/permission`` answers an engine's permission hook (``engines/hook/permission.py``):
the call it is about (``tool``, ``input``, ``id``), authenticated with the same key, goes to the
account's ``on_permission`` and its answer (``{"decision": "allow" | "deny", "reason": ...}``) back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import httpx2
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from corral.errors import BudgetExceededError, ModelConfigError
from corral.events import Usage
from corral.models.pricing import price_call
from corral.policy.budgets import BudgetClock
from corral.spec import ModelPrice

log = logging.getLogger("corral.gateway")

Wire = Literal["anthropic", "openai"]
Kind = Literal["anthropic-messages", "openai-responses", "openai-chat", "other"]

KEY_PREFIX = "corral-gw-"
UPSTREAM_TIMEOUT = httpx2.Timeout(connect=10.0, read=600.0, write=60.0, pool=10.0)

# Paths an engine may call, below /anthropic/ and /openai/v1/, and what each is.
_PATHS: dict[Wire, dict[str, Kind]] = {
    "anthropic": {"v1/messages": "anthropic-messages", "v1/messages/count_tokens": "other", "v1/models": "other"},
    "openai": {"responses": "openai-responses", "chat/completions": "openai-chat", "models": "other"},
}
# Not passed on either way: hop-by-hop, recomputed, or the credentials the gateway replaces.
_DROPPED_REQUEST = {
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "accept-encoding",
    "authorization",
    "x-api-key",
    "proxy-authorization",
}
_DROPPED_RESPONSE = {"content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive"}


@dataclass(frozen=True)
class Upstream:
    """Where an account's calls of one wire go: the provider's base URL and its real key.

    ``base_url`` as the provider's SDK takes it: ``https://api.anthropic.com`` for Anthropic,
    ``https://api.openai.com/v1`` for OpenAI (or any OpenAI-compatible server).
    """

    base_url: str
    api_key: str = field(repr=False)


@dataclass(frozen=True)
class GatewayCall:
    """One model call through the gateway, as it ended: what the runtime journals and meters."""

    run_id: str
    call: int
    """The account's model calls before this one (0-based)."""
    kind: Kind
    model: str
    status: int
    """The HTTP status the engine got (the upstream's, or the gateway's own refusal)."""
    streamed: bool
    usage: Usage
    price_source: str
    duration_ms: float
    error: str | None = None
    digest: str = ""
    """A digest of what the request asked (model, conversation, tools)."""
    repeats: int | None = None
    """The account's earlier call that asked the same (a CLI that retried, or that resumed its session
    and repeated a call), or None."""


PermissionHandler = Callable[[dict[str, Any]], Awaitable[dict[str, str]]]
"""``on_permission(call)``: the answer for a hook's call ``{"tool", "input", "id"}``."""


@dataclass
class Account:
    """One run's access to models through the gateway."""

    run_id: str
    key: str = field(repr=False)
    upstreams: Mapping[Wire, Upstream]
    provider: str
    """The provider whose price table applies (``anthropic``, ``openai``, ``scripted``…)."""
    budget: BudgetClock
    on_call: Callable[[GatewayCall], None]
    prices: Mapping[str, ModelPrice] = field(default_factory=dict)
    price_ref: str = ""
    """``provider:model`` as a spec's ``[prices]`` names it (looked up before the model's own name)."""
    usage: Usage = field(default_factory=Usage)
    calls: int = 0
    closed: bool = False
    sent: dict[str, int] = field(default_factory=dict)
    """The digest of each request body sent, and the first call that sent it."""
    on_permission: PermissionHandler | None = None
    """What the run's policy says about a tool call its engine's hook asks about; None: no hook served."""


class ModelGateway:
    """The gateway's HTTP service, on 127.0.0.1 in the event loop that starts it.

    ``async with ModelGateway() as gateway:`` serves until the block ends; ``open_account`` gives a
    run its key. Upstream connections are pooled across runs.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self._port = host, port
        self._accounts: dict[str, Account] = {}
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: httpx2.AsyncClient | None = None
        self.app = Starlette(
            routes=[
                Route("/anthropic/{path:path}", self._anthropic, methods=["GET", "POST"]),
                Route("/openai/v1/{path:path}", self._openai, methods=["GET", "POST"]),
                Route("/corral/permission", self._permission, methods=["POST"]),
            ]
        )

    # -- life -------------------------------------------------------------------------------

    async def start(self) -> Self:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise ModelConfigError(f"the model gateway cannot listen on {self.host}:{self._port}: {exc}") from exc
        self._port = sock.getsockname()[1]
        self._client = httpx2.AsyncClient(timeout=UPSTREAM_TIMEOUT)
        config = uvicorn.Config(self.app, log_config=None, log_level="warning", access_log=False, lifespan="off")
        config.timeout_graceful_shutdown = 1
        self._server = server = uvicorn.Server(config)
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name="corral-model-gateway")
        while not server.started:
            if self._task.done():
                await self._task  # raises what stopped it
                raise ModelConfigError("the model gateway stopped while starting")
            await asyncio.sleep(0.005)
        return self

    async def close(self) -> None:
        """Stop serving (calls in flight get a second to finish) and close upstream connections."""
        try:
            if self._server is not None and self._task is not None:
                self._server.should_exit = True
                try:
                    await asyncio.wait_for(asyncio.shield(self._task), 3.0)
                except TimeoutError:
                    self._server.force_exit = True
                    self._task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._task
        finally:
            self._server = self._task = None
            if self._client is not None:
                await self._client.aclose()
                self._client = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        if self._server is None:
            raise ModelConfigError("the model gateway is not running")
        return f"http://{self.host}:{self._port}"

    @property
    def anthropic_base_url(self) -> str:
        """``ANTHROPIC_BASE_URL`` for an engine."""
        return f"{self.url}/anthropic"

    @property
    def openai_base_url(self) -> str:
        """An OpenAI client's ``base_url`` for an engine."""
        return f"{self.url}/openai/v1"

    # -- accounts ---------------------------------------------------------------------------

    def open_account(
        self,
        run_id: str,
        *,
        upstreams: Mapping[Wire, Upstream],
        provider: str,
        budget: BudgetClock,
        on_call: Callable[[GatewayCall], None],
        prices: Mapping[str, ModelPrice] | None = None,
        price_ref: str = "",
        usage: Usage | None = None,
        calls: int = 0,
        sent: Mapping[str, int] | None = None,
    ) -> Account:
        """A new key for ``run_id``'s engine. ``usage``, ``calls`` and ``sent`` (request digests): what
        the run spent and sent before (a resumed run), so that its budget counts from there and a
        call it sends again is known as one."""
        account = Account(
            run_id=run_id,
            key=KEY_PREFIX + secrets.token_urlsafe(24),
            upstreams=dict(upstreams),
            provider=provider,
            budget=budget,
            on_call=on_call,
            prices=dict(prices or {}),
            price_ref=price_ref,
            usage=usage or Usage(),
            calls=calls,
            sent=dict(sent or {}),
        )
        self._accounts[account.key] = account
        return account

    def close_account(self, account: Account) -> None:
        """The key stops working at once; calls in flight finish and are still reported."""
        account.closed = True
        self._accounts.pop(account.key, None)

    # -- requests ---------------------------------------------------------------------------

    async def _anthropic(self, request: Request) -> Response:
        return await self._handle(request, "anthropic")

    async def _openai(self, request: Request) -> Response:
        return await self._handle(request, "openai")

    async def _handle(self, request: Request, wire: Wire) -> Response:
        path = request.path_params["path"]
        kind = _PATHS[wire].get(path)
        if kind is None:
            return _error(wire, 404, "not_found_error", f"the corral model gateway does not serve /{path}")
        account = self._account_of(request)
        if account is None:
            return _error(wire, 401, "authentication_error", "unknown or expired corral gateway key")
        upstream = account.upstreams.get(wire)
        if upstream is None:
            return _error(wire, 404, "not_found_error", f"this run has no {wire} model upstream")
        raw = await request.body()
        body: dict[str, Any] | None = None
        if request.method == "POST":
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                return _error(wire, 400, "invalid_request_error", "the request body is not a JSON object")
            body = parsed
        model = str(body.get("model", "")) if body else ""
        streamed = bool(body and body.get("stream"))
        if kind == "other":
            return await self._forward(request, wire, upstream, path, raw, account, None)
        meter = _Meter(kind=kind, model=model, streamed=streamed, started=time.monotonic(), call=account.calls)
        meter.digest = _digest(body)
        meter.repeats = account.sent.setdefault(meter.digest, meter.call)
        if meter.repeats == meter.call:
            meter.repeats = None
        account.calls += 1
        try:
            account.budget.check_model_call(meter.call, account.usage)
        except BudgetExceededError as err:
            self._report(account, meter, 403, Usage(), "none", err.message)
            return _error(wire, 403, "budget_exceeded", f"corral: {err.message}")
        assert body is not None
        if kind == "openai-chat" and streamed:  # a streamed chat answer carries usage only when asked
            options = body.get("stream_options")
            body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
            raw = json.dumps(body).encode()
        return await self._forward(request, wire, upstream, path, raw, account, meter)

    async def _permission(self, request: Request) -> Response:
        account = self._account_of(request)
        if account is None:
            return JSONResponse({"error": "unknown or expired corral gateway key"}, status_code=401)
        if account.on_permission is None:
            return JSONResponse({"error": "this run's engine has no permission hook"}, status_code=404)
        try:
            call = json.loads(await request.body())
        except ValueError:
            call = None
        if not isinstance(call, dict) or not isinstance(call.get("tool"), str):
            return JSONResponse({"error": "a permission request is a JSON object naming its tool"}, status_code=400)
        try:
            answer = await account.on_permission(call)
        except Exception as exc:  # the hook blocks the call on any error; the run's log says why
            log.warning("permission request of run %s failed", account.run_id, exc_info=True)
            return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=500)
        return JSONResponse(answer)

    def _account_of(self, request: Request) -> Account | None:
        key = request.headers.get("x-api-key")
        if key is None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            key = token.strip() if scheme.lower() == "bearer" else None
        account = self._accounts.get(key or "")
        return None if account is None or account.closed else account

    async def _forward(
        self,
        request: Request,
        wire: Wire,
        upstream: Upstream,
        path: str,
        raw: bytes,
        account: Account,
        meter: _Meter | None,
    ) -> Response:
        assert self._client is not None
        headers = {name: value for name, value in request.headers.items() if name.lower() not in _DROPPED_REQUEST}
        headers["accept-encoding"] = "identity"  # read as it passes: no compression to undo
        if wire == "anthropic":
            headers["x-api-key"] = upstream.api_key
        else:
            headers["authorization"] = f"Bearer {upstream.api_key}"
        url = f"{upstream.base_url.rstrip('/')}/{path}"
        if request.url.query:
            url += f"?{request.url.query}"
        outgoing = self._client.build_request(request.method, url, headers=headers, content=raw)
        try:
            answer = await self._client.send(outgoing, stream=True)
        except httpx2.HTTPError as exc:
            message = f"the model provider could not be reached: {type(exc).__name__}: {exc}"
            if meter is not None:
                self._report(account, meter, 502, Usage(), "none", message)
            return _error(wire, 502, "api_error", f"corral gateway: {message}")
        kept = {name: value for name, value in answer.headers.items() if name.lower() not in _DROPPED_RESPONSE}
        if meter is None:
            try:
                content = await answer.aread()
            finally:
                await answer.aclose()
            return Response(content, status_code=answer.status_code, headers=kept)
        return StreamingResponse(
            self._relay(answer, account, meter),
            status_code=answer.status_code,
            headers=kept,
            media_type=None,
        )

    async def _relay(self, answer: httpx2.Response, account: Account, meter: _Meter) -> AsyncIterator[bytes]:
        """The upstream's bytes as they come, read for usage on the way; the call is reported however it ends."""
        error: str | None = None if answer.status_code < 400 else f"HTTP {answer.status_code}"
        try:
            async for chunk in answer.aiter_raw():
                meter.feed(chunk)
                yield chunk
        except httpx2.HTTPError as exc:
            error = f"the answer was cut off: {type(exc).__name__}: {exc}"
        except BaseException:
            error = "the engine closed the connection before the answer ended"
            raise
        finally:
            await answer.aclose()
            usage = meter.usage()
            # Priced by the model asked for (what a spec's price overrides name), else the one that answered
            # (providers answer with a dated name their price tables know).
            model = meter.model
            ref = account.price_ref
            cost, source = price_call(usage, model=model, provider=account.provider, overrides=account.prices, ref=ref)
            if source == "unknown" and meter.answered_model and meter.answered_model != model:
                cost, source = price_call(
                    usage, model=meter.answered_model, provider=account.provider, overrides=account.prices, ref=ref
                )
            usage = usage.model_copy(update={"cost_usd": cost, "unpriced_calls": int(source == "unknown")})
            if error is None and answer.status_code >= 400:
                error = f"HTTP {answer.status_code}"
            self._report(account, meter, answer.status_code, usage, source, error)

    def _report(
        self, account: Account, meter: _Meter, status: int, usage: Usage, price_source: str, error: str | None
    ) -> None:
        """Add a call's usage to its account and report it (the model asked for, as the call's)."""
        account.usage = account.usage + usage
        record = GatewayCall(
            run_id=account.run_id,
            call=meter.call,
            kind=meter.kind,
            model=meter.model,
            status=status,
            streamed=meter.streamed,
            usage=usage,
            price_source=price_source,
            duration_ms=(time.monotonic() - meter.started) * 1000,
            error=error,
            digest=meter.digest,
            repeats=meter.repeats,
        )
        try:
            account.on_call(record)
        except Exception:  # reporting must not break the engine's call; the failure is loud in the log
            log.exception("run %s: reporting model call %d failed", account.run_id, meter.call)


_CONVERSATION = ("model", "system", "instructions", "messages", "input", "tools")


def _digest(body: Mapping[str, Any] | None) -> str:
    """A digest of what a model request asks: its model, conversation and tools (not the request's
    own metadata, which a CLI changes on every attempt)."""
    asked = {key: body[key] for key in _CONVERSATION if key in body} if body else {}
    return hashlib.sha256(json.dumps(asked, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _error(wire: Wire, status: int, kind: str, message: str) -> JSONResponse:
    """An error in the shape the engine's SDK reads: its message reaches the user as written."""
    if wire == "anthropic":
        return JSONResponse({"type": "error", "error": {"type": kind, "message": message}}, status_code=status)
    return JSONResponse({"error": {"message": message, "type": kind, "code": kind}}, status_code=status)


@dataclass
class _Meter:
    """Reads a call's usage from its answer as the bytes pass: a JSON body, or server-sent events."""

    kind: Kind
    model: str
    streamed: bool
    started: float
    call: int
    answered_model: str | None = None
    digest: str = ""
    repeats: int | None = None
    _buffer: bytearray = field(default_factory=bytearray)
    _usage: dict[str, int] = field(default_factory=dict)
    _limit: int = 64 * 1024 * 1024  # a JSON answer bigger than this is not read for usage

    def feed(self, chunk: bytes) -> None:
        if not self.streamed:
            if len(self._buffer) + len(chunk) <= self._limit:
                self._buffer += chunk
            return
        self._buffer += chunk
        while True:
            end = self._buffer.find(b"\n\n")
            if end < 0:
                break
            event = bytes(self._buffer[:end])
            del self._buffer[: end + 2]
            self._event(event)

    def _event(self, event: bytes) -> None:
        data = b"\n".join(
            line[5:].lstrip() for line in event.replace(b"\r\n", b"\n").split(b"\n") if line.startswith(b"data:")
        )
        if not data or data == b"[DONE]":
            return
        try:
            payload = json.loads(data)
        except ValueError:
            return
        if isinstance(payload, dict):
            self._read(payload)

    def _read(self, payload: dict[str, Any]) -> None:
        kind = self.kind
        if kind == "anthropic-messages":
            message = payload.get("message") if payload.get("type") == "message_start" else payload
            if isinstance(message, dict):
                self._model(message.get("model"))
                self._anthropic(message.get("usage"))
            if payload.get("type") == "message_delta":
                self._anthropic(payload.get("usage"))
        elif kind == "openai-responses":
            response = payload.get("response") if "response" in payload else payload
            if isinstance(response, dict):
                self._model(response.get("model"))
                self._openai(response.get("usage"), "input_tokens", "output_tokens")
        elif kind == "openai-chat":
            self._model(payload.get("model"))
            self._openai(payload.get("usage"), "prompt_tokens", "completion_tokens")

    def _openai(self, usage: Any, inputs: str, outputs: str) -> None:
        """Responses (``input_tokens``…) and Chat (``prompt_tokens``…) usage: the same shape, other names."""
        if not isinstance(usage, dict):
            return
        details = usage.get(f"{inputs}_details") or {}
        out_details = usage.get(f"{outputs}_details") or {}
        self._set(
            input_tokens=usage.get(inputs),
            output_tokens=usage.get(outputs),
            cache_read_tokens=details.get("cached_tokens") if isinstance(details, dict) else None,
            reasoning_tokens=out_details.get("reasoning_tokens") if isinstance(out_details, dict) else None,
        )

    def _anthropic(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        read, written = usage.get("cache_read_input_tokens"), usage.get("cache_creation_input_tokens")
        fresh = usage.get("input_tokens")
        total = None if fresh is None else int(fresh) + int(read or 0) + int(written or 0)
        self._set(
            input_tokens=total,
            output_tokens=usage.get("output_tokens"),
            cache_read_tokens=read,
            cache_write_tokens=written,
        )

    def _set(self, **counts: Any) -> None:
        for name, value in counts.items():
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                self._usage[name] = value  # later events carry the running totals

    def _model(self, model: Any) -> None:
        if isinstance(model, str) and model:
            self.answered_model = model

    def usage(self) -> Usage:
        if not self.streamed and self._buffer:
            try:
                payload = json.loads(bytes(self._buffer))
            except ValueError:
                payload = None
            if isinstance(payload, dict):
                self._read(payload)
        return Usage(**self._usage)
