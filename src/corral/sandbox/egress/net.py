"""Reaching upstream hosts for the egress proxy: resolution with the internal-address check, connect, blind tunnels."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from dataclasses import dataclass

from corral.sandbox.egress.policy import is_public_address, names_local_target

CONNECT_TIMEOUT = 10.0
TUNNEL_IDLE_TIMEOUT = 300.0
_CHUNK = 65_536


class UpstreamDenied(Exception):
    """The host resolves only to addresses a sandbox may not reach through the proxy."""


class UpstreamUnreachable(Exception):
    """The host could not be resolved or connected to."""


async def resolve(host: str, port: int, *, allow_private: bool) -> list[str]:
    """Addresses to try for ``host``, without the internal ones unless the request named one itself.

    A name that DNS maps to 127.0.0.1, 10.x or 169.254.169.254 could otherwise reach the host's own
    services or a cloud metadata endpoint. The proxy connects to the checked address, not the name,
    so a second lookup cannot swap in another one.
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
    if allow_private or names_local_target(host):
        return addresses
    public = [address for address in addresses if is_public_address(address)]
    if not public:
        raise UpstreamDenied(f"{host} resolves to a non-public address ({', '.join(addresses[:3])})")
    return public


async def open_upstream(
    host: str, port: int, *, allow_private: bool, tls: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to ``host:port`` (TLS verified against ``host`` when ``tls`` is given)."""
    addresses = await resolve(host, port, allow_private=allow_private)
    failure = "no address"
    for address in addresses[:3]:
        try:
            return await asyncio.wait_for(
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
    raise UpstreamUnreachable(failure)


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
