"""The egress proxy's rules without a network: host patterns, secret rewriting and scrubbing, the CA."""

from __future__ import annotations

import base64
import json
import os
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from pydantic import SecretStr

from corral.errors import SandboxError
from corral.sandbox.base import ScopedSecret
from corral.sandbox.egress.ca import SandboxCA
from corral.sandbox.egress.policy import HostPattern, first_match, is_public_address, parse_patterns, split_authority
from corral.sandbox.egress.proxy import EgressProxy
from corral.sandbox.egress.secrets import Blocked, RewrittenRequest, Scrubber, SecretGuard, is_text_body

VALUE = 'v&l"ue/+=x'  # characters that need escaping in URLs and JSON
PLACEHOLDER = "PH_TOKEN_123"


def guard(hosts: tuple[str, ...] = ("api.example.com",)) -> SecretGuard:
    return SecretGuard([ScopedSecret(name="TOKEN", value=SecretStr(VALUE), hosts=hosts, placeholder=PLACEHOLDER)])


# -- host patterns --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "host", "port", "allowed"),
    [
        ("example.com", "example.com", 443, True),
        ("example.com", "example.com", 80, True),
        ("example.com", "example.com", 8443, False),
        ("example.com", "www.example.com", 443, False),
        ("example.com:8443", "example.com", 8443, True),
        ("example.com:8443", "example.com", 443, False),
        ("*.example.com", "a.example.com", 443, True),
        ("*.example.com", "a.b.example.com", 80, True),
        ("*.example.com", "example.com", 443, False),
        ("*.example.com", "badexample.com", 443, False),
        ("*.example.com:9000", "x.example.com", 9000, True),
        ("Example.COM.", "example.com", 443, True),
        ("127.0.0.1:8080", "127.0.0.1", 8080, True),
        ("[::1]:8080", "::1", 8080, True),
        ("localhost:5000", "localhost", 5001, False),
    ],
)
def test_host_patterns(pattern: str, host: str, port: int, allowed: bool) -> None:
    assert HostPattern.parse(pattern).matches(host, port) is allowed


@pytest.mark.parametrize("bad", ["", "*", "*.", "https://example.com", "example.com/path", "a b", "host:99999",
                                 "host:x", "*.10.0.0.1", "user@host", "ex*ample.com"])  # fmt: skip
def test_bad_patterns_are_refused_with_a_hint(bad: str) -> None:
    with pytest.raises(SandboxError, match="not a host pattern"):
        HostPattern.parse(bad)


def test_first_match_names_the_rule_and_authorities_split() -> None:
    rules = parse_patterns(["pypi.org", "*.pythonhosted.org"])
    match = first_match(rules, "files.pythonhosted.org", 443)
    assert match is not None and match.text == "*.pythonhosted.org"
    assert first_match(rules, "evil.org", 443) is None
    assert split_authority("Example.com:443") == ("example.com", 443)
    assert split_authority("[2001:db8::1]:8443") == ("2001:db8::1", 8443)
    assert split_authority("host", default_port=80) == ("host", 80)
    with pytest.raises(ValueError, match="no port"):
        split_authority("host")


@pytest.mark.parametrize(
    ("address", "public"),
    [("8.8.8.8", True), ("2606:4700::1111", True), ("127.0.0.1", False), ("10.1.2.3", False),
     ("192.168.0.1", False), ("169.254.169.254", False), ("100.64.0.1", False), ("::1", False),
     ("::ffff:127.0.0.1", False), ("fe80::1%eth0", False), ("0.0.0.0", False), ("224.0.0.1", False)],
)  # fmt: skip
def test_only_globally_routable_addresses_count_as_public(address: str, public: bool) -> None:
    assert is_public_address(address) is public


# -- secrets -------------------------------------------------------------------------------


def rewrite(
    body: bytes = b"",
    *,
    target: bytes = b"/",
    headers: list[tuple[bytes, bytes]] | None = None,
    host: str = "api.example.com",
    tls: bool = True,
    text: bool = True,
) -> Blocked | RewrittenRequest:
    return guard().rewrite(host, 443, tls=tls, target=target, headers=headers or [], body=body, text_body=text)


