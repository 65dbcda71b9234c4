"""Fixtures of the egress tests: recording upstream servers on loopback and a started proxy (see support.py)."""

from __future__ import annotations

from tests.sandbox.egress.support import fresh, proxy, upstreams

__all__ = ["fresh", "proxy", "upstreams"]
