"""Inside a sandbox: the resident init that starts every command of the sandbox.

Usage: python3 -I -S sandbox_init.py FD   (FD: a Unix stream socket to corral)

Standard library only, like the egress relay: it runs under the sandbox's /usr/bin/python3, as
``python3 -c SOURCE``, once per sandbox (not per command), so only built-in modules and ``ctypes``.

corral sends frames: u32 length (big-endian), then op (``r`` run, ``k`` kill), u64 id (big-endian)
and, for ``r``: u32 argc, u32 envc, then the working directory, the argv strings and the
``KEY=VALUE`` strings, each NUL-terminated; a ``run`` frame carries the command's stdout and stderr
as file descriptors (SCM_RIGHTS). The init answers with ASCII lines: ``R`` once it listens,
``E <id> <code>`` when a command's main process ends (the code a shell would show: 128 + N for a
signal). ``sandbox_init.c`` is the same program in C, which corral runs where it can compile it.
It keeps the guarantees one bwrap per command gave:

- every command leads its own session and is a child subreaper: whatever it starts and abandons
  (double forks, ``setsid``) is reparented to the command while it runs, then to this init when it
  ends, which kills it: no process outlives the command that started it;
- ``kill`` takes the command and every descendant (the tree, found through /proc);
- commands start with the default signal dispositions, stdin at /dev/null, an oom_score_adj above
  this init's, and only their three standard streams open.

It makes itself non-dumpable, so a command (same uid) cannot read or write its memory through /proc,
and it exits, taking the sandbox's namespaces with it, when corral closes the socket.
"""

import _signal  # pyright: ignore[reportMissingImports] - no stubs; the wrapper would import enum
import _socket
import ctypes
import posix
import select
import sys

_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36
_COMMAND_OOM_SCORE_ADJ = b"500"
_MAX_FRAME = 64 * 1024 * 1024
_ENOENT, _EACCES, _ENOEXEC = 2, 13, 8

_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _fail(message: str) -> None:
    sys.stderr.write(f"corral sandbox init: {message}\n")
    sys.stderr.flush()
    posix._exit(125)


def _read_exact(sock: "_socket.socket", size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            posix._exit(0)  # corral closed the socket (or died): the sandbox ends
        data += chunk
    return bytes(data)


def _receive(sock: "_socket.socket") -> tuple[tuple, list[int]]:
    """One frame: (message, file descriptors that came with it)."""
    space = _socket.CMSG_SPACE(2 * 4)
    header, ancillary, _flags, _address = sock.recvmsg(4, space)
    if not header:
        posix._exit(0)
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += [int.from_bytes(data[i : i + 4], sys.byteorder) for i in range(0, len(data) - len(data) % 4, 4)]
    header += _read_exact(sock, 4 - len(header))
    size = int.from_bytes(header, "big")
    if size < 9 or size > _MAX_FRAME:
        _fail(f"a frame of {size} bytes")
    frame = _read_exact(sock, size)
    op, ident = frame[:1], int.from_bytes(frame[1:9], "big")
    if op != b"r" or size < 17:
        return (op.decode(), ident), fds
    argc, envc = int.from_bytes(frame[9:13], "big"), int.from_bytes(frame[13:17], "big")
    strings = frame[17:].split(b"\0")
    cwd, argv, pairs = strings[0], strings[1 : 1 + argc], strings[1 + argc : 1 + argc + envc]
    env = dict(pair.split(b"=", 1) for pair in pairs)
    return ("run", ident, argv, cwd, env), fds


def _exec_path(name: bytes, env: dict) -> None:
    """execvpe: a name without a slash is looked up on the command's own PATH."""
    if b"/" in name:
        posix.execve(name, _ARGV, env)
    error: OSError | None = None
    for directory in env.get(b"PATH", b"/usr/bin:/bin").split(b":"):
        try:
            posix.execve((directory or b".") + b"/" + name, _ARGV, env)
        except OSError as exc:
            if error is None or exc.errno != _ENOENT:  # like execvp: a found-but-refused file wins
                error = exc
    raise error or FileNotFoundError(_ENOENT, "No such file or directory")


_ARGV: list[bytes] = []


def _child(argv: list, cwd: str, env: dict, out: int, err: int, devnull: int) -> None:
    """After fork, in the command's process: never returns."""
    global _ARGV
    try:
        _ARGV = argv
        # Dumpable again (exec would do it): until then /proc/self belongs to root and cannot be written.
        _prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)
        _prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        posix.setsid()
        for number in (_signal.SIGPIPE, _signal.SIGXFSZ):  # ignored here; exec resets only handled ones
            _signal.signal(number, _signal.SIG_DFL)
        posix.dup2(devnull, 0)
        posix.dup2(out, 1)
        posix.dup2(err, 2)
        posix.closerange(3, 1 << 20)
        _quietly(_write_file, "/proc/self/oom_score_adj", _COMMAND_OOM_SCORE_ADJ)
        posix.chdir(cwd)
        _exec_path(argv[0], env)
    except OSError as exc:
        code = 127 if exc.errno == _ENOENT else 126
        name = argv[0].decode(errors="replace")
        _quietly(posix.write, 2, f"corral: cannot run '{name}': {exc.strerror or exc}\n".encode(errors="replace"))
        posix._exit(code)
    except BaseException:
        posix._exit(126)
    posix._exit(126)


