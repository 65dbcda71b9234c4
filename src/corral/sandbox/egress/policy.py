"""Host patterns for the egress allowlist and secret scopes, and the check that keeps egress off internal addresses."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

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
        if port not in self.ports:
            return False
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


def is_public_address(address: str) -> bool:
    """Whether an address is globally routable: not loopback, private, link-local, CGNAT, multicast, reserved."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast
