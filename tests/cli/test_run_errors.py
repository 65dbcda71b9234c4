"""What went wrong is said where it happened: a model server that cannot be reached is named."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.cli.run_support import run_corral, stored

pytestmark = pytest.mark.slow  # the real entry point


def closed_port() -> int:
    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_connection_error_names_the_endpoint_it_tried(tmp_path: Path, repo: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    (tmp_path / "corral.toml").write_text(
        f"""
[agents.fixer]
model = "openai-chat:gpt-4.1-mini"
base_url = "{url}"
sandbox = "local"
[agents.fixer.retry]
max_attempts = 2
initial_backoff_s = 0.01
max_backoff_s = 0.02
"""
    )
    home = tmp_path / "home"
    done = run_corral("run", "fixer", "fix it", "--repo", str(repo), cwd=tmp_path, home=home)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"at {url}" in done.stdout  # the run's error line
    record, events = stored(home)
    assert f"at {url}" in (record.error or "")
    (retry,) = [e.event for e in events if e.type == "model.retry"]
    assert f"at {url}" in retry.error  # type: ignore[union-attr]
