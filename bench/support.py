"""What every benchmark shares: timed samples and their percentiles, machine facts, a generated repository."""

from __future__ import annotations

import math
import os
import platform
import random
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Status = Literal["ok", "unavailable", "failed"]
Phases = dict[str, float]
"""Milliseconds per phase of one trial; ``total`` is the figure the row is named after."""

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CHANGED_FILES = 3
"""How many files the diff benchmarks edit."""
_STARTED = time.monotonic()


class BenchError(Exception):
    """A trial could not run as intended (a helper command failed, a command did not exit 0)."""


def progress(message: str) -> None:
    print(f"[{time.monotonic() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def now_ms() -> float:
    return time.perf_counter_ns() / 1e6


def percentile(samples: Iterable[float], q: float) -> float:
    """The ``q`` quantile (0..1), interpolating linearly between closest ranks (numpy's default)."""
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("no samples")
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(samples: list[float]) -> dict[str, float | int]:
    return {
        "n": len(samples),
        "p50_ms": round(percentile(samples, 0.5), 3),
        "p90_ms": round(percentile(samples, 0.9), 3),
        "min_ms": round(min(samples), 3),
        "mean_ms": round(sum(samples) / len(samples), 3),
        "max_ms": round(max(samples), 3),
    }


@dataclass
class Result:
    """One row of a benchmark: the samples of one measured thing, or why it could not be measured."""

    id: str
    """Stable key, ``group/subject[/variant]``; docs and scripts refer to rows by it."""
    label: str
    status: Status = "ok"
    reason: str | None = None
    note: str | None = None
    phases: dict[str, list[float]] = field(default_factory=dict)

    @property
    def group(self) -> str:
        return self.id.split("/", 1)[0]

    def add(self, sample: Phases) -> None:
        for phase, ms in sample.items():
            self.phases.setdefault(phase, []).append(ms)

    def p50(self) -> float | None:
        total = self.phases.get("total")
        return percentile(total, 0.5) if self.status == "ok" and total else None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "group": self.group, "label": self.label, "status": self.status}
        if self.reason:
            data["reason"] = self.reason
        if self.note:
            data["note"] = self.note
        if self.status == "ok" and self.phases.get("total"):
            data |= summarize(self.phases["total"])
            data["phases"] = {name: summarize(ms) for name, ms in self.phases.items() if name != "total"}
        return data


def repeat(result: Result, trial: Callable[[], Phases], *, iterations: int, warmup: int) -> Result:
    """Run a synchronous trial ``warmup`` times unrecorded, then ``iterations`` times into ``result``."""
    done = 0
    try:
        for done in range(warmup + iterations):
            sample = trial()
            if done >= warmup:
                result.add(sample)
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        _fail(result, exc, ran=done > 0)
    return result


async def repeat_async(
    result: Result, trial: Callable[[], Awaitable[Phases]], *, iterations: int, warmup: int
) -> Result:
    """``repeat`` for a coroutine trial."""
    done = 0
    try:
        for done in range(warmup + iterations):
            sample = await trial()
            if done >= warmup:
                result.add(sample)
    except Exception as exc:  # a backend may raise anything; the row records it and the run goes on
        _fail(result, exc, ran=done > 0)
    return result


def _fail(result: Result, exc: BaseException, *, ran: bool) -> None:
    """A row whose very first trial fails could not run here at all; a later failure is a failure."""
    result.status, result.reason = ("failed" if ran else "unavailable"), describe(exc)
    result.phases.clear()


