"""End to end: curl inside a real bubblewrap sandbox with network profile ``allowlist``, through relay and proxy."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from corral.errors import SandboxError
from corral.events import EgressAttempted
from corral.sandbox import NetworkProfile, Sandbox, SandboxRequest, get_backend
from corral.sandbox.egress.proxy import EgressProxy
from tests.sandbox.conftest import skip_unless_bubblewrap_runs
from tests.sandbox.egress.support import PLACEHOLDER, SECRET_VALUE, Upstreams, allowlist, scoped_secret

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CURL = "curl -sS --max-time 20 -w '\\n%{http_code}'"
# The test upstreams live on the host's loopback, which the sandbox's own NO_PROXY list would skip.
VIA_PROXY = {"NO_PROXY": "", "no_proxy": ""}


@pytest.fixture
async def sandboxed(
    fresh: Upstreams, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Sandbox, list[EgressAttempted]]]:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap (bwrap) is not installed")
    from corral.sandbox.bubblewrap import backend as bubblewrap

    # The upstreams' certificates come from a test CA, which the proxy must trust on top of the system store.
    proxy_class = functools.partial(EgressProxy, upstream_ca_file=fresh.test_ca)
    monkeypatch.setattr(bubblewrap, "_egress_proxy_class", lambda: proxy_class)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README.md").write_text("egress e2e\n")
    events: list[EgressAttempted] = []
    request = SandboxRequest(
        repo=repo,
        run_dir=tmp_path / "run",
        network=NetworkProfile(mode="allowlist", allow=allowlist(fresh)),
        secrets=(scoped_secret(fresh),),
        on_egress=events.append,
    )
    try:
        sandbox = await get_backend("bubblewrap").create(request)
    except SandboxError as exc:
        if "cannot run here" in str(exc):
            pytest.skip(str(exc))
        raise
    try:
        yield sandbox, events
    finally:
        await sandbox.destroy()


async def test_curl_in_a_sandbox_reaches_allowed_hosts_with_the_secret_and_nothing_else(
    sandboxed: tuple[Sandbox, list[EgressAttempted]], fresh: Upstreams
) -> None:
    sandbox, events = sandboxed
    secured = await sandbox.exec(
        f'{CURL} -H "Authorization: Bearer $API_TOKEN" https://localhost:{fresh.https.port}/inside',
        timeout=60,
        env=VIA_PROXY,
    )
    assert secured.exit_code == 0, secured.stderr
    assert secured.stdout.endswith("\n200")
    [received] = fresh.https.requests
    assert received.headers["authorization"] == f"Bearer {SECRET_VALUE}"
    assert PLACEHOLDER in secured.stdout and SECRET_VALUE not in secured.stdout + secured.stderr

    plain = await sandbox.exec(f"{CURL} http://127.0.0.1:{fresh.http.port}/plain", timeout=60, env=VIA_PROXY)
    assert plain.stdout.endswith("\n200") and [r.path for r in fresh.http.requests] == ["/plain"]

    denied = await sandbox.exec(f"{CURL} http://localhost:{fresh.unlisted.port}/nope", timeout=60, env=VIA_PROXY)
    assert denied.stdout.endswith("\n403") and "is not on this sandbox's allowlist" in denied.stdout

    leak = await sandbox.exec(
        f'{CURL} -H "X-Key: $API_TOKEN" https://127.0.0.1:{fresh.other_https.port}/', timeout=60, env=VIA_PROXY
    )
    assert leak.stdout.endswith("\n403") and "API_TOKEN" in leak.stdout

    # No way around the proxy: the sandbox's own network has nothing but loopback.
    direct = await sandbox.exec(
        f"{CURL} --noproxy '*' http://127.0.0.1:{fresh.http.port}/direct", timeout=60, env=VIA_PROXY
    )
    assert direct.exit_code != 0
    assert fresh.unlisted.requests == [] and fresh.other_https.requests == []
    assert [r.path for r in fresh.http.requests] == ["/plain"]

    inside_env = await sandbox.exec("env", timeout=60, env=VIA_PROXY)
    assert f"API_TOKEN={PLACEHOLDER}" in inside_env.stdout and SECRET_VALUE not in inside_env.stdout

    assert [(e.port, e.allowed) for e in events] == [
        (fresh.https.port, True),
        (fresh.http.port, True),
        (fresh.unlisted.port, False),
        (fresh.other_https.port, False),
    ]
    assert events[0].secrets_used == ["API_TOKEN"]
    assert all(SECRET_VALUE not in repr(event) for event in events)


async def test_exit_status_passes_through_the_relay_in_a_sandbox(
    sandboxed: tuple[Sandbox, list[EgressAttempted]],
) -> None:
    sandbox, _ = sandboxed
    assert (await sandbox.exec("exit 5", timeout=60, env=VIA_PROXY)).exit_code == 5
    result = await sandbox.exec(["sh", "-c", "echo out; echo err >&2"], timeout=60, env=VIA_PROXY)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "out\n", "err\n")


CORRAL = [sys.executable, "-m", "corral"]
# A CONNECT whose host is console markup: the proxy denies it and `corral sandbox exec` reports it.
MARKUP_CONNECT = (
    "import socket; s = socket.create_connection(('127.0.0.1', 3128)); "
    "s.sendall(b'CONNECT evil[/red]x[bold]:443 HTTP/1.1\\r\\nHost: evil[/red]x[bold]:443\\r\\n\\r\\n'); "
    "print(s.recv(64).split(b' ')[1].decode())"
)


def test_sandbox_exec_prints_egress_hosts_as_text_not_markup(tmp_path: Path) -> None:
    skip_unless_bubblewrap_runs()
    done = subprocess.run(
        [
            *CORRAL,
            "sandbox",
            "exec",
            "--network",
            "allowlist",
            "--allow",
            "example.com",
            "--",
            "python3",
            "-c",
            MARKUP_CONNECT,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "403\n"
    assert "egress denied evil[/red]x[bold]:443 (not on this sandbox's allowlist)" in done.stderr


def test_sandbox_exec_refuses_an_allow_entry_the_proxy_would_refuse() -> None:
    done = subprocess.run(
        [*CORRAL, "sandbox", "exec", "--network", "allowlist", "--allow", "user@pypi.org", "--", "true"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "not a host pattern: 'user@pypi.org'" in done.stderr
