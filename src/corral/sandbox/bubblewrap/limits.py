"""Resource limits of sandboxed commands: cgroups (v1, or a delegated v2 subtree) where allowed, rlimits otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import resource
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from corral.errors import SandboxError
from corral.sandbox.proc import run_process
from corral.sandbox.types import Limits

logger = logging.getLogger("corral.sandbox")

CGROUP_MOUNT = Path("/sys/fs/cgroup")
CGROUP_ENV = "CORRAL_CGROUP"
"""A cgroup2 directory delegated to corral (memory and pids enabled); per-sandbox groups are made inside it."""

DISK_POLL_INTERVAL = 1.0
"""Seconds between workspace usage checks while a command runs with ``Limits.disk_mb`` set."""
TMP_SIZE_MB = 1024
"""Size of each sandbox's /tmp (a tmpfs; its pages also count against the memory limit)."""
CPU_GRACE_S = 2
"""After SIGXCPU at ``cpu_s``, a process that ignores it gets SIGKILL this many CPU seconds later."""

_MIB = 1024 * 1024
_CONTROLLERS = ("memory", "pids")
_REMOVE_TIMEOUT = 5.0
_DU_TIMEOUT = 30.0


@dataclass(frozen=True)
class CgroupSupport:
    """Where this process may make per-sandbox cgroups, per controller."""

    version: int
    bases: dict[str, Path]
    """Controller name to the directory that holds corral's per-sandbox groups."""


@dataclass(frozen=True)
class LimitCounters:
    """Kernel counters read before and after a command to tell which limit it hit."""

    oom_kills: int = 0
    pids_denied: int = 0


def _own_cgroups() -> dict[str, str]:
    """Controller (or "" for cgroup2) to this process's cgroup path, from /proc/self/cgroup."""
    found: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                found[controller] = path
    return found


def _mount_types() -> dict[str, str]:
    """Mount point to filesystem type, for the cgroup mounts."""
    types: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            separator = fields.index("-")
            types[fields[4]] = fields[separator + 1]
    return types


def _writable_base(path: Path) -> bool:
    try:
        path.mkdir(exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


@functools.cache
def cgroup_support() -> CgroupSupport | None:
    """How memory and pids limits can be enforced with cgroups here; None when they cannot."""
    types, own = _mount_types(), _own_cgroups()
    delegated = os.environ.get(CGROUP_ENV)
    if delegated or types.get(str(CGROUP_MOUNT)) == "cgroup2":
        base = Path(delegated) if delegated else CGROUP_MOUNT / own.get("", "/").lstrip("/") / "corral"
        return _cgroup2_support(base)
    bases: dict[str, Path] = {}
    for controller in _CONTROLLERS:
        mount = CGROUP_MOUNT / controller
        if types.get(str(mount)) != "cgroup":
            continue
        # At the top of the hierarchy as mounted, not inside the group of whatever started corral:
        # an empty child left there would stop that supervisor from removing its own group.
        base = mount / "corral"
        if _writable_base(base):
            bases[controller] = base
    return CgroupSupport(version=1, bases=bases) if bases else None


def _cgroup2_support(base: Path) -> CgroupSupport | None:
    # A group may enable controllers for its children only if it has no processes of its own, so the
    # base is a group made for corral (or delegated to it), never the group corral itself runs in.
    if not _writable_base(base):
        return None
    try:
        available = (base / "cgroup.controllers").read_text().split()
        enabled = set((base / "cgroup.subtree_control").read_text().split())
        wanted = [c for c in _CONTROLLERS if c in available and c not in enabled]
        if wanted:
            (base / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))
        enabled = set((base / "cgroup.subtree_control").read_text().split())
    except OSError:
        return None
    bases = {c: base for c in _CONTROLLERS if c in enabled}
    return CgroupSupport(version=2, bases=bases) if bases else None