def test_placeholder_is_escaped_for_where_it_stands() -> None:
    result = rewrite(
        json.dumps({"k": PLACEHOLDER}).encode(),
        target=f"/x?key={PLACEHOLDER}&b=1".encode(),
        headers=[(b"authorization", f"Bearer {PLACEHOLDER}".encode()), (b"content-type", b"application/json")],
    )
    assert isinstance(result, RewrittenRequest)
    assert json.loads(result.body) == {"k": VALUE}
    assert result.target == b"/x?key=v%26l%22ue/%2B%3Dx&b=1"
    assert (b"authorization", f"Bearer {VALUE}".encode()) in result.headers
    assert result.secrets_used == ("TOKEN",)


def test_form_bodies_get_the_value_percent_encoded_and_basic_credentials_are_reencoded() -> None:
    basic = base64.b64encode(f"me:{PLACEHOLDER}".encode())
    result = rewrite(
        f"user=me&token={PLACEHOLDER}".encode(),
        headers=[(b"content-type", b"application/x-www-form-urlencoded"), (b"authorization", b"Basic " + basic)],
    )
    assert isinstance(result, RewrittenRequest)
    assert result.body == b"user=me&token=v%26l%22ue/%2B%3Dx"
    auth = dict(result.headers)[b"authorization"]
    assert base64.b64decode(auth.split()[1]).decode() == f"me:{VALUE}"


def test_binary_bodies_are_not_rewritten_and_say_no_secret_was_used() -> None:
    result = rewrite(b"\x00\x01" + PLACEHOLDER.encode(), text=False)
    assert isinstance(result, RewrittenRequest)
    assert result.body == b"\x00\x01" + PLACEHOLDER.encode() and result.secrets_used == ()


def test_placeholders_outside_their_scope_or_in_cleartext_block_the_request() -> None:
    for blocked in (
        rewrite(target=f"/?q={PLACEHOLDER}".encode(), host="evil.example.net"),
        rewrite(PLACEHOLDER.encode(), host="evil.example.net", text=False),
        rewrite(headers=[(b"x-k", PLACEHOLDER.encode())], tls=False),
        rewrite(headers=[(b"authorization", b"Basic " + base64.b64encode(f"u:{PLACEHOLDER}".encode()))], host="x.io"),
    ):
        assert isinstance(blocked, Blocked) and "'TOKEN'" in blocked.reason and VALUE not in blocked.reason
    assert guard().check_head("evil.example.net", 443, f"{PLACEHOLDER}.evil.example.net:443".encode(), []) is not None
    assert guard().check_head("api.example.com", 443, b"api.example.com:443", []) is None


@pytest.mark.parametrize(
    ("content_type", "encoding", "text"),
    [(None, None, True), (b"application/json; charset=utf-8", None, True), (b"text/plain", None, True),
     (b"application/vnd.api+json", None, True), (b"multipart/form-data; boundary=x", None, True),
     (b"application/octet-stream", None, False), (b"image/png", None, False), (b"application/json", b"gzip", False)],
)  # fmt: skip
def test_which_bodies_count_as_text(content_type: bytes | None, encoding: bytes | None, text: bool) -> None:
    assert is_text_body(content_type, encoding) is text


def test_scrubber_finds_a_value_split_across_every_chunk_boundary() -> None:
    needle, placeholder = b"sk-secret-value", b"[PH]"
    stream = b"before " + needle + b" middle " + needle + b" after"
    for cut in range(1, len(stream)):
        scrubber = Scrubber([(needle, placeholder)])
        out = scrubber.feed(stream[:cut]) + scrubber.feed(stream[cut:]) + scrubber.flush()
        assert out == b"before [PH] middle [PH] after", cut


def test_scrubber_holds_back_only_a_possible_start_of_a_value() -> None:
    scrubber = Scrubber([(b"sk-secret", b"[PH]")])
    assert scrubber.feed(b"data: hello\n\n") == b"data: hello\n\n"  # a stream event passes at once
    assert scrubber.feed(b"partial sk-se") == b"partial "
    assert scrubber.feed(b"cret!") == b"[PH]!"


def test_guard_scrubs_encoded_forms_and_redacts_text() -> None:
    scrubber = guard().scrubber()
    assert scrubber is not None
    echoed = json.dumps({"token": VALUE}).encode() + b" /?k=v%26l%22ue/%2B%3Dx"
    out = scrubber.feed(echoed) + scrubber.flush()
    assert VALUE.encode() not in out and b"v%26l" not in out and PLACEHOLDER.encode() in out
    assert guard().redact(f"error: bad token {VALUE}") == "error: bad token [secret TOKEN]"
    assert VALUE not in repr(guard())


