"""The egress proxy chained to a corporate proxy: a real CONNECT/absolute-form proxy on loopback in between."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from corral.events import EgressAttempted
from corral.sandbox.egress.proxy import EgressProxy
from tests.sandbox.egress.support import Upstreams, corporate_proxy, curl, free_port, status_and_body

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

USER, PASSWORD = "builder", "corp-pw-7f3a"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def no_password_in(*things: object) -> None:
    for thing in things:
        assert PASSWORD not in str(thing) and BASIC.split()[1] not in str(thing)


async def test_every_kind_of_request_goes_through_the_upstream_proxy_with_its_credentials(
    fresh: Upstreams, tmp_path: Path
) -> None:
    events: list[EgressAttempted] = []
    async with corporate_proxy(credentials=(USER, PASSWORD)) as corp:
        allow = (f"localhost:{fresh.https.port}", f"127.0.0.1:{fresh.http.port}")
        upstream = corp.credentials_url(USER, PASSWORD)
        async with EgressProxy(allow=allow, secrets=(), on_event=events.append, state_dir=tmp_path / "blind",
                               upstream_proxy=upstream) as egress:  # fmt: skip
            tunnelled = await curl(egress, "--cacert", str(fresh.test_ca), f"https://localhost:{fresh.https.port}/t")
            plain = await curl(egress, f"http://127.0.0.1:{fresh.http.port}/p?q=1")
        async with EgressProxy(allow=allow, secrets=(), on_event=events.append, state_dir=tmp_path / "tls",
                               upstream_proxy=upstream, intercept=True,
                               upstream_ca_file=fresh.test_ca) as egress:  # fmt: skip
            intercepted = await curl(egress, f"https://localhost:{fresh.https.port}/i")
    for run in (tunnelled, plain, intercepted):
        assert status_and_body(run)[0] == 200, run.stderr
    assert [r.path for r in fresh.https.requests] == ["/t", "/i"]
    assert [r.path for r in fresh.http.requests] == ["/p?q=1"]
    # CONNECT for TLS (blind or intercepted), the whole URL for plain HTTP: proxies often refuse CONNECT to 80.
    assert corp.seen == [
        ("CONNECT", f"localhost:{fresh.https.port}", BASIC),
        ("GET", f"http://127.0.0.1:{fresh.http.port}/p?q=1", BASIC),
        ("CONNECT", f"localhost:{fresh.https.port}", BASIC),
    ]
    assert "proxy-authorization" not in fresh.http.requests[0].headers  # the credentials stop at the proxy
    via = f"via upstream proxy 127.0.0.1:{corp.port}"
    assert [e.reason for e in events] == [
        f"allowed by 'localhost:{fresh.https.port}'; {via}; tunnelled without interception",
        f"allowed by '127.0.0.1:{fresh.http.port}'; {via}; HTTP 200",
        f"allowed by 'localhost:{fresh.https.port}'; {via}; HTTP 200",
    ]
    no_password_in(events, tunnelled.stderr, plain.stdout)


async def test_the_allowlist_is_enforced_by_name_and_the_upstream_resolves(fresh: Upstreams, tmp_path: Path) -> None:
    events: list[EgressAttempted] = []
    # A name only the corporate proxy can resolve: the egress proxy must not try.
    async with corporate_proxy(names={"registry.corp.internal": "127.0.0.1"}) as corp:
        allow = (f"registry.corp.internal:{fresh.http.port}",)
        async with EgressProxy(allow=allow, secrets=(), on_event=events.append, state_dir=tmp_path / "s",
                               upstream_proxy=corp.url) as egress:  # fmt: skip
            reached = await curl(egress, f"http://registry.corp.internal:{fresh.http.port}/simple/")
            denied = await curl(egress, f"http://localhost:{fresh.unlisted.port}/")
    assert status_and_body(reached)[0] == 200 and [r.path for r in fresh.http.requests] == ["/simple/"]
    status, body = status_and_body(denied)
    assert status == 403 and "is not on this sandbox's allowlist" in body
    assert [target for _, target, _ in corp.seen] == [f"http://registry.corp.internal:{fresh.http.port}/simple/"]
    assert fresh.unlisted.requests == []


async def test_upstream_failures_give_the_client_a_502_that_says_why(fresh: Upstreams, tmp_path: Path) -> None:
    events: list[EgressAttempted] = []
    https, http = f"localhost:{fresh.https.port}", f"127.0.0.1:{fresh.http.port}"
    async with corporate_proxy(credentials=(USER, PASSWORD), refused={https}) as corp:
        cases = {
            "wrong password": corp.credentials_url(USER, "wrong-" + PASSWORD),
            "no credentials": corp.url,
            "right password": corp.credentials_url(USER, PASSWORD),
            "nobody listening": f"http://{USER}:{PASSWORD}@127.0.0.1:{free_port()}",
        }
        answers: dict[str, tuple[str, str]] = {}
        for name, upstream in cases.items():
            state_dir = tmp_path / name.replace(" ", "-")
            async with EgressProxy(allow=(https, http), secrets=(), on_event=events.append, state_dir=state_dir,
                                   upstream_proxy=upstream) as egress:  # fmt: skip
                tls = await curl(egress, "-i", "--cacert", str(fresh.test_ca), f"https://{https}/")
                plain = await curl(egress, f"http://{http}/")
            answers[name] = (tls.stdout + tls.stderr, plain.stdout)
    shown = f"upstream proxy 127.0.0.1:{corp.port}"
    wrong_tls, wrong_plain = answers["wrong password"]
    assert f"502 Bad Gateway (corral egress): {shown} rejected the credentials in its URL (407" in wrong_tls
    assert f"corral egress: {shown} rejected the request (407 Proxy Authentication Required)" in wrong_plain
    assert wrong_plain.endswith("\n502")
    assert f"{shown} requires credentials (none configured)" in answers["no credentials"][0]
    refused = answers["right password"][0]
    assert f"{shown} refused CONNECT {https} (403 Forbidden by corp policy)" in refused
    assert answers["right password"][1].endswith("\n200")  # plain HTTP was not refused
    gone_tls, gone_plain = answers["nobody listening"]
    assert "502 Bad Gateway (corral egress): upstream proxy 127.0.0.1:" in gone_tls and "cannot be reached" in gone_tls
    assert gone_plain.endswith("\n502") and "cannot be reached" in gone_plain
    assert fresh.https.requests == []
    no_password_in(answers, events)
    failed = [e for e in events if "HTTP 200" not in e.reason]
    assert len(failed) == 7 and all(shown[: -len(str(corp.port))] in e.reason for e in failed)
    assert all(e.bytes_sent == 0 for e in failed if e.method == "CONNECT")  # nothing reached a host


async def test_no_proxy_from_the_environment_sends_those_hosts_directly(fresh: Upstreams, tmp_path: Path) -> None:
    events: list[EgressAttempted] = []
    async with corporate_proxy() as corp:
        environ = {"HTTPS_PROXY": corp.url, "NO_PROXY": "localhost,.example.internal"}
        allow = (f"localhost:{fresh.http.port}", f"127.0.0.1:{fresh.http.port}")
        async with EgressProxy(allow=allow, secrets=(), on_event=events.append, state_dir=tmp_path / "s",
                               upstream_proxy="env", environ=environ) as egress:  # fmt: skip
            direct = await curl(egress, f"http://localhost:{fresh.http.port}/direct")
            proxied = await curl(egress, f"http://127.0.0.1:{fresh.http.port}/proxied")
    assert status_and_body(direct)[0] == status_and_body(proxied)[0] == 200
    assert [target for _, target, _ in corp.seen] == [f"http://127.0.0.1:{fresh.http.port}/proxied"]
    assert "via upstream proxy" not in events[0].reason and "via upstream proxy" in events[1].reason
