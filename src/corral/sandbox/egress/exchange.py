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
    ProxyRejected,
    UninspectableResponse,
    clean_headers,
    header,
    host_header,
    proxy_response,
    read_body,
    relay_response,
)
from corral.sandbox.egress.net import Dialer, Opened, UpstreamDenied, UpstreamUnreachable
from corral.sandbox.egress.policy import HostPattern, first_match
from corral.sandbox.egress.secrets import Blocked, RewrittenRequest, SecretGuard, is_text_body

logger = logging.getLogger("corral.sandbox.egress.proxy")

_MAX_PATH_SHOWN = 2048
NETWORK_NONE = 'this sandbox\'s network is "none"'
"""The reason journaled for every attempt from a sandbox without network."""
# Requests that may be sent again when a kept-alive upstream turns out to be closed (Go's net/http rule).
_REPLAYABLE = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})


class UpstreamSlot:
    """The one upstream connection a client connection keeps alive between requests."""

    def __init__(self) -> None:
        self.peer: Peer | None = None
        self.key: tuple[str, int, bool] | None = None
        self.route: Opened | None = None
        """How ``peer`` was reached: directly, or through the upstream proxy (absolute-form requests)."""

    def hold(self, key: tuple[str, int, bool], opened: Opened) -> Peer:
        self.peer, self.key, self.route = Peer(h11.CLIENT, *opened.streams), key, opened
        return self.peer

    def take(self, key: tuple[str, int, bool]) -> Peer | None:
        if self.peer is not None and self.key == key and not self.peer.reader.at_eof():
            return self.peer
        return None

    async def close(self) -> None:
        if self.peer is not None:
            await self.peer.close()
        self.peer, self.key, self.route = None, None, None


ROUTED = HostPattern(text="corral's own service", host="", wildcard=False, ports=(80,))
"""The rule a request to a routed name (``Dialer.routes``) is allowed by, whatever the allowlist says."""


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
    dialer: Dialer
    upstream_tls: Callable[[], ssl.SSLContext]
    on_event: Callable[[EgressAttempted], None] | None
    deny_all: bool = False
    """The sandbox's network is ``none``: every request is refused with a reason saying so."""

    async def exchange(
        self, client: Peer, request: h11.Request, host: str, port: int, *, tls: bool, target: bytes, slot: UpstreamSlot
    ) -> bool:
        """Check, rewrite and forward one request and relay its response; whether the client may send another."""
        method = request.method.decode("ascii", "replace")
        path = target.decode("ascii", "replace")
        rule = ROUTED if self.dialer.route(host, port, tls=tls) else first_match(self.allow, host, port)
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
                        opened = await self.dialer.open(
                            host, port, tls=self.upstream_tls() if tls else None, tunnel=tls
                        )
                    except (UpstreamDenied, UpstreamUnreachable) as exc:
                        outcome = ""  # journaled by upstream_failed
                        await self.upstream_failed(client, host, port, method, path, exc)
                        return False
                    upstream = slot.hold(key, opened)
                route = slot.route
                assert route is not None
                before = (upstream.bytes_out, upstream.bytes_in)
                try:
                    status = await self._forward(client, upstream, route, request.method, host, port, tls, rewritten)
                except PeerClosed as exc:
                    await slot.close()
                    silent = upstream.bytes_in == before[1] and client.conn.our_state is h11.SEND_RESPONSE
                    if attempt == 1 and reused and silent and request.method in _REPLAYABLE:
                        continue  # the upstream had closed the kept-alive connection: once more on a new one
                    outcome = f"exchange failed: {exc}"
                    return False
                except (UninspectableResponse, ProxyRejected) as exc:
                    await slot.close()
                    outcome = f"exchange failed: {exc}"
                    if client.conn.our_state is h11.SEND_RESPONSE:
                        await bad_gateway(client, str(exc))
                    return False
                finally:
                    counts.sent += upstream.bytes_out - before[0]
                    counts.received += upstream.bytes_in - before[1]
                outcome = f"{route.note}; HTTP {status}" if route.note else f"HTTP {status}"
                if upstream.reusable():
                    upstream.conn.start_next_cycle()
                else:
                    await slot.close()
                return True
            return False  # not reached: the second attempt returns
        finally:  # journaled however the exchange ended, a cancellation by stop() included
            if outcome:
                self.emit(host, port, True, f"allowed by {rule.label}; {outcome}", method=method, path=path,
                          sent=counts.sent, received=counts.received, used=rewritten.secrets_used)  # fmt: skip

    async def _forward(
        self,
        client: Peer,
        upstream: Peer,
        route: Opened,
        method: bytes,
        host: str,
        port: int,
        tls: bool,
        request: RewrittenRequest,
    ) -> int:
        scoped = self.guard.scoped_to(host, port)
        authority = host_header(host, port, tls=tls)
        out = [(b"host", authority), *clean_headers(request.headers)]
        if scoped:  # a coded response could hide an echoed secret from the scrubber
            out = [(k, v) for k, v in out if k != b"accept-encoding"] + [(b"accept-encoding", b"identity")]
        if request.body or method in (b"POST", b"PUT", b"PATCH"):
            out.append((b"content-length", str(len(request.body)).encode("ascii")))
        target = request.target
        if route.absolute_form:  # plain HTTP to the upstream proxy: it needs the whole URL, and our credentials
            target = b"http://" + authority + target
            out += route.proxy_headers
        await upstream.send(h11.Request(method=method, target=target, headers=out))
        if request.body:
            await upstream.send(h11.Data(data=request.body))
        await upstream.send(h11.EndOfMessage())
        via = route.via if route.absolute_form else None
        return await relay_response(
            upstream, client, scrubber=self.guard.scrubber(), must_inspect=scoped, via_proxy=via
        )

    async def refuse(
        self, client: Peer, host: str, port: int, method: str, path: str | None, blocked: Blocked | None
    ) -> None:
        """403 for a host off the allowlist (or any host, in deny-all mode) or a request a secret forbids."""
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if blocked is not None:
            reason, detail = blocked.reason, f"request to {shown} blocked: {blocked.reason}"
        elif self.deny_all:
            reason = NETWORK_NONE
            detail = (
                f'{shown} refused: this sandbox\'s network is "none", so no host is reachable; to allow hosts, '
                f'set network = "allowlist" with allow = ["{host}"] (or a preset such as "@python")'
            )
        else:
            reason, detail = "not on this sandbox's allowlist", f"{shown} is not on this sandbox's allowlist"
        self.emit(host, port, False, reason, method=method, path=path)
        await forbidden(client, detail)

    async def upstream_failed(
        self, client: Peer, host: str, port: int, method: str, path: str | None, exc: Exception
    ) -> None:
        """403 for a host that resolves to an address the policy refuses, 502 for one that cannot be reached."""
        if isinstance(exc, UpstreamDenied):
            self.emit(host, port, False, str(exc), method=method, path=path)
            await forbidden(client, str(exc))
        else:
            self.emit(host, port, True, f"upstream unreachable: {exc}", method=method, path=path)
            await bad_gateway(client, str(exc))

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


async def forbidden(client: Peer, detail: str) -> None:
    """403 that says why in its status line too: curl and pip show only that line for a refused CONNECT."""
    await proxy_response(
        client, 403, f"corral egress: {detail}\n", status_text=f"Forbidden by corral egress policy: {detail}"
    )


async def bad_gateway(client: Peer, detail: str) -> None:
    await proxy_response(
        client, 502, f"corral egress: {detail}\n", status_text=f"Bad Gateway (corral egress): {detail}"
    )
