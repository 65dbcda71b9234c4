"""HTTP/1.1 plumbing for the egress proxy: h11 connections over asyncio streams, header hygiene, response relay."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import zlib
from dataclasses import dataclass
from http import HTTPStatus

import h11

from corral.sandbox.egress.policy import printable
from corral.sandbox.egress.secrets import Headers, Scrubber

CHUNK = 65_536
MAX_HEAD = 65_536
IO_TIMEOUT = 300.0  # a slow upstream (a long poll, a model streaming tokens) may go quiet for minutes
CLOSE_TIMEOUT = 2.0

# Hop-by-hop headers (RFC 9110 7.6.1) and the ones the proxy sets itself; never forwarded as received.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
        b"host",
        b"content-length",
    }
)
_DECODABLE = {b"gzip", b"x-gzip", b"deflate"}


class PeerClosed(Exception):
    """The other side went away, broke the protocol or stayed silent past the timeout."""


class Peer:
    """One h11 connection (we are ``role``) over an asyncio stream pair, counting the bytes on the wire."""

    def __init__(
        self, role: type[h11.CLIENT] | type[h11.SERVER], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.conn = h11.Connection(role, max_incomplete_event_size=MAX_HEAD)
        self.reader = reader
        self.writer = writer
        self.bytes_in = 0
        self.bytes_out = 0

    async def next_event(self, idle: float = IO_TIMEOUT) -> h11.Event | type[h11.PAUSED]:
        """The next h11 event; ConnectionClosed at a clean end, PeerClosed on anything else."""
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise PeerClosed(f"protocol error: {exc}") from None
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]  # h11's sentinels are classes
            try:
                data = await asyncio.wait_for(self.reader.read(CHUNK), idle)
            except TimeoutError:
                raise PeerClosed(f"no data for {idle:.0f} s") from None
            except (OSError, ssl.SSLError) as exc:
                raise PeerClosed(f"read failed: {type(exc).__name__}") from None
            self.bytes_in += len(data)
            try:
                self.conn.receive_data(data)
            except h11.RemoteProtocolError as exc:
                raise PeerClosed(f"protocol error: {exc}") from None

    async def send(self, event: h11.Event) -> None:
        try:
            data = self.conn.send(event)
        except h11.LocalProtocolError as exc:
            raise PeerClosed(f"cannot send {type(event).__name__}: {exc}") from None
        if data:
            await self.write(data)

    async def write(self, data: bytes) -> None:
        self.bytes_out += len(data)
        try:
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), IO_TIMEOUT)
        except TimeoutError:
            raise PeerClosed(f"write stalled for {IO_TIMEOUT:.0f} s") from None
        except (OSError, ssl.SSLError, RuntimeError) as exc:  # RuntimeError: writing to a closed transport
            raise PeerClosed(f"write failed: {type(exc).__name__}") from None

    def reusable(self) -> bool:
        """Whether both sides finished the exchange cleanly and the connection can carry another one."""
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE

    async def close(self) -> None:
        await close_writer(self.writer)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)


def header(headers: Headers, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower-case)."""
    return next((value for key, value in headers if key == name), None)


def clean_headers(headers: Headers) -> Headers:
    """``headers`` without hop-by-hop headers, including any the Connection header names."""
    named = {
        token.strip().lower()
        for key, value in headers
        if key == b"connection"
        for token in value.split(b",")
        if token.strip()
    }
    return [(key, value) for key, value in headers if key not in _HOP_BY_HOP and key not in named]


def host_header(host: str, port: int, *, tls: bool) -> bytes:
    shown = f"[{host}]" if ":" in host else host
    default = 443 if tls else 80
    return (shown if port == default else f"{shown}:{port}").encode("ascii")


async def proxy_response(
    peer: Peer,
    status: int,
    text: str,
    *,
    close: bool = True,
    extra: Headers | None = None,
    status_text: str | None = None,
) -> None:
    """Answer the client with a short plain-text response of the proxy's own.

    ``status_text`` replaces the standard reason phrase: clients that show a failed CONNECT only by
    its status line (curl, pip) then show why, not a bare ``403 Forbidden``.
    """
    body = text.encode("utf-8")
    reason = printable(status_text, limit=400) if status_text else HTTPStatus(status).phrase
    headers: Headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode("ascii")),
        *(extra or []),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await peer.send(h11.Response(status_code=status, headers=headers, reason=reason.encode("ascii")))
    await peer.send(h11.Data(data=body))
    await peer.send(h11.EndOfMessage())


class BodyTooLarge(Exception):
    pass


