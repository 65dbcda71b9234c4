"""The sandbox contract: a workspace on the host plus process execution that every backend implements."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import re
import signal
import stat
import time
from abc import ABC, abstractmethod
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from corral.errors import PathEscapeError, SandboxError
from corral.events import EgressAttempted
from corral.sandbox.patching import PatchReport, apply_patch
from corral.sandbox.types import GitUser, HostPatternText, Limits, Mounts, NetworkProfile, PackageCache
from corral.sandbox.workspace import (
    SCRATCH_DIRNAME,
    WorkspaceSnapshot,
    match_files,
    remove_tree,
    workspace_diff,
)

logger = logging.getLogger("corral.sandbox")

ENTRY_POINT_GROUP = "corral.sandbox_backends"
MINIMAL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EXEC_TIMEOUT = 120.0
"""Seconds a command gets unless the caller says otherwise."""
OUTPUT_LIMIT = 1_000_000
"""Bytes of each stream an ExecResult keeps unless the caller says otherwise: all of it, or its head and tail."""
SPILL_LIMIT = 64 * 1024 * 1024
"""Bytes of a command's output saved to its output file at most; a runaway command must not fill the disk."""
EXEC_OUTPUT_DIR = f"{SCRATCH_DIRNAME}/output"
"""Workspace-relative directory of the files holding the whole output of commands whose output was cut."""
_REAP_TIMEOUT = 5.0  # after SIGKILL, how long to wait for the kernel to report the exit
_DRAIN_TIMEOUT = 1.0  # after exit, how long to wait for pipes held open by a process that escaped the group
_SKIPPED_DIRS = frozenset({".git", SCRATCH_DIRNAME})
_OUTPUT_NAME = re.compile(r"(\d{1,18})\.log")
_OUTPUT_NAME_TRIES = 100
_PARTIAL_LINE_MAX = 64 * 1024  # a line longer than this goes to the output file in pieces
_WRITE_BUFFER = 256 * 1024


@dataclass(frozen=True)
class ExecResult:
    """What a command did. ``exit_code`` is None when the sandbox killed it (timeout, a limit, destroy).

    ``stdout`` and ``stderr`` are whole when they fit in the exec's ``output_limit``; otherwise each
    keeps its head and its tail with a marker line between them saying what was left out, and the
    whole output is in ``output_path``.
    """

    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool
    truncated: bool
    """Some output is not in ``stdout``/``stderr``: a stream went over ``output_limit``."""
    duration_ms: float
    stdout_bytes: int = 0
    """Bytes the command wrote to stdout, kept or not."""
    stderr_bytes: int = 0
    output_path: str | None = None
    """Workspace-relative file with both streams as they arrived; None when nothing was cut (or it could
    not be saved: the marker line says why)."""
    saved_bytes: int = 0
    """Bytes of output in ``output_path``: ``stdout_bytes + stderr_bytes`` unless the spill limit stopped it."""


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


RouteName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")]
"""A single-label name no DNS answers for (``corral-gateway``)."""
RouteTarget = Annotated[str, Field(pattern=r"^127\.0\.0\.1:[0-9]{1,5}$")]
"""A service of corral's on this machine's loopback."""


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
    pool: int = Field(default=0, ge=0, le=64)
    """Keep this many sandboxes like this one prepared, for later creates in this process (bubblewrap as
    root; requests without secrets or TLS interception); 0: none."""
    routes: dict[RouteName, RouteTarget] = {}
    """corral's own services on this machine that commands may reach by name over plain HTTP through the
    egress proxy, whatever the network profile: ``{"corral-gateway": "127.0.0.1:40123"}`` (the model
    gateway an external engine calls). Nothing else is reachable by them. A backend without an egress
    proxy (``local``, network ``host``) leaves commands on the host's network, where the address itself
    is reachable."""

    def exec_env(self) -> dict[str, str]:
        """The variables a backend gives every exec from this request: the git identity, then ``env``."""
        return self.git_user.env() | self.env

    def route_addresses(self) -> dict[str, tuple[str, int]]:
        """``routes`` as (host, port) pairs."""
        pairs = {name: target.rpartition(":") for name, target in self.routes.items()}
        return {name: (host, int(port)) for name, (host, _, port) in pairs.items()}


