"""Host patterns for the egress allowlist and secret scopes, the address rules, and the upstream proxy setting.

Imports nothing but ``corral.errors`` and the standard library: ``corral.sandbox.types`` validates
network profiles with it, so agent specs that load are specs the proxy accepts.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlsplit

from corral.errors import SandboxError

DEFAULT_PORTS = (80, 443)
"""The ports a pattern without ``:port`` allows."""

_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain"})


def normalize_host(host: str) -> str:
    """Lower-case, without a trailing dot or IPv6 brackets, IDNA-encoded: the form patterns are matched in."""
    host = host.strip().rstrip(".").lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise SandboxError(f"not a valid host name: {host!r}") from exc
    return host


def split_authority(authority: str, *, default_port: int | None = None) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as a normalized host and a port; raises ValueError."""
    authority = authority.strip()
    host, port_text = authority, ""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ValueError(f"unclosed IPv6 bracket in {authority!r}")
        host, rest = authority[: end + 1], authority[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"junk after the IPv6 address in {authority!r}")
        port_text = rest[1:]
    elif authority.count(":") == 1:
        host, port_text = authority.split(":")
    if not port_text:
        if default_port is None:
            raise ValueError(f"no port in {authority!r}")
        return normalize_host(host), default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port in {authority!r}")
    return normalize_host(host), int(port_text)


def printable(data: bytes | str, limit: int = 200) -> str:
    """Text from an untrusted peer, fit to quote in a status line or a log: printable ASCII, at most ``limit``."""
    text = data.decode("ascii", "replace") if isinstance(data, bytes) else data
    return "".join(ch if " " <= ch <= "~" else "?" for ch in text)[:limit]


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class HostPattern:
    """One allowlist or scope entry: ``host``, ``host:port`` or ``*.domain`` (any subdomain, not the domain)."""

    text: str
    host: str
    wildcard: bool
    ports: tuple[int, ...]
    preset: str | None = None
    """The ``@preset`` this pattern came from, for the journal."""

    @property
    def label(self) -> str:
        """How events name the rule: ``'pypi.org'``, or ``'pypi.org' (@python)`` for a preset's host."""
        return f"{self.text!r} (@{self.preset})" if self.preset else repr(self.text)

    @classmethod
    def parse(cls, text: str) -> HostPattern:
        raw = text.strip()
        if not raw or "/" in raw or "@" in raw or any(ch.isspace() for ch in raw):
            raise SandboxError(
                f"not a host pattern: {text!r}",
                hint="write 'example.com', 'example.com:8443' or '*.example.com' (no scheme, user or path)",
            )
        wildcard = raw.startswith("*.")
        body = raw[2:] if wildcard else raw
        try:
            host, port = split_authority(body, default_port=0)
        except ValueError as exc:
            raise SandboxError(f"not a host pattern: {text!r} ({exc})") from exc
        if wildcard and is_ip_literal(host):
            raise SandboxError(
                f"not a host pattern: {text!r}",
                hint="'*.' needs a domain after it; list an IP address as it is, without '*.'",
            )
        if not host or "*" in host:
            raise SandboxError(
                f"not a host pattern: {text!r}",
                hint="'*' may only start a pattern, as in '*.example.com'; to allow every host use network mode 'host'",
            )
        return cls(text=raw, host=host, wildcard=wildcard, ports=(port,) if port else DEFAULT_PORTS)

    def matches(self, host: str, port: int) -> bool:
        """Whether a normalized ``host`` and ``port`` fall under this pattern."""
        return port in self.ports and self.matches_host(host)

    def matches_host(self, host: str) -> bool:
        """Whether a normalized ``host`` falls under this pattern, on any port."""
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host


def parse_patterns(texts: Iterable[str]) -> tuple[HostPattern, ...]:
    return tuple(HostPattern.parse(text) for text in texts)


def first_match(patterns: Iterable[HostPattern], host: str, port: int) -> HostPattern | None:
    return next((pattern for pattern in patterns if pattern.matches(host, port)), None)


def names_local_target(host: str) -> bool:
    """Whether the request itself names an IP address or localhost, rather than a name that DNS resolves."""
    return host in _LOCAL_NAMES or is_ip_literal(host)


AddressKind = Literal["public", "private", "local"]


