"""destroy() leaves nothing behind: no process, mount, cgroup, loop device, uid claim or directory."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

from corral.errors import SandboxError
from corral.sandbox import Limits, SandboxRequest
from corral.sandbox.bubblewrap.backend import BubblewrapSandboxBackend
from corral.sandbox.bubblewrap.dirs import DISK_ROOT, sandbox_id
from corral.sandbox.bubblewrap.diskimage import loop_devices_for
from tests.sandbox.conftest import build_repo, skip_unless_bubblewrap_runs
from tests.sandbox.host import host_footprint, processes_with

pytestmark = pytest.mark.anyio

CYCLES = 6


@pytest.mark.slow  # seconds of real work: the full suite runs it, the fast lane does not
async def test_many_cycles_with_killed_and_escaping_commands_leave_nothing_behind(tmp_path: Path) -> None:
    skip_unless_bubblewrap_runs()
    repo = build_repo(tmp_path / "repo", with_git=True)
    token = f"81.{secrets.randbelow(10**6):06d}"
    backend = BubblewrapSandboxBackend()
    assert processes_with(token) == []

    async def cycle(index: int) -> None:
        run_dir = tmp_path / "runs" / f"run-{index}"
        sandbox = await backend.create(SandboxRequest(repo=repo, run_dir=run_dir, limits=Limits(pids=64)))
        assert (await sandbox.exec("echo ok > out.txt; cat out.txt", timeout=10)).stdout == "ok\n"
        timed_out = await sandbox.exec(f"sleep {token} & setsid sleep {token}; wait", timeout=0.3)
        assert timed_out.timed_out
        escaped = await sandbox.exec(
            f"sh -c 'sleep {token} & disown'; setsid sh -c '(sleep {token} &) ; sleep {token}' & echo gone", timeout=10
        )
        assert escaped.stdout == "gone\n"
        running = asyncio.create_task(sandbox.exec(f"setsid sleep {token}; sleep {token}", timeout=30))
        await asyncio.sleep(0.1)
        await sandbox.destroy()  # kills the command still running
        # The kernel detaches an auto-clearing loop device in a work item after the unmount; destroy waits for it.
        assert loop_devices_for(DISK_ROOT / f"{sandbox_id(run_dir.resolve())}.img") == []
        assert (await asyncio.wait_for(running, 5)).exit_code is None
        assert not run_dir.exists() or not any(run_dir.iterdir())

    # Two at a time: concurrent sandboxes must not trip over each other's cleanup either.
    for first in range(0, CYCLES, 2):
        await asyncio.gather(cycle(first), cycle(first + 1))

    for _ in range(100):
        if not processes_with(token):
            break
        await asyncio.sleep(0.05)
    assert processes_with(token) == []
    assert host_footprint(tmp_path) == {name: [] for name in host_footprint(tmp_path)}


async def test_destroy_of_a_sandbox_that_failed_half_way_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    skip_unless_bubblewrap_runs()
    from corral.sandbox.bubblewrap import setup

    repo = build_repo(tmp_path / "repo", with_git=False)

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(setup, "ensure_mounted", broken)  # what provision() mounts, half way through create
    with pytest.raises(OSError, match="No space left"):
        await BubblewrapSandboxBackend().create(SandboxRequest(repo=repo, run_dir=tmp_path / "run"))
    assert host_footprint(tmp_path) == {name: [] for name in host_footprint(tmp_path)}


@pytest.mark.slow
async def test_suspend_gives_back_mounts_and_cgroups_and_attach_brings_the_files_back(tmp_path: Path) -> None:
    skip_unless_bubblewrap_runs()
    repo = build_repo(tmp_path / "repo", with_git=True)
    backend = BubblewrapSandboxBackend()
    sandbox = await backend.create(SandboxRequest(repo=repo, run_dir=tmp_path / "run", limits=Limits(pids=64)))
    await sandbox.exec("echo kept > made.txt", timeout=10)
    state = sandbox.state()
    await sandbox.suspend()
    held = host_footprint(tmp_path)
    for name in ("mounts", "cgroups", "portals", "loop devices"):
        assert held[name] == [], name
    with pytest.raises(SandboxError, match="closed"):
        await sandbox.exec("true", timeout=5)

    again = await backend.attach(state)
    assert (await again.exec("cat made.txt", timeout=10)).stdout == "kept\n"
    await again.destroy()
    assert host_footprint(tmp_path) == {name: [] for name in host_footprint(tmp_path)}
