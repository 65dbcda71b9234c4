"""Swapping secret placeholders for real values in outgoing requests, and real values out of responses."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from corral.errors import SandboxError
from corral.sandbox.base import ScopedSecret
from corral.sandbox.egress.policy import HostPattern, first_match, parse_patterns

Headers = list[tuple[bytes, bytes]]

# Characters a value may keep unescaped in a URL: unreserved plus the sub-delimiters that mean nothing
# special in a path segment or a query value.
_URL_SAFE = "-._~:@!$'()*,/"
_TEXT_TYPES = re.compile(
    rb"^(text/[^;]+|application/(json|[^;]+\+json|x-ndjson|x-www-form-urlencoded|xml|[^;]+\+xml"
    rb"|javascript|graphql)|multipart/form-data)\s*(;.*)?$",
    re.IGNORECASE,
)
_BASIC_HEADERS = frozenset({b"authorization", b"proxy-authorization"})


@dataclass(frozen=True)
class Blocked:
    """A request the proxy refuses because of a secret; ``reason`` names the secret, never its value."""

    reason: str


@dataclass(frozen=True)
class RewrittenRequest:
    target: bytes
    headers: Headers
    body: bytes
    secrets_used: tuple[str, ...]


@dataclass(frozen=True)
class _Secret:
    name: str
    placeholder: bytes
    value: bytes
    scope: tuple[HostPattern, ...]

    def found_in(self, blob: bytes) -> bool:
        return self.placeholder in blob or _url(self.placeholder) in blob

    def in_scope(self, host: str, port: int) -> bool:
        return first_match(self.scope, host, port) is not None


def _url(data: bytes) -> bytes:
    return quote(data, safe=_URL_SAFE).encode("ascii")


def _json(data: bytes) -> bytes:
    return json.dumps(data.decode("utf-8", "surrogateescape"))[1:-1].encode("utf-8", "surrogateescape")


def _replace(blob: bytes, pairs: Sequence[tuple[bytes, bytes]]) -> bytes:
    for needle, replacement in pairs:
        if needle and needle in blob:
            blob = blob.replace(needle, replacement)
    return blob


def _basic_credentials(value: bytes) -> bytes | None:
    """The decoded ``user:password`` of a ``Basic`` authorization value, or None."""
    scheme, _, encoded = value.strip().partition(b" ")
    if scheme.lower() != b"basic" or not encoded:
        return None
    try:
        return base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def is_text_body(content_type: bytes | None, content_encoding: bytes | None) -> bool:
    """Whether a request body is text the proxy may rewrite: a textual type (or none), not compressed."""
    if content_encoding and content_encoding.strip().lower() != b"identity":
        return False
    return content_type is None or _TEXT_TYPES.match(content_type.strip()) is not None


class SecretGuard:
    """What the proxy knows about a sandbox's scoped secrets; holds their values, so never log or repr it."""

    def __init__(self, secrets: Sequence[ScopedSecret]) -> None:
        parsed: list[_Secret] = []
        for secret in secrets:
            value = secret.value.get_secret_value().encode("utf-8")
            placeholder = secret.placeholder.encode("utf-8")
            if not value or not placeholder or placeholder in value or value in placeholder:
                raise SandboxError(f"secret {secret.name!r} needs a non-empty value and a placeholder distinct from it")
            if not secret.hosts:
                raise SandboxError(f"secret {secret.name!r} is scoped to no host", hint="list the hosts it is for")
            if any(byte in value for byte in b"\r\n\0"):
                raise SandboxError(f"secret {secret.name!r} contains a line break or NUL byte")
            parsed.append(_Secret(secret.name, placeholder, value, parse_patterns(secret.hosts)))
        self._secrets = tuple(parsed)

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def __repr__(self) -> str:
        return f"SecretGuard({[secret.name for secret in self._secrets]})"

    def scoped_to(self, host: str, port: int) -> bool:
        """Whether any secret may be sent to ``host:port``."""
        return any(secret.in_scope(host, port) for secret in self._secrets)

    def check_head(self, host: str, port: int, target: bytes, headers: Headers) -> Blocked | None:
        """Block a request head (e.g. a CONNECT) that carries a placeholder for a host outside its scope."""
        for secret in self._present([target, *self._header_views(headers)]):
            if not secret.in_scope(host, port):
                return self._out_of_scope(secret)
        return None

    def rewrite(
        self, host: str, port: int, *, tls: bool, target: bytes, headers: Headers, body: bytes, text_body: bool
    ) -> Blocked | RewrittenRequest:
        """The request with placeholders replaced for ``host:port``, or why it may not be sent at all.

        A placeholder bound for a host outside its secret's scope blocks the request, wherever it is
        (target, headers, any body). Inside the scope it is replaced in the target, in header values
        (inside ``Basic`` credentials too) and in text bodies, escaped for where it stands.
        """
        present = self._present([target, *self._header_views(headers), body])
        for secret in present:
            if not secret.in_scope(host, port):
                return self._out_of_scope(secret)
            if not tls:
                return Blocked(
                    f"request carries the placeholder of secret {secret.name!r}; "
                    "secrets are only sent over HTTPS, never in cleartext"
                )
        if not present:
            return RewrittenRequest(target, headers, body, ())
        used: set[str] = set()

        def swap(blob: bytes, encode_value: bool, json_body: bool = False) -> bytes:
            for secret in present:
                if json_body:
                    pairs = [(secret.placeholder, _json(secret.value))]
                elif encode_value:
                    pairs = [(secret.placeholder, _url(secret.value))]
                else:
                    pairs = [(secret.placeholder, secret.value)]
                pairs.append((_url(secret.placeholder), _url(secret.value)))
                new = _replace(blob, pairs)
                if new != blob:
                    used.add(secret.name)
                    blob = new
            return blob

        new_headers: Headers = []
        content_type = None
        for name, value in headers:
            if name.lower() == b"content-type":
                content_type = value
            credentials = _basic_credentials(value) if name.lower() in _BASIC_HEADERS else None
            if credentials is not None and any(secret.found_in(credentials) for secret in present):
                value = b"Basic " + base64.b64encode(swap(credentials, encode_value=False))
            else:
                value = swap(value, encode_value=False)
            new_headers.append((name, value))
        new_target = swap(target, encode_value=True)
        new_body = body
        if text_body and body:
            kind = (content_type or b"").split(b";")[0].strip().lower()
            if kind == b"application/x-www-form-urlencoded":
                new_body = swap(body, encode_value=True)
            else:
                new_body = swap(body, encode_value=False, json_body=kind.endswith(b"json"))
        names = tuple(secret.name for secret in present if secret.name in used)
        return RewrittenRequest(new_target, new_headers, new_body, names)

    def scrubber(self) -> Scrubber | None:
        """A filter that turns any real value in a response back into its placeholder."""
        pairs: list[tuple[bytes, bytes]] = []
        for secret in self._secrets:
            pairs.append((secret.value, secret.placeholder))
            for encode in (_url, _json):
                encoded = encode(secret.value)
                if encoded != secret.value:
                    pairs.append((encoded, encode(secret.placeholder)))
        return Scrubber(pairs) if pairs else None

    def scrub_headers(self, headers: Headers) -> Headers:
        scrubber = self.scrubber()
        if scrubber is None:
            return headers
        return [(name, scrubber.whole(value)) for name, value in headers]

    def redact(self, text: str) -> str:
        """``text`` with every real value replaced by the secret's name: for anything logged or journaled."""
        for secret in self._secrets:
            text = text.replace(secret.value.decode("utf-8", "replace"), f"[secret {secret.name}]")
        return text

    def _present(self, blobs: Sequence[bytes]) -> list[_Secret]:
        return [secret for secret in self._secrets if any(secret.found_in(blob) for blob in blobs)]

    @staticmethod
    def _header_views(headers: Headers) -> list[bytes]:
        views: list[bytes] = []
        for name, value in headers:
            views += [name, value]
            if name.lower() in _BASIC_HEADERS:
                credentials = _basic_credentials(value)
                if credentials is not None:
                    views.append(credentials)
        return views

    @staticmethod
    def _out_of_scope(secret: _Secret) -> Blocked:
        return Blocked(f"request carries the placeholder of secret {secret.name!r}, which is scoped to other hosts")


class Scrubber:
    """Streaming replacement of needles in a body, holding back only a tail that could start a needle."""

    def __init__(self, pairs: Sequence[tuple[bytes, bytes]]) -> None:
        self._pairs = [(needle, replacement) for needle, replacement in pairs if needle]
        self._pending = b""

    def whole(self, data: bytes) -> bytes:
        return _replace(data, self._pairs)

    def feed(self, data: bytes) -> bytes:
        buffer = _replace(self._pending + data, self._pairs)
        hold = 0
        for needle, _ in self._pairs:
            for size in range(min(len(needle) - 1, len(buffer)), hold, -1):
                if buffer.endswith(needle[:size]):
                    hold = size
                    break
        self._pending = buffer[len(buffer) - hold :] if hold else b""
        return buffer[: len(buffer) - hold]

    def flush(self) -> bytes:
        pending, self._pending = self._pending, b""
        return pending
