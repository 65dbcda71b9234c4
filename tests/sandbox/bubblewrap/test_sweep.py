"""Sandboxes of processes that died: resumable ones survive a sweep, those of ended runs and leftovers go.

Each test starts a real process that makes a bubblewrap sandbox and then SIGKILLs itself at a chosen
point, so what is left on the host is what a crash leaves.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from corral.errors import SandboxError
from corral.sandbox import SandboxRequest, mark_run_ended
from corral.sandbox.base import RUN_ENDED_MARKER
from corral.sandbox.bubblewrap import overlay
from corral.sandbox.bubblewrap import sweep as sweep_module
from corral.sandbox.bubblewrap.backend import BubblewrapSandboxBackend
from corral.sandbox.bubblewrap.dirs import DISK_ROOT, PORTAL_ROOT, lock_path, sandbox_id
from corral.sandbox.bubblewrap.diskimage import loop_devices_for
from corral.sandbox.bubblewrap.identity import claims, registry_lock
from corral.sandbox.bubblewrap.limits import cgroup_support
from corral.sandbox.bubblewrap.sweep import sweep_orphans
from tests.sandbox.conftest import build_repo, skip_unless_bubblewrap_runs
from tests.sandbox.host import host_footprint, processes_with

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[3]

# Makes a sandbox, starts `sleep TOKEN` in it, prints the sandbox's state, then dies (SIGKILL) either
# at once ("running"), after marking its run ended as the runtime does before destroy ("ended"), or
# inside destroy() just after the run dir's state is gone ("in-destroy").
CRASHER = r"""
import asyncio, json, os, signal, sys
from pathlib import Path
from corral.sandbox import Limits, SandboxRequest, mark_run_ended
from corral.sandbox.bubblewrap import dirs as sandbox_dirs
from corral.sandbox.bubblewrap.backend import BubblewrapSandboxBackend

repo, run_dir, token, mode = sys.argv[1:5]

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

async def main():
    sandbox = await BubblewrapSandboxBackend().create(
        SandboxRequest(repo=Path(repo), run_dir=Path(run_dir), limits=Limits(disk_mb=64))
    )
    await sandbox.write_file("made-before-the-crash.txt", b"kept\n")
    asyncio.create_task(sandbox.exec(f"sleep {token}", timeout=60))
    await asyncio.sleep(0.3)
    print(json.dumps(sandbox.state()), flush=True)
    if mode == "ended":
        mark_run_ended(Path(run_dir))
    if mode == "in-destroy":
        sandbox_dirs.release_image = die  # destroy has unmounted everything and removed the state
        await sandbox.destroy()
    die()

asyncio.run(main())
"""


def crash(repo: Path, run_dir: Path, token: str, mode: str) -> dict[str, object]:
    completed = subprocess.run(
        [sys.executable, "-c", CRASHER, str(repo), str(run_dir), token, mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == -9, completed.stderr
    return json.loads(completed.stdout)


def crashed_sandbox(tmp_path: Path, mode: str) -> tuple[Path, str, str, dict[str, object]]:
    """A sandbox whose process SIGKILLed itself (see CRASHER): its run dir, id, sleep token and state."""
    repo, run_dir = build_repo(tmp_path / "repo", with_git=False), tmp_path / "run"
    token = f"71.{secrets.randbelow(10**6):06d}"
    state = crash(repo, run_dir, token, mode)
    return run_dir, sandbox_id(run_dir.resolve()), token, state


def prune() -> subprocess.CompletedProcess[str]:
    """``corral sandbox prune`` in a process of its own, as a user runs it."""
    pruned = subprocess.run(
        [sys.executable, "-m", "corral", "sandbox", "prune"], capture_output=True, text=True, timeout=60, check=False
    )
    assert pruned.returncode == 0, pruned.stderr
    return pruned


class AnotherSweepProbing:
    """Another sweep, mid-probe of ``run_dir``'s sandbox: it holds the registry lock and, for the
    instant of its probe, the sandbox's lock exclusively (here: for ``seconds``), in a thread."""

    def __init__(self, run_dir: Path, seconds: float) -> None:
        self.run_dir, self.seconds = run_dir, seconds
        self.probing = threading.Event()
        self.thread = threading.Thread(target=self._probe, daemon=True)

    def start(self) -> None:
        self.thread.start()
        assert self.probing.wait(timeout=10), "the other sweep never took its locks"

    def _probe(self) -> None:
        with registry_lock():
            probe = os.open(lock_path(self.run_dir), os.O_RDONLY | os.O_CLOEXEC)
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.probing.set()
                time.sleep(self.seconds)
            finally:
                os.close(probe)


