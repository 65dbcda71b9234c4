"""Redaction: raw, base64 and URL-encoded forms of a secret are all replaced."""

from __future__ import annotations

import base64
import urllib.parse

import pytest

from corral.errors import UsageError
from corral.secrets.redact import Redactor


def test_all_forms_of_a_secret_are_replaced() -> None:
    r = Redactor()
    value = "ghp_abc/DEF+123=xyz"
    r.add("GITHUB_TOKEN", value)
    b64 = base64.b64encode(value.encode()).decode()
    text = f"raw {value} b64 {b64} url {urllib.parse.quote(value, safe='')}"
    out = r(text)
    assert value not in out
    assert b64.rstrip("=") not in out
    assert out.count("[secret:GITHUB_TOKEN]") == 3


def test_longer_secret_containing_a_shorter_one_is_replaced_whole() -> None:
    r = Redactor()
    r.add("SHORT", "abcd1234")
    r.add("LONG", "abcd1234-and-more")
    assert r("x abcd1234-and-more y abcd1234") == "x [secret:LONG] y [secret:SHORT]"


def test_too_short_secrets_and_bad_names_are_refused() -> None:
    r = Redactor()
    with pytest.raises(UsageError, match="shorter than"):
        r.add("X", "ab")
    with pytest.raises(UsageError, match="identifier"):
        r.add("has space", "long-enough-value")
