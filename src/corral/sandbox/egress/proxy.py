"""The host-side egress proxy of one sandbox: a domain allowlist, a journal of every attempt, secrets on the wire."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import socket
import ssl
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import h11

from corral.errors import SandboxError
from corral.events import EgressAttempted
from corral.sandbox.base import ScopedSecret
from corral.sandbox.egress.ca import CA_CERT_NAME, SandboxCA
from corral.sandbox.egress.exchange import Forwarder, UpstreamSlot
from corral.sandbox.egress.http import Peer, PeerClosed, close_writer, proxy_response
from corral.sandbox.egress.net import CONNECT_TIMEOUT, Dialer, TunnelStats, UpstreamDenied, UpstreamUnreachable, tunnel
from corral.sandbox.egress.policy import (
    UPSTREAM_FROM_ENV,
    PrivateAddresses,
    UpstreamProxy,
    first_match,
    split_authority,
    upstream_from_environ,
)
from corral.sandbox.egress.presets import expand
from corral.sandbox.egress.secrets import SecretGuard
from corral.sandbox.types import SANDBOX_PYTHON

logger = logging.getLogger("corral.sandbox.egress.proxy")

SOCKET_NAME = "egress.sock"
RELAY_SOURCE = Path(__file__).with_name("relay.py")
MAX_BODY = 64 * 1024 * 1024
"""Request bodies are held in memory to be inspected for placeholders; larger ones get 413."""
IDLE_TIMEOUT = 120.0  # a kept-alive client connection with no new request
MAX_CONNECTIONS = 256
_STOP_TIMEOUT = 5.0


@functools.lru_cache(maxsize=8)
def upstream_tls_context(extra_ca_file: Path | None = None) -> ssl.SSLContext:
    """The client context for re-encrypting to upstreams: the system trust store plus ``extra_ca_file``.

    Loading the trust store takes ~35 ms, longer than starting a sandbox, so one context per process
    is made on first use and shared by every proxy (a client context holds no per-connection state).
    """
    context = ssl.create_default_context()
    if extra_ca_file is not None:
        context.load_verify_locations(cafile=extra_ca_file)
    context.set_alpn_protocols(["http/1.1"])
    return context


def relay_argv(sandbox_socket: str, listen_port: int, *, python: str = SANDBOX_PYTHON) -> list[str]:
    """The command that runs the relay inside a sandbox; append ``["--", *argv]`` for the real command.

    The relay's source travels in the command line (``python3 -c``), so nothing needs mounting
    beyond the proxy's socket. ``-I -S``: no user site, no ``site`` import, no PYTHON* variables.
    """
    source = RELAY_SOURCE.read_text(encoding="utf-8")
    return [python, "-I", "-S", "-c", source, "--socket", sandbox_socket, "--port", str(listen_port)]


CA_ENV = (
    "SSL_CERT_FILE",  # OpenSSL, Python's ssl, pip >= 24 (truststore off), uv
    "CURL_CA_BUNDLE",
    "REQUESTS_CA_BUNDLE",  # requests, older pip
    "PIP_CERT",  # pip's own --cert
    "NODE_EXTRA_CA_CERTS",
    "npm_config_cafile",  # npm: wins over a `cafile=` in any npmrc (a global one may be visible)
    "GIT_SSL_CAINFO",
    "CARGO_HTTP_CAINFO",
)
"""Variables that point common clients at the sandbox's CA when the proxy intercepts TLS."""

NO_RETRY_ENV = {"PIP_RETRIES": "1", "npm_config_fetch_retries": "0"}
"""Set in a sandbox without network, where no request can succeed: npm would otherwise retry with
back-off for over a minute. pip gets one retry, not none: it prints why a connection failed only
when it retries, and its first retry is immediate (about 0.1 s)."""


