"""The sandbox contract: a workspace on the host plus process execution that every backend implements."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import stat
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from corral.errors import PathEscapeError, SandboxError
from corral.events import EgressAttempted
from corral.sandbox.types import GitUser, HostPatternText, Limits, Mounts, NetworkProfile, PackageCache
from corral.sandbox.workspace import (
    SCRATCH_DIRNAME,
    WorkspaceSnapshot,
    match_files,
    remove_tree,
    workspace_diff,
)

ENTRY_POINT_GROUP = "corral.sandbox_backends"
MINIMAL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_REAP_TIMEOUT = 5.0  # after SIGKILL, how long to wait for the kernel to report the exit
_DRAIN_TIMEOUT = 1.0  # after exit, how long to wait for pipes held open by a process that escaped the group
_SKIPPED_DIRS = frozenset({".git", SCRATCH_DIRNAME})


@dataclass(frozen=True)
class ExecResult:
    """What a command did. ``exit_code`` is None when the sandbox killed it (timeout, output cap, destroy)."""

    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool
    truncated: bool
    duration_ms: float


class ScopedSecret(BaseModel):
    """A secret the sandbox sees only as ``placeholder``; the egress proxy swaps in the value for ``hosts``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    value: SecretStr
    hosts: tuple[HostPatternText, ...]
    placeholder: str


RUN_ENDED_MARKER = "run-ended"
"""``run_dir/run-ended``: written by the runtime once a run can never resume; its sandbox is then garbage."""


def mark_run_ended(run_dir: Path) -> None:
    """Record that the run owning ``run_dir`` is over (finished, failed or cancelled) and will never resume.

    Call it once the run's outcome is decided, before ``destroy()``: if the process dies before
    destroy completes, a sweep (``corral sandbox prune``, or the next process's first sandbox) then
    removes what is left instead of keeping it for a resume that will never come. Safe to call twice,
    and for a run dir that was never made or is already gone.
    """
    with contextlib.suppress(FileNotFoundError):
        (run_dir / RUN_ENDED_MARKER).touch()


def run_ended(run_dir: Path) -> bool:
    """Whether ``mark_run_ended`` was called for ``run_dir``."""
    return (run_dir / RUN_ENDED_MARKER).exists()


class SandboxRequest(BaseModel):
    """What a backend needs to create a sandbox. Never recorded: it may carry secret values."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    repo: Path
    """The repository to start from; it is copied, never modified."""
    run_dir: Path
    """A per-run directory the runtime owns; the workspace and the backend's private state go inside it."""
    env: dict[str, str] = {}
    """Variables every exec gets; the host environment is never passed through."""
    network: NetworkProfile = NetworkProfile()
    limits: Limits = Limits()
    secrets: tuple[ScopedSecret, ...] = ()
    """Host-scoped secrets: inside the sandbox only their placeholders exist (in ``env`` under ``name``)."""
    on_egress: Callable[[EgressAttempted], None] | None = None
    """Called (from any thread) with every egress attempt, as the journal event that records it."""
    git_user: GitUser = GitUser()
    """Author and committer of the sandbox's commits; every backend sets them (see ``exec_env``)."""
    package_cache: PackageCache = "off"
    """Whether commands see the per-user package cache (isolated backends; ``local`` sees the host anyway)."""
    mounts: Mounts = ()
    """Host directories commands see read-only at the same path (isolated backends)."""

    def exec_env(self) -> dict[str, str]:
        """The variables a backend gives every exec from this request: the git identity, then ``env``."""
        return self.git_user.env() | self.env


class SandboxState(BaseModel):
    """The JSON form of ``Sandbox.state()``; backends with more state subclass it."""

    backend: str
    run_dir: Path
    snapshot: WorkspaceSnapshot
    env: dict[str, str] = {}


class _ExecProtocol(asyncio.SubprocessProtocol):
    """Collects stdout/stderr up to a per-stream byte cap and signals exit or overflow."""

    def __init__(self, output_limit: int) -> None:
        self.output_limit = output_limit
        self.buffers: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        self.truncated = False
        self.exited = asyncio.Event()
        self.pipes_closed = asyncio.Event()
        self.stop = asyncio.Event()  # set on exit or when the cap is hit
        self._open_pipes = {1, 2}

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        buffer = self.buffers[fd]
        room = self.output_limit - len(buffer)
        if len(data) > room:
            buffer += data[: max(room, 0)]
            self.truncated = True
            self.stop.set()
        else:
            buffer += data

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._open_pipes.discard(fd)
        if not self._open_pipes:
            self.pipes_closed.set()

    def process_exited(self) -> None:
        self.exited.set()
        self.stop.set()

    def text(self, fd: int) -> str:
        return self.buffers[fd].decode("utf-8", errors="replace")