def address_kind(address: str) -> AddressKind:
    """``public`` (globally routable), ``local`` (loopback, link-local, multicast, unspecified: this
    machine, its link, or cloud metadata at 169.254.169.254) or ``private`` (any other address:
    RFC 1918, CGNAT, ULA, documentation and reserved ranges, where corporate mirrors live)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        return "local"
    return "public" if ip.is_global else "private"


def is_public_address(address: str) -> bool:
    """Whether an address is globally routable: not loopback, private, link-local, CGNAT, multicast, reserved."""
    return address_kind(address) == "public"


@dataclass(frozen=True)
class PrivateAddresses:
    """Which allowed names may resolve to private addresses (``allow_private``): all, or those matching ``hosts``."""

    everywhere: bool = False
    hosts: tuple[HostPattern, ...] = ()

    def covers(self, host: str) -> bool:
        return self.everywhere or any(pattern.matches_host(host) for pattern in self.hosts)


# -- the upstream (corporate) proxy ------------------------------------------------------------

UPSTREAM_FROM_ENV = "env"
"""The ``upstream_proxy`` value that means: take the proxy from corral's own environment."""
_ENV_PROXY_NAMES = ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY")


@dataclass(frozen=True)
class UpstreamProxy:
    """An HTTP proxy the egress proxy reaches every host through; the password never appears in its repr."""

    host: str
    port: int
    username: str = ""
    password: str = field(default="", repr=False)
    bypass: tuple[str, ...] = ()
    """NO_PROXY entries (from the environment): hosts with these suffixes are reached directly."""

    @classmethod
    def parse(cls, text: str, *, bypass: tuple[str, ...] = ()) -> UpstreamProxy:
        """``http://[user:pass@]host[:port]`` (port 80 if left out); SandboxError, never echoing a password."""
        hint = "write http://host:port or http://user:password@host:port (percent-encode special characters)"
        try:
            parts = urlsplit(text.strip())
            port = parts.port
        except ValueError as exc:
            raise SandboxError(f"not an upstream proxy URL: {redact_url(text)!r} ({exc})", hint=hint) from None
        if parts.scheme.lower() != "http":
            shown = f"{parts.scheme}://" if parts.scheme else "no scheme"
            raise SandboxError(
                f"upstream proxy {redact_url(text)!r}: only http:// proxies are supported (got {shown})", hint=hint
            )
        if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
            raise SandboxError(f"not an upstream proxy URL: {redact_url(text)!r}", hint=hint)
        try:
            host = normalize_host(parts.hostname)
        except SandboxError:
            raise SandboxError(f"not an upstream proxy URL: {redact_url(text)!r}", hint=hint) from None
        return cls(
            host=host,
            port=port or 80,
            username=unquote(parts.username or ""),
            password=unquote(parts.password or ""),
            bypass=bypass,
        )

    @property
    def shown(self) -> str:
        """``host:port``, what errors and events name it by: no credentials."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def authorization(self) -> bytes | None:
        """The ``Proxy-Authorization`` value, when the URL carried credentials."""
        if not self.username and not self.password:
            return None
        return b"Basic " + base64.b64encode(f"{self.username}:{self.password}".encode())

    def bypasses(self, host: str) -> bool:
        """Whether NO_PROXY sends ``host`` (normalized) directly: ``*``, the name itself or a parent domain."""
        return any(entry == "*" or host == entry or host.endswith("." + entry) for entry in self.bypass)


def redact_url(text: str) -> str:
    """``text`` with any ``user:password@`` before the host replaced: safe to show in errors and events."""
    scheme, sep, rest = text.strip().rpartition("://")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{scheme}{sep}{authority}{slash}{path}"


def upstream_from_environ(environ: Mapping[str, str]) -> UpstreamProxy | None:
    """The proxy corral itself is told to use (https_proxy, HTTPS_PROXY, then http_proxy, HTTP_PROXY), with
    NO_PROXY; None when none is set. A value without a scheme, as some environments write it, means http://."""
    value = next((environ[name].strip() for name in _ENV_PROXY_NAMES if environ.get(name, "").strip()), None)
    if value is None:
        return None
    if "://" not in value:
        value = "http://" + value
    raw = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
    bypass = tuple(_no_proxy_entry(entry) for entry in raw.split(",") if entry.strip())
    return UpstreamProxy.parse(value, bypass=bypass)


def _no_proxy_entry(entry: str) -> str:
    entry = entry.strip().lower().removeprefix("*.").lstrip(".")
    if entry.startswith("[") and "]" in entry:  # [v6]:port
        return entry[1 : entry.index("]")]
    if entry.count(":") == 1:  # host:port: the port is not honoured, the host is
        entry = entry.split(":")[0]
    return entry.rstrip(".")
