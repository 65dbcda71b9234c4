"""The bundled demo: a small sample repository with one bug, and a scripted model session that fixes it."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).parent

SAMPLE_REPO: Path = _HERE / "sample_repo"
"""A tiny stdlib-only Python project whose test suite has exactly one failing test."""

DEMO_SCRIPT: Path = _HERE / "demo_script.toml"
"""The scripted-model session that explores SAMPLE_REPO, fixes its bug with the built-in tools, tests it."""