def require_root_sandboxes() -> None:
    skip_unless_bubblewrap_runs()
    if os.geteuid() != 0:
        pytest.skip("sandboxes of an unprivileged user keep everything in their run dir; nothing to sweep")


async def wait_until_gone(token: str) -> list[int]:
    for _ in range(100):
        if not processes_with(token):
            break
        await asyncio.sleep(0.05)
    return processes_with(token)


@pytest.mark.slow  # seconds of real work: the full suite runs it, the fast lane does not
async def test_a_crashed_runs_sandbox_survives_the_sweep_and_can_be_resumed(tmp_path: Path) -> None:
    require_root_sandboxes()
    run_dir, ident, token, state = crashed_sandbox(tmp_path, "running")

    # bwrap --die-with-parent: the command went with its process.
    assert await wait_until_gone(token) == []
    report = await sweep_orphans()
    assert not [line for line in report.removed if ident in line or str(run_dir) in line]
    assert run_dir.resolve() in report.resumable
    assert (PORTAL_ROOT / ident).is_dir() and (DISK_ROOT / f"{ident}.img").exists()
    pruned = prune()
    assert re.search(r"^kept \d+ resumable sandbox\(es\)", pruned.stdout, flags=re.MULTILINE), pruned.stdout
    assert f"  {run_dir.resolve()}\n" in pruned.stdout

    sandbox = await BubblewrapSandboxBackend().attach(state)
    assert (await sandbox.read_file("made-before-the-crash.txt")) == b"kept\n"
    assert (await sandbox.exec("cat made-before-the-crash.txt", timeout=10)).stdout == "kept\n"
    await sandbox.destroy()
    assert host_footprint(tmp_path) == {name: [] for name in host_footprint(tmp_path)}


@pytest.mark.slow  # seconds of real work: the full suite runs it, the fast lane does not
async def test_a_sweep_does_not_take_another_sweeps_probe_for_a_process_using_the_sandbox(tmp_path: Path) -> None:
    """Two sweeps at once (a prune while another process's first create sweeps): each probes the lock.

    Here the other sweep probes just after this one has read the claims. This one must wait for it
    and then see the sandbox as it is (resumable), not take the probe for a process using it.
    """
    require_root_sandboxes()
    run_dir, _ident, token, state = crashed_sandbox(tmp_path, "running")
    assert await wait_until_gone(token) == []
    other = AnotherSweepProbing(run_dir, seconds=0.5)
    read_claims = sweep_module.claims

    def claims_then_the_other_sweep_probes(*, locked: bool = False) -> dict[int, Path]:
        found = read_claims(locked=locked)
        if not other.probing.is_set():
            other.start()  # between this sweep reading the claims and deciding
        return found

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sweep_module, "claims", claims_then_the_other_sweep_probes)
            report = await sweep_orphans()
        other.thread.join(timeout=10)
        assert run_dir.resolve() not in report.in_use
        assert run_dir.resolve() in report.resumable
        sandbox = await BubblewrapSandboxBackend().attach(state)
        await sandbox.destroy()
    except BaseException:
        mark_run_ended(run_dir)  # what is left of it goes
        await sweep_orphans()
        raise
    assert host_footprint(tmp_path) == {name: [] for name in host_footprint(tmp_path)}


@pytest.mark.slow  # seconds of real work: the full suite runs it, the fast lane does not
async def test_the_sweep_removes_what_a_process_killed_inside_destroy_left(tmp_path: Path) -> None:
    require_root_sandboxes()
    run_dir, ident, token, _state = crashed_sandbox(tmp_path, "in-destroy")
    assert (DISK_ROOT / f"{ident}.img").exists(), "the crash left the disk image"
    assert str(run_dir.resolve()) in map(str, claims().values()), "and the uid claim"

    # `corral sandbox prune` is the sweep from the command line; a new sandbox's first create runs it too.
    pruned = prune()
    assert f"disk image {DISK_ROOT / (ident + '.img')}" in pruned.stdout
    assert "uid claim" in pruned.stdout
    assert host_footprint(tmp_path) == {name: [] for name in host_footprint(tmp_path)}
    assert await wait_until_gone(token) == []


