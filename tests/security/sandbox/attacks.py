"""Helpers for the escape suite: run an attack script inside a sandbox and read back what each attempt did."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.sandbox import ExecResult, Sandbox

SANDBOX_PYTHON = "/usr/bin/python3"
RESULTS_MARKER = "@@ESCAPE-RESULTS@@"

DENIED_BY_POLICY = frozenset({"EPERM", "EACCES", "ENOSYS", "EROFS"})
"""Errnos that mean "refused" (capability, seccomp, DAC, read-only mount) rather than "bad arguments"."""

# x86_64 syscall numbers used by the ctypes attacks (the host and the sandbox share the kernel).
SYSCALLS_X86_64 = {
    "ptrace": 101,
    "pivot_root": 155,
    "chroot": 161,
    "mount": 165,
    "sethostname": 170,
    "setdomainname": 171,
    "init_module": 175,
    "delete_module": 176,
    "kexec_load": 246,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "mknodat": 259,
    "unshare": 272,
    "perf_event_open": 298,
    "name_to_handle_at": 303,
    "open_by_handle_at": 304,
    "setns": 308,
    "finit_module": 313,
    "bpf": 321,
    "userfaultfd": 323,
    "io_uring_setup": 425,
    "open_tree": 428,
    "fsopen": 430,
    "clone": 56,
    "clone3": 435,
    "renameat2": 316,
    "pidfd_open": 434,
    "pidfd_getfd": 438,
    "pidfd_send_signal": 424,
}

# Runs before every attack script. `attempt` records one try as {"ok": ..., "value"|"errno": ...};
# the results are printed as one JSON line when the script ends, however it ends (except a kill).
PRELUDE = r"""
import atexit, ctypes, errno, json, os, socket, struct, sys, time

P = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
NR = P.get("syscalls", {})
RESULTS = {}
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def _plain(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple, set)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return repr(value)


def attempt(label, fn, *args):
    try:
        value = fn(*args)
    except OSError as exc:
        name = errno.errorcode.get(exc.errno) if exc.errno else None
        RESULTS[label] = {"ok": False, "errno": name, "error": f"{type(exc).__name__}: {exc}"}
    except BaseException as exc:
        RESULTS[label] = {"ok": False, "errno": None, "error": f"{type(exc).__name__}: {exc}"}
    else:
        RESULTS[label] = {"ok": True, "value": _plain(value)}
    return RESULTS[label]


def _arg(value):
    if value is None:
        return ctypes.c_void_p(None)
    if isinstance(value, int):
        return ctypes.c_long(value)
    if isinstance(value, bytes):
        return ctypes.c_char_p(value)
    if isinstance(value, str):
        return ctypes.c_char_p(value.encode())
    return value  # a ctypes object (buffer, pointer)


def sys_call(name, *args):
    result = libc.syscall(ctypes.c_long(NR[name]), *[_arg(arg) for arg in args])
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def read(path, limit=1 << 16):
    with open(path, "rb") as handle:
        return handle.read(limit)


def write(path, data, mode="w"):
    with open(path, mode) as handle:
        handle.write(data)
    return len(data)


def run_ok(argv, timeout=5):
    # Run a binary: its output if it exits 0, else OSError(EPERM) carrying the output.
    import subprocess
    done = subprocess.run(argv, capture_output=True, timeout=timeout)
    output = (done.stdout + done.stderr).decode(errors="replace")
    if done.returncode:
        raise OSError(1, f"exit {done.returncode}: {output.strip()[:300]}")
    return output


def require(value, what):
    # value if it is truthy, else OSError(ENOENT): for searches whose empty result means "denied".
    if not value:
        raise OSError(2, what)
    return value


def in_child(fn, *args):
    # Run fn in a forked child (for calls that change the caller, e.g. unshare); raise its errno here.
    pid = os.fork()
    if pid == 0:
        try:
            fn(*args)
        except OSError as exc:
            os._exit(exc.errno if exc.errno and exc.errno < 256 else 255)
        except BaseException:
            os._exit(255)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 255:
        raise RuntimeError("child raised a non-OSError")
    if code < 0:
        raise RuntimeError(f"child killed by signal {-code}")
    if code:
        raise OSError(code, os.strerror(code))
    return "succeeded in child"


def hunt(needles, budget=2.0, skip=("/proc", "/sys", "/dev", "/usr")):
    # Paths anywhere in the sandbox's filesystem whose name contains one of needles.
    found = []
    deadline = time.monotonic() + budget
    for dirpath, dirnames, filenames in os.walk("/"):
        if time.monotonic() > deadline:
            found.append("<search budget exhausted at " + dirpath + ">")
            break
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
        for name in dirnames + filenames:
            if any(needle in name for needle in needles):
                found.append(os.path.join(dirpath, name))
    return found


def status_fields(pid="self"):
    fields = {}
    for line in read(f"/proc/{pid}/status").decode().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _report():
    sys.stdout.flush()
    sys.stdout.write("\n" + MARKER + json.dumps(RESULTS) + "\n")
    sys.stdout.flush()