def _children_of() -> dict[int, list[int]]:
    """Every process this pid namespace shows, by parent."""
    tree: dict[int, list[int]] = {}
    for entry in posix.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fd = posix.open(f"/proc/{entry}/stat", posix.O_RDONLY)
            try:
                stat = posix.read(fd, 512)
            finally:
                posix.close(fd)
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2 :].split(b" ", 2)[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _quietly(call, *args) -> None:
    """``call(*args)``, an OSError ignored."""
    try:
        call(*args)
    except OSError:
        return


def _write_file(path: str, data: bytes) -> None:
    fd = posix.open(path, posix.O_WRONLY)
    try:
        posix.write(fd, data)
    finally:
        posix.close(fd)


def _kill(pid: int) -> None:
    _quietly(posix.kill, pid, _signal.SIGKILL)


class Init:
    def __init__(self, sock: "_socket.socket") -> None:
        self.sock = sock
        self.me = posix.getpid()
        self.commands: dict[int, int] = {}  # pid -> corral's id
        self.pids: dict[int, int] = {}  # corral's id -> pid
        self.devnull = posix.open("/dev/null", posix.O_RDWR)

    def answer(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def handle(self, message: tuple, fds: list[int]) -> None:
        op = message[0]
        if op == "run" and (len(fds) != 2 or not message[2]):  # not what corral sends: refused, answered
            for fd in fds:
                posix.close(fd)
            self.answer(f"E {message[1]} 126")
        elif op == "run":
            _op, ident, argv, cwd, env = message
            out, err = fds
            try:
                pid = posix.fork()
            except OSError as exc:  # the pids limit, most likely: say so where the command's errors go
                name = argv[0].decode(errors="replace")
                _quietly(posix.write, err, f"corral: cannot start '{name}': {exc.strerror or exc}\n".encode())
                posix.close(out)
                posix.close(err)
                self.answer(f"E {ident} 126")
                return
            if pid == 0:
                _child(argv, cwd, env, out, err, self.devnull)
            posix.close(out)
            posix.close(err)
            self.commands[pid] = ident
            self.pids[ident] = pid
        elif op == "k":
            pid = self.pids.get(message[1])
            if pid is not None:
                tree = _children_of()
                doomed, index = [pid], 0
                while index < len(doomed):
                    doomed += tree.get(doomed[index], [])
                    index += 1
                for each in doomed:
                    _kill(each)
        else:
            for fd in fds:
                posix.close(fd)

    def reap(self) -> None:
        """Collect ended children, report ended commands, kill what ended commands left behind.

        An adopted process (an ended command's leftover, or a command's own if it gave up being a
        subreaper) is killed; its death wakes this init again, and the children it leaves are next.
        """
        while True:
            try:
                pid, status = posix.waitpid(-1, posix.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            ident = self.commands.pop(pid, None)
            if ident is None:
                continue
            del self.pids[ident]
            code = posix.waitstatus_to_exitcode(status)
            self.answer(f"E {ident} {code if code >= 0 else 128 - code}")
        for pid in _children_of().get(self.me, []):
            if pid not in self.commands:
                _kill(pid)

    def serve(self) -> None:
        wake_r, wake_w = posix.pipe()
        posix.set_blocking(wake_w, False)
        posix.set_blocking(wake_r, False)
        _signal.signal(_signal.SIGCHLD, lambda *_: None)
        _signal.set_wakeup_fd(wake_w)
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        self.answer("R")
        while True:
            for fd, _events in poller.poll():
                if fd == wake_r:
                    _quietly(posix.read, wake_r, 4096)
                    self.reap()
                else:
                    message, fds = _receive(self.sock)
                    self.handle(message, fds)


def main(argv: list[str]) -> None:
    if len(argv) != 1 or not argv[0].isdigit():
        _fail("usage: sandbox_init FD")
    # The egress relay starts its command (this init) with a high oom_score_adj, meant for commands: a
    # full memory cgroup must kill a command, not the init that serves them. Back to the parent's value
    # (no privilege needed to return to it), while /proc/self is still writable.
    try:
        fd = posix.open(f"/proc/{posix.getppid()}/oom_score_adj", posix.O_RDONLY)
        try:
            parent = posix.read(fd, 16).strip()
        finally:
            posix.close(fd)
        _quietly(_write_file, "/proc/self/oom_score_adj", parent)
    except OSError:
        pass
    if _prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 or _prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        _fail(f"prctl failed (errno {ctypes.get_errno()})")
    sock = _socket.socket(fileno=int(argv[0]))
    sock.setblocking(True)
    Init(sock).serve()


if __name__ == "__main__":
    main(sys.argv[1:])