async def read_body(peer: Peer, limit: int) -> bytes:
    """The whole body of the message ``peer`` is sending (h11 has already removed chunked framing)."""
    parts: list[bytes] = []
    size = 0
    while True:
        event = await peer.next_event()
        if isinstance(event, h11.Data):
            size += len(event.data)
            if size > limit:
                raise BodyTooLarge
            parts.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return b"".join(parts)
        else:
            raise PeerClosed(f"connection ended inside a request body ({type(event).__name__})")


class UninspectableResponse(Exception):
    """A response the proxy must not pass on because it cannot look inside it for secret values."""


class ProxyRejected(Exception):
    """The upstream proxy answered a request with 407: its refusal to carry it, not the host's response."""


@dataclass
class ResponseFilter:
    """Undo a content coding the proxy can decode, then scrub real secret values from the body."""

    scrubber: Scrubber | None
    decoder: zlib._Decompress | None = None

    def feed(self, data: bytes) -> bytes:
        if self.decoder is not None:
            try:
                data = self.decoder.decompress(data)
            except zlib.error as exc:
                raise UninspectableResponse(f"cannot decode the response body: {exc}") from None
        return self.scrubber.feed(data) if self.scrubber is not None else data

    def flush(self) -> bytes:
        data = self.decoder.flush() if self.decoder is not None else b""
        if self.scrubber is not None:
            data = self.scrubber.feed(data) + self.scrubber.flush()
        return data


def response_filter(
    headers: Headers, scrubber: Scrubber | None, *, must_inspect: bool
) -> tuple[ResponseFilter | None, Headers]:
    """How to pass a response body on, and the headers to send with it.

    ``must_inspect`` (the request went to a host a secret is scoped to) decodes gzip/deflate so the
    body can be scrubbed, and refuses codings the standard library cannot decode. Otherwise a coded
    body passes unchanged and only an uncoded one is scrubbed.
    """
    codings = [token.strip().lower() for token in (header(headers, b"content-encoding") or b"").split(b",")]
    codings = [token for token in codings if token and token != b"identity"]
    if scrubber is None:
        return None, headers
    if not codings:
        return ResponseFilter(scrubber), [(k, v) for k, v in headers if k != b"content-length"]
    if not must_inspect:
        return None, headers
    if len(codings) != 1 or codings[0] not in _DECODABLE:
        names = b", ".join(codings).decode("ascii", "replace")
        raise UninspectableResponse(f"the response is encoded as {names!r}, which the proxy cannot inspect")
    decoder = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32 if codings[0] != b"deflate" else zlib.MAX_WBITS)
    kept = [(k, v) for k, v in headers if k not in (b"content-length", b"content-encoding")]
    return ResponseFilter(scrubber, decoder), kept


async def relay_response(
    upstream: Peer, client: Peer, *, scrubber: Scrubber | None, must_inspect: bool, via_proxy: str | None = None
) -> int:
    """Pass the upstream's response to the client (1xx responses are dropped); returns the status code.

    Raises UninspectableResponse (before the head reaches the client when the coding is the problem, so
    the caller can still answer 502), ProxyRejected for a 407 when ``upstream`` is the upstream proxy
    ``via_proxy`` (the sandbox's client has no business answering it), and PeerClosed if either side fails.
    """
    while True:
        event = await upstream.next_event()
        if isinstance(event, h11.InformationalResponse):
            continue
        if not isinstance(event, h11.Response):
            raise PeerClosed(f"upstream sent {type(event).__name__} instead of a response")
        break
    status = event.status_code
    if via_proxy is not None and status == 407:
        said = printable(f"{status} {event.reason.decode('ascii', 'replace')}")
        raise ProxyRejected(
            f"upstream proxy {via_proxy} rejected the request ({said}); upstream_proxy needs valid credentials"
        )
    headers = clean_headers(list(event.headers))
    if scrubber is not None:
        headers = [(name, scrubber.whole(value)) for name, value in headers]
    body_filter, headers = response_filter(headers, scrubber, must_inspect=must_inspect)
    await client.send(h11.Response(status_code=event.status_code, headers=headers, reason=event.reason))
    while True:
        event = await upstream.next_event()
        if isinstance(event, h11.Data):
            data = body_filter.feed(bytes(event.data)) if body_filter else bytes(event.data)
            if data:
                await client.send(h11.Data(data=data))
        elif isinstance(event, h11.EndOfMessage):
            tail = body_filter.flush() if body_filter else b""
            if tail:
                await client.send(h11.Data(data=tail))
            await client.send(h11.EndOfMessage())
            return status
        else:
            raise PeerClosed(f"upstream ended the response early ({type(event).__name__})")
