"""Reaching upstream hosts for the egress proxy: directly (with the private-address rule) or through an
upstream proxy, and blind tunnels."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from corral.sandbox.egress.policy import (
    PrivateAddresses,
    UpstreamProxy,
    address_kind,
    names_local_target,
    printable,
)

CONNECT_TIMEOUT = 10.0
TUNNEL_IDLE_TIMEOUT = 300.0
_CHUNK = 65_536


class UpstreamDenied(Exception):
    """The host resolves only to addresses a sandbox may not reach through the proxy."""


class UpstreamUnreachable(Exception):
    """The host could not be resolved or connected to, or the upstream proxy would not take us there."""


async def resolve(host: str, port: int, *, private: PrivateAddresses) -> list[str]:
    """Addresses to try for ``host``, without the internal ones unless the request named one itself.

    A name that DNS maps to 127.0.0.1, 10.x or 169.254.169.254 could otherwise reach the host's own
    services or a cloud metadata endpoint. ``private`` lets some names resolve to private addresses
    (a corporate mirror); loopback, link-local, multicast and unspecified ones stay refused for any
    name. The proxy connects to the checked address, not the name, so a second lookup cannot swap
    in another one.
    """
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP), CONNECT_TIMEOUT
        )
    except TimeoutError:
        raise UpstreamUnreachable(f"resolving {host} timed out") from None
    except OSError as exc:
        raise UpstreamUnreachable(f"cannot resolve {host}: {exc.strerror or exc}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if names_local_target(host):
        return addresses
    allowed_kinds = ("public", "private") if private.covers(host) else ("public",)
    usable = [address for address in addresses if address_kind(address) in allowed_kinds]
    if usable:
        return usable
    shown = ", ".join(addresses[:3])
    if all(address_kind(address) == "local" for address in addresses):
        raise UpstreamDenied(
            f"{host} resolves to a non-public address ({shown}): loopback, link-local, multicast and "
            "unspecified addresses are never reached through a name"
        )
    raise UpstreamDenied(
        f"{host} resolves to a non-public address ({shown}); to allow that (a mirror on a private network), "
        "set allow_private = true or list the host in allow_private"
    )


@dataclass
class Opened:
    """A connection towards an upstream host, and how it was reached (for the request and the journal)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    private_address: str | None = None
    """The private address a name resolved to, reached because allow_private covers the name."""
    via: str | None = None
    """``host:port`` of the upstream proxy the connection goes through."""
    absolute_form: bool = False
    """Plain HTTP through the upstream proxy: requests name the whole URL and carry ``proxy_headers``."""
    proxy_headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    @property
    def streams(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return self.reader, self.writer

    @property
    def note(self) -> str:
        """How the host was reached, for the event's reason; empty for a direct connection to a public address."""
        if self.via is not None:
            return f"via upstream proxy {self.via}"
        if self.private_address is not None:
            return f"private address {self.private_address} allowed by allow_private"
        return ""


@dataclass(frozen=True)
class Dialer:
    """How one proxy reaches upstream hosts: directly, or through ``upstream`` (unless its NO_PROXY skips a host)."""

    private: PrivateAddresses = field(default_factory=PrivateAddresses)
    upstream: UpstreamProxy | None = None
    routes: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    """Names that stand for a service of corral's on this machine (``corral-gateway``): plain HTTP to
    ``name:80`` goes to the address given, never resolved and never through the upstream proxy."""

    def route(self, host: str, port: int, *, tls: bool) -> tuple[str, int] | None:
        """Where a request to ``host:port`` goes when the name is routed (plain HTTP on port 80 only)."""
        return self.routes.get(host) if port == 80 and not tls else None

    def via(self, host: str) -> UpstreamProxy | None:
        """The upstream proxy ``host`` is reached through, or None for a direct connection."""
        if self.upstream is None or self.upstream.bypasses(host):
            return None
        return self.upstream

    async def open(self, host: str, port: int, *, tls: ssl.SSLContext | None, tunnel: bool = True) -> Opened:
        """A connection to ``host:port`` (TLS verified against ``host`` when ``tls`` is given).

        ``tunnel=False`` (plain HTTP only) may return a connection to the upstream proxy itself, to
        which requests are sent in absolute form: proxies commonly refuse CONNECT to port 80.
        """
        routed = self.route(host, port, tls=tls is not None)
        if routed is not None:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(*routed), CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                raise UpstreamUnreachable(
                    f"corral's {host} on {routed[0]}:{routed[1]} is not answering: {exc}"
                ) from None
            return Opened(reader, writer)
        upstream = self.via(host)
        if upstream is not None:
            return await _through(upstream, host, port, tls=tls, tunnel=tunnel or tls is not None)
        addresses = await resolve(host, port, private=self.private)
        failure = "no address"
        for address in addresses[:3]:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        address,
                        port,
                        ssl=tls,
                        server_hostname=host if tls is not None else None,
                        ssl_handshake_timeout=CONNECT_TIMEOUT if tls is not None else None,
                    ),
                    CONNECT_TIMEOUT,
                )
            except TimeoutError:
                failure = f"connecting to {address} timed out"
            except ssl.SSLCertVerificationError as exc:
                raise UpstreamUnreachable(f"TLS verification of {host} failed: {exc.verify_message}") from None
            except (OSError, ssl.SSLError) as exc:
                failure = f"cannot connect to {address}: {getattr(exc, 'strerror', None) or exc}"
            else:
                private = not names_local_target(host) and address_kind(address) != "public"
                return Opened(reader, writer, private_address=address if private else None)
        raise UpstreamUnreachable(failure)


