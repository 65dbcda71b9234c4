"""The host's side of a sandbox's resident init (``sandbox_init.py``): start it once, run commands through it.

Starting bwrap costs 4 to 9 ms of namespaces and mounts (BENCHMARKS.md), and the sandbox's cgroups and
the egress relay add more; a resident init pays that once per sandbox, and each command then costs a fork inside it
plus one message each way. The init runs in the sandbox (its uid, namespaces, seccomp filter and
rlimits), so everything it says is untrusted: its lines are parsed strictly, a malformed one ends it,
nothing it sends can carry file descriptors to the host, and a send that would block is a dead init.

One thread per init owns its process: it starts bwrap (a death signal asked for by a process belongs
to the *thread* that forked it, so the thread must live as long as the sandbox), then reads the
init's answers until it ends, and finally reaps it and reports every command still in flight as
killed. Commands are asyncio transports on whichever loop called ``run``.
"""

from __future__ import annotations

import array
import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import itertools
import json
import logging
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.errors import SandboxError

logger = logging.getLogger("corral.sandbox")

INIT_SOURCE = Path(__file__).with_name("sandbox_init.py")
C_INIT_SOURCE = Path(__file__).with_name("sandbox_init.c")
START_TIMEOUT = 10.0
"""Seconds for bwrap to report its first process and for the init to say it is ready."""
_SEND_TIMEOUT = 5.0  # an init that takes no message for this long is stopped (it could be SIGSTOPped)
_EXIT_TIMEOUT = 5.0
_LINE = re.compile(rb"E (\d{1,18}) (\d{1,3})")
_MAX_LINE = 64
_STDERR_KEPT = 4096
_ids = itertools.count(1)  # never reused in a process: a late answer cannot reach a newer command


_BOOT = (
    "import posix,sys\n"
    "f=int(sys.argv.pop(1));c=[]\n"
    "while b:=posix.read(f,65536):c.append(b)\n"
    "posix.close(f);exec(compile(b''.join(c),'sandbox_init.py','exec'))"
)
"""Reads the init's source from an inherited pipe (the sandbox's uid may not open a pipe of root's by
path), so ``ps`` inside shows this line rather than the whole program."""


def init_argv(python: str, fds: LaunchFds) -> list[str]:
    """The command that runs the init inside the sandbox, talking to corral on ``fds.init_socket``: the
    compiled init (an inherited descriptor of it) where there is one, else the Python one."""
    if fds.binary is not None:
        return [f"/proc/self/fd/{fds.binary}", str(fds.init_socket)]
    return [python, "-I", "-S", "-c", _BOOT, str(fds.source), str(fds.init_socket)]


def _run_frame(ident: int, argv: Sequence[str], cwd: str, env: dict[str, str]) -> bytes:
    """A ``run`` frame's payload (see sandbox_init.py for the format)."""
    strings = [cwd, *argv, *(f"{name}={value}" for name, value in env.items())]
    head = b"r" + ident.to_bytes(8, "big") + len(argv).to_bytes(4, "big") + len(env).to_bytes(4, "big")
    return head + b"".join(os.fsencode(text) + b"\0" for text in strings)


def init_program() -> str:
    """Which init sandboxes start: ``c`` when it compiled here, else ``python``; ``CORRAL_SANDBOX_INIT``
    (``c`` or ``python``) chooses, ``c`` failing loudly where it cannot compile."""
    chosen = os.environ.get("CORRAL_SANDBOX_INIT", "").strip().lower()
    if chosen not in ("", "c", "python"):
        raise SandboxError(f"CORRAL_SANDBOX_INIT must be 'c' or 'python', not {chosen!r}")
    if chosen == "python":
        return "python"
    binary, why = compiled_init()
    if binary is None and chosen == "c":
        raise SandboxError(f"CORRAL_SANDBOX_INIT=c, but the C init cannot be built here: {why}")
    return "c" if binary is not None else "python"


@functools.cache
def compiled_init() -> tuple[Path | None, str]:
    """The C init built for this machine (once, cached by its source's hash) and, if none, why not."""
    source = C_INIT_SOURCE.read_bytes()
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        return None, "no C compiler (cc or gcc) on PATH"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    target = Path(base, "corral", "sandbox-init", f"init-{hashlib.sha256(source).hexdigest()[:16]}")
    if target.is_file() and os.access(target, os.X_OK):
        return target, ""
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        built = subprocess.run(
            [compiler, "-O2", "-o", str(partial), "-x", "c", "-"],
            input=source,
            capture_output=True,
            timeout=120,
            check=False,
        )
        if built.returncode != 0:
            reason = built.stderr.decode(errors="replace").strip()[-500:]
            logger.warning("the C sandbox init did not compile (%s); sandboxes use the Python one", reason)
            return None, f"{compiler} failed: {reason}"
        partial.chmod(0o755)
        partial.replace(target)  # atomic: another process may be building the same source
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("the C sandbox init could not be built (%s); sandboxes use the Python one", exc)
        return None, str(exc)
    finally:
        partial.unlink(missing_ok=True)
    return target, ""