async def start_process(
    protocol: asyncio.SubprocessProtocol,
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    **popen: Any,
) -> asyncio.SubprocessTransport:
    """Start ``argv`` the way ``Sandbox.exec`` expects: stdin from /dev/null, piped output, own session."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.subprocess_exec(
        lambda: protocol,
        *argv,
        cwd=cwd,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        **popen,
    )
    return transport


class Sandbox(ABC):
    """One run's workspace (a host directory) and the means to run commands in it.

    File operations work on the host directory and are shared by all backends; a backend only
    implements ``_spawn`` (how a process starts) and, if it has more to clean up, ``destroy``.
    """

    backend_name: ClassVar[str]
    workspace: Path

    def __init__(self, *, run_dir: Path, snapshot: WorkspaceSnapshot, env: Mapping[str, str]) -> None:
        self.run_dir = run_dir
        self.snapshot = snapshot
        self.workspace = Path(os.path.realpath(snapshot.workspace))
        self.env = dict(env)
        self._running: set[int] = set()  # process-group ids of execs in flight
        self._killed_by_destroy: set[int] = set()
        self._destroyed = False

    # -- process execution -------------------------------------------------------------------

    @abstractmethod
    async def _spawn(
        self, protocol: asyncio.SubprocessProtocol, argv: list[str], *, cwd: Path, env: dict[str, str]
    ) -> asyncio.SubprocessTransport:
        """Start ``argv`` with host working directory ``cwd``; usually via ``start_process``.

        The started process must lead a new process group so ``_kill`` can take its whole tree.
        """

    def _base_env(self) -> dict[str, str]:
        """The minimal variables every exec starts from, before ``request.env`` and per-call ``env``."""
        # No bytecode caches: a .pyc from a run in the same second as an edit could be stale.
        return {"PATH": MINIMAL_PATH, "HOME": str(self.workspace), "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}

    def _kill(self, pgid: int) -> None:
        """Kill everything in the process group an exec started."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

    async def exec(
        self,
        command: str | Sequence[str],
        *,
        timeout: float,  # noqa: ASYNC109 - the contract takes a duration; exec enforces it itself
        output_limit: int = 100_000,
        cwd: str = ".",
        env: Mapping[str, str] | None = None,
    ) -> ExecResult:
        """Run a command (a string goes through ``/bin/sh -c``) in the workspace.

        The command gets ``timeout`` seconds and ``output_limit`` bytes per stream. Hitting either
        kills its whole process group and returns what was captured. When the command's main process
        exits, anything it left running in its group is killed too, so an exec never outlives its call.
        """
        self._check_open()
        if timeout <= 0:
            raise SandboxError(f"exec timeout must be positive, got {timeout}")
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else [str(arg) for arg in command]
        if not argv:
            raise SandboxError("exec needs a command")
        host_cwd = self.resolve(cwd, must_exist=True)
        if not host_cwd.is_dir():
            raise SandboxError(f"exec cwd is not a directory: {cwd}")
        full_env = self._base_env() | self.env | dict(env or {})
        protocol = _ExecProtocol(output_limit)
        started = time.monotonic()
        try:
            transport = await self._spawn(protocol, argv, cwd=host_cwd, env=full_env)
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the command or env
            raise SandboxError(f"cannot start {argv[0]!r}: {getattr(exc, 'strerror', None) or exc}") from exc
        pgid = transport.get_pid()
        self._running.add(pgid)
        timed_out, killed = False, True
        try:
            try:
                await asyncio.wait_for(protocol.stop.wait(), timeout)
            except TimeoutError:
                timed_out = True
            killed = not protocol.exited.is_set()
            self._kill(pgid)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(protocol.exited.wait(), _REAP_TIMEOUT)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(protocol.pipes_closed.wait(), _DRAIN_TIMEOUT)
        finally:
            if not protocol.exited.is_set():  # cancelled, or the kill has not been reported yet
                self._kill(pgid)
            self._running.discard(pgid)
            transport.close()
        killed = killed or pgid in self._killed_by_destroy
        return ExecResult(
            exit_code=None if killed else transport.get_returncode(),
            stdout=protocol.text(1),
            stderr=protocol.text(2),
            timed_out=timed_out,
            truncated=protocol.truncated,
            duration_ms=(time.monotonic() - started) * 1000,
        )

    # -- files ------------------------------------------------------------------------------

    def resolve(self, path: str, *, must_exist: bool = False) -> Path:
        """Map a workspace-relative (or absolute, inside the workspace) path to its real host path.

        Every symlink is resolved; if the result is outside the workspace, PathEscapeError is raised.
        """
        self._check_open()
        path = os.fspath(path)
        if "\0" in path:
            raise PathEscapeError(f"path contains a NUL byte: {path!r}")
        try:
            real = Path(os.path.realpath(self.workspace / path))  # an absolute `path` replaces the root
        except OSError as exc:  # a component was swapped (symlink <-> directory) between two lookups
            raise PathEscapeError(f"path {path!r} changed while it was being resolved") from exc
        if real != self.workspace and not real.is_relative_to(self.workspace):
            raise PathEscapeError(
                f"path {path!r} resolves outside the workspace",
                hint="use a path relative to the workspace root; symlinks may not lead out of it",
            )
        if must_exist and not os.path.lexists(real):
            raise SandboxError(f"no such file or directory in the workspace: {path}")
        return real

    def _relative(self, host_path: Path) -> str:
        """The workspace-relative posix form of a host path inside the workspace."""
        return host_path.relative_to(self.workspace).as_posix() or "."

    # File operations are local-disk calls made inline: no worker threads, whose executor the host
    # application (DBOS) may own and shut down.

    async def read_file(self, path: str) -> bytes:
        """The bytes of a regular file in the workspace."""
        real = self.resolve(path, must_exist=True)
        with os.fdopen(self._open_beneath(real, os.O_RDONLY, path=path), "rb") as handle:
            return handle.read()

    async def write_file(self, path: str, data: bytes) -> None:
        """Create or overwrite a regular file, creating parent directories; never writes outside."""
        real = self.resolve(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        with os.fdopen(self._open_beneath(real, flags, path=path, create_parents=True), "wb") as handle:
            handle.write(data)

    async def list_files(self, path: str = ".", pattern: str = "**/*") -> list[str]:
        """Workspace-relative posix paths of files under ``path`` matching ``pattern``, sorted.

        ``pattern`` is relative to ``path``; ``**`` spans directories. ``.git`` and ``.corral`` are skipped.
        """
        real = self.resolve(path, must_exist=True)
        if not real.is_dir():
            raise SandboxError(f"not a directory: {path}")
        return sorted(self._relative(real / rel) for rel in match_files(self._walk_files(real), pattern))

    def _walk_files(self, top: Path) -> Iterator[str]:
        """Posix paths relative to ``top`` of every non-directory entry, without following symlinks."""
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [name for name in dirnames if name not in _SKIPPED_DIRS]
            rel_dir = Path(dirpath).relative_to(top)
            for name in filenames:
                if name not in _SKIPPED_DIRS:
                    yield (rel_dir / name).as_posix()

    def _open_beneath(self, real: Path, flags: int, *, path: str, create_parents: bool = False) -> int:
        """Open ``real`` walking down from the workspace root without following any symlink.

        ``resolve`` already returned a symlink-free path; walking with O_NOFOLLOW closes the window in
        which a process in the sandbox swaps a component for a symlink between resolve and open.
        """
        parts = real.relative_to(self.workspace).parts
        if not parts:
            raise SandboxError(f"{path} is a directory, not a file")
        dir_fd = os.open(self.workspace, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in parts[:-1]:
                try:
                    next_fd = self._open_dir(part, dir_fd, create=create_parents, path=path)
                finally:
                    os.close(dir_fd)
                dir_fd = next_fd
            try:
                fd = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666, dir_fd=dir_fd)
            except OSError as exc:
                raise self._os_error(exc, path) from exc
        finally:
            with contextlib.suppress(OSError):
                os.close(dir_fd)
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            kind = "a directory, not a file" if stat.S_ISDIR(mode) else "not a regular file"
            raise SandboxError(f"{path} is {kind}")
        os.set_blocking(fd, True)
        return fd

    def _open_dir(self, name: str, dir_fd: int, *, create: bool, path: str) -> int:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
        try:
            return os.open(name, flags, dir_fd=dir_fd)
        except FileNotFoundError:
            if not create:
                raise SandboxError(f"no such file or directory in the workspace: {path}") from None
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o777, dir_fd=dir_fd)
            try:
                return os.open(name, flags, dir_fd=dir_fd)
            except OSError as exc:
                raise self._os_error(exc, path) from exc
        except OSError as exc:
            raise self._os_error(exc, path) from exc

    @staticmethod
    def _os_error(exc: OSError, path: str) -> SandboxError:
        if exc.errno == errno.ELOOP:
            return PathEscapeError(f"path {path!r} is a symlink loop, or became a symlink while in use")
        if exc.errno == errno.ENOTDIR:
            return SandboxError(f"a parent of {path!r} is not a directory")
        if exc.errno == errno.EISDIR:
            return SandboxError(f"{path} is a directory, not a file")
        if exc.errno == errno.ENOENT:
            return SandboxError(f"no such file or directory in the workspace: {path}")
        return SandboxError(f"cannot open {path}: {exc.strerror}")

    # -- lifecycle --------------------------------------------------------------------------

    async def diff(self) -> str:
        """A git-style patch of the workspace against its start, without ``.git/`` and ``.corral/``."""
        self._check_open()
        return await workspace_diff(self.snapshot)

    def state(self) -> dict[str, Any]:
        """JSON-serializable; ``SandboxBackend.attach`` re-opens the sandbox from it.

        The environment is left out: it may hold secret values, and state is meant to be recorded.
        Pass it again as ``state["env"]`` to ``attach``.
        """
        state = SandboxState(backend=self.backend_name, run_dir=self.run_dir, snapshot=self.snapshot)
        return state.model_dump(mode="json", exclude={"env"})

    async def destroy(self) -> None:
        """Kill leftover processes and remove the workspace and baseline; safe to call twice."""
        self._destroyed = True
        for pgid in list(self._running):
            self._killed_by_destroy.add(pgid)
            self._kill(pgid)
        await remove_tree(self.snapshot.workspace)
        await remove_tree(self.snapshot.git_dir)

    def _check_open(self) -> None:
        if self._destroyed:
            raise SandboxError(f"sandbox at {self.workspace} has been destroyed")