MARKER = "@@ESCAPE-RESULTS@@"
atexit.register(_report)
"""


@dataclass(frozen=True)
class Outcome:
    """What one attempt inside the sandbox did."""

    ok: bool
    value: Any = None
    errno: str | None = None
    error: str | None = None

    def __str__(self) -> str:
        if self.ok:
            shown = repr(self.value)
            return f"SUCCEEDED: {shown[:300]}{'...' if len(shown) > 300 else ''}"
        return f"failed: {self.error}"


@dataclass
class Attack:
    """The exec result of an attack script plus the outcome of each labelled attempt."""

    result: ExecResult
    outcomes: dict[str, Outcome] = field(default_factory=dict)

    def __getitem__(self, label: str) -> Outcome:
        assert label in self.outcomes, f"attack did not record {label!r}; {self.evidence()}"
        return self.outcomes[label]

    def succeeded(self) -> dict[str, Outcome]:
        return {label: outcome for label, outcome in self.outcomes.items() if outcome.ok}

    def evidence(self) -> str:
        result = self.result
        return (
            f"exit={result.exit_code} timed_out={result.timed_out} "
            f"stdout={result.stdout[-1500:]!r} stderr={result.stderr[-1500:]!r}"
        )

    def leaking(self, *needles: str) -> dict[str, Outcome]:
        """The attempts that succeeded and whose value contains one of ``needles``."""
        return {
            label: outcome
            for label, outcome in self.outcomes.items()
            if outcome.ok and any(needle in json.dumps(outcome.value) for needle in needles)
        }

    def describe(self, labels: Sequence[str] | None = None) -> str:
        chosen = labels if labels is not None else list(self.outcomes)
        return "; ".join(f"{label}: {self.outcomes[label]}" for label in chosen if label in self.outcomes)


def syscall_table() -> dict[str, int]:
    """The syscall numbers the ctypes attacks use; only x86_64 is tabulated."""
    if platform.machine() != "x86_64":
        import pytest

        pytest.skip(f"ctypes syscall attacks are tabulated for x86_64 only, not {platform.machine()}")
    return dict(SYSCALLS_X86_64)


async def run_attack(
    sandbox: Sandbox,
    script: str,
    params: Mapping[str, Any] | None = None,
    *,
    timeout: float = 10.0,  # noqa: ASYNC109 - passed on to Sandbox.exec, which enforces it
    output_limit: int = 1_000_000,
    env: Mapping[str, str] | None = None,
    prelude: str = "",
) -> Attack:
    """Run ``script`` (Python, after PRELUDE) with the system Python inside ``sandbox``.

    ``params`` reaches the script as ``P``; ``prelude`` is shared setup run before ``script``. An attack
    that never reports is an assertion failure: an attempt we cannot observe is not evidence of containment.
    """
    syscalls = dict(SYSCALLS_X86_64) if platform.machine() == "x86_64" else {}
    payload = {"syscalls": syscalls, **(params or {})}
    code = PRELUDE + "\n" + textwrap.dedent(prelude) + "\n" + textwrap.dedent(script)
    result = await sandbox.exec(
        [SANDBOX_PYTHON, "-c", code, json.dumps(payload)], timeout=timeout, output_limit=output_limit, env=env
    )
    attack = Attack(result=result)
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULTS_MARKER)]
    assert lines, f"the attack script did not report its results; {attack.evidence()}"
    raw = json.loads(lines[-1][len(RESULTS_MARKER) :])
    attack.outcomes = {label: Outcome(**outcome) for label, outcome in raw.items()}
    if os.environ.get("CORRAL_ESCAPE_VERBOSE"):  # show every attempt's outcome (pytest -s)
        print(f"\n--- attack outcomes ({result.duration_ms:.0f} ms):")
        for label, outcome in attack.outcomes.items():
            print(f"  {label}: {outcome}")
    return attack


def describe_processes(pids: Sequence[int]) -> str:
    described = []
    for pid in pids:
        try:
            cmdline = Path("/proc", str(pid), "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmdline = "?"
        described.append(f"{pid}: {cmdline[:160]}")
    return "; ".join(described)


async def wait_until(predicate: Callable[[], bool], within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


def host_mount_points() -> set[str]:
    """Mount points of the host's (this process's) mount namespace."""
    points = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if len(fields) > 4:
            points.add(fields[4].replace("\\040", " "))
    return points


def tree_size(root: Path) -> int:
    """Bytes allocated on disk under ``root``, like ``du -sx``: no symlinks, no other filesystems.

    Staying on one filesystem counts an overlay's files once (in its upper dir, not again in the
    merged view mounted over the workspace); 0 when ``root`` is gone.
    """
    try:
        device = os.lstat(root).st_dev
    except OSError:
        return 0
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        kept = []
        for name in dirnames:
            with contextlib.suppress(OSError):
                if os.lstat(os.path.join(dirpath, name)).st_dev == device:
                    kept.append(name)
        dirnames[:] = kept
        for name in filenames:
            with contextlib.suppress(OSError):
                info = os.lstat(os.path.join(dirpath, name))
                if info.st_dev == device:
                    total += info.st_blocks * 512
    return total
