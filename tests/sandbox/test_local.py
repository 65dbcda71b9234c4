"""The local backend's own promises: discovery, the loud warning, and what it does not isolate."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from corral.errors import SandboxError
from corral.sandbox import SandboxRequest, available_backends, get_backend
from corral.sandbox.local import LocalSandboxBackend

pytestmark = pytest.mark.anyio


def test_local_backend_is_discovered_through_entry_points() -> None:
    assert "local" in available_backends()
    backend = get_backend("local")
    assert isinstance(backend, LocalSandboxBackend)
    assert backend.name == "local"
    assert backend.isolated is False


def test_unknown_backend_names_the_available_ones() -> None:
    with pytest.raises(SandboxError, match=r"unknown sandbox backend 'nope'; available: .*local"):
        get_backend("nope")


async def test_creating_a_local_sandbox_warns_loudly(
    repo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="corral.sandbox"):
        sandbox = await LocalSandboxBackend().create(SandboxRequest(repo=repo, run_dir=tmp_path / "run"))
    try:
        [record] = [r for r in caplog.records if r.name == "corral.sandbox"]
        assert record.levelno == logging.WARNING
        assert "local sandbox: commands run on the host without isolation" in record.getMessage()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="corral.sandbox"):
            await LocalSandboxBackend().attach(sandbox.state())
        assert "without isolation" in caplog.text
    finally:
        await sandbox.destroy()


async def test_local_commands_run_on_the_host_filesystem(repo: Path, tmp_path: Path, outside: Path) -> None:
    # No isolation: only the file tools are confined; a command can read anything the user can.
    sandbox = await LocalSandboxBackend().create(SandboxRequest(repo=repo, run_dir=tmp_path / "run"))
    try:
        result = await sandbox.exec(["cat", str(outside / "secret.txt")], timeout=10)
        assert result.stdout == "host secret\n"
        home = await sandbox.exec('printf %s "$HOME"', timeout=10)
        assert Path(home.stdout) == sandbox.workspace
    finally:
        await sandbox.destroy()


async def test_attach_refuses_another_backends_state(repo: Path, tmp_path: Path) -> None:
    backend = LocalSandboxBackend()
    sandbox = await backend.create(SandboxRequest(repo=repo, run_dir=tmp_path / "run"))
    try:
        state = sandbox.state() | {"backend": "bubblewrap"}
        with pytest.raises(SandboxError, match="belongs to the 'bubblewrap' backend"):
            await backend.attach(state)
    finally:
        await sandbox.destroy()