class SandboxBackend(ABC):
    """Creates sandboxes of one kind; registered under the ``corral.sandbox_backends`` entry point group."""

    name: ClassVar[str]
    isolated: ClassVar[bool]

    @abstractmethod
    async def create(self, request: SandboxRequest) -> Sandbox:
        """Make a fresh workspace from ``request.repo`` inside ``request.run_dir``."""

    @abstractmethod
    async def attach(self, state: dict[str, Any]) -> Sandbox:
        """Re-open a sandbox from ``Sandbox.state()``; raise SandboxError if it is gone."""

    def _load_state(self, state: dict[str, Any]) -> SandboxState:
        """Validate a state dict for this backend and check that its directories still exist."""
        try:
            parsed = SandboxState.model_validate(state)
        except ValidationError as exc:
            raise SandboxError(f"not a sandbox state: {exc.error_count()} invalid field(s)") from exc
        if parsed.backend != self.name:
            raise SandboxError(f"state belongs to the {parsed.backend!r} backend, not {self.name!r}")
        if run_ended(parsed.run_dir):  # a sweep may be removing it: an ended run's sandbox is garbage
            raise SandboxError(f"sandbox is gone: the run of {parsed.run_dir} has ended")
        for directory in (parsed.snapshot.workspace, parsed.snapshot.git_dir):
            if not directory.is_dir():
                raise SandboxError(f"sandbox is gone: {directory} no longer exists")
        return parsed


def _entry_points() -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry_point.name, entry_point)
    return found


def available_backends() -> list[str]:
    """Names of the installed sandbox backends."""
    return sorted(_entry_points())


def get_backend(name: str) -> SandboxBackend:
    """An instance of the backend registered as ``name``."""
    found = _entry_points()
    if name not in found:
        available = ", ".join(sorted(found)) or "none"
        raise SandboxError(
            f"unknown sandbox backend {name!r}; available: {available}",
            hint=f"backends are registered under the {ENTRY_POINT_GROUP!r} entry point group",
        )
    try:
        backend_class = found[name].load()
    except Exception as exc:
        raise SandboxError(f"sandbox backend {name!r} failed to load: {type(exc).__name__}: {exc}") from exc
    if not (isinstance(backend_class, type) and issubclass(backend_class, SandboxBackend)):
        raise SandboxError(f"entry point {name!r} is not a SandboxBackend: {backend_class!r}")
    return backend_class()