class SandboxCgroup:
    """The memory and pids cgroups of one sandbox; every command's process tree is placed in them."""

    def __init__(self, support: CgroupSupport, name: str) -> None:
        self.support = support
        self.dirs = {controller: base / name for controller, base in support.bases.items()}

    @property
    def controllers(self) -> frozenset[str]:
        return frozenset(self.dirs)

    def create(self, limits: Limits) -> None:
        """Make the groups (again, after a reboot) and write the limits; existing groups are reused."""
        try:
            for directory in set(self.dirs.values()):
                directory.mkdir(exist_ok=True)
            self._write_limits(limits)
        except OSError as exc:
            raise SandboxError(f"cannot set up the sandbox cgroup {next(iter(self.dirs.values()))}: {exc}") from exc

    def _write_limits(self, limits: Limits) -> None:
        memory, pids = self.dirs.get("memory"), self.dirs.get("pids")
        if memory is not None:
            size = str(limits.memory_mb * _MIB) if limits.memory_mb is not None else "max"
            if self.support.version == 1:
                size = size if size != "max" else "-1"
                swap = memory / "memory.memsw.limit_in_bytes"
                # memsw must stay >= the memory limit: lower memory first, then memsw, then raise memory.
                (memory / "memory.limit_in_bytes").write_text(size)
                if swap.exists():
                    swap.write_text(size)
                (memory / "memory.limit_in_bytes").write_text(size)
            else:
                (memory / "memory.max").write_text(size)
                swap = memory / "memory.swap.max"
                if swap.exists():
                    swap.write_text("0")
        if pids is not None:
            (pids / "pids.max").write_text(str(limits.pids) if limits.pids is not None else "max")

    def join_argv(self, *, first: str = "true") -> list[str]:
        """A command prefix that moves itself into the sandbox's groups, then execs the rest (after the
        shell command ``first``, which must succeed).

        bwrap started this way clones the sandbox inside the groups, so the cgroup namespace it makes
        is rooted at the sandbox's own group: commands see ``/`` in /proc/self/cgroup and find their
        limits at the top of /sys/fs/cgroup (see ``inside_binds``). Moving bwrap's child afterwards
        would leave the namespace rooted at corral's group, with the limits out of sight.
        """
        files = sorted({str(directory / "cgroup.procs") for directory in self.dirs.values()})
        moves = " && ".join(f'echo 0 > "${index}"' for index in range(1, len(files) + 1))
        script = f'{first} && {moves} && shift {len(files)} && exec "$@"'
        return ["/bin/sh", "-c", script, "corral-cgroup", *files]

    def inside_binds(self) -> list[tuple[Path, str]]:
        """The groups and where commands see them: /sys/fs/cgroup itself (v2), or a controller's directory (v1)."""
        if self.support.version == 2:
            return [(next(iter(self.dirs.values())), str(CGROUP_MOUNT))]
        return [(directory, str(CGROUP_MOUNT / controller)) for controller, directory in sorted(self.dirs.items())]

    def counters(self) -> LimitCounters:
        memory, pids = self.dirs.get("memory"), self.dirs.get("pids")
        oom = 0
        if memory is not None:
            name = "memory.oom_control" if self.support.version == 1 else "memory.events"
            oom = _read_counter(memory / name, "oom_kill")
        denied = _read_counter(pids / "pids.events", "max") if pids is not None else 0
        return LimitCounters(oom_kills=oom, pids_denied=denied)

    def processes(self) -> set[int]:
        found: set[int] = set()
        for directory in set(self.dirs.values()):
            with contextlib.suppress(OSError):
                found.update(int(line) for line in (directory / "cgroup.procs").read_text().split())
        return found

    def kill_all(self) -> None:
        """SIGKILL every process in the groups (a backstop: commands die with their pid namespace)."""
        for directory in set(self.dirs.values()):
            kill_file = directory / "cgroup.kill"
            if self.support.version == 2 and kill_file.exists():
                with contextlib.suppress(OSError):
                    kill_file.write_text("1")
        # A pidfd pins the process; re-reading the members afterwards proves the pid was not reused
        # by a process outside the groups in between (only corral moves processes into them).
        pidfds: dict[int, int] = {}
        for pid in self.processes():
            with contextlib.suppress(OSError):
                pidfds[pid] = os.pidfd_open(pid)
        members = self.processes()
        for pid, pidfd in pidfds.items():
            try:
                if pid in members:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError:
                pass
            finally:
                os.close(pidfd)

    async def remove(self) -> None:
        """Kill what is left, then remove the groups; retries while the kernel finishes the exits."""
        deadline = time.monotonic() + _REMOVE_TIMEOUT
        for directory in sorted(set(self.dirs.values())):
            while True:
                self.kill_all()
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        logger.warning("could not remove cgroup %s: %s", directory, exc)
                        break
                await asyncio.sleep(0.01)


def _read_counter(path: Path, key: str) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    return 0


def rlimits(limits: Limits, *, cgroup_controllers: frozenset[str]) -> list[tuple[int, tuple[int, int]]]:
    """The rlimits set on each command's first process (inherited by everything it starts)."""
    chosen: list[tuple[int, tuple[int, int]]] = [(resource.RLIMIT_CORE, (0, 0))]
    if limits.cpu_s is not None:
        chosen.append((resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + CPU_GRACE_S)))
    if limits.disk_mb is not None:
        chosen.append((resource.RLIMIT_FSIZE, (limits.disk_mb * _MIB, limits.disk_mb * _MIB)))
    if limits.pids is not None and "pids" not in cgroup_controllers:
        chosen.append((resource.RLIMIT_NPROC, (limits.pids, limits.pids)))
    if limits.memory_mb is not None and "memory" not in cgroup_controllers:
        chosen.append((resource.RLIMIT_DATA, (limits.memory_mb * _MIB, limits.memory_mb * _MIB)))
    return chosen