class SandboxState(BaseModel):
    """The JSON form of ``Sandbox.state()``; backends with more state subclass it."""

    backend: str
    run_dir: Path
    snapshot: WorkspaceSnapshot
    env: dict[str, str] = {}


class _KeptStream:
    """One output stream as an ExecResult keeps it: all of it while it fits in ``limit`` bytes, then its
    first half and a rolling last half, cut at line boundaries at the end."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.head_size = limit // 2
        self.tail_size = limit - self.head_size
        self.head = bytearray()  # the whole stream while it fits
        self.tail = bytearray()
        self.tail_starts_line = False
        self.total = 0
        self.newlines = 0

    @property
    def cut(self) -> bool:
        return self.total > self.limit

    def fits(self, more: int) -> bool:
        return self.total + more <= self.limit

    def add(self, data: bytes) -> None:
        fitted = not self.cut
        self.total += len(data)
        self.newlines += data.count(b"\n")
        if not self.cut:
            self.head += data
        elif fitted:
            whole = self.head + data
            start = len(whole) - self.tail_size
            self.head, self.tail = whole[: self.head_size], whole[start:]
            self.tail_starts_line = whole[start - 1] == ord("\n")
        else:
            # bytearray drops bytes from its front without moving the rest: a rolling tail is cheap.
            self.tail += data
            excess = len(self.tail) - self.tail_size
            if excess > 0:
                self.tail_starts_line = self.tail[excess - 1] == ord("\n")
                del self.tail[:excess]

    def text(self, where: str) -> str:
        """The kept text; when the stream was cut, head, a marker line (ending in ``where``), tail."""
        if not self.cut:
            return self.head.decode("utf-8", errors="replace")
        head, tail = bytes(self.head), bytes(self.tail)
        # Whole lines at both ends, unless that would throw away more than half of the end.
        end = head.rfind(b"\n") + 1
        if end * 2 >= len(head) > 0:
            head = head[:end]
        start = 0 if self.tail_starts_line else tail.find(b"\n") + 1
        if (len(tail) - start) * 2 >= len(tail):
            tail = tail[start:]
        left_out = self.total - len(head) - len(tail)
        lines = self.newlines - head.count(b"\n") - tail.count(b"\n")
        marker = f"[... {left_out:,} bytes ({lines:,} lines) of {self.name} left out; {where} ...]\n"
        separator = "" if not head or head.endswith(b"\n") else "\n"
        return head.decode("utf-8", errors="replace") + separator + marker + tail.decode("utf-8", errors="replace")


class _OutputFile:
    """A command's whole output, written to a workspace file as it arrives, up to ``limit`` bytes.

    stdout and stderr are interleaved line by line in arrival order, as a terminal shows ``cmd 2>&1``:
    a stream's partial line waits for its end (or for ``_PARTIAL_LINE_MAX`` bytes), so lines of the
    two streams are never mixed inside one line.
    """

    def __init__(self, fd: int, path: str, limit: int, release: Callable[[int], None]) -> None:
        self.path = path
        self.limit = limit
        self.saved = 0
        self.stopped: str | None = None
        """Why the file holds less than the whole output."""
        self._failed = False
        self._release = release
        self._file = os.fdopen(fd, "wb", buffering=_WRITE_BUFFER)
        self._partial = {1: bytearray(), 2: bytearray()}

    def add(self, fd: int, data: bytes) -> None:
        partial = self._partial[fd]
        if not partial and data.endswith(b"\n"):
            self._write(data)
            return
        partial += data
        end = partial.rfind(b"\n") + 1
        if len(partial) - end > _PARTIAL_LINE_MAX:
            end = len(partial)
        if end:
            self._write(bytes(partial[:end]))
            del partial[:end]

    def _write(self, data: bytes) -> None:
        if self.stopped is not None:
            return
        room = self.limit - self.saved
        try:
            self._file.write(data[:room])
        except OSError as exc:
            self.stopped, self._failed = f"writing it failed: {exc.strerror or exc}", True
            return
        self.saved += min(len(data), room)
        if len(data) > room:
            self.stopped = f"it stops at the {self.limit:,}-byte spill limit"

    def close(self, total: int) -> None:
        """Write what is pending, then hand the file to the sandbox's commands; always closes it."""
        try:
            for partial in self._partial.values():
                if partial:
                    self._write(bytes(partial))
            if self.stopped is not None and not self._failed:  # say so where a reader of the file looks
                left = total - self.saved
                self._file.write(
                    f"\n[corral: {left:,} more bytes of output are not in this file: {self.stopped}]\n".encode()
                )
            self._file.flush()
        except OSError as exc:
            self.stopped, self._failed = self.stopped or f"writing it failed: {exc.strerror or exc}", True
        try:
            self._release(self._file.fileno())
        except OSError as exc:
            logger.warning("cannot hand %s to the sandbox: %s", self.path, exc)
        finally:
            with contextlib.suppress(OSError):
                self._file.close()


