"""One proxied HTTP request: allowlist and secret checks, rewrite, forward, relay the response, journal it."""

from __future__ import annotations

import logging
import ssl
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import h11

from corral.events import EgressAttempted
from corral.sandbox.egress.http import (
    BodyTooLarge,
    Peer,
    PeerClosed,
    UninspectableResponse,
    clean_headers,
    header,
    host_header,
    proxy_response,
    read_body,
    relay_response,
)
from corral.sandbox.egress.net import UpstreamDenied, UpstreamUnreachable, open_upstream
from corral.sandbox.egress.policy import HostPattern, first_match
from corral.sandbox.egress.secrets import Blocked, RewrittenRequest, SecretGuard, is_text_body

logger = logging.getLogger("corral.sandbox.egress.proxy")

_MAX_PATH_SHOWN = 2048
# Requests that may be sent again when a kept-alive upstream turns out to be closed (Go's net/http rule).
_REPLAYABLE = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})


class UpstreamSlot:
    """The one upstream connection a client connection keeps alive between requests."""

    def __init__(self) -> None:
        self.peer: Peer | None = None
        self.key: tuple[str, int, bool] | None = None

    def take(self, key: tuple[str, int, bool]) -> Peer | None:
        if self.peer is not None and self.key == key and not self.peer.reader.at_eof():
            return self.peer
        return None

    async def close(self) -> None:
        if self.peer is not None:
            await self.peer.close()
        self.peer, self.key = None, None


@dataclass
class _Counts:
    sent: int = 0
    received: int = 0


