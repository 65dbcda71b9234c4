"""``make``: bubblewrap sandboxes of a small git repository, destroyed after the test."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from corral.sandbox import Sandbox, SandboxRequest
from corral.sandbox.bubblewrap.backend import BubblewrapSandbox, BubblewrapSandboxBackend
from corral.sandbox.bubblewrap.dirs import SandboxDirs
from corral.sandbox.bubblewrap.overlay import unmount_all
from tests.sandbox.conftest import build_repo, skip_unless_bubblewrap_runs

MakeBwrap = Callable[..., Awaitable[BubblewrapSandbox]]
"""``await make(**request_fields)``: a sandbox of the test's repo (or ``repo=``) in its own run dir."""


@pytest.fixture
async def make(anyio_backend: str, tmp_path: Path) -> AsyncIterator[MakeBwrap]:
    skip_unless_bubblewrap_runs()
    repo = build_repo(tmp_path / "repo", with_git=True)
    created: list[Sandbox] = []

    async def make(**fields: object) -> BubblewrapSandbox:
        fields.setdefault("repo", repo)
        fields.setdefault("run_dir", tmp_path / f"run-{len(created)}")
        sandbox = await BubblewrapSandboxBackend().create(SandboxRequest(**fields))  # type: ignore[arg-type]
        created.append(sandbox)
        return sandbox

    yield make
    for sandbox in created:
        await sandbox.destroy()


def simulate_reboot(sandbox: BubblewrapSandbox) -> None:
    """What a reboot takes from a sandbox: its processes (the resident init's namespace), every mount, /run."""
    dirs = SandboxDirs.of(sandbox.run_dir, privileged=True)
    cgroup = dirs.cgroup()
    assert dirs.portal is not None and cgroup is not None
    deadline = time.monotonic() + 5
    while cgroup.processes() and time.monotonic() < deadline:
        cgroup.kill_all()
        time.sleep(0.01)
    assert not cgroup.processes()
    for mounted in (dirs.portal, dirs.workspace, dirs.run_dir):
        unmount_all(mounted)