@dataclass(frozen=True)
class LaunchFds:
    """What ``ResidentInit`` opens for bwrap and passes to ``argv_for``: each an inherited fd number."""

    init_socket: int
    source: int
    seccomp: int
    info: int
    block: int
    binary: int | None = None
    """The compiled init, when there is one (``source`` is then the Python one's, unused)."""


@functools.cache
def _init_source() -> bytes:
    return INIT_SOURCE.read_bytes()


class ResidentInit:
    """A started (or starting) resident init; ``run`` commands on it, ``close`` it once."""

    def __init__(
        self,
        *,
        argv_for: Callable[[LaunchFds], list[str]],
        seccomp: bytes,
        prepare: Callable[[int], None],
        name: str,
    ) -> None:
        self._argv_for = argv_for
        self._seccomp = seccomp
        self._prepare = prepare  # called with the sandbox's first process before it runs anything
        self._name = name
        self._started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._lock = threading.Lock()
        self._commands: dict[int, ResidentCommand] = {}
        self._sock: socket.socket | None = None
        self._child_sock: socket.socket | None = None
        self._pidfd: int | None = None  # of the sandbox's pid 1: SIGKILL to it ends the whole namespace
        self._popen: subprocess.Popen[bytes] | None = None
        self._stderr = bytearray()
        self._stderr_open = True
        self._pending = b""
        self._closed = False
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"corral-sandbox-init {name}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return not self.ended.is_set() and not self._closed

    async def ready(self) -> None:
        """Wait until the init listens; SandboxError if it could not start."""
        # Shielded: a caller that gives up waiting must not cancel the start itself (the thread finishes it).
        started = asyncio.wrap_future(self._started)
        started.add_done_callback(lambda future: future.cancelled() or future.exception())  # retrieved if unawaited
        await asyncio.shield(started)

    # -- commands ---------------------------------------------------------------------------

    async def run(
        self, protocol: asyncio.SubprocessProtocol, argv: Sequence[str], *, cwd: str, env: dict[str, str]
    ) -> ResidentCommand:
        """Start ``argv`` inside (``cwd`` as the sandbox sees it); its output goes to ``protocol``.

        ValueError for a NUL byte in the command, its directory or its environment (as a local exec).
        """
        if any("\0" in text for text in (*argv, cwd, *env, *env.values())):
            raise ValueError("embedded null byte")
        if any("=" in name or not name for name in env):
            raise ValueError(f"illegal environment variable name: {next(n for n in env if '=' in n or not n)!r}")
        if self._started.done():
            self._started.result()  # raises if it could not start
        else:
            await self.ready()
        loop = asyncio.get_running_loop()
        ident = next(_ids)
        payload = _run_frame(ident, argv, cwd, env)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        command = ResidentCommand(self, ident, loop, protocol)
        try:
            with self._lock:
                if not self.alive:
                    raise SandboxError(f"the sandbox's init ended{self._stderr_note()}")
                self._commands[ident] = command
                self._send(payload, fds=(out_w, err_w))
        except BaseException:
            with self._lock:
                self._commands.pop(ident, None)
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        command.connect(out_r, err_r)
        return command

    def kill(self, ident: int) -> None:
        """Kill a command and everything it started (no-op once it has ended)."""
        with self._lock:
            if ident not in self._commands or not self.alive:
                return
            with contextlib.suppress(SandboxError):
                self._send(b"k" + ident.to_bytes(8, "big"))

    def _send(self, payload: bytes, *, fds: Sequence[int] = ()) -> None:
        """One frame to the init (the lock held); an init that does not take it is stopped."""
        assert self._sock is not None
        frame = len(payload).to_bytes(4, "big") + payload
        try:
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            sent = self._sock.sendmsg([frame], ancillary)
            if sent < len(frame):
                self._sock.sendall(frame[sent:])
        except OSError as exc:  # TimeoutError included
            self._kill_namespace()
            raise SandboxError(f"the sandbox's init did not take a command ({exc}){self._stderr_note()}") from exc

    # -- life -------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill the sandbox's every process; commands in flight end with no exit code. Safe to call twice."""
        with self._lock:
            self._closed = True
        self._kill_namespace()

    async def wait_closed(self) -> None:
        """Until the namespace is gone and bwrap reaped (after ``close``).

        Polls rather than joining the thread in an executor: it runs during shutdown too (a run that
        was interrupted suspends its sandbox), when the loop's executor may take no more work.
        """
        deadline = time.monotonic() + START_TIMEOUT + _EXIT_TIMEOUT
        while self._thread.is_alive() and time.monotonic() < deadline:  # noqa: ASYNC110 - a thread, no loop
            await asyncio.sleep(0.002)

    def _kill_namespace(self) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        if self._popen is not None:
            with contextlib.suppress(OSError):
                self._popen.kill()  # before bwrap cloned the sandbox, or a launcher step still running
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    def _stderr_note(self) -> str:
        text = bytes(self._stderr).decode(errors="replace").strip()
        return f": {text[-500:]}" if text else ""

    def _main(self) -> None:
        try:
            self._launch()
        except BaseException as exc:  # handed to whoever awaits ready()
            self._kill_namespace()
            self._finish()
            if not isinstance(exc, SandboxError):
                exc = SandboxError(f"the sandbox could not start: {exc}")
            if not self._started.done():
                self._started.set_exception(exc)
            return
        if not self._started.done():
            self._started.set_result(None)
        try:
            self._serve()
        except Exception:  # a bug here must not leave the sandbox running
            logger.exception("sandbox %s: reading its init failed", self._name)
        finally:
            self._kill_namespace()
            self._finish()

    def _launch(self) -> None:
        self._check_closed()
        self._sock, self._child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        source_r, source_w = os.pipe()
        seccomp_r, seccomp_w = os.pipe()
        info_r, info_w = os.pipe()
        block_r, block_w = os.pipe()
        binary_fd: int | None = None
        try:
            for fd, data in ((source_w, _init_source()), (seccomp_w, self._seccomp)):
                os.write(fd, data)  # both fit in a pipe's buffer
                os.close(fd)
            binary = compiled_init()[0] if init_program() == "c" else None
            binary_fd = os.open(binary, os.O_RDONLY | os.O_CLOEXEC) if binary is not None else None
            fds = LaunchFds(self._child_sock.fileno(), source_r, seccomp_r, info_w, block_r, binary_fd)
            passed = (fds.init_socket, source_r, seccomp_r, info_w, block_r)
            self._popen = subprocess.Popen(
                self._argv_for(fds),
                cwd="/",
                env={},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
                pass_fds=passed if binary_fd is None else (*passed, binary_fd),
            )
        except BaseException:
            for fd in (source_w, seccomp_w, info_r, block_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise
        finally:
            for fd in (source_r, seccomp_r, info_w, block_r, *([binary_fd] if binary_fd is not None else [])):
                os.close(fd)
            self._child_sock.close()
        self._check_closed()
        deadline = time.monotonic() + START_TIMEOUT
        try:
            child = self._read_child_pid(info_r, deadline)
            if child is not None:
                self._pidfd = os.pidfd_open(child)
                self._prepare(child)
                with contextlib.suppress(BrokenPipeError):
                    os.write(block_w, b"x")
        finally:
            os.close(info_r)
            os.close(block_w)
        self._sock.settimeout(_SEND_TIMEOUT)
        self._check_closed()
        if self._read_line(deadline) != b"R":
            self._kill_namespace()
            self._wait_exited()
            raise SandboxError(f"the sandbox's init did not start{self._stderr_note()}")
        self._check_closed()

    def _check_closed(self) -> None:
        """Raise if ``close`` ran while this was starting (it may have found nothing to kill yet)."""
        with self._lock:
            if self._closed:
                raise SandboxError("the sandbox was closed while it started")

    def _read_child_pid(self, fd: int, deadline: float) -> int | None:
        data = bytearray()
        while chunk := self._read_until(fd, deadline):
            data += chunk
        if not data:
            return None  # bwrap failed before cloning: its stderr says why
        try:
            return int(json.loads(data)["child-pid"])
        except (ValueError, KeyError, TypeError):
            raise SandboxError(f"bwrap reported an unreadable status: {bytes(data)[:200]!r}") from None

    def _read_until(self, fd: int, deadline: float | None) -> bytes:
        """One read of ``fd`` (b"" at EOF), draining bwrap's stderr meanwhile; SandboxError at the deadline."""
        assert self._popen is not None and self._popen.stderr is not None
        stderr = self._popen.stderr.fileno()
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise SandboxError(f"the sandbox did not start within {START_TIMEOUT:.0f}s{self._stderr_note()}")
            poller = select.poll()  # not select(): a busy process has descriptors past FD_SETSIZE
            for each in [fd, stderr] if self._stderr_open else [fd]:
                poller.register(each, select.POLLIN)
            ready = {each for each, _ in poller.poll(None if remaining is None else remaining * 1000)}
            if stderr in ready:
                self._drain_stderr()
            if fd in ready:
                sock = self._sock if self._sock is not None and fd == self._sock.fileno() else None
                try:
                    return sock.recv(4096) if sock is not None else os.read(fd, 4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    return b""

    def _drain_stderr(self) -> None:
        assert self._popen is not None and self._popen.stderr is not None
        try:
            chunk = os.read(self._popen.stderr.fileno(), 4096)
        except OSError:
            chunk = b""
        if not chunk:
            self._stderr_open = False
            return
        self._stderr += chunk
        del self._stderr[:-_STDERR_KEPT]

    def _wait_exited(self) -> None:
        """Reap bwrap (killed if it lingers) and keep the end of what it said."""
        assert self._popen is not None and self._popen.stderr is not None
        try:
            self._popen.wait(_EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            logger.warning("sandbox %s: bwrap (pid %s) did not exit", self._name, self._popen.pid)
        deadline = time.monotonic() + 0.5
        poller = select.poll()
        poller.register(self._popen.stderr.fileno(), select.POLLIN)
        while self._stderr_open and time.monotonic() < deadline:
            if poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
                self._drain_stderr()

    def _read_line(self, deadline: float | None) -> bytes | None:
        """The init's next line, without its newline; None at EOF. A malformed stream is EOF too."""
        while b"\n" not in self._pending:
            if len(self._pending) > _MAX_LINE:
                logger.warning("sandbox %s: its init sent a malformed line; stopping it", self._name)
                return None
            chunk = self._read_until(self._sock.fileno() if self._sock is not None else -1, deadline)
            if not chunk:
                return None
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line

    def _serve(self) -> None:
        while (line := self._read_line(None)) is not None:
            match = _LINE.fullmatch(line)
            if match is None:
                logger.warning("sandbox %s: its init sent a malformed line; stopping it", self._name)
                return
            with self._lock:
                command = self._commands.pop(int(match[1]), None)
            if command is not None:
                command.exited(int(match[2]))

    def _finish(self) -> None:
        """After the init ended (or never started): reap bwrap, end commands in flight, close everything."""
        self.ended.set()
        if self._popen is not None:
            self._wait_exited()
            if self._popen.stderr is not None:
                self._popen.stderr.close()
        with self._lock:
            commands, self._commands = list(self._commands.values()), {}
        for command in commands:
            command.exited(None)
        if self._stderr and not self._closed:
            logger.warning("sandbox %s: its init ended%s", self._name, self._stderr_note())
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self._sock is not None:
            self._sock.close()


class _PipeReader:
    """One output pipe of a command, read straight off the loop's selector (no transport: each of those
    costs loop iterations to set up, and a command has two)."""

    _CHUNK = 256 * 1024

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, number: int, protocol: asyncio.SubprocessProtocol):
        self._loop, self._fd, self._number, self._protocol = loop, fd, number, protocol
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, self._CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.close(exc)
            return
        if data:
            self._protocol.pipe_data_received(self._number, data)
        else:
            self.close()

    def close(self, exc: Exception | None = None) -> None:
        """Stop reading (at EOF, or when the exec is done with the command); tells the protocol once."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        self._loop.remove_reader(fd)
        os.close(fd)
        self._protocol.pipe_connection_lost(self._number, exc)


class ResidentCommand(asyncio.SubprocessTransport):
    """One command run by a resident init, as ``Sandbox.exec`` drives a process: ``get_pid()`` is a key
    (negative: never a host process group), ``get_returncode()`` the code a shell would show, or None
    when the sandbox killed it."""

    def __init__(
        self, init: ResidentInit, ident: int, loop: asyncio.AbstractEventLoop, protocol: asyncio.SubprocessProtocol
    ) -> None:
        super().__init__()
        self._init, self.ident, self._loop, self._protocol = init, ident, loop, protocol
        self._returncode: int | None = None
        self._ended = False
        self._pipes: list[_PipeReader] = []

    def connect(self, out_r: int, err_r: int) -> None:
        """Read the command's stdout and stderr (this takes the two descriptors)."""
        try:
            self._pipes.append(_PipeReader(self._loop, out_r, 1, self._protocol))
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        try:
            self._pipes.append(_PipeReader(self._loop, err_r, 2, self._protocol))
        except BaseException:
            os.close(err_r)
            raise

    def exited(self, code: int | None) -> None:
        """From the init's thread: the command's main process ended (None: killed with the sandbox)."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(self._exit, code)

    def _exit(self, code: int | None) -> None:
        if not self._ended:
            self._ended, self._returncode = True, code
            self._protocol.process_exited()

    def get_pid(self) -> int:
        return -self.ident

    def get_returncode(self) -> int | None:
        return self._returncode

    def kill(self) -> None:
        self._init.kill(self.ident)

    def close(self) -> None:
        if not self._ended:
            self.kill()
        for pipe in self._pipes:
            pipe.close()

    def is_closing(self) -> bool:
        return self._ended

    def get_pipe_transport(self, fd: int) -> Any:
        return None  # the pipes are read without transports

    def send_signal(self, signal: int) -> None:
        raise NotImplementedError("a sandbox command is only ever killed")

    def terminate(self) -> None:
        self.kill()
