"""Redaction: every registered secret value is replaced by its placeholder before it is stored or sent."""

from __future__ import annotations

import base64
import re
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any

from corral.errors import UsageError

MIN_SECRET_LENGTH = 4


def placeholder(name: str) -> str:
    """The text that stands for a secret wherever its value would appear."""
    return f"[secret:{name}]"


class Redactor:
    """A thread-safe set of secret values and the one function that scrubs them from text.

    Besides the raw value it also scrubs its base64 and URL-encoded forms, which is how secrets
    most often leak through tool output (auth headers, URLs).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._forms: dict[str, str] = {}  # secret form -> placeholder
        self._pattern: re.Pattern[str] | None = None

    def add(self, name: str, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", name):
            raise UsageError(f"secret name {name!r} must be an identifier (letters, digits, _ . -)")
        if len(value) < MIN_SECRET_LENGTH:
            raise UsageError(
                f"secret {name!r} is shorter than {MIN_SECRET_LENGTH} characters; it cannot be redacted reliably"
            )
        forms = {
            value,
            base64.b64encode(value.encode()).decode().rstrip("="),
            urllib.parse.quote(value, safe=""),
        }
        with self._lock:
            for form in forms:
                if len(form) >= MIN_SECRET_LENGTH:
                    self._forms[form] = placeholder(name)
            # Longest first, so a value that contains another secret is replaced whole.
            alternatives = sorted(self._forms, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(f) for f in alternatives))
        return placeholder(name)

    def __call__(self, text: str) -> str:
        pattern = self._pattern
        if pattern is None or not text:
            return text
        return pattern.sub(lambda m: self._forms[m.group(0)], text)

    def data(self, value: Any) -> Any:
        """Scrub every string inside a JSON-like value (keys included)."""
        if self._pattern is None:  # nothing registered: skip the walk (it is on every event's path)
            return value
        return redact_data(value, self)

    def __len__(self) -> int:
        return len(self._forms)


def redact_data(value: Any, redact: Callable[[str], str]) -> Any:
    """Apply ``redact`` to every string inside a JSON-like value."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_data(k, redact): redact_data(v, redact) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v, redact) for v in value]
    return value


#: The process-wide redactor: the journal, the model step and every tool result pass through it.
REDACTOR = Redactor()


def secret(name: str, value: str) -> str:
    """Register a secret value for this process and return its placeholder.

    From then on the value is scrubbed from every journal event, model request and tool result.
    """
    return REDACTOR.add(name, value)
