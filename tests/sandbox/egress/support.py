"""Shared pieces of the egress tests (no tests of its own): recording upstream servers, proxies, relays, clients."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import http.server
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydantic import SecretStr

from corral.events import EgressAttempted
from corral.sandbox.base import ScopedSecret
from corral.sandbox.egress.ca import SandboxCA
from corral.sandbox.egress.policy import address_kind
from corral.sandbox.egress.proxy import EgressProxy, relay_argv

SECRET_VALUE = "sk-live-9f8e7d6c5b4a-REAL"
PLACEHOLDER = "corral-placeholder-API_TOKEN-0b1c2d"
RELAY_TIMEOUT = 30.0


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    """Names in lower case."""
    body: bytes


@dataclass
class Upstream:
    """A real HTTP(S) server on 127.0.0.1 that records every request and echoes it back as JSON."""

    port: int
    tls: bool
    requests: list[Recorded] = field(default_factory=list)

    @property
    def raw_record(self) -> bytes:
        """Everything the server received: the only place the real secret value may appear."""
        return repr(self.requests).encode()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream: Upstream

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        record = Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        self.server.upstream.requests.append(record)  # type: ignore[attr-defined]
        echo = json.dumps({"method": record.method, "path": record.path, "headers": record.headers,
                           "body": body.decode("utf-8", "replace")}).encode()  # fmt: skip
        coding = None
        if self.path.startswith("/gzip"):
            echo, coding = gzip.compress(echo), "gzip"
        elif self.path.startswith("/brotli"):
            coding = "br"  # not really brotli: the proxy must refuse before looking
        self.send_response(200)
        self.send_header("content-type", "application/json")
        if coding:
            self.send_header("content-encoding", coding)
        self.send_header("content-length", str(len(echo)))
        self.end_headers()
        self.wfile.write(echo)
        if self.path.startswith("/silent-close"):
            self.close_connection = True  # hang up without saying so, as servers do with idle connections

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    upstream: Upstream


@contextlib.contextmanager
def serve_upstream(
    tls_context: ssl.SSLContext | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> Iterator[Upstream]:
    server = _Server((host, port), _Handler)
    if tls_context is not None:
        server.socket = tls_context.wrap_socket(server.socket, server_side=True)
    server.upstream = Upstream(port=server.server_address[1], tls=tls_context is not None)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.upstream
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class Upstreams:
    http: Upstream
    https: Upstream
    other_https: Upstream
    """An HTTPS host that is allowed but to which the secret is not scoped."""
    unlisted: Upstream
    """A live server on a port the allowlist does not name."""
    test_ca: Path


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstreams]:
    ca_dir = tmp_path_factory.mktemp("upstream-ca")
    test_ca = SandboxCA.load_or_create(ca_dir)  # the same machinery serves as the upstreams' test CA
    with (
        serve_upstream() as plain,
        serve_upstream(test_ca.server_context("localhost")) as tls,
        serve_upstream(test_ca.server_context("127.0.0.1")) as other,
        serve_upstream() as unlisted,
    ):
        yield Upstreams(plain, tls, other, unlisted, test_ca.cert_path)


@pytest.fixture
def fresh(upstreams: Upstreams) -> Upstreams:
    for upstream in (upstreams.http, upstreams.https, upstreams.other_https, upstreams.unlisted):
        upstream.requests.clear()
    return upstreams


def scoped_secret(upstreams: Upstreams) -> ScopedSecret:
    return ScopedSecret(
        name="API_TOKEN",
        value=SecretStr(SECRET_VALUE),
        hosts=(f"localhost:{upstreams.https.port}",),
        placeholder=PLACEHOLDER,
    )


def allowlist(upstreams: Upstreams) -> tuple[str, ...]:
    return (
        f"127.0.0.1:{upstreams.http.port}",
        f"localhost:{upstreams.https.port}",
        f"127.0.0.1:{upstreams.other_https.port}",
    )


@pytest.fixture
async def proxy(fresh: Upstreams, tmp_path: Path) -> AsyncIterator[tuple[EgressProxy, list[EgressAttempted]]]:
    """A started proxy with the API_TOKEN secret scoped to the HTTPS upstream, and the events it emitted."""
    events: list[EgressAttempted] = []
    egress = EgressProxy(
        allow=allowlist(fresh),
        secrets=(scoped_secret(fresh),),
        on_event=events.append,
        state_dir=tmp_path / "egress-state",
        upstream_ca_file=fresh.test_ca,
    )
    await egress.start()
    try:
        yield egress, events
    finally:
        await egress.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RelayRun:
    returncode: int
    stdout: str
    stderr: str


def client_env(port: int, **extra: str) -> dict[str, str]:
    proxy = f"http://127.0.0.1:{port}"
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent", "LANG": "C.UTF-8"}
    return base | {"http_proxy": proxy, "https_proxy": proxy, "HTTPS_PROXY": proxy, "NO_PROXY": ""} | extra


async def run_relayed(
    socket_path: Path | str, argv: list[str], *, env: dict[str, str] | None = None, port: int | None = None
) -> RelayRun:
    """Run ``argv`` as the relay's child on the host, the way a sandbox runs a command."""
    port = port or free_port()
    process = await asyncio.create_subprocess_exec(
        *relay_argv(str(socket_path), port),
        "--",
        *argv,
        env=env if env is not None else client_env(port),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), RELAY_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return RelayRun(process.returncode, stdout.decode(), stderr.decode())