@dataclass(frozen=True)
class Forwarder:
    """What one proxy knows about checking and forwarding requests; shared by all its connections."""

    allow: tuple[HostPattern, ...]
    guard: SecretGuard
    max_body: int
    allow_private: bool
    upstream_tls: Callable[[], ssl.SSLContext]
    on_event: Callable[[EgressAttempted], None] | None

    async def exchange(
        self, client: Peer, request: h11.Request, host: str, port: int, *, tls: bool, target: bytes, slot: UpstreamSlot
    ) -> bool:
        """Check, rewrite and forward one request and relay its response; whether the client may send another."""
        method = request.method.decode("ascii", "replace")
        path = target.decode("ascii", "replace")
        rule = first_match(self.allow, host, port)
        if rule is None:
            await self.refuse(client, host, port, method, path, None)
            return False
        if client.conn.they_are_waiting_for_100_continue:
            await client.send(h11.InformationalResponse(status_code=100, headers=[]))
        headers = list(request.headers)
        try:
            body = await read_body(client, self.max_body)
        except BodyTooLarge:
            self.emit(host, port, False, f"request body over {self.max_body} bytes", method=method, path=path)
            await proxy_response(client, 413, f"corral egress: request bodies are limited to {self.max_body} bytes\n")
            return False
        text = is_text_body(header(headers, b"content-type"), header(headers, b"content-encoding"))
        rewritten = self.guard.rewrite(host, port, tls=tls, target=target, headers=headers, body=body, text_body=text)
        if isinstance(rewritten, Blocked):
            await self.refuse(client, host, port, method, path, rewritten)
            return False
        counts = _Counts()
        outcome = "cancelled: the proxy stopped"
        try:
            for attempt in (1, 2):
                key = (host, port, tls)
                upstream = slot.take(key)
                reused = upstream is not None
                if upstream is None:
                    await slot.close()
                    try:
                        streams = await open_upstream(
                            host, port, allow_private=self.allow_private, tls=self.upstream_tls() if tls else None
                        )
                    except (UpstreamDenied, UpstreamUnreachable) as exc:
                        outcome = ""  # journaled by upstream_failed
                        await self.upstream_failed(client, host, port, method, path, exc)
                        return False
                    upstream = slot.peer = Peer(h11.CLIENT, *streams)
                    slot.key = key
                before = (upstream.bytes_out, upstream.bytes_in)
                try:
                    status = await self._forward(client, upstream, request.method, host, port, tls, rewritten)
                except PeerClosed as exc:
                    await slot.close()
                    silent = upstream.bytes_in == before[1] and client.conn.our_state is h11.SEND_RESPONSE
                    if attempt == 1 and reused and silent and request.method in _REPLAYABLE:
                        continue  # the upstream had closed the kept-alive connection: once more on a new one
                    outcome = f"exchange failed: {exc}"
                    return False
                except UninspectableResponse as exc:
                    await slot.close()
                    outcome = f"exchange failed: {exc}"
                    if client.conn.our_state is h11.SEND_RESPONSE:
                        await proxy_response(client, 502, f"corral egress: {exc}\n")
                    return False
                finally:
                    counts.sent += upstream.bytes_out - before[0]
                    counts.received += upstream.bytes_in - before[1]
                outcome = f"HTTP {status}"
                if upstream.reusable():
                    upstream.conn.start_next_cycle()
                else:
                    await slot.close()
                return True
            return False  # not reached: the second attempt returns
        finally:  # journaled however the exchange ended, a cancellation by stop() included
            if outcome:
                self.emit(host, port, True, f"allowed by {rule.text!r}; {outcome}", method=method, path=path,
                          sent=counts.sent, received=counts.received, used=rewritten.secrets_used)  # fmt: skip

    async def _forward(
        self, client: Peer, upstream: Peer, method: bytes, host: str, port: int, tls: bool, request: RewrittenRequest
    ) -> int:
        scoped = self.guard.scoped_to(host, port)
        out = [(b"host", host_header(host, port, tls=tls)), *clean_headers(request.headers)]
        if scoped:  # a coded response could hide an echoed secret from the scrubber
            out = [(k, v) for k, v in out if k != b"accept-encoding"] + [(b"accept-encoding", b"identity")]
        if request.body or method in (b"POST", b"PUT", b"PATCH"):
            out.append((b"content-length", str(len(request.body)).encode("ascii")))
        await upstream.send(h11.Request(method=method, target=request.target, headers=out))
        if request.body:
            await upstream.send(h11.Data(data=request.body))
        await upstream.send(h11.EndOfMessage())
        return await relay_response(upstream, client, scrubber=self.guard.scrubber(), must_inspect=scoped)

    async def refuse(
        self, client: Peer, host: str, port: int, method: str, path: str | None, blocked: Blocked | None
    ) -> None:
        """403 for a host off the allowlist or a request a secret forbids; journaled, never forwarded."""
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if blocked is None:
            self.emit(host, port, False, "not on this sandbox's allowlist", method=method, path=path)
            text = f"corral egress: {shown} is not on this sandbox's allowlist\n"
        else:
            self.emit(host, port, False, blocked.reason, method=method, path=path)
            text = f"corral egress: request to {shown} blocked: {blocked.reason}\n"
        await proxy_response(client, 403, text)

    async def upstream_failed(
        self, client: Peer, host: str, port: int, method: str, path: str | None, exc: Exception
    ) -> None:
        denied = isinstance(exc, UpstreamDenied)
        reason = str(exc) if denied else f"upstream unreachable: {exc}"
        self.emit(host, port, not denied, reason, method=method, path=path)
        await proxy_response(client, 403 if denied else 502, f"corral egress: {exc}\n")

    def emit(
        self,
        host: str,
        port: int,
        allowed: bool,
        reason: str,
        *,
        method: str | None = None,
        path: str | None = None,
        sent: int = 0,
        received: int = 0,
        used: Sequence[str] = (),
    ) -> None:
        """Journal one attempt; every text is redacted, so no secret value can reach the journal or the log."""
        redact = self.guard.redact
        event = EgressAttempted(
            key=f"egress:{uuid.uuid4().hex}",
            host=host,
            port=port,
            allowed=allowed,
            reason=redact(reason),
            method=method,
            path=redact(path)[:_MAX_PATH_SHOWN] if path is not None else None,
            bytes_sent=sent,
            bytes_received=received,
            secrets_used=list(used),
        )
        verdict = "allowed" if allowed else "denied"
        logger.info("egress %s %s:%s %s (%s)", verdict, host, port, method or "-", event.reason)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception as exc:
                logger.warning("egress on_event callback failed: %s", type(exc).__name__)
