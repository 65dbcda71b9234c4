"""Shared fixtures: an isolated store home per test, and anyio on asyncio."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh store directory; CORRAL_HOME points at it so subprocesses use it too."""
    path = tmp_path / "home"
    monkeypatch.setenv("CORRAL_HOME", str(path))
    monkeypatch.delenv("CORRAL_DATABASE_URL", raising=False)
    return path