async def curl(proxy: EgressProxy, *args: str) -> RelayRun:
    """curl through a relay started on the host; ``-w`` prints the status code on the last line."""
    port = free_port()
    argv = ["curl", "-sS", "--max-time", "20", "-w", "\n%{http_code}", *args]
    if proxy.ca_cert_path is not None:
        argv[1:1] = ["--cacert", str(proxy.ca_cert_path)]
    process = await asyncio.create_subprocess_exec(
        *relay_argv(str(proxy.socket_path), port),
        "--",
        *argv,
        env=client_env(port),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), RELAY_TIMEOUT)
    assert process.returncode is not None
    return RelayRun(process.returncode, stdout.decode(), stderr.decode())


def status_and_body(run: RelayRun) -> tuple[int, str]:
    body, _, status = run.stdout.rpartition("\n")
    return int(status), body


@contextlib.asynccontextmanager
async def background_relay(socket_path: Path) -> AsyncIterator[int]:
    """A relay whose child just sleeps: Python clients in the test reach the proxy through its port."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *relay_argv(str(socket_path), port), "--", "sleep", "120", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        for _ in range(200):  # the relay listens before its child starts; wait for that
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                await asyncio.sleep(0.01)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)  # forwarded to the child; the relay then dies of it too
        await asyncio.wait_for(process.wait(), 10)


# -- stand-ins for a corporate network ------------------------------------------------------------


def private_host_address() -> str | None:
    """An address of this machine outside loopback that counts as private (10/8, 192.0.2/24, ...), if any.

    A server bound there stands in for a registry mirror on a private network: the proxy's rule for
    names that resolve to private addresses can then be tested with real connections.
    """
    found: set[str] = set()
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # UDP connect sends nothing: it only picks the source address
        found.add(probe.getsockname()[0])
    with contextlib.suppress(OSError):
        found |= {str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    return next((address for address in sorted(found) if address_kind(address) == "private"), None)


def fake_dns(monkeypatch: pytest.MonkeyPatch, names: dict[str, str]) -> None:
    """Make the running loop (where the egress proxy resolves names) answer ``names`` itself."""
    loop = asyncio.get_running_loop()
    real_getaddrinfo = loop.getaddrinfo

    async def getaddrinfo(host: str, port: int, **kwargs: object) -> list[object]:
        if host in names:
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (names[host], port))]
        return await real_getaddrinfo(host, port, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)


@dataclass
class CorporateProxy:
    """A real HTTP proxy on loopback: CONNECT tunnels and absolute-form requests, optional Basic credentials.

    ``names`` is its own DNS (names only it can resolve, as a corporate proxy resolves internal hosts);
    ``refused`` are CONNECT targets it answers 403; ``seen`` records each request line and its credentials.
    """

    credentials: tuple[str, str] | None = None
    names: dict[str, str] = field(default_factory=dict)
    refused: set[str] = field(default_factory=set)
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def credentials_url(self, user: str, password: str) -> str:
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *lines = head.decode("latin-1").split("\r\n")
            method, target, _ = request_line.split(" ")
            headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines if ":" in ln)}
            authorization = headers.get("proxy-authorization")
            self.seen.append((method, target, authorization))
            if self.credentials is not None:
                expected = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
                if authorization != expected:
                    writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                                 b"Proxy-Authenticate: Basic realm=corp\r\nContent-Length: 0\r\n\r\n")  # fmt: skip
                    await writer.drain()
                    return
            if method == "CONNECT":
                if target in self.refused:
                    writer.write(b"HTTP/1.1 403 Forbidden by corp policy\r\nContent-Length: 0\r\n\r\n")
                    await writer.drain()
                    return
                host, _, port = target.rpartition(":")
                up_reader, up_writer = await asyncio.open_connection(self.names.get(host, host), int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await self._pipe(reader, writer, up_reader, up_writer)
                return
            # Absolute form: one request per connection, sent on in origin form, the answer piped back.
            url = urllib.parse.urlsplit(target)
            assert url.hostname is not None
            address = self.names.get(url.hostname, url.hostname)
            up_reader, up_writer = await asyncio.open_connection(address, url.port or 80)
            kept = [ln for ln in lines if ln and not ln.lower().startswith(("proxy-", "connection:"))]
            path = url.path + (f"?{url.query}" if url.query else "")
            up_writer.write("\r\n".join([f"{method} {path} HTTP/1.1", *kept, "Connection: close", "", ""]).encode())
            await self._pipe(reader, writer, up_reader, up_writer)
        except (OSError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _pipe(
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
                if sink.can_write_eof():
                    sink.write_eof()

        try:
            await asyncio.wait_for(asyncio.gather(copy(reader, up_writer), copy(up_reader, writer)), RELAY_TIMEOUT)
        finally:
            up_writer.close()


@contextlib.asynccontextmanager
async def corporate_proxy(
    *, credentials: tuple[str, str] | None = None, names: dict[str, str] | None = None, refused: set[str] | None = None
) -> AsyncIterator[CorporateProxy]:
    proxy = CorporateProxy(credentials=credentials, names=names or {}, refused=refused or set())
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 5)
