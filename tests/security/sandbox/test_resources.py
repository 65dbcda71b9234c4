"""Resource exhaustion: fork, memory, disk and output bombs must hit the sandbox's limits, not the host."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from corral.sandbox import Limits
from corral.sandbox.base import SPILL_LIMIT
from tests.sandbox.host import processes_with
from tests.security.sandbox.attacks import SANDBOX_PYTHON, describe_processes, tree_size, wait_until
from tests.security.sandbox.conftest import SandboxFactory

# Real escape attempts in real sandboxes: the full suite (and CI) runs them, the fast lane does not.
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60), pytest.mark.slow]

MB = 1 << 20


def kill_leftovers(marker: str) -> None:
    for pid in processes_with(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def host_can_fork() -> bool:
    return subprocess.run(["true"], check=False, timeout=10).returncode == 0


@pytest.mark.slow  # seconds of real work: the full suite runs it, the fast lane does not
async def test_fork_bomb_is_bounded_by_the_pids_limit(make_sandbox: SandboxFactory, numeric_token: str) -> None:
    pids = 64
    sandbox = await make_sandbox(limits=Limits(pids=pids))
    # A bounded bomb first: it cannot take the host down even if no limit holds, and shows whether one does.
    bounded = (
        "import errno, os, sys, time\n"
        "children = 0\n"
        "for _ in range(2000):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError as exc:\n"
        "        print('stopped', errno.errorcode.get(exc.errno), flush=True)\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(30)\n"
        "        os._exit(0)\n"
        "    children += 1\n"
        "print('forks', children, flush=True)\n"
    )
    try:
        result = await sandbox.exec([SANDBOX_PYTHON, "-c", bounded, numeric_token], timeout=20)
        match = re.search(r"forks (\d+)", result.stdout)
        assert match, f"the bounded fork bomb did not report: {result}"
        forks = int(match.group(1))
        assert forks < pids, f"ESCAPE: {forks} processes forked under a pids limit of {pids}: {result.stdout!r}"
        assert "stopped" in result.stdout, f"fork never failed: {result.stdout!r}"
        # Now the classic one, only because the limit is known to hold.
        classic = f"bomb() {{ bomb | bomb & }}; bomb; sleep 5 # {numeric_token}"
        started = time.monotonic()
        flood = await sandbox.exec(["/bin/sh", "-c", classic], timeout=3, output_limit=10_000)
        assert time.monotonic() - started < 10, f"the fork bomb held exec for too long: {flood}"
        alive = await sandbox.exec("echo alive", timeout=10)
        assert alive.stdout == "alive\n", f"the sandbox did not survive its fork bomb: {alive}"
        assert host_can_fork(), "the host cannot fork after the sandbox's fork bomb"
        await sandbox.destroy()
        gone = await wait_until(lambda: not processes_with(numeric_token), within=5)
        survivors = describe_processes(processes_with(numeric_token))
        assert gone, f"ESCAPE: fork bomb processes outlived destroy: {survivors}"
    finally:
        kill_leftovers(numeric_token)


async def test_memory_bomb_is_killed_by_the_memory_limit(make_sandbox: SandboxFactory) -> None:
    limit_mb, cap_mb = 128, 1024
    sandbox = await make_sandbox(limits=Limits(memory_mb=limit_mb))
    bomb = (
        "chunks, total = [], 0\n"
        f"while total < {cap_mb}:\n"
        "    chunks.append(b'\\x01' * (16 << 20))\n"
        "    total += 16\n"
        "    print('allocated', total, flush=True)\n"
        "print('ALLOCATED_ALL', flush=True)\n"
    )
    started = time.monotonic()
    result = await sandbox.exec([SANDBOX_PYTHON, "-c", bomb], timeout=20, output_limit=100_000)
    elapsed = time.monotonic() - started
    reached = max((int(n) for n in re.findall(r"allocated (\d+)", result.stdout)), default=0)
    assert "ALLOCATED_ALL" not in result.stdout, f"ESCAPE: allocated {cap_mb} MB under a {limit_mb} MB limit"
    assert reached <= 2 * limit_mb, f"ESCAPE: allocated {reached} MB under a {limit_mb} MB limit"
    assert result.exit_code != 0, f"the memory bomb was not stopped: {result}"
    assert not result.timed_out and elapsed < 15, f"the memory bomb was not stopped by the limit: {result}"
    alive = await sandbox.exec("echo alive", timeout=10)
    assert alive.stdout == "alive\n", f"the sandbox did not survive its memory bomb: {alive}"


async def test_disk_fill_is_stopped_by_the_disk_limit(make_sandbox: SandboxFactory) -> None:
    limit_mb = 50
    sandbox = await make_sandbox(limits=Limits(disk_mb=limit_mb))
    free_before = shutil.disk_usage(sandbox.run_dir).free
    result = await sandbox.exec(
        "dd if=/dev/zero of=fill bs=1M count=256 2>&1; echo dd=$?", timeout=30, output_limit=10_000
    )
    used = tree_size(sandbox.run_dir)
    consumed = free_before - shutil.disk_usage(sandbox.run_dir).free
    assert "dd=0" not in result.stdout, f"ESCAPE: wrote 256 MB under a {limit_mb} MB disk limit: {result.stdout!r}"
    assert used <= (limit_mb + 8) * MB, f"ESCAPE: the run dir grew to {used / MB:.0f} MB (limit {limit_mb} MB)"
    assert consumed <= (limit_mb + 64) * MB, f"ESCAPE: host free space dropped by {consumed / MB:.0f} MB"


@pytest.mark.parametrize("where", ["workspace", "home"])
async def test_disk_fill_across_many_files_is_stopped_by_the_disk_limit(
    make_sandbox: SandboxFactory, where: str
) -> None:
    limit_mb = 50
    sandbox = await make_sandbox(limits=Limits(disk_mb=limit_mb))
    # A per-file size cap alone does not bound the total: ten 20 MB files are 200 MB. The sandbox's home
    # lives on the host's disk too, so it must count against the same limit.
    directory = "." if where == "workspace" else '"$HOME"'
    result = await sandbox.exec(
        f"cd {directory} && failed=0; for i in 1 2 3 4 5 6 7 8 9 10; do "
        "dd if=/dev/zero of=part$i bs=1M count=20 2>/dev/null || failed=$((failed+1)); done; echo failed=$failed",
        timeout=30,
    )
    used = tree_size(sandbox.run_dir)
    assert "failed=0" not in result.stdout, (
        f"ESCAPE: wrote 200 MB in ten files in the {where} under a {limit_mb} MB limit "
        f"(run dir now {used / MB:.0f} MB on the host disk); {result}"
    )
    assert used <= (limit_mb + 8) * MB, f"ESCAPE: the run dir grew to {used / MB:.0f} MB (limit {limit_mb} MB)"


@pytest.mark.slow  # seconds of real work: the full suite runs it, the fast lane does not
async def test_scratch_dirs_cannot_be_filled_beyond_the_limits(make_sandbox: SandboxFactory, token: str) -> None:
    disk_mb, memory_mb = 50, 256
    sandbox = await make_sandbox(limits=Limits(disk_mb=disk_mb, memory_mb=memory_mb))
    scratch = ["/tmp", "/var/tmp", "/dev/shm"]
    # Many 40 MB files (480 MB per directory): a per-file size cap alone would not stop this. A tmpfs here
    # spends host memory and a host directory spends host disk, so one of the two limits must hold.
    fill = " ".join(f"{token}-{i}" for i in range(12))
    try:
        result = await sandbox.exec(
            "for d in " + " ".join(scratch) + "; do "
            f"for f in {fill}; do dd if=/dev/zero of=$d/$f bs=1M count=40 2>/dev/null || break; done; "
            f'echo "$d $(cat $d/{token}-* 2>/dev/null | wc -c)"; rm -f $d/{token}-*; done',
            timeout=30,
        )
        written = dict(line.split() for line in result.stdout.splitlines() if line.startswith("/"))
        assert set(written) == set(scratch), f"the fill did not report every directory: {result}"
        too_much = {d: int(n) // MB for d, n in written.items() if int(n) > (max(disk_mb, memory_mb) + 16) * MB}
        assert not too_much, (
            f"ESCAPE: scratch dirs accepted more than the sandbox's limits allow (MB written): {too_much}"
        )
        alive = await sandbox.exec("echo alive", timeout=10)
        assert alive.stdout == "alive\n", f"the sandbox did not survive filling its scratch dirs: {alive}"
    finally:
        for directory in scratch:
            for path in Path(directory).glob(f"{token}-*"):
                path.unlink(missing_ok=True)


@pytest.mark.slow  # three floods, each until its timeout
async def test_output_flood_is_cut_bounded_on_disk_and_ends_at_its_timeout(
    make_sandbox: SandboxFactory, numeric_token: str
) -> None:
    # Output never kills a command: a flood runs until its timeout, costing memory for the head and
    # tail only and disk for at most the spill limit.
    sandbox = await make_sandbox()
    try:
        floods = (f"yes {numeric_token}", f"yes {numeric_token} >&2", f"setsid yes {numeric_token} & sleep 0.3; wait")
        for command in floods:
            started = time.monotonic()
            result = await sandbox.exec(command, timeout=0.5, output_limit=10_000)
            elapsed = time.monotonic() - started
            assert result.truncated, f"{command!r}: a flood was not cut: {result.stdout[:80]!r}"
            assert len(result.stdout) <= 10_300 and len(result.stderr) <= 10_300, f"{command!r}: limit exceeded"
            assert result.timed_out and elapsed < 5, f"{command!r}: a flood held exec for {elapsed:.1f}s"
            assert result.output_path is not None and result.saved_bytes <= SPILL_LIMIT
            size = (sandbox.workspace / result.output_path).stat().st_size
            assert size <= SPILL_LIMIT + 200, f"{command!r}: its output file grew to {size} bytes"
        await sandbox.destroy()
        gone = await wait_until(lambda: not processes_with(numeric_token), within=3)
        assert gone, f"ESCAPE: flooding processes outlived destroy: {describe_processes(processes_with(numeric_token))}"
    finally:
        kill_leftovers(numeric_token)


@pytest.mark.slow  # seconds of real work: the full suite runs it, the fast lane does not
async def test_cpu_burn_is_stopped_by_the_cpu_limit(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox(limits=Limits(cpu_s=1))
    started = time.monotonic()
    result = await sandbox.exec([SANDBOX_PYTHON, "-c", "while True: pass"], timeout=6)
    elapsed = time.monotonic() - started
    assert not result.timed_out, f"ESCAPE: a busy loop ran {elapsed:.1f}s of wall time under a 1 CPU-second limit"
    assert result.exit_code != 0 and elapsed < 5, f"the CPU limit did not stop the busy loop: {result}"