def apply_rlimits(pid: int, chosen: Sequence[tuple[int, tuple[int, int]]]) -> None:
    """Lower the limits of a process that has not started the command yet."""
    for which, values in chosen:
        resource.prlimit(pid, which, values)


_CAP_SYS_RESOURCE = 24
_PRLIMIT_FLAGS = {
    resource.RLIMIT_CORE: "--core",
    resource.RLIMIT_CPU: "--cpu",
    resource.RLIMIT_FSIZE: "--fsize",
    resource.RLIMIT_NPROC: "--nproc",
    resource.RLIMIT_DATA: "--data",
}


@functools.cache
def can_limit_other_users() -> bool:
    """Whether prlimit(2) works on the sandbox's processes: same uid, or CAP_SYS_RESOURCE (not in every container)."""
    if os.geteuid() != 0:
        return True
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> _CAP_SYS_RESOURCE & 1)
    return False


def rlimit_wrapper(chosen: Sequence[tuple[int, tuple[int, int]]]) -> list[str]:
    """A ``prlimit ... --`` prefix that sets the limits on itself and execs the rest (when prlimit(2) on
    another uid's process is not allowed)."""
    if not chosen:
        return []
    prlimit = shutil.which("prlimit") or "/usr/bin/prlimit"
    return [prlimit, *(f"{_PRLIMIT_FLAGS[which]}={soft}:{hard}" for which, (soft, hard) in chosen), "--"]


def limit_notes(
    limits: Limits, before: LimitCounters, after: LimitCounters, exit_code: int | None, *, disk_killed: bool
) -> list[str]:
    """What to tell the caller (appended to stderr) about the limits a command ran into."""
    notes: list[str] = []
    if after.oom_kills > before.oom_kills:
        notes.append(f"corral: memory limit ({limits.memory_mb} MB) exceeded; the kernel killed a process")
    if after.pids_denied > before.pids_denied:
        notes.append(f"corral: process limit ({limits.pids}) reached; new processes were refused")
    if exit_code == 128 + signal.SIGXCPU and limits.cpu_s is not None:
        notes.append(f"corral: CPU time limit ({limits.cpu_s} s per process) exceeded")
    if exit_code == 128 + signal.SIGXFSZ and limits.disk_mb is not None:
        notes.append(f"corral: file size limit ({limits.disk_mb} MB) reached")
    if disk_killed:
        notes.append(f"corral: workspace disk limit ({limits.disk_mb} MB) exceeded; the command was killed")
    return notes


async def disk_usage(paths: Sequence[Path]) -> int:
    """Bytes used on disk under ``paths`` (not following mounts), measured by ``du``."""
    du = shutil.which("du") or "/usr/bin/du"
    # du exits non-zero when an entry vanished or is unreadable, and still prints the totals it has.
    done = await run_process([du, "-s", "-x", "-B1", "--", *map(str, paths)], timeout=_DU_TIMEOUT, check=False)
    return sum(int(line.split()[0]) for line in done.stdout.decode().splitlines() if line.strip())


def enforced_limits() -> dict[str, str]:
    """Which limits the bubblewrap backend enforces on this machine, and how (for ``corral doctor``).

    A value starting with ``not `` means the limit is not enforced.
    """
    support = cgroup_support()
    controllers = support.bases if support else {}
    version = f"cgroup v{support.version}" if support else ""

    def where(controller: str) -> str:
        return str(controllers[controller])

    memory = (
        f"{version} memory controller, per sandbox, no swap (under {where('memory')})"
        if "memory" in controllers
        else "RLIMIT_DATA per process (no writable memory cgroup; run as root or delegate a cgroup2 subtree)"
    )
    processes = (
        f"{version} pids controller, per sandbox (under {where('pids')})"
        if "pids" in controllers
        else "RLIMIT_NPROC per command (no writable pids cgroup)"
    )
    return {
        "memory": memory,
        "processes": processes,
        "cpu_time": f"RLIMIT_CPU per process (SIGXCPU at the limit, SIGKILL {CPU_GRACE_S} s later)",
        "wall_clock": "exec timeout: SIGKILL to the command's pid-namespace init, which takes the whole tree",
        "output": "head and tail of each stream within exec output_limit; the rest in .corral/output/, never a kill",
        "disk": _disk_enforcement(),
        "tmp": f"/tmp is a private tmpfs of at most {TMP_SIZE_MB} MB per sandbox",
    }


def _disk_enforcement() -> str:
    from corral.sandbox.bubblewrap.diskimage import loop_images_available

    polled = f"RLIMIT_FSIZE per file, plus workspace use checked every {DISK_POLL_INTERVAL:g} s during a command"
    if loop_images_available():
        return f"per-sandbox ext4 image of disk_mb on a loop device (ENOSPC at the limit); copies: {polled}"
    return polled + " (no loop devices: run as root with /dev/loop-control for a hard limit)"