async def _through(
    upstream: UpstreamProxy, host: str, port: int, *, tls: ssl.SSLContext | None, tunnel: bool
) -> Opened:
    """A connection to ``host:port`` through ``upstream``: CONNECT for a tunnel (then TLS), else the proxy itself."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(upstream.host, upstream.port), CONNECT_TIMEOUT)
    except TimeoutError:
        raise UpstreamUnreachable(f"upstream proxy {upstream.shown}: connecting timed out") from None
    except OSError as exc:
        raise UpstreamUnreachable(f"upstream proxy {upstream.shown} cannot be reached: {exc.strerror or exc}") from None
    authorization = upstream.authorization()
    if not tunnel:
        headers = [(b"proxy-authorization", authorization)] if authorization else []
        return Opened(reader, writer, via=upstream.shown, absolute_form=True, proxy_headers=headers)
    try:
        await _connect_through(reader, writer, upstream, host, port, authorization)
        if tls is not None:
            await writer.start_tls(tls, server_hostname=host, ssl_handshake_timeout=CONNECT_TIMEOUT)
    except BaseException as exc:
        writer.transport.abort()
        if isinstance(exc, ssl.SSLCertVerificationError):
            raise UpstreamUnreachable(f"TLS verification of {host} failed: {exc.verify_message}") from None
        if isinstance(exc, (OSError, ssl.SSLError, TimeoutError)):
            raise UpstreamUnreachable(f"TLS with {host} via {upstream.shown} failed: {type(exc).__name__}") from None
        raise
    return Opened(reader, writer, via=upstream.shown)


async def _connect_through(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    upstream: UpstreamProxy,
    host: str,
    port: int,
    authorization: bytes | None,
) -> None:
    """Ask ``upstream`` for a tunnel to ``host:port``; UpstreamUnreachable with its answer unless it says 2xx."""
    authority = (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode("ascii")
    head = b"CONNECT " + authority + b" HTTP/1.1\r\nHost: " + authority + b"\r\n"
    if authorization:
        head += b"Proxy-Authorization: " + authorization + b"\r\n"
    writer.write(head + b"\r\n")
    try:
        await asyncio.wait_for(writer.drain(), CONNECT_TIMEOUT)
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CONNECT_TIMEOUT)
    except TimeoutError:
        raise UpstreamUnreachable(f"upstream proxy {upstream.shown} did not answer CONNECT {host}:{port}") from None
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
        raise UpstreamUnreachable(f"upstream proxy {upstream.shown} closed the connection on CONNECT") from None
    status_line = answer.split(b"\r\n", 1)[0]
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        shown = printable(status_line)
        raise UpstreamUnreachable(f"upstream proxy {upstream.shown} answered CONNECT with {shown!r}, not HTTP")
    status = int(parts[1])
    if 200 <= status < 300:
        return
    said = f"{status} {printable(parts[2] if len(parts) > 2 else b'')}".strip()
    if status == 407:
        why = "rejected the credentials in its URL" if authorization else "requires credentials (none configured)"
        raise UpstreamUnreachable(f"upstream proxy {upstream.shown} {why} ({said})")
    raise UpstreamUnreachable(f"upstream proxy {upstream.shown} refused CONNECT {host}:{port} ({said})")


@dataclass
class TunnelStats:
    sent: int = 0
    received: int = 0
    last_activity: float = 0.0


async def tunnel(
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    stats: TunnelStats,
    *,
    idle_timeout: float = TUNNEL_IDLE_TIMEOUT,
) -> None:
    """Copy bytes both ways until both sides are done, or neither has sent anything for ``idle_timeout``.

    ``stats`` is updated as bytes pass, so a caller that is cancelled still knows what went through.
    """
    stats.last_activity = time.monotonic()

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, outbound: bool) -> None:
        try:
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(_CHUNK), idle_timeout)
                except TimeoutError:
                    if time.monotonic() - stats.last_activity < idle_timeout:
                        continue  # the other direction is busy: a long download with nothing to upload
                    raise
                if not data:
                    break
                stats.last_activity = time.monotonic()
                if outbound:
                    stats.sent += len(data)
                else:
                    stats.received += len(data)
                writer.write(data)
                await asyncio.wait_for(writer.drain(), idle_timeout)
            if writer.can_write_eof():
                writer.write_eof()
        except (TimeoutError, OSError, RuntimeError):
            # One side failed or went quiet: end the whole tunnel, which also wakes the other pump.
            for _, side in (client, upstream):
                side.transport.abort()

    async with asyncio.TaskGroup() as group:
        group.create_task(pump(client[0], upstream[1], True))
        group.create_task(pump(upstream[0], client[1], False))
    for _, side in (client, upstream):
        with contextlib.suppress(Exception):
            side.close()