class _ExecProtocol(asyncio.SubprocessProtocol):
    """Keeps each stream within ``output_limit`` (head and tail) and, once one goes over, saves the
    whole output to a file from ``open_file`` (called at most once, inline)."""

    def __init__(
        self,
        output_limit: int,
        open_file: Callable[[], _OutputFile] | None,
        on_stdout: Callable[[bytes], None] | None = None,
    ) -> None:
        self._on_stdout = on_stdout
        self.reader_error: Exception | None = None
        self.streams = {1: _KeptStream("stdout", output_limit), 2: _KeptStream("stderr", output_limit)}
        self.file: _OutputFile | None = None
        self.file_error = None if open_file is not None else "saving it is off (spill limit 0)"
        self._open_file = open_file
        # Until the file opens: arrival order, as +n bytes of stdout / -n bytes of stderr. Both
        # streams are still whole in memory then, so the file can start with everything in order.
        self._order = array("q")
        self.exited = asyncio.Event()
        self.pipes_closed = asyncio.Event()
        self._open_pipes = {1, 2}
        self._closed = False

    @property
    def truncated(self) -> bool:
        return any(stream.cut for stream in self.streams.values())

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        stream = self.streams[fd]
        if self.file is None and self.file_error is None:
            if stream.fits(len(data)):
                signed = len(data) if fd == 1 else -len(data)
                if self._order and (self._order[-1] > 0) == (fd == 1):
                    self._order[-1] += signed
                else:
                    self._order.append(signed)
            else:
                self._start_file()
        if self.file is not None:
            self.file.add(fd, data)
        stream.add(data)
        if fd == 1 and self._on_stdout is not None:
            try:
                self._on_stdout(data)
            except Exception as exc:  # raised by exec when the command has ended
                self.reader_error, self._on_stdout = exc, None

    def _start_file(self) -> None:
        assert self._open_file is not None
        try:
            self.file = self._open_file()
        except (SandboxError, OSError) as exc:
            message = str(exc).splitlines()[0]
            self.file_error = f"it could not be saved: {message}"
            logger.warning("cannot save a command's whole output: %s", message)
            return
        offsets = {1: 0, 2: 0}
        for signed in self._order:
            fd, size = (1, signed) if signed > 0 else (2, -signed)
            self.file.add(fd, bytes(self.streams[fd].head[offsets[fd] : offsets[fd] + size]))
            offsets[fd] += size
        self._order = array("q")

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._open_pipes.discard(fd)
        if not self._open_pipes:
            self.pipes_closed.set()

    def process_exited(self) -> None:
        self.exited.set()

    def finish(self) -> None:
        """Close the output file, if one was opened; safe to call twice."""
        if self.file is not None and not self._closed:
            self._closed = True
            self.file.close(sum(stream.total for stream in self.streams.values()))

    def text(self, fd: int) -> str:
        return self.streams[fd].text(self._where())

    def _where(self) -> str:
        if self.file is None:
            return self.file_error or "it was not saved"
        if self.file.stopped is not None:
            return (
                f"only the first {self.file.saved:,} bytes of the output are in {self.file.path} ({self.file.stopped})"
            )
        return f"the whole output is in {self.file.path}"


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
        self.left_out: str | None = None
        """After ``diff()``: the environments it left out (``left out of the patch: .venv/ (749 files)``)."""
        self._last_output_number: int | None = None  # read from EXEC_OUTPUT_DIR on first use

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

    def _kill_started(self, starting: asyncio.Future[asyncio.SubprocessTransport]) -> None:
        """Kill the process group of an exec cancelled while it started, once the start is done."""
        if starting.cancelled() or starting.exception() is not None:
            return
        transport = starting.result()
        self._kill(transport.get_pid())
        transport.close()

    async def exec(
        self,
        command: str | Sequence[str],
        *,
        timeout: float = EXEC_TIMEOUT,  # noqa: ASYNC109 - the contract takes a duration; exec enforces it itself
        output_limit: int = OUTPUT_LIMIT,
        spill_limit: int = SPILL_LIMIT,
        cwd: str = ".",
        env: Mapping[str, str] | None = None,
        on_stdout: Callable[[bytes], None] | None = None,
    ) -> ExecResult:
        """Run a command (a string goes through ``/bin/sh -c``) in the workspace.

        The command gets ``timeout`` seconds; then its whole process group is killed. Output never
        kills it: each stream keeps its head and tail within ``output_limit`` bytes, and once one goes
        over, the whole output (both streams, in arrival order) is written as it arrives to a new file
        in EXEC_OUTPUT_DIR, up to ``spill_limit`` bytes (0: no file). When the command's main process
        exits, anything it left running in its group is killed too, so an exec never outlives its call.

        ``on_stdout`` is given stdout as it arrives, chunk by chunk, whatever is kept (an engine reads
        its CLI's events live). Should it raise, it is not called again, and exec raises that error
        once the command has ended.
        """
        self._check_open()
        if timeout <= 0:
            raise SandboxError(f"exec timeout must be positive, got {timeout}")
        if output_limit <= 0 or spill_limit < 0:
            raise SandboxError(
                f"exec output_limit must be positive and spill_limit not negative, got {output_limit}, {spill_limit}"
            )
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else [str(arg) for arg in command]
        if not argv:
            raise SandboxError("exec needs a command")
        host_cwd = self.resolve(cwd, must_exist=True)
        if not host_cwd.is_dir():
            raise SandboxError(f"exec cwd is not a directory: {cwd}")
        full_env = self._base_env() | self.env | dict(env or {})
        open_file = (lambda: self._open_output_file(spill_limit)) if spill_limit else None
        protocol = _ExecProtocol(output_limit, open_file, on_stdout)
        started = time.monotonic()
        # Shielded: asyncio, cancelled between the fork and the transport's hand-over, kills the
        # main process only, and a shell's command would live on. A cancelled start is let finish
        # in the background and then its whole group is killed (``_kill_started``).
        starting = asyncio.ensure_future(self._spawn(protocol, argv, cwd=host_cwd, env=full_env))
        try:
            transport = await asyncio.shield(starting)
        except BaseException as exc:
            protocol.finish()
            starting.add_done_callback(self._kill_started)  # done already, or not: either way, once it is
            if isinstance(exc, (OSError, ValueError)):  # ValueError: a NUL byte in the command or env
                raise SandboxError(f"cannot start {argv[0]!r}: {getattr(exc, 'strerror', None) or exc}") from exc
            raise
        pgid = transport.get_pid()
        self._running.add(pgid)
        timed_out, killed = False, True
        try:
            try:
                await asyncio.wait_for(protocol.exited.wait(), timeout)
            except TimeoutError:
                timed_out = True
            killed = not protocol.exited.is_set()
            self._kill(pgid)
            for done, wait_s in ((protocol.exited, _REAP_TIMEOUT), (protocol.pipes_closed, _DRAIN_TIMEOUT)):
                if not done.is_set():  # most often set already: no task for a wait that would not wait
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(done.wait(), wait_s)
        finally:
            if not protocol.exited.is_set():  # cancelled, or the kill has not been reported yet
                self._kill(pgid)
            self._running.discard(pgid)
            transport.close()
            protocol.finish()
        killed = killed or pgid in self._killed_by_destroy
        if protocol.reader_error is not None:
            raise protocol.reader_error
        stdout, stderr = protocol.streams[1], protocol.streams[2]
        return ExecResult(
            exit_code=None if killed else transport.get_returncode(),
            stdout=protocol.text(1),
            stderr=protocol.text(2),
            timed_out=timed_out,
            truncated=protocol.truncated,
            duration_ms=(time.monotonic() - started) * 1000,
            stdout_bytes=stdout.total,
            stderr_bytes=stderr.total,
            output_path=protocol.file.path if protocol.file else None,
            saved_bytes=protocol.file.saved if protocol.file else 0,
        )

    def _open_output_file(self, limit: int) -> _OutputFile:
        """A new ``EXEC_OUTPUT_DIR/<n>.log``, reached like ``write_file`` reaches a file: never through a symlink.

        It is created with mode 0 and handed over (``_release_output_file``) only when the command has
        ended, so a command reading the whole workspace (``grep -r .``) cannot feed on its own output.
        """
        parts = EXEC_OUTPUT_DIR.split("/")
        dir_fd = self._open_parent(parts, create=True, path=EXEC_OUTPUT_DIR)
        try:
            if self._last_output_number is None:  # a re-attached sandbox: earlier runs' files stay
                found = (_OUTPUT_NAME.fullmatch(name) for name in os.listdir(dir_fd))
                self._last_output_number = max((int(match[1]) for match in found if match), default=0)
            for _ in range(_OUTPUT_NAME_TRIES):
                self._last_output_number += 1
                name = f"{self._last_output_number}.log"
                try:
                    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0, dir_fd=dir_fd)
                except FileExistsError:  # made meanwhile (by a command, or a concurrent exec)
                    continue
                except OSError as exc:
                    raise self._os_error(exc, f"{EXEC_OUTPUT_DIR}/{name}") from exc
                return _OutputFile(fd, f"{EXEC_OUTPUT_DIR}/{name}", limit, self._release_output_file)
        finally:
            os.close(dir_fd)
        raise SandboxError(f"no free file name in {EXEC_OUTPUT_DIR} after {_OUTPUT_NAME_TRIES} tries")

    def _release_output_file(self, fd: int) -> None:
        """Make a finished output file readable and writable like a file the sandbox's commands made."""
        os.fchmod(fd, 0o644)

    # -- files ------------------------------------------------------------------------------

    def resolve(self, path: str, *, must_exist: bool = False) -> Path:
        """Map a workspace-relative (or absolute, inside the workspace) path to its real host path.

        Every symlink is resolved; if the result is outside the workspace, PathEscapeError is raised.
        """
        self._check_open()
        path = os.fspath(path)
        if "\0" in path:
            raise PathEscapeError(f"path contains a NUL byte: {path!r}")
        real = self._plain_path(path)
        if real is None:
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

    def _plain_path(self, path: str) -> Path | None:
        """``path`` resolved without ``realpath`` when it is relative, has no ``..`` and no symlink on the way
        (the common case: the workspace root is resolved once, so only ``path``'s own components are looked
        at, one ``lstat`` each); None otherwise, and ``realpath`` decides. A component that does not exist
        ends the walk: what follows it cannot be a symlink either."""
        parts = [part for part in path.split("/") if part not in ("", ".")]
        if path.startswith("/") or ".." in parts:
            return None
        real = self.workspace
        for index, part in enumerate(parts):
            candidate = real / part
            try:
                mode = os.lstat(candidate).st_mode
            except FileNotFoundError:
                return real.joinpath(*parts[index:])
            except OSError:
                return None
            if stat.S_ISLNK(mode):
                return None
            real = candidate
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
        dir_fd = self._open_parent(parts[:-1], create=create_parents, path=path)
        try:
            fd = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666, dir_fd=dir_fd)
        except OSError as exc:
            raise self._os_error(exc, path) from exc
        finally:
            os.close(dir_fd)
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            kind = "a directory, not a file" if stat.S_ISDIR(mode) else "not a regular file"
            raise SandboxError(f"{path} is {kind}")
        os.set_blocking(fd, True)
        return fd

    def _open_parent(self, parts: Sequence[str], *, create: bool, path: str) -> int:
        """A descriptor of the workspace directory ``parts`` names, walked down without following symlinks."""
        dir_fd = os.open(self.workspace, os.O_RDONLY | os.O_DIRECTORY)
        for part in parts:
            try:
                next_fd = self._open_dir(part, dir_fd, create=create, path=path)
            finally:
                os.close(dir_fd)
            dir_fd = next_fd
        return dir_fd

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

    async def apply_patch(self, patch: str) -> PatchReport:
        """Apply ``patch`` (a child run's work) to the workspace, all or nothing (``git apply``).

        What it creates or rewrites is the sandbox's own afterwards: its commands can edit it.
        """
        self._check_open()
        report = await apply_patch(self.workspace, patch)
        if report.applies:
            await self._patched(patch)
        return report

    async def _patched(self, patch: str) -> None:
        """After ``apply_patch``: a backend whose commands run as another user than the host's hands them
        the files the patch wrote (the host wrote them as itself)."""
        return

    # -- lifecycle --------------------------------------------------------------------------

    async def diff(self) -> str:
        """A git-style patch of the workspace against its start, without ``.git/`` and ``.corral/``.

        What it leaves out on purpose (a virtualenv, ``node_modules``) is said in ``left_out``.
        """
        self._check_open()
        notes: list[str] = []
        patch = await self._diff(notes)
        self.left_out = notes[0] if notes else None
        return patch

    async def _diff(self, notes: list[str]) -> str:
        """The patch, for :meth:`diff`; a backend with its own view of the changes overrides this."""
        return await workspace_diff(self.snapshot, notes=notes)

    def state(self) -> dict[str, Any]:
        """JSON-serializable; ``SandboxBackend.attach`` re-opens the sandbox from it.

        The environment is left out: it may hold secret values, and state is meant to be recorded.
        Pass it again as ``state["env"]`` to ``attach``.
        """
        state = SandboxState(backend=self.backend_name, run_dir=self.run_dir, snapshot=self.snapshot)
        return state.model_dump(mode="json", exclude={"env"})

    async def open(self) -> None:
        """Make sure the sandbox exists before a tool that writes or runs commands uses it.

        A backend's sandbox exists once ``create`` returns: nothing to do. A sandbox made on first use
        (a writing subagent's, see ``runtime/sandboxing.py``) is made now; the caller must be where
        making it can be recorded (an engine calls this before the tool's durable step, not inside it).
        """
        return

    async def suspend(self) -> None:
        """Stop using the sandbox but keep it for ``SandboxBackend.attach``: kill its commands and give back
        what it holds on the host beyond its files (a backend's mounts, cgroups, proxy). The object is
        unusable afterwards; safe to call twice, and before ``destroy``."""
        self._stop_commands()

    async def destroy(self) -> None:
        """Kill leftover processes and remove the workspace and baseline; safe to call twice."""
        self._stop_commands()
        await remove_tree(self.snapshot.workspace)
        await remove_tree(self.snapshot.git_dir)

    def _stop_commands(self) -> None:
        """Close the sandbox to new commands and kill those in flight (their ``exec`` returns ``exit_code=None``)."""
        self._destroyed = True
        for pgid in list(self._running):
            self._killed_by_destroy.add(pgid)
            self._kill(pgid)

    def _check_open(self) -> None:
        if self._destroyed:
            raise SandboxError(f"sandbox at {self.workspace} is closed (destroyed, or suspended until re-opened)")


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

    async def close(self) -> None:
        """Give back what the backend keeps for this event loop between sandboxes (prepared ones, say).

        A process that made sandboxes calls it before its loop ends; the sandboxes it handed out are
        not affected, except that those whose destroy() left work behind see it finished. Default: nothing.
        """
        return

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


@functools.cache
def _entry_points() -> dict[str, EntryPoint]:
    """The group's entry points, read from the installed packages' metadata once per process (a read
    costs milliseconds, and every run asks)."""
    found: dict[str, EntryPoint] = {}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry_point.name, entry_point)
    return found


def available_backends() -> list[str]:
    """Names of the installed sandbox backends."""
    return sorted(_entry_points())


async def close_backends() -> None:
    """``close()`` every backend this process has loaded (see ``SandboxBackend.close``)."""
    for backend_class in list(_loaded):
        await backend_class().close()


_loaded: set[type[SandboxBackend]] = set()


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
    _loaded.add(backend_class)
    return backend_class()