def describe(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
        return f"{Path(str(exc.cmd[0])).name} exited {exc.returncode}: {(stderr or '').strip()[:300]}"
    hint = getattr(exc, "hint", None)
    return f"{type(exc).__name__}: {exc}" + (f" ({hint})" if hint else "")


def run_checked(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a helper command; its stdout, or BenchError carrying stderr."""
    try:
        completed = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, check=True, timeout=600)
    except subprocess.CalledProcessError as exc:
        raise BenchError(describe(exc)) from exc
    return completed.stdout.decode(errors="replace")


# -- machine facts ----------------------------------------------------------------------------


def machine_facts(tmpdir: Path) -> dict[str, Any]:
    """What the figures depend on, recorded next to them."""
    cpuinfo = _read("/proc/cpuinfo")
    return {
        "cpu_model": _field(cpuinfo, "model name") or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "virtualized": "hypervisor" in (_field(cpuinfo, "flags") or "").split(),
        "memory_gib": round(int((_field(_read("/proc/meminfo"), "MemTotal") or "0 kB").split()[0]) / 2**20, 1),
        "os": _os_release(),
        "kernel": platform.release(),
        "uid": os.geteuid(),
        "tmpdir": str(tmpdir),
        "tmpdir_filesystem": filesystem_of(tmpdir),
        "python": platform.python_version(),
        "bwrap": _first_line(["bwrap", "--version"]),
        "git": _first_line(["git", "--version"]),
        "coreutils": _first_line(["cp", "--version"]),
        "corral_commit": _corral_commit(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def filesystem_of(path: Path) -> dict[str, str]:
    """Type, device and options of the mount holding ``path`` (the longest matching mount point)."""
    real, best = os.path.realpath(path), {"type": "unknown"}
    longest = -1
    for line in _read("/proc/self/mounts").splitlines():
        device, mount_point, fs_type, options, *_ = [*line.split(), "", "", "", ""]
        mount_point = mount_point.replace("\\040", " ")
        inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= longest:
            longest = len(mount_point)
            best = {"type": fs_type, "mount": mount_point, "device": device, "options": options}
    if best["type"] == "ext4":
        # Without a journal, ext4 skips inodes freed in the last ~30 s on every create (recently_deleted()):
        # creating files soon after deleting many becomes far slower. It decides what copies cost here.
        journals = os.listdir("/proc/fs/jbd2") if os.path.isdir("/proc/fs/jbd2") else []
        best["journal"] = "yes" if any(name.startswith(Path(best["device"]).name + "-") for name in journals) else "no"
    return best


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _field(text: str, key: str) -> str | None:
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return None


def _os_release() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return platform.platform()


def _first_line(argv: list[str]) -> str | None:
    try:
        return run_checked(argv).splitlines()[0].strip()
    except (BenchError, OSError, IndexError):
        return None


def _corral_commit() -> str | None:
    try:
        commit = run_checked(["git", "-C", str(PROJECT_ROOT), "rev-parse", "--short", "HEAD"]).strip()
        dirty = run_checked(["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"])
    except (BenchError, OSError):
        return None
    return commit + ("+dirty" if dirty.strip() else "")


# -- a generated repository ---------------------------------------------------------------------

_WORDS = (
    *("def", "class", "return", "import", "from", "self", "value", "result", "error", "config", "path"),
    *("file", "name", "data", "items", "index", "async", "await", "yield", "lambda", "none", "true"),
    *("false", "context", "request", "response", "buffer", "stream", "token", "\n", "\n    "),
)
_EXTENSIONS = (".py", ".md", ".txt", ".json")
GIT_ENV = {
    "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
    "HOME": os.devnull,
    "LANG": "C",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@localhost",
    "GIT_AUTHOR_DATE": "2026-12-01T00:00:00+0000",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@localhost",
    "GIT_COMMITTER_DATE": "2026-12-01T00:00:00+0000",
}
"""Isolated from the host's git config, with a fixed identity and date so the commit id is reproducible."""


@dataclass(frozen=True)
class RepoInfo:
    path: Path
    files: int
    directories: int
    bytes: int
    large_files: int
    commit: str | None
    generate_s: float

    def to_json(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "directories": self.directories,
            "bytes": self.bytes,
            "large_files": self.large_files,
            "commit": self.commit,
            "generate_s": round(self.generate_s, 2),
        }


def generate_repo(root: Path, *, files: int, seed: int, with_git: bool = True) -> RepoInfo:
    """A deterministic repository: ``files`` files over 100 directories (10 top-level, 9 below each).

    Most files are 1-8 KB of text; one in a thousand (at least one) is 128 KB-1 MB. Every file starts
    with its own path, so no two blobs are equal. With ``with_git``, a real ``git init`` and commit,
    then a repack. The ``.git`` directory's own files are not counted in ``files``.
    """
    started = time.monotonic()
    rng = random.Random(seed)
    corpus = " ".join(rng.choices(_WORDS, k=200_000))  # ~1.2 MB: slices of it are the file bodies
    corpus += corpus
    directories = [f"pkg{top:02d}" for top in range(10)]
    directories += [f"pkg{top:02d}/mod{sub}" for top in range(10) for sub in range(9)]
    for directory in directories:
        (root / directory).mkdir(parents=True, exist_ok=True)
    large_every = 1000 if files >= 1000 else files
    total = large = 0
    for index in range(files):
        relative = f"{directories[index % len(directories)]}/file{index:05d}{_EXTENSIONS[index % 4]}"
        if index % large_every == large_every // 2:
            size, large = rng.randint(128 * 1024, 1024 * 1024), large + 1
        else:
            size = rng.randint(1024, 8 * 1024)
        start = rng.randrange(len(corpus) // 2)
        body = f"# {relative}\n{corpus[start : start + size]}\n".encode()
        (root / relative).write_bytes(body)
        total += len(body)
    commit = None
    if with_git:
        git = ["git", "-c", "init.defaultBranch=main"]
        run_checked([*git, "init", "--quiet"], cwd=root, env=GIT_ENV)
        run_checked([*git, "add", "--all"], cwd=root, env=GIT_ENV)
        run_checked([*git, "commit", "--quiet", "--message=generated"], cwd=root, env=GIT_ENV)
        # Packed, as in a clone: otherwise .git holds one loose object per file and doubles the file count.
        run_checked([*git, "repack", "-a", "-d", "--quiet"], cwd=root, env=GIT_ENV)
        commit = run_checked(["git", "rev-parse", "HEAD"], cwd=root, env=GIT_ENV).strip()
    return RepoInfo(root, files, len(directories), total, large, commit, time.monotonic() - started)


@dataclass(frozen=True)
class Setup:
    """What every measurement works from. Repos and scratch space share one filesystem (hardlinks, overlay)."""

    iterations: int
    warmup: int
    workspace_iterations: int
    small_repo: Path
    large: RepoInfo
    scratch: Path

    def fresh(self, prefix: str) -> Path:
        return self.scratch / f"{prefix}-{uuid.uuid4().hex[:12]}"


def changed_paths(repo: RepoInfo) -> list[str]:
    """The files the diff benchmarks edit: the first few, each in its own directory."""
    found = sorted(str(path.relative_to(repo.path)) for path in repo.path.glob("pkg*/file*"))
    return found[:CHANGED_FILES]


def check_patch(patch: str, expected: list[str], *, made_by: str) -> None:
    """Raise BenchError unless ``patch`` touches exactly the ``expected`` paths."""
    touched = re.findall(r"^diff --git a/(.+?) b/", patch, flags=re.MULTILINE)
    if sorted(touched) != sorted(expected):
        raise BenchError(f"{made_by} touched {sorted(touched)[:6]}, expected {sorted(expected)}")


def tree_files(root: Path) -> set[str]:
    """Relative paths of every non-directory under ``root``, leaving out any ``.git`` directory."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [name for name in dirnames if name != ".git"]
        relative = Path(dirpath).relative_to(root)
        found.update((relative / name).as_posix() for name in filenames if name != ".git")
    return found