class EgressProxy:
    """One per sandbox, on the host. Listens on ``socket_path``; the sandbox reaches it through the relay.

    ``allow`` holds ``host``, ``host:port``, ``*.domain`` or ``@preset`` entries. With ``secrets`` (or
    ``intercept=True``) every CONNECT is intercepted: TLS is terminated with a certificate from a CA
    made for this sandbox (``ca_cert_path``, which the sandbox must trust) so requests can be checked
    and rewritten, then re-encrypted to the upstream, verified against the system trust store plus
    ``upstream_ca_file``. Without, CONNECT is tunnelled blindly. Names that resolve to private
    addresses are refused unless ``allow_private_addresses`` covers them (True: every name; else the
    names matching its entries); names resolving to loopback, link-local, multicast or unspecified
    addresses always are. An allowlisted IP literal or ``localhost`` is reached as listed.

    ``upstream_proxy`` (``http://[user:pass@]host:port``, or ``"env"`` for the one in ``environ``,
    default ``os.environ``, with its NO_PROXY) carries every connection to an upstream host; that
    proxy resolves names, so the private-address rule cannot apply. ``deny_all`` is a sandbox whose
    network is ``none``: every request is refused at once, with a reason saying so.

    ``routes`` names corral's own services on this machine (``{"corral-gateway": ("127.0.0.1", port)}``):
    plain HTTP to such a name on port 80 is forwarded to its address, journaled like any request,
    whatever the allowlist (a deny-all proxy too). It is how an engine in a sandbox reaches the model
    gateway and nothing else.
    """

    def __init__(
        self,
        *,
        allow: tuple[str, ...],
        secrets: tuple[ScopedSecret, ...],
        on_event: Callable[[EgressAttempted], None] | None,
        state_dir: Path,
        upstream_ca_file: Path | None = None,
        intercept: bool | None = None,
        allow_private_addresses: bool | tuple[str, ...] = False,
        upstream_proxy: str | None = None,
        deny_all: bool = False,
        environ: Mapping[str, str] | None = None,
        max_body: int = MAX_BODY,
        routes: Mapping[str, tuple[str, int]] | None = None,
    ) -> None:
        self._allow = expand(allow)
        if deny_all and self._allow:
            raise SandboxError("a deny-all egress proxy (network 'none') allows no host")
        self._guard = SecretGuard(secrets)
        # Secrets need interception to stay on the host, except where no request ever leaves.
        self._intercept = bool(secrets) and not deny_all if intercept is None else intercept
        if secrets and not self._intercept and not deny_all:
            raise SandboxError("an egress proxy with secrets must intercept TLS to keep them on the host")
        if isinstance(allow_private_addresses, bool):
            private = PrivateAddresses(everywhere=allow_private_addresses)
        else:
            private = PrivateAddresses(hosts=expand(allow_private_addresses))
        if upstream_proxy == UPSTREAM_FROM_ENV:
            upstream = upstream_from_environ(os.environ if environ is None else environ)
        else:
            upstream = UpstreamProxy.parse(upstream_proxy) if upstream_proxy is not None else None
        self.deny_all = deny_all
        self.upstream = upstream
        """The upstream proxy every host is reached through (None: directly)."""
        self._dialer = Dialer(private=private, upstream=upstream, routes=dict(routes or {}))
        self._upstream_ca_file = upstream_ca_file
        self._forwarder = Forwarder(
            allow=self._allow,
            guard=self._guard,
            max_body=max_body,
            dialer=self._dialer,
            upstream_tls=self._upstream_tls,
            on_event=on_event,
            deny_all=deny_all,
        )
        self.state_dir = state_dir
        self.socket_path = state_dir / SOCKET_NAME
        self.ca_cert_path: Path | None = state_dir / CA_CERT_NAME if self._intercept else None
        self._ca: SandboxCA | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._clients: set[asyncio.StreamWriter] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the CA (when intercepting) and listen on ``socket_path``."""
        if self._server is not None:
            raise SandboxError("egress proxy already started")
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._intercept:
            self._ca = SandboxCA.load_or_create(self.state_dir)
        sock = bind_unix(self.socket_path)
        try:
            self._server = await asyncio.start_unix_server(self._on_client, sock=sock)
        except BaseException:
            sock.close()
            raise

    async def stop(self) -> None:
        """Close the listener and every connection, and remove the socket and CA files; safe twice."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        # Aborting the client side ends most connections by itself; one step of the loop lets handlers
        # that were accepted but not yet running start, so that none is cancelled before it began.
        for writer in list(self._clients):
            writer.transport.abort()
        await asyncio.sleep(0)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=_STOP_TIMEOUT)
        if server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), _STOP_TIMEOUT)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        if self._ca is not None:
            self._ca.remove_files()
            self._ca = None

    async def __aenter__(self) -> EgressProxy:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def report_to(self, on_event: Callable[[EgressAttempted], None] | None) -> None:
        """Send egress events of connections accepted from now on to ``on_event`` (a pooled sandbox's proxy,
        made before its run was known, learns that run's journal when it is handed out)."""
        self._forwarder = dataclasses.replace(self._forwarder, on_event=on_event)

    def relay_argv(self, sandbox_socket: str, listen_port: int) -> list[str]:
        """See the module-level ``relay_argv``; ``sandbox_socket`` is where ``socket_path`` is mounted."""
        return relay_argv(sandbox_socket, listen_port)

    def _upstream_tls(self) -> ssl.SSLContext:
        return upstream_tls_context(self._upstream_ca_file)

    def sandbox_env(self, listen_port: int, *, ca_cert_in_sandbox: str | None = None) -> dict[str, str]:
        """Variables that point common clients at the relay and, when intercepting, at the CA."""
        proxy = f"http://127.0.0.1:{listen_port}"
        local = "localhost,127.0.0.1,::1"
        env = {"HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "http_proxy": proxy, "https_proxy": proxy}
        env |= {"NO_PROXY": local, "no_proxy": local}
        if self.deny_all:
            env |= NO_RETRY_ENV
        if self._intercept:
            if ca_cert_in_sandbox is None:
                raise SandboxError("this egress proxy intercepts TLS: pass where its CA is mounted")
            env |= dict.fromkeys(CA_ENV, ca_cert_in_sandbox)
        return env

    # -- one client connection ---------------------------------------------------------------

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._clients.add(writer)
        client = Peer(h11.SERVER, reader, writer)
        try:
            if len(self._tasks) > MAX_CONNECTIONS:
                await proxy_response(client, 503, "corral egress: too many connections from this sandbox\n")
                return
            await self._serve(client)
        except PeerClosed as exc:
            logger.debug("egress connection ended: %s", self._guard.redact(str(exc)))
        except asyncio.CancelledError:
            # Only stop() cancels these tasks, and it waits for them. Ending normally keeps Python
            # 3.11's client_connected_cb callback from logging the cancellation as an error.
            pass
        except Exception as exc:
            logger.warning("egress connection failed: %s", self._guard.redact(repr(exc)))
        finally:
            self._tasks.discard(task)
            self._clients.discard(writer)
            await close_writer(writer)

    async def _serve(self, client: Peer) -> None:
        slot = UpstreamSlot()
        try:
            while True:
                event = await client.next_event(IDLE_TIMEOUT)
                if not isinstance(event, h11.Request):
                    return
                if event.method == b"CONNECT":
                    await self._connect(client, event)
                    return
                if not await self._plain(client, event, slot) or not client.reusable():
                    return
                client.conn.start_next_cycle()
        finally:
            await slot.close()

    async def _plain(self, client: Peer, request: h11.Request, slot: UpstreamSlot) -> bool:
        """A plain-HTTP proxy request (``GET http://host/path``)."""
        target = request.target.decode("ascii", "replace")
        parts = urlsplit(target)
        try:
            if parts.scheme.lower() != "http" or "@" in parts.netloc:
                raise ValueError(target)
            host, port = split_authority(parts.netloc, default_port=80)
        except (ValueError, SandboxError):
            hint = "use CONNECT for https" if parts.scheme.lower() == "https" else "send http://host/path or CONNECT"
            method = request.method.decode("ascii", "replace")
            self._forwarder.emit("", 0, False, f"malformed proxy request ({hint})", method=method, path=target)
            await proxy_response(client, 400, f"corral egress: not a proxy request: {hint}\n")
            return False
        origin = _origin_form(parts.path, parts.query)
        return await self._forwarder.exchange(
            client, request, host, port, tls=False, target=origin.encode("ascii"), slot=slot
        )

    async def _connect(self, client: Peer, request: h11.Request) -> None:
        """A CONNECT: refuse it, tunnel it blindly, or intercept it."""
        authority = request.target.decode("ascii", "replace")
        try:
            host, port = split_authority(authority)
        except (ValueError, SandboxError):
            self._forwarder.emit("", 0, False, "malformed CONNECT target", method="CONNECT", path=authority)
            await proxy_response(client, 400, "corral egress: CONNECT needs host:port\n")
            return
        if not isinstance(await client.next_event(), h11.EndOfMessage):  # a CONNECT carries no body
            self._forwarder.emit(host, port, False, "CONNECT with a body", method="CONNECT")
            await proxy_response(client, 400, "corral egress: CONNECT takes no body\n")
            return
        rule = first_match(self._allow, host, port)
        blocked = self._guard.check_head(host, port, request.target, list(request.headers))
        if rule is None or blocked is not None:
            await self._forwarder.refuse(client, host, port, "CONNECT", None, blocked)
            return
        try:
            opened = await self._dialer.open(host, port, tls=self._upstream_tls() if self._intercept else None)
        except (UpstreamDenied, UpstreamUnreachable) as exc:
            await self._forwarder.upstream_failed(client, host, port, "CONNECT", None, exc)
            return
        established = h11.Response(status_code=200, headers=[], reason=b"Connection established")
        if not self._intercept:
            await client.send(established)
            leftover, _ = client.conn.trailing_data
            stats = TunnelStats(sent=len(leftover))
            try:
                if leftover:
                    opened.writer.write(leftover)
                await tunnel((client.reader, client.writer), opened.streams, stats)
            finally:  # journaled however the tunnel ended, a cancellation by stop() included
                how = f"{opened.note}; " if opened.note else ""
                reason = f"allowed by {rule.label}; {how}tunnelled without interception"
                self._forwarder.emit(
                    host, port, True, reason, method="CONNECT", sent=stats.sent, received=stats.received
                )
            return
        slot = UpstreamSlot()
        slot.hold((host, port, True), opened)
        try:
            await self._intercept_tls(client, host, port, established, slot)
        finally:
            await slot.close()

    async def _intercept_tls(
        self, client: Peer, host: str, port: int, established: h11.Response, slot: UpstreamSlot
    ) -> None:
        """Answer the CONNECT, terminate the client's TLS with a leaf for ``host``, serve the requests inside."""
        assert self._ca is not None
        context = self._ca.server_context(host)
        try:
            if client.conn.trailing_data[0]:
                raise ssl.SSLError("the client sent data before the CONNECT was answered")
            # Nothing may yield between writing the 200 and start_tls pausing the reader: the loop would
            # read the ClientHello into the StreamReader's buffer, where the TLS layer never sees it.
            client.writer.write(client.conn.send(established) or b"")
            await client.writer.start_tls(context, ssl_handshake_timeout=CONNECT_TIMEOUT)
        except (OSError, ssl.SSLError, TimeoutError, h11.LocalProtocolError) as exc:
            reason = f"TLS with the sandbox client failed ({type(exc).__name__}); does it trust {self.ca_cert_path}?"
            self._forwarder.emit(host, port, False, reason, method="CONNECT")
            return
        inner = Peer(h11.SERVER, client.reader, client.writer)
        asked = False
        try:
            while True:
                event = await inner.next_event(IDLE_TIMEOUT)
                if not isinstance(event, h11.Request):
                    return
                asked = True
                if not await self._serve_inner(inner, event, host, port, slot):
                    return
        finally:
            if not asked:  # the upstream was reached (TLS to it is up) but nothing was asked of it
                self._forwarder.emit(host, port, True, "intercepted; the client sent no request", method="CONNECT")

    async def _serve_inner(self, inner: Peer, event: h11.Request, host: str, port: int, slot: UpstreamSlot) -> bool:
        """One request inside an intercepted tunnel; whether another may follow on it."""
        target = event.target
        if not target.startswith(b"/"):  # absolute form inside a tunnel: it must name the tunnel's host
            parts = urlsplit(target.decode("ascii", "replace"))
            try:
                same = split_authority(parts.netloc, default_port=443) == (host, port)
            except (ValueError, SandboxError):
                same = False
            if event.method == b"CONNECT" or not same:
                method = event.method.decode("ascii", "replace")
                reason = "request inside the tunnel names another host"
                self._forwarder.emit(host, port, False, reason, method=method, path=target.decode("ascii", "replace"))
                await proxy_response(inner, 400, "corral egress: a request inside a tunnel must be for its host\n")
                return False
            target = _origin_form(parts.path, parts.query).encode("ascii")
        if not await self._forwarder.exchange(inner, event, host, port, tls=True, target=target, slot=slot):
            return False
        if not inner.reusable():
            return False
        inner.conn.start_next_cycle()
        return True


def _origin_form(path: str, query: str) -> str:
    return (path or "/") + (f"?{query}" if query else "")


def bind_unix(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0600; paths past the 108-byte limit go via /proc/self/fd."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise SandboxError(f"{path} exists and is not a socket; refusing to replace it")
        path.unlink()  # left by a proxy that did not stop (a host crash)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if len(os.fsencode(path)) < 100:
            sock.bind(os.fspath(path))
        else:
            dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                sock.bind(f"/proc/self/fd/{dir_fd}/{path.name}")
            finally:
                os.close(dir_fd)
        os.chmod(path, 0o600)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def egress_available() -> tuple[bool, str]:
    """Whether allowlist networking can work here (for ``corral doctor``): the relay needs /usr/bin/python3."""
    if not Path(SANDBOX_PYTHON).exists():
        return False, f"{SANDBOX_PYTHON} is missing (the in-sandbox relay runs on it): apt-get install python3"
    return True, f"in-process proxy (h11 + ssl + cryptography); relay on {SANDBOX_PYTHON}"