@pytest.mark.slow  # a sandbox, then a sweep
async def test_the_sweep_removes_a_sandbox_whose_run_dir_was_deleted(tmp_path: Path) -> None:
    """After a reboot (mounts, /run and cgroups gone, the disk image kept) the store is deleted."""
    require_root_sandboxes()
    run_dir, ident, token, _state = crashed_sandbox(tmp_path, "running")
    # What a reboot takes: every mount (deepest first), the portal in /run, the claim in /run.
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for point in sorted((m for m in mounts if str(tmp_path) in m or ident in m), key=len, reverse=True):
        subprocess.run(["umount", point], check=True)
    subprocess.run(["rm", "-rf", str(PORTAL_ROOT / ident), str(run_dir)], check=True)
    assert (DISK_ROOT / f"{ident}.img").exists()
    support = cgroup_support()
    if support is not None:
        assert any((base / f"sandbox-{ident}").exists() for base in support.bases.values())

    report = await sweep_orphans()
    assert f"disk image {DISK_ROOT / (ident + '.img')}" in report.removed
    assert not report.failed
    assert not (DISK_ROOT / f"{ident}.owner").exists()
    if support is not None:
        assert not any((base / f"sandbox-{ident}").exists() for base in support.bases.values())
    assert str(run_dir.resolve()) not in map(str, claims().values())
    assert await wait_until_gone(token) == []


@pytest.mark.slow  # seconds of real work: the full suite runs it, the fast lane does not
async def test_prune_removes_the_sandbox_of_an_ended_run_whose_process_died(tmp_path: Path) -> None:
    """A run cancelled (or failed) whose process died before destroy(): its sandbox will never be resumed."""
    require_root_sandboxes()
    run_dir, ident, token, state = crashed_sandbox(tmp_path, "ended")
    owner = str(run_dir.resolve())
    image = DISK_ROOT / f"{ident}.img"
    assert image.exists() and loop_devices_for(image), "the crash left the disk image, attached"
    assert owner in map(str, claims().values()), "and the uid claim"
    assert any(str(run_dir) in point for point in overlay.mount_points()), "and the mounts"

    pruned = prune()
    assert f"disk image {image}" in pruned.stdout
    assert f"workspace, baseline and state of ended run {owner}" in pruned.stdout
    assert f"(run dir {owner})" in pruned.stdout  # the uid claim
    assert await wait_until_gone(token) == []
    footprint = host_footprint(tmp_path)
    assert footprint["run dir contents"] == [str(run_dir / RUN_ENDED_MARKER)]  # the runtime's, not the sandbox's
    assert {name: found for name, found in footprint.items() if name != "run dir contents"} == {
        name: [] for name in footprint if name != "run dir contents"
    }
    support = cgroup_support()
    if support is not None:
        assert not any((base / f"sandbox-{ident}").exists() for base in support.bases.values())
    with pytest.raises(SandboxError, match="has ended"):
        await BubblewrapSandboxBackend().attach(state)


async def test_a_sandbox_in_use_is_kept_even_after_its_run_ended(tmp_path: Path) -> None:
    """The runtime marks a run ended before destroy(): a sweep meanwhile must not pull the sandbox from under it."""
    require_root_sandboxes()
    repo, run_dir = build_repo(tmp_path / "repo", with_git=False), tmp_path / "run"
    sandbox = await BubblewrapSandboxBackend().create(SandboxRequest(repo=repo, run_dir=run_dir))
    try:
        mark_run_ended(run_dir)
        report = await sweep_orphans()
        assert run_dir.resolve() in report.in_use
        assert not [line for line in report.removed + report.failed if str(run_dir) in line]
        assert (await sandbox.exec("echo still here", timeout=10)).stdout == "still here\n"
    finally:
        await sandbox.destroy()
    footprint = host_footprint(tmp_path)
    assert footprint["run dir contents"] == [str(run_dir / RUN_ENDED_MARKER)]
