"""The egress proxy end to end on loopback: real upstream servers, real clients through the relay."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import logging
import os
import ssl
import stat
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from corral.events import EgressAttempted
from corral.sandbox.egress.proxy import EgressProxy
from tests.sandbox.egress import support
from tests.sandbox.egress.support import (
    PLACEHOLDER,
    SECRET_VALUE,
    Upstreams,
    allowlist,
    background_relay,
    curl,
    fake_dns,
    scoped_secret,
    status_and_body,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

Proxy = tuple[EgressProxy, list[EgressAttempted]]


def assert_value_absent(*texts: object) -> None:
    for text in texts:
        assert SECRET_VALUE not in str(text)


async def test_allowed_https_host_receives_the_real_secret_and_the_client_never_sees_it(
    proxy: Proxy, fresh: Upstreams
) -> None:
    egress, events = proxy
    url = f"https://localhost:{fresh.https.port}/v1/items?token={PLACEHOLDER}"
    run = await curl(
        egress,
        "-H",
        f"Authorization: Bearer {PLACEHOLDER}",
        "-H",
        "content-type: application/json",
        "--data",
        json.dumps({"key": PLACEHOLDER, "note": "hello"}),
        url,
    )
    status, body = status_and_body(run)
    assert (run.returncode, status) == (0, 200), run.stderr
    [received] = fresh.https.requests
    assert received.headers["authorization"] == f"Bearer {SECRET_VALUE}"
    assert received.path == f"/v1/items?token={SECRET_VALUE}"
    assert json.loads(received.body) == {"key": SECRET_VALUE, "note": "hello"}
    assert received.headers["content-length"] == str(len(received.body))
    # The server echoes everything back; the proxy turns the value back into the placeholder.
    echo = json.loads(body)
    assert echo["headers"]["authorization"] == f"Bearer {PLACEHOLDER}"
    assert_value_absent(run.stdout, run.stderr)
    [event] = events
    assert (event.host, event.port, event.allowed, event.method) == ("localhost", fresh.https.port, True, "POST")
    assert event.path == f"/v1/items?token={PLACEHOLDER}"
    assert event.secrets_used == ["API_TOKEN"]
    assert event.bytes_sent > len(received.body) and event.bytes_received > len(body)
    assert_value_absent(events)


async def test_disallowed_host_gets_403_and_is_never_reached(proxy: Proxy, fresh: Upstreams) -> None:
    egress, events = proxy
    plain = await curl(egress, f"http://localhost:{fresh.unlisted.port}/nope")
    status, body = status_and_body(plain)
    assert status == 403
    assert body == f"corral egress: localhost:{fresh.unlisted.port} is not on this sandbox's allowlist\n"
    tunnelled = await curl(egress, f"https://localhost:{fresh.unlisted.port}/nope")
    assert tunnelled.returncode != 0 and "403" in tunnelled.stderr
    assert fresh.unlisted.requests == []
    assert [(e.host, e.port, e.allowed, e.method, e.reason) for e in events] == [
        ("localhost", fresh.unlisted.port, False, "GET", "not on this sandbox's allowlist"),
        ("localhost", fresh.unlisted.port, False, "CONNECT", "not on this sandbox's allowlist"),
    ]
    assert all(e.bytes_sent == e.bytes_received == 0 for e in events)


async def test_placeholder_bound_for_an_unscoped_host_is_blocked(proxy: Proxy, fresh: Upstreams) -> None:
    egress, events = proxy
    other = f"https://127.0.0.1:{fresh.other_https.port}"
    attempts = [
        ["-H", f"X-Api-Key: {PLACEHOLDER}", f"{other}/header"],
        [f"{other}/query?k={PLACEHOLDER}"],
        ["--data-binary", f"payload {PLACEHOLDER}", "-H", "content-type: application/octet-stream", f"{other}/b"],
        ["-u", f"user:{PLACEHOLDER}", f"{other}/basic"],
        ["-H", f"X-Api-Key: {PLACEHOLDER}", f"http://127.0.0.1:{fresh.http.port}/plain"],
    ]
    for args in attempts:
        status, body = status_and_body(await curl(egress, *args))
        assert status == 403, args
        assert "carries the placeholder of secret 'API_TOKEN'" in body
    assert fresh.other_https.requests == [] and fresh.http.requests == []
    assert len(events) == len(attempts)
    for event in events:
        assert not event.allowed and "API_TOKEN" in event.reason and event.bytes_sent == 0
    assert_value_absent(events)


async def test_secret_is_never_sent_in_cleartext_even_to_its_host(fresh: Upstreams, tmp_path: Path) -> None:
    secret = scoped_secret(fresh).model_copy(update={"hosts": (f"127.0.0.1:{fresh.http.port}",)})
    events: list[EgressAttempted] = []
    async with EgressProxy(
        allow=allowlist(fresh), secrets=(secret,), on_event=events.append, state_dir=tmp_path / "s"
    ) as egress:
        run = await curl(egress, "-H", f"Authorization: Bearer {PLACEHOLDER}", f"http://127.0.0.1:{fresh.http.port}/")
    status, body = status_and_body(run)
    assert status == 403 and "only sent over HTTPS" in body
    assert fresh.http.requests == []
    assert not events[0].allowed


async def test_plain_http_and_requests_without_placeholders_pass(proxy: Proxy, fresh: Upstreams) -> None:
    egress, events = proxy
    plain = await curl(egress, f"http://127.0.0.1:{fresh.http.port}/hello?x=1")
    other = await curl(egress, f"https://127.0.0.1:{fresh.other_https.port}/fine")
    assert status_and_body(plain)[0] == 200 and status_and_body(other)[0] == 200
    assert [r.path for r in fresh.http.requests] == ["/hello?x=1"]
    assert [r.path for r in fresh.other_https.requests] == ["/fine"]
    assert [(e.host, e.port, e.allowed, e.secrets_used) for e in events] == [
        ("127.0.0.1", fresh.http.port, True, []),
        ("127.0.0.1", fresh.other_https.port, True, []),
    ]
    assert all(e.bytes_sent > 0 and e.bytes_received > 0 for e in events)


async def test_basic_credentials_carry_the_secret_like_git_over_https(proxy: Proxy, fresh: Upstreams) -> None:
    egress, events = proxy
    run = await curl(egress, "-u", f"x-access-token:{PLACEHOLDER}", f"https://localhost:{fresh.https.port}/repo.git")
    assert status_and_body(run)[0] == 200, run.stderr
    [received] = fresh.https.requests
    scheme, encoded = received.headers["authorization"].split()
    assert scheme == "Basic"
    assert base64.b64decode(encoded).decode() == f"x-access-token:{SECRET_VALUE}"
    assert events[0].secrets_used == ["API_TOKEN"]
    assert_value_absent(run.stdout)


async def test_compressed_echo_of_the_secret_is_decoded_and_scrubbed(proxy: Proxy, fresh: Upstreams) -> None:
    egress, events = proxy
    run = await curl(egress, "-H", f"X-Key: {PLACEHOLDER}", f"https://localhost:{fresh.https.port}/gzip")
    status, body = status_and_body(run)
    assert status == 200
    assert json.loads(body)["headers"]["x-key"] == PLACEHOLDER
    assert fresh.https.requests[0].headers["accept-encoding"] == "identity"
    refused = await curl(egress, "-H", f"X-Key: {PLACEHOLDER}", f"https://localhost:{fresh.https.port}/brotli")
    status, body = status_and_body(refused)
    assert status == 502 and "cannot inspect" in body
    assert_value_absent(run.stdout, refused.stdout, events)


async def test_python_clients_work_through_https_proxy_and_http_proxy(proxy: Proxy, fresh: Upstreams) -> None:
    egress, events = proxy
    assert egress.ca_cert_path is not None
    context = ssl.create_default_context(cafile=egress.ca_cert_path)
    async with background_relay(egress.socket_path) as port:
        proxies = {"http": f"http://127.0.0.1:{port}", "https": f"http://127.0.0.1:{port}"}
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler(proxies), urllib.request.HTTPSHandler(context=context)
        )

        def fetch(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
            request = urllib.request.Request(url, headers=headers)
            try:
                with opener.open(request, timeout=20) as response:
                    return response.status, response.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()

        secured = await asyncio.to_thread(
            fetch, f"https://localhost:{fresh.https.port}/py", {"Authorization": f"token {PLACEHOLDER}"}
        )
        plain = await asyncio.to_thread(fetch, f"http://127.0.0.1:{fresh.http.port}/py", {})
        denied = await asyncio.to_thread(fetch, f"http://localhost:{fresh.unlisted.port}/py", {})

        def keep_alive() -> list[int]:
            # Three requests on one tunnel, as http.client keeps it alive.
            connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=20, context=context)
            connection.set_tunnel("localhost", fresh.https.port)
            statuses = []
            for index in range(3):
                connection.request("GET", f"/again/{index}", headers={"X-Key": PLACEHOLDER})
                response = connection.getresponse()
                response.read()
                statuses.append(response.status)
            connection.close()
            return statuses

        statuses = await asyncio.to_thread(keep_alive)
    assert secured[0] == 200 and PLACEHOLDER in secured[1].decode() and SECRET_VALUE.encode() not in secured[1]
    assert plain[0] == 200 and denied[0] == 403
    assert statuses == [200, 200, 200]
    assert [r.headers.get("x-key") for r in fresh.https.requests[1:]] == [SECRET_VALUE] * 3
    assert fresh.https.requests[0].headers["authorization"] == f"token {SECRET_VALUE}"
    assert fresh.unlisted.requests == []
    assert [e.path for e in events if e.host == "localhost" and e.allowed] == [
        "/py",
        "/again/0",
        "/again/1",
        "/again/2",
    ]


async def test_without_secrets_connect_is_tunnelled_blindly_and_journaled(fresh: Upstreams, tmp_path: Path) -> None:
    events: list[EgressAttempted] = []
    async with EgressProxy(
        allow=allowlist(fresh), secrets=(), on_event=events.append, state_dir=tmp_path / "s"
    ) as egress:
        assert egress.ca_cert_path is None
        # The client verifies the upstream's own certificate: nothing in between.
        run = await curl(egress, "--cacert", str(fresh.test_ca), f"https://localhost:{fresh.https.port}/blind")
        assert sorted(os.listdir(tmp_path / "s")) == ["egress.sock"]
    assert status_and_body(run)[0] == 200, run.stderr
    [event] = events
    assert (event.method, event.allowed, event.path) == ("CONNECT", True, None)
    assert "tunnelled without interception" in event.reason
    assert event.bytes_sent > 200 and event.bytes_received > 500  # a TLS handshake and a response


async def test_nothing_on_the_host_side_holds_the_value(
    proxy: Proxy, fresh: Upstreams, caplog: pytest.LogCaptureFixture
) -> None:
    egress, events = proxy
    with caplog.at_level(logging.DEBUG, logger="corral.sandbox.egress.proxy"):
        run = await curl(egress, "-H", f"X-Key: {PLACEHOLDER}", f"https://localhost:{fresh.https.port}/log")
        denied = await curl(egress, "-H", f"X-Key: {PLACEHOLDER}", f"https://127.0.0.1:{fresh.other_https.port}/")
    assert status_and_body(run)[0] == 200 and status_and_body(denied)[0] == 403
    assert SECRET_VALUE.encode() in fresh.https.raw_record  # it did go where it belongs
    for path in egress.state_dir.rglob("*"):
        if path.is_file():
            assert SECRET_VALUE.encode() not in path.read_bytes(), path
    assert_value_absent(caplog.text, events, run.stdout, run.stderr, denied.stdout, denied.stderr)
    assert "API_TOKEN" in repr(egress._guard) and SECRET_VALUE not in repr(egress._guard)


async def test_ca_key_is_private_and_stop_leaves_nothing_behind(fresh: Upstreams, tmp_path: Path) -> None:
    state = tmp_path / "state"
    egress = EgressProxy(
        allow=allowlist(fresh), secrets=(scoped_secret(fresh),), on_event=None, state_dir=state,
        upstream_ca_file=fresh.test_ca,
    )  # fmt: skip
    await egress.start()
    assert egress.ca_cert_path is not None
    key = state / "egress-ca-key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE(egress.socket_path.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" not in egress.ca_cert_path.read_bytes()
    async with background_relay(egress.socket_path):
        run = await curl(egress, f"https://localhost:{fresh.https.port}/before-stop")
        assert status_and_body(run)[0] == 200
        tasks_before = len(asyncio.all_tasks())
        await egress.stop()
        await egress.stop()  # twice is fine
    assert list(state.iterdir()) == []
    assert len(asyncio.all_tasks()) <= tasks_before


async def test_restarted_proxy_reuses_the_ca_a_sandbox_already_trusts(fresh: Upstreams, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = EgressProxy(allow=allowlist(fresh), secrets=(scoped_secret(fresh),), on_event=None, state_dir=state)
    await first.start()
    assert first.ca_cert_path is not None
    pem = first.ca_cert_path.read_bytes()
    first._server.close()  # type: ignore[union-attr]  # a host crash: nothing is cleaned up
    second = EgressProxy(allow=allowlist(fresh), secrets=(scoped_secret(fresh),), on_event=None, state_dir=state)
    await second.start()
    try:
        assert second.ca_cert_path is not None and second.ca_cert_path.read_bytes() == pem
    finally:
        await second.stop()
        await first.stop()


async def test_a_failing_event_callback_does_not_break_the_proxy(fresh: Upstreams, tmp_path: Path) -> None:
    def explode(event: EgressAttempted) -> None:
        raise RuntimeError("journal is down")

    async with EgressProxy(allow=allowlist(fresh), secrets=(), on_event=explode, state_dir=tmp_path / "s") as egress:
        first = await curl(egress, f"http://127.0.0.1:{fresh.http.port}/1")
        second = await curl(egress, f"http://127.0.0.1:{fresh.http.port}/2")
    assert status_and_body(first)[0] == status_and_body(second)[0] == 200


async def test_a_name_that_resolves_to_an_internal_address_is_refused(
    fresh: Upstreams, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # e.g. DNS rebinding onto the host's own services, or onto the cloud metadata endpoint
    fake_dns(monkeypatch, {"metadata.internal.test": "127.0.0.1", "metadata.cloud.test": "169.254.169.254"})
    allow = (f"metadata.internal.test:{fresh.http.port}", "metadata.cloud.test:80")
    for allow_private, state in ((False, "a"), (True, "b")):  # allow_private never opens loopback or link-local
        events: list[EgressAttempted] = []
        async with EgressProxy(allow=allow, secrets=(), on_event=events.append, state_dir=tmp_path / state,
                               allow_private_addresses=allow_private) as egress:  # fmt: skip
            loopback = await curl(egress, f"http://metadata.internal.test:{fresh.http.port}/latest")
            metadata = await curl(egress, "http://metadata.cloud.test/latest/meta-data/")
        status, body = status_and_body(loopback)
        assert status == 403 and "resolves to a non-public address (127.0.0.1)" in body
        assert "never reached through a name" in body
        status, body = status_and_body(metadata)
        assert status == 403 and "(169.254.169.254)" in body
        assert [e.allowed for e in events] == [False, False]
    assert fresh.http.requests == []


async def test_allow_private_lets_allowed_names_reach_a_mirror_on_a_private_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = support.private_host_address()
    if address is None:
        pytest.skip("this machine has no private address outside loopback to stand in for a mirror")
    fake_dns(monkeypatch, {"pypi.mirror.corp.test": address, "other.example.test": address})
    with support.serve_upstream(host=address) as mirror:
        allow = (f"pypi.mirror.corp.test:{mirror.port}", f"other.example.test:{mirror.port}")
        url = f"http://pypi.mirror.corp.test:{mirror.port}/simple/six/"
        other = f"http://other.example.test:{mirror.port}/"
        outcomes = {}
        for name, allow_private in (("default", False), ("all", True), ("listed", ("*.corp.test",))):
            events: list[EgressAttempted] = []
            async with EgressProxy(allow=allow, secrets=(), on_event=events.append, state_dir=tmp_path / name,
                                   allow_private_addresses=allow_private) as egress:  # fmt: skip
                outcomes[name] = (await curl(egress, url), await curl(egress, other), events)
    refused, _, refused_events = outcomes["default"]
    status, body = status_and_body(refused)
    assert status == 403 and f"resolves to a non-public address ({address})" in body
    assert "allow_private" in body and not refused_events[0].allowed
    _, _, allowed_events = outcomes["all"]
    assert [status_and_body(run)[0] for run in outcomes["all"][:2]] == [200, 200]
    assert allowed_events[0].reason == (
        f"allowed by 'pypi.mirror.corp.test:{mirror.port}'; private address {address} allowed by allow_private; "
        "HTTP 200"
    )
    listed_mirror, listed_other, _ = outcomes["listed"]
    assert status_and_body(listed_mirror)[0] == 200 and status_and_body(listed_other)[0] == 403
    assert [r.path for r in mirror.requests] == ["/simple/six/", "/", "/simple/six/"]


async def test_a_denial_says_why_in_the_status_line_and_the_body(proxy: Proxy, fresh: Upstreams) -> None:
    egress, _ = proxy
    target = f"localhost:{fresh.unlisted.port}"
    plain = await curl(egress, "-i", f"http://{target}/")
    tunnel = await curl(egress, "-i", f"https://{target}/")
    why = f"403 Forbidden by corral egress policy: {target} is not on this sandbox's allowlist"
    assert plain.stdout.startswith(f"HTTP/1.1 {why}\r\n")
    assert plain.stdout.endswith(f"\r\n\r\ncorral egress: {target} is not on this sandbox's allowlist\n\n403")
    assert "content-type: text/plain; charset=utf-8" in plain.stdout
    # curl shows a refused CONNECT only by its status line (and its headers with -i): the reason is there.
    assert f"HTTP/1.1 {why}\r\n" in tunnel.stdout and "CONNECT tunnel failed, response 403" in tunnel.stderr


async def test_a_deny_all_proxy_refuses_every_host_naming_network_none(fresh: Upstreams, tmp_path: Path) -> None:
    events: list[EgressAttempted] = []
    async with EgressProxy(allow=(), secrets=(), on_event=events.append, state_dir=tmp_path / "s",
                           deny_all=True) as egress:  # fmt: skip
        plain = await curl(egress, "-i", f"http://127.0.0.1:{fresh.http.port}/")
        tunnel = await curl(egress, "-i", "https://pypi.org/simple/")
    assert '403 Forbidden by corral egress policy: pypi.org:443 refused: this sandbox\'s network is "none"' in (
        tunnel.stdout
    )
    status, body = status_and_body(plain)
    assert status == 403 and body.endswith(
        f'corral egress: 127.0.0.1:{fresh.http.port} refused: this sandbox\'s network is "none", so no host is '
        f'reachable; to allow hosts, set network = "allowlist" with allow = ["127.0.0.1"] (or a preset such as '
        '"@python")\n'
    )
    assert [(e.host, e.allowed, e.reason) for e in events] == [
        ("127.0.0.1", False, 'this sandbox\'s network is "none"'),
        ("pypi.org", False, 'this sandbox\'s network is "none"'),
    ]
    assert fresh.http.requests == []


async def test_upstream_certificates_are_verified(fresh: Upstreams, tmp_path: Path) -> None:
    events: list[EgressAttempted] = []
    async with EgressProxy(  # no upstream_ca_file: the test CA is not in the system trust store
        allow=allowlist(fresh), secrets=(scoped_secret(fresh),), on_event=events.append, state_dir=tmp_path / "s"
    ) as egress:
        run = await curl(egress, f"https://localhost:{fresh.https.port}/")
    assert run.returncode != 0 and "502" in run.stderr
    assert fresh.https.requests == []
    assert "TLS verification of localhost failed" in events[0].reason


async def test_a_client_that_does_not_trust_the_sandbox_ca_is_journaled(proxy: Proxy, fresh: Upstreams) -> None:
    egress, events = proxy
    port = support.free_port()
    run = await support.run_relayed(
        egress.socket_path, ["curl", "-sS", "--max-time", "10", f"https://localhost:{fresh.https.port}/"],
        env=support.client_env(port), port=port,
    )  # fmt: skip
    assert run.returncode == 60, run.stderr  # curl: peer certificate cannot be authenticated
    assert fresh.https.requests == []
    [event] = events
    assert not event.allowed and "does it trust" in event.reason


async def test_oversized_bodies_get_413_and_are_not_forwarded(fresh: Upstreams, tmp_path: Path) -> None:
    async with EgressProxy(
        allow=allowlist(fresh), secrets=(), on_event=None, state_dir=tmp_path / "s", max_body=1000
    ) as egress:
        run = await curl(egress, "--data-binary", "x" * 5000, f"http://127.0.0.1:{fresh.http.port}/upload")
    assert status_and_body(run)[0] == 413 and fresh.http.requests == []


async def test_an_upstream_that_hangs_up_between_requests_gets_a_new_connection(proxy: Proxy, fresh: Upstreams) -> None:
    egress, events = proxy
    assert egress.ca_cert_path is not None
    context = ssl.create_default_context(cafile=egress.ca_cert_path)
    async with background_relay(egress.socket_path) as port:

        def two_requests() -> list[int]:
            connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=20, context=context)
            connection.set_tunnel("localhost", fresh.https.port)
            statuses = []
            for path in ("/silent-close", "/after"):
                connection.request("GET", path)
                response = connection.getresponse()
                response.read()
                statuses.append(response.status)
            connection.close()
            return statuses

        assert await asyncio.to_thread(two_requests) == [200, 200]
    assert [r.path for r in fresh.https.requests] == ["/silent-close", "/after"]
    assert [e.allowed for e in events] == [True, True]


async def test_a_route_reaches_corrals_own_service_and_nothing_else(fresh: Upstreams, tmp_path: Path) -> None:
    """A deny-all proxy (network "none") with a route: plain HTTP to the routed name reaches the service
    (the model gateway, for an external engine) and is journaled; the same service by its address, the
    name over TLS or on another port, and every other host are refused."""
    events: list[EgressAttempted] = []
    routes = {"corral-gateway": ("127.0.0.1", fresh.http.port)}
    async with EgressProxy(allow=(), secrets=(), on_event=events.append, state_dir=tmp_path / "s",
                           deny_all=True, routes=routes) as egress:  # fmt: skip
        routed = await curl(egress, "-X", "POST", "-d", "{}", "http://corral-gateway/anthropic/v1/messages?beta=true")
        by_address = await curl(egress, f"http://127.0.0.1:{fresh.http.port}/")
        over_tls = await curl(egress, "https://corral-gateway/")
        other_port = await curl(egress, "http://corral-gateway:8080/")
    status, body = status_and_body(routed)
    assert status == 200 and json.loads(body)["path"] == "/anthropic/v1/messages?beta=true"
    assert status_and_body(by_address)[0] == 403 and status_and_body(other_port)[0] == 403
    assert "CONNECT tunnel failed, response 403" in over_tls.stderr
    assert [request.path for request in fresh.http.requests] == ["/anthropic/v1/messages?beta=true"]
    assert [(e.host, e.port, e.allowed) for e in events] == [
        ("corral-gateway", 80, True),
        ("127.0.0.1", fresh.http.port, False),
        ("corral-gateway", 443, False),
        ("corral-gateway", 8080, False),
    ]
    assert events[0].reason.startswith("allowed by") and "HTTP 200" in events[0].reason
