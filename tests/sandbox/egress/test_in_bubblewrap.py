"""End to end: curl inside a real bubblewrap sandbox with network profile ``allowlist``, through relay and proxy."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from corral.errors import SandboxError
from corral.events import EgressAttempted
from corral.sandbox import NetworkProfile, Sandbox, SandboxRequest, get_backend
from corral.sandbox.egress.ca import SandboxCA
from corral.sandbox.egress.proxy import EgressProxy
from tests.sandbox.conftest import skip_unless_bubblewrap_runs
from tests.sandbox.egress import support
from tests.sandbox.egress.support import PLACEHOLDER, SECRET_VALUE, Upstreams, allowlist, fake_dns, scoped_secret

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CURL = "curl -sS --max-time 20 -w '\\n%{http_code}'"
URLOPEN = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=30)"
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
    monkeypatch.setattr(bubblewrap, "egress_proxy_class", lambda: proxy_class)
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


# -- network "none" and the network profile's options, in real sandboxes --------------------------

MakeSandbox = Callable[..., Awaitable[Sandbox]]


@pytest.fixture
async def make_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[MakeSandbox]:
    """``await make_sandbox(network, events, **proxy_options)``: a bubblewrap sandbox, destroyed afterwards.

    ``proxy_options`` go to its EgressProxy on top of what the backend passes (a test CA to trust).
    """
    skip_unless_bubblewrap_runs()
    from corral.sandbox.bubblewrap import backend as bubblewrap

    made: list[Sandbox] = []

    async def make(network: NetworkProfile, events: list[EgressAttempted], **proxy_options: object) -> Sandbox:
        proxy_class = functools.partial(EgressProxy, **proxy_options)
        monkeypatch.setattr(bubblewrap, "egress_proxy_class", lambda: proxy_class)
        repo = tmp_path / f"repo{len(made)}"
        repo.mkdir()
        (repo / "README.md").write_text("egress e2e\n")
        request = SandboxRequest(repo=repo, run_dir=tmp_path / f"run{len(made)}", network=network,
                                 on_egress=events.append)  # fmt: skip
        made.append(await get_backend("bubblewrap").create(request))
        return made[-1]

    try:
        yield make
    finally:
        for sandbox in made:
            await sandbox.destroy()


async def test_with_network_none_clients_fail_at_once_naming_the_policy(make_sandbox: MakeSandbox) -> None:
    events: list[EgressAttempted] = []
    sandbox = await make_sandbox(NetworkProfile(), events)
    why = '403 Forbidden by corral egress policy: pypi.org:443 refused: this sandbox\'s network is "none"'
    started = time.monotonic()
    curl = await sandbox.exec("curl -sS -i https://pypi.org/simple/six/", timeout=60)
    curl_s = time.monotonic() - started
    assert curl.exit_code == 56 and f"HTTP/1.1 {why}" in curl.stdout and curl_s < 3, (curl, curl_s)
    started = time.monotonic()
    urllib = await sandbox.exec(["python3", "-c", URLOPEN, "https://pypi.org/simple/six/"], timeout=60)
    urllib_s = time.monotonic() - started
    assert urllib.exit_code == 1 and why in urllib.stderr and urllib_s < 3, (urllib, urllib_s)
    assert 'set network = "allowlist" with allow = ["pypi.org"]' in urllib.stderr
    assert [(e.host, e.port, e.allowed, e.reason) for e in events] == [
        ("pypi.org", 443, False, 'this sandbox\'s network is "none"'),
    ] * 2
    env = (await sandbox.exec("env", timeout=60)).stdout
    assert "HTTPS_PROXY=http://127.0.0.1:3128" in env and "npm_config_fetch_retries=0" in env


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
async def test_with_network_none_pip_and_npm_say_why_within_seconds(make_sandbox: MakeSandbox) -> None:
    sandbox = await make_sandbox(NetworkProfile(), [])
    started = time.monotonic()
    pip = await sandbox.exec("python3 -m pip download --no-deps -d /tmp/dl six==1.16.0", timeout=60)
    pip_s = time.monotonic() - started
    started = time.monotonic()
    npm = await sandbox.exec("npm view left-pad version", timeout=60)
    npm_s = time.monotonic() - started
    assert pip.exit_code != 0 and "Forbidden by corral egress policy" in pip.stdout + pip.stderr, pip
    assert npm.exit_code != 0 and "Forbidden by corral egress policy" in npm.stderr, npm
    assert pip_s < 5 and npm_s < 5, (pip_s, npm_s)  # were 8 s and 71 s of retries


async def test_a_preset_with_allow_private_reaches_a_registry_mirror_on_a_private_address(
    make_sandbox: MakeSandbox, fresh: Upstreams, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = support.private_host_address()
    if address is None:
        pytest.skip("this machine has no private address outside loopback to stand in for a mirror")
    # pypi.org, as a transparent mirror on a private network answers for it; only @python allows it.
    fake_dns(monkeypatch, {"pypi.org": address})
    test_ca = SandboxCA.load_or_create(fresh.test_ca.parent)
    with contextlib.ExitStack() as stack:
        try:
            mirror = stack.enter_context(
                support.serve_upstream(test_ca.server_context("pypi.org"), host=address, port=443)
            )
        except OSError as exc:
            pytest.skip(f"cannot listen on {address}:443 for the stand-in mirror: {exc}")
        events: list[EgressAttempted] = []
        network = NetworkProfile(mode="allowlist", allow=("@python",), allow_private=True, intercept_tls=True)
        sandbox = await make_sandbox(network, events, upstream_ca_file=fresh.test_ca)
        fetched = await sandbox.exec(f"{CURL} https://pypi.org/simple/six/", timeout=60)
        other = await sandbox.exec("curl -sS -i https://example.org/", timeout=60)
    assert fetched.stdout.endswith("\n200"), fetched
    assert [r.path for r in mirror.requests] == ["/simple/six/"]
    assert "403 Forbidden by corral egress policy: example.org:443 is not on this sandbox's allowlist" in other.stdout
    assert events[0].reason == (
        f"allowed by 'pypi.org' (@python); private address {address} allowed by allow_private; HTTP 200"
    )


@pytest.mark.registry
async def test_pip_downloads_from_pypi_with_the_python_preset(make_sandbox: MakeSandbox, tmp_path: Path) -> None:
    events: list[EgressAttempted] = []
    # allow_private: behind a transparent mirror (a corporate network, this project's machines) pypi.org
    # resolves to a private address.
    sandbox = await make_sandbox(NetworkProfile(mode="allowlist", allow=("@python",), allow_private=True), events)
    done = await sandbox.exec("python3 -m pip download --no-deps -d dl six==1.16.0", timeout=120)
    assert done.exit_code == 0, done.stdout + done.stderr
    assert (sandbox.workspace / "dl" / "six-1.16.0-py2.py3-none-any.whl").exists()
    assert {e.host for e in events} <= {"pypi.org", "files.pythonhosted.org"} and all(e.allowed for e in events)
