"""The network profile's egress options without a network: presets, private addresses, upstream proxy settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from corral.errors import SandboxError
from corral.events import SandboxCreated, event_payload, parse_event
from corral.sandbox.egress.policy import (
    PrivateAddresses,
    UpstreamProxy,
    address_kind,
    redact_url,
    upstream_from_environ,
)
from corral.sandbox.egress.presets import PRESETS, expand, expanded_texts
from corral.sandbox.egress.proxy import EgressProxy
from corral.sandbox.types import NetworkProfile
from corral.spec import AgentSpec

PASSWORD = "s3cr3t-proxy-pw"


def problem(**fields: object) -> str:
    with pytest.raises(ValidationError) as caught:
        NetworkProfile.model_validate(fields)
    [error] = caught.value.errors()
    return error["msg"].removeprefix("Value error, ")


# -- presets --------------------------------------------------------------------------------


def test_presets_expand_to_their_hosts_and_remember_where_they_came_from() -> None:
    patterns = expand(["@python", "example.com:8443"])
    assert [(p.text, p.preset) for p in patterns] == [
        ("pypi.org", "python"),
        ("files.pythonhosted.org", "python"),
        ("example.com:8443", None),
    ]
    assert patterns[0].label == "'pypi.org' (@python)" and patterns[2].label == "'example.com:8443'"
    assert all(p.ports == (80, 443) for p in patterns[:2])
    github = expand(["@github"])
    assert any(p.matches("raw.githubusercontent.com", 443) for p in github)
    assert expanded_texts(["@debian", "deb.debian.org", "@node"]) == (
        "deb.debian.org",
        "security.debian.org",
        "registry.npmjs.org",
        "registry.yarnpkg.com",
    )
    assert set(PRESETS) == {"python", "node", "debian", "github"}


def test_an_unknown_preset_is_refused_naming_the_known_ones() -> None:
    message = problem(mode="allowlist", allow=["pypi.org", "@pyton"])
    assert message == "unknown host preset '@pyton'; known presets: @python, @node, @debian, @github"
    with pytest.raises(SandboxError, match="unknown host preset '@rust'"):
        expand(["@rust"])


def test_the_profile_keeps_presets_as_written() -> None:
    profile = NetworkProfile(mode="allowlist", allow=("@python",), allow_private=("@python",))
    assert profile.allow == ("@python",) and profile.allow_private == ("@python",)
    assert NetworkProfile.model_validate_json(profile.model_dump_json()) == profile


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mode": "none", "allow_private": True}, 'allow_private is only used with mode = "allowlist"'),
        ({"mode": "host", "intercept_tls": True}, 'intercept_tls is only used with mode = "allowlist"'),
        ({"upstream_proxy": "env"}, "upstream_proxy is only used with mode = \"allowlist\" (mode is 'none')"),
        ({"mode": "allowlist", "allow_private": "yes"}, "allow_private is true, false or a list of hosts"),
        ({"mode": "allowlist", "allow_private": 1}, "allow_private is true, false or a list of hosts"),
        ({"mode": "allowlist", "allow_private": ["mirror.corp:8443"]}, "allow_private names hosts, not ports"),
        ({"mode": "allowlist", "allow_private": ["https://x"]}, "not a host pattern: 'https://x'"),
        ({"mode": "allowlist", "upstream_proxy": "proxy.corp:3128"}, "only http:// proxies are supported"),
        ({"mode": "allowlist", "upstream_proxy": "https://proxy.corp:3128"}, "only http:// proxies are supported"),
        ({"mode": "allowlist", "upstream_proxy": "http://proxy.corp:3128/path"}, "not an upstream proxy URL"),
        ({"mode": "allowlist", "upstream_proxy": "http://proxy.corp:99999"}, "not an upstream proxy URL"),
    ],
)
def test_bad_network_options_are_refused_clearly(fields: dict[str, object], message: str) -> None:
    assert message in problem(**fields)


def test_an_upstream_proxy_password_never_appears_in_errors() -> None:
    for text in (f"https://me:{PASSWORD}@proxy.corp:3128", f"http://me:{PASSWORD}@proxy.corp:3128/x"):
        with pytest.raises(ValidationError) as caught:
            NetworkProfile(mode="allowlist", upstream_proxy=text)
        assert PASSWORD not in str(caught.value) and "***@proxy.corp:3128" in str(caught.value)


def test_an_agent_spec_takes_the_options_beside_network_or_inside_it() -> None:
    beside = AgentSpec.model_validate(
        {
            "name": "a",
            "model": "openai:gpt-6.1-terra",
            "sandbox": {"network": "allowlist", "allow": ["@python"], "allow_private": True, "intercept_tls": True},
        }
    )
    inside = AgentSpec.model_validate(
        {
            "name": "a",
            "model": "openai:gpt-6.1-terra",
            "sandbox": {
                "network": {"mode": "allowlist", "allow": ["@python"], "allow_private": True, "intercept_tls": True}
            },
        }
    )
    assert beside.sandbox.network == inside.sandbox.network
    assert beside.sandbox.network.allow_private is True and beside.sandbox.network.intercept_tls is True
    with pytest.raises(ValidationError, match="upstream_proxy is given twice"):
        AgentSpec.model_validate(
            {
                "name": "a",
                "model": "openai:gpt-6.1-terra",
                "sandbox": {
                    "network": {"mode": "allowlist", "upstream_proxy": "env"},
                    "upstream_proxy": "http://proxy:3128",
                },
            }
        )


def test_the_journal_records_the_profile_as_written_without_proxy_credentials() -> None:
    profile = NetworkProfile(
        mode="allowlist",
        allow=("@python", "mirror.corp.example"),
        allow_private=("mirror.corp.example",),
        intercept_tls=True,
        upstream_proxy=f"http://me:{PASSWORD}@proxy.corp:3128",
    )
    event = SandboxCreated(key="sandbox.created", backend="bubblewrap", workspace="/w", isolated=True,
                           network=profile.redacted())  # fmt: skip
    data = event_payload(event)  # what the journal stores
    assert data["network"] == {
        "mode": "allowlist",
        "allow": ["@python", "mirror.corp.example"],
        "allow_private": ["mirror.corp.example"],
        "intercept_tls": True,
        "upstream_proxy": "http://***@proxy.corp:3128",
    }
    assert PASSWORD not in event.model_dump_json()
    assert parse_event(event.type, event.key, event.ts, None, data) == event
    assert NetworkProfile(mode="allowlist", upstream_proxy="env").redacted().upstream_proxy == "env"


# -- private addresses --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("151.101.0.223", "public"),
        ("2a04:4e42::223", "public"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "private"),  # CGNAT
        ("203.0.113.80", "private"),  # documentation: what a transparent mirror may answer with
        ("198.18.0.1", "private"),  # benchmarking
        ("fd00::2", "private"),  # ULA
        ("127.0.0.1", "local"),
        ("::1", "local"),
        ("::ffff:127.0.0.1", "local"),
        ("169.254.169.254", "local"),  # cloud metadata
        ("fe80::1%eth0", "local"),
        ("224.0.0.1", "local"),
        ("0.0.0.0", "local"),
        ("::", "local"),
    ],
)
def test_addresses_are_public_private_or_local(address: str, kind: str) -> None:
    assert address_kind(address) == kind


def test_allow_private_covers_every_name_or_the_listed_ones_on_any_port() -> None:
    assert PrivateAddresses(everywhere=True).covers("anything.example")
    listed = PrivateAddresses(hosts=expand(["@python", "*.corp.example"]))
    assert listed.covers("pypi.org") and listed.covers("mirror.corp.example")
    assert not listed.covers("corp.example") and not listed.covers("evil.example")
    assert not PrivateAddresses().covers("pypi.org")


# -- the upstream proxy setting -------------------------------------------------------------


def test_upstream_proxy_urls_parse_with_credentials_kept_out_of_sight() -> None:
    proxy = UpstreamProxy.parse(f"http://me%40corp:{PASSWORD}@Proxy.Corp:3128/")
    assert (proxy.host, proxy.port, proxy.username) == ("proxy.corp", 3128, "me@corp")
    assert proxy.shown == "proxy.corp:3128"
    assert PASSWORD not in repr(proxy)
    assert proxy.authorization() is not None and UpstreamProxy.parse("http://p:8080").authorization() is None
    assert UpstreamProxy.parse("http://[fd00::1]").shown == "[fd00::1]:80"
    assert redact_url(f"http://me:{PASSWORD}@proxy.corp:3128") == "http://***@proxy.corp:3128"
    assert redact_url("http://proxy.corp:3128") == "http://proxy.corp:3128"


def test_the_environment_proxy_prefers_https_and_honours_no_proxy() -> None:
    assert upstream_from_environ({}) is None
    proxy = upstream_from_environ(
        {
            "HTTP_PROXY": "http://plain:1",
            "HTTPS_PROXY": "http://secure:3128",
            "NO_PROXY": "localhost, .corp.example,*.lan,registry.internal:8443",
        }
    )
    assert proxy is not None and proxy.shown == "secure:3128"
    assert proxy.bypasses("corp.example") and proxy.bypasses("mirror.corp.example") and proxy.bypasses("x.lan")
    assert proxy.bypasses("registry.internal") and proxy.bypasses("localhost")
    assert not proxy.bypasses("pypi.org") and not proxy.bypasses("notcorp.example")
    fallback = upstream_from_environ({"http_proxy": "proxy.corp:8080", "no_proxy": "*"})
    assert fallback is not None and fallback.shown == "proxy.corp:8080" and fallback.bypasses("pypi.org")
    with pytest.raises(SandboxError, match="only http:// proxies"):
        upstream_from_environ({"https_proxy": f"https://me:{PASSWORD}@proxy:3128"})


def test_the_proxy_takes_its_upstream_from_the_environment_it_is_given(tmp_path: Path) -> None:
    env = {"https_proxy": f"http://me:{PASSWORD}@proxy.corp:3128"}
    proxy = EgressProxy(allow=("@python",), secrets=(), on_event=None, state_dir=tmp_path, upstream_proxy="env",
                        environ=env)  # fmt: skip
    assert proxy.upstream is not None and proxy.upstream.shown == "proxy.corp:3128"
    direct = EgressProxy(allow=(), secrets=(), on_event=None, state_dir=tmp_path, upstream_proxy="env", environ={})
    assert direct.upstream is None


def test_a_deny_all_proxy_allows_nothing_and_tells_clients_not_to_retry(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="allows no host"):
        EgressProxy(allow=("pypi.org",), secrets=(), on_event=None, state_dir=tmp_path, deny_all=True)
    env = EgressProxy(allow=(), secrets=(), on_event=None, state_dir=tmp_path, deny_all=True).sandbox_env(3128)
    assert env["HTTPS_PROXY"] == "http://127.0.0.1:3128"
    assert env["npm_config_fetch_retries"] == "0"
    assert env["PIP_RETRIES"] == "1"  # pip names the cause of a failed connection only when it retries
    allowlist = EgressProxy(allow=("@python",), secrets=(), on_event=None, state_dir=tmp_path).sandbox_env(3128)
    assert "PIP_RETRIES" not in allowlist and "npm_config_fetch_retries" not in allowlist
