"""End to end: curl inside a real bubblewrap sandbox with network profile ``allowlist``, through relay and proxy."""

from __future__ import annotations

import functools
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from corral.errors import SandboxError
from corral.sandbox import NetworkProfile, Sandbox, SandboxRequest, get_backend
from corral.sandbox.base import EgressEvent
from corral.sandbox.egress.proxy import EgressProxy
from tests.sandbox.egress.support import PLACEHOLDER, SECRET_VALUE, Upstreams, allowlist, scoped_secret

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CURL = "curl -sS --max-time 20 -w '\\n%{http_code}'"
# The test upstreams live on the host's loopback, which the sandbox's own NO_PROXY list would skip.
VIA_PROXY = {"NO_PROXY": "", "no_proxy": ""}


@pytest.fixture
async def sandboxed(
    fresh: Upstreams, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Sandbox, list[EgressEvent]]]:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap (bwrap) is not installed")
    from corral.sandbox.bubblewrap import backend as bubblewrap

    # The upstreams' certificates come from a test CA, which the proxy must trust on top of the system store.
    proxy_class = functools.partial(EgressProxy, upstream_ca_file=fresh.test_ca)
    monkeypatch.setattr(bubblewrap, "_egress_proxy_class", lambda: proxy_class)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README.md").write_text("egress e2e\n")
    events: list[EgressEvent] = []
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
    sandboxed: tuple[Sandbox, list[EgressEvent]], fresh: Upstreams
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
    assert events[0].secrets_used == ("API_TOKEN",)
    assert all(SECRET_VALUE not in repr(event) for event in events)


async def test_exit_status_passes_through_the_relay_in_a_sandbox(
    sandboxed: tuple[Sandbox, list[EgressEvent]],
) -> None:
    sandbox, _ = sandboxed
    assert (await sandbox.exec("exit 5", timeout=60, env=VIA_PROXY)).exit_code == 5
    result = await sandbox.exec(["sh", "-c", "echo out; echo err >&2"], timeout=60, env=VIA_PROXY)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "out\n", "err\n")