@pytest.mark.parametrize(
    ("value", "placeholder", "hosts", "message"),
    [("", "PH", ("a.com",), "non-empty"), ("same", "same", ("a.com",), "distinct"),
     ("v", "PH", (), "scoped to no host"), ("a\nb", "PH", ("a.com",), "line break")],
)  # fmt: skip
def test_unusable_secrets_are_refused(value: str, placeholder: str, hosts: tuple[str, ...], message: str) -> None:
    with pytest.raises(SandboxError, match=message):
        SecretGuard([ScopedSecret(name="S", value=SecretStr(value), hosts=hosts, placeholder=placeholder)])


# -- the CA --------------------------------------------------------------------------------


def test_ca_signs_leaves_that_verify_for_names_and_addresses(tmp_path: Path) -> None:
    ca = SandboxCA.load_or_create(tmp_path)
    assert stat.S_IMODE(ca.key_path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(ca.cert_path.read_bytes())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for host in ("api.example.com", "127.0.0.1"):
        leaf = x509.load_pem_x509_certificate(ca._leaf_pem(host).split(b"-----END CERTIFICATE-----")[0]
                                              + b"-----END CERTIFICATE-----\n")  # fmt: skip
        leaf.verify_directly_issued_by(cert)
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert host in [str(name.value) for name in names]
    assert isinstance(ca.server_context("api.example.com"), ssl.SSLContext)
    assert ca.server_context("api.example.com") is ca.server_context("api.example.com")
    assert sorted(os.listdir(tmp_path)) == ["egress-ca-key.pem", "egress-ca.pem"]  # leaf files do not linger


def test_a_ca_key_others_could_read_is_not_reused(tmp_path: Path) -> None:
    first = SandboxCA.load_or_create(tmp_path)
    assert SandboxCA.load_or_create(tmp_path).cert == first.cert
    first.key_path.chmod(0o644)
    second = SandboxCA.load_or_create(tmp_path)
    assert second.cert != first.cert
    assert stat.S_IMODE(second.key_path.stat().st_mode) == 0o600


# -- the proxy's configuration ---------------------------------------------------------------


def test_proxy_configuration_is_checked_up_front(tmp_path: Path) -> None:
    secret = ScopedSecret(name="TOKEN", value=SecretStr(VALUE), hosts=("api.example.com",), placeholder=PLACEHOLDER)
    with pytest.raises(SandboxError, match="must intercept TLS"):
        EgressProxy(allow=("api.example.com",), secrets=(secret,), on_event=None, state_dir=tmp_path, intercept=False)
    with pytest.raises(SandboxError, match="not a host pattern"):
        EgressProxy(allow=("https://api.example.com",), secrets=(), on_event=None, state_dir=tmp_path)
    blind = EgressProxy(allow=("api.example.com",), secrets=(), on_event=None, state_dir=tmp_path)
    assert blind.ca_cert_path is None and blind.socket_path == tmp_path / "egress.sock"
    assert blind.sandbox_env(3128)["HTTPS_PROXY"] == "http://127.0.0.1:3128"
    assert "SSL_CERT_FILE" not in blind.sandbox_env(3128)
    intercepting = EgressProxy(allow=("api.example.com",), secrets=(secret,), on_event=None, state_dir=tmp_path)
    assert intercepting.ca_cert_path == tmp_path / "egress-ca.pem"
    env = intercepting.sandbox_env(3128, ca_cert_in_sandbox="/run/corral/ca.pem")
    assert env["SSL_CERT_FILE"] == env["CURL_CA_BUNDLE"] == env["NODE_EXTRA_CA_CERTS"] == "/run/corral/ca.pem"
    assert env["PIP_CERT"] == env["npm_config_cafile"] == env["REQUESTS_CA_BUNDLE"] == "/run/corral/ca.pem"
    with pytest.raises(SandboxError, match="where its CA is mounted"):
        intercepting.sandbox_env(3128)
    argv = intercepting.relay_argv("/run/corral/egress.sock", 3128)
    assert argv[:4] == ["/usr/bin/python3", "-I", "-S", "-c"] and argv[5:] == [
        "--socket", "/run/corral/egress.sock", "--port", "3128"
    ]  # fmt: skip
