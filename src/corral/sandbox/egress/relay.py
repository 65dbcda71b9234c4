"""Inside a sandbox: forward 127.0.0.1:PORT to the egress proxy's Unix socket while running one command.

Usage: python3 -I -S relay.py --socket PATH --port N -- COMMAND [ARG...]

Standard library only: it runs under the sandbox's /usr/bin/python3, usually as ``python3 -c SOURCE``,
before every command of a sandbox, so its start-up is every exec's cost. It imports only built-in
C modules (``_socket``, ``_thread``, ``_signal``, ``posix``): the Python wrappers ``socket``,
``threading``, ``signal`` (enum, selectors) would double its start-up, and ``os`` adds a millisecond.
The listener is ready before the command starts; the relay exits with the command's status (or dies
of the same signal), forwards the usual termination signals to it, and touches no other process.
"""

import _signal  # pyright: ignore[reportMissingImports] - no stubs; the Python wrapper costs an enum import
import _socket
import _thread
import posix
import sys
import time

_USAGE = "usage: relay --socket PATH --port N -- COMMAND [ARG...]"
_FORWARDED = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP, _signal.SIGQUIT, _signal.SIGUSR1, _signal.SIGUSR2)
_CHUNK = 65536
_CONNECT_TIMEOUT = 10.0
_SUN_PATH_MAX = 100  # sockaddr_un.sun_path holds 108 bytes with the NUL
_OOM_SCORE_ADJ = "/proc/self/oom_score_adj"
_COMMAND_OOM_SCORE_ADJ = 500


def _fail(message: str, code: int = 125) -> None:
    sys.stderr.write(f"corral egress relay: {message}\n")
    sys.stderr.flush()
    posix._exit(code)


def _oom_score_adj(value: int | None = None) -> int | None:
    """Read this process's oom_score_adj, or set it to ``value``; None where /proc says no."""
    try:
        fd = posix.open(_OOM_SCORE_ADJ, posix.O_RDWR if value is not None else posix.O_RDONLY)
    except OSError:
        return None
    try:
        if value is None:
            return int(posix.read(fd, 16))
        posix.write(fd, str(value).encode())
        return value
    except (OSError, ValueError):
        return None
    finally:
        posix.close(fd)


def _parse(argv: list[str]) -> tuple[str, int, list[str]]:
    if "--" not in argv:
        _fail(_USAGE, 2)
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1 :]
    values = dict(zip(options[::2], options[1::2], strict=False))
    if len(options) != 4 or set(values) != {"--socket", "--port"} or not command:
        _fail(_USAGE, 2)
    port = values["--port"]
    if not port.isdigit() or not 0 < int(port) < 65536:
        _fail(f"bad --port {port!r}", 2)
    return values["--socket"], int(port), command


def _shutdown(sock: _socket.socket, how: int) -> None:
    try:  # noqa: SIM105 - contextlib would cost an import
        sock.shutdown(how)
    except OSError:
        pass


def _connect_unix(path: str) -> _socket.socket:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(_CONNECT_TIMEOUT)
    try:
        if len(path.encode(sys.getfilesystemencoding(), "surrogateescape")) < _SUN_PATH_MAX:
            sock.connect(path)
        else:  # past the sun_path limit: reach the socket through a descriptor of its directory
            directory, _, name = path.rpartition("/")
            dir_fd = posix.open(directory or "/", posix.O_RDONLY | posix.O_DIRECTORY)
            try:
                sock.connect(f"/proc/self/fd/{dir_fd}/{name}")
            finally:
                posix.close(dir_fd)
    except BaseException:
        sock.close()
        raise
    sock.settimeout(None)
    return sock


def _pump(source: _socket.socket, sink: _socket.socket) -> None:
    try:
        while True:
            data = source.recv(_CHUNK)
            if not data:
                break
            sink.sendall(data)
        _shutdown(sink, _socket.SHUT_WR)
    except OSError:
        # A reset on either side ends both directions, which also wakes the other pump.
        _shutdown(source, _socket.SHUT_RDWR)
        _shutdown(sink, _socket.SHUT_RDWR)


def _pump_then_release(source: _socket.socket, sink: _socket.socket, done: _thread.LockType) -> None:
    try:
        _pump(source, sink)
    finally:
        done.release()


def _bridge(client: _socket.socket, socket_path: str) -> None:
    try:
        try:
            upstream = _connect_unix(socket_path)
        except OSError:
            return
        try:
            done = _thread.allocate_lock()
            done.acquire()
            _thread.start_new_thread(_pump_then_release, (upstream, client, done))
            _pump(client, upstream)
            done.acquire()
        finally:
            upstream.close()
    finally:
        client.close()


def _serve(listener: _socket.socket, socket_path: str) -> None:
    while True:
        try:
            fd, _ = listener._accept()  # pyright: ignore[reportAttributeAccessIssue] - the C accept, no wrapper
        except OSError:
            time.sleep(0.05)  # out of descriptors, say: let connections finish instead of spinning
            continue
        client = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM, 0, fd)
        _thread.start_new_thread(_bridge, (client, socket_path))


def _listen(port: int) -> _socket.socket:
    listener = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
    # Several commands of one sandbox may share a network namespace: each relay serves the port.
    listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEPORT, 1)
    try:
        listener.bind(("127.0.0.1", port))
        listener.listen(128)
    except OSError as exc:
        _fail(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}")
    return listener


def _exit_like(status: int) -> None:
    code = posix.waitstatus_to_exitcode(status)
    sys.stdout.flush()
    sys.stderr.flush()
    if code < 0:  # died of a signal: die of the same one, so the caller sees what the command did
        number = -code
        if number not in (_signal.SIGKILL, _signal.SIGSTOP):
            _signal.signal(number, _signal.SIG_DFL)
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, [number])
        posix.kill(posix.getpid(), number)
        code = 128 + number  # still alive: a PID 1 ignores signals it has no handler for
    posix._exit(code)


def main(argv: list[str]) -> None:
    socket_path, port, command = _parse(argv)
    listener = _listen(port)
    _thread.stack_size(256 * 1024)
    child: list[int] = []  # the command's pid, once it runs
    pending: list[int] = []  # signals that came before it did

    def forward(signum: int, _frame: object) -> None:
        if not child:
            pending.append(signum)
            return
        try:  # noqa: SIM105 - contextlib would cost an import
            posix.kill(child[0], signum)
        except ProcessLookupError:
            pass

    # Handlers first: a signal that arrives while the command starts is held, not fatal to the relay.
    for number in _FORWARDED:
        _signal.signal(number, forward)
    # The relay is often the largest process of a small command, so on a full memory cgroup the
    # kernel would kill it first and take the command down with it. The command inherits a higher
    # oom_score_adj (spawned while the relay holds it), then the relay goes back to its own: lowering
    # to the inherited value needs no privilege.
    own = _oom_score_adj()
    raised = own is not None and own < _COMMAND_OOM_SCORE_ADJ and _oom_score_adj(_COMMAND_OOM_SCORE_ADJ) is not None
    try:
        # Python ignores SIGPIPE and SIGXFSZ for itself; the command gets the defaults back (the
        # handlers above are reset by exec).
        pid = posix.posix_spawnp(command[0], command, posix.environ, setsigdef=(_signal.SIGPIPE, _signal.SIGXFSZ))
    except OSError as exc:
        code = 127 if isinstance(exc, FileNotFoundError) else 126
        _fail(f"cannot run {command[0]!r}: {exc.strerror or exc}", code)
        return
    finally:
        if raised:
            _oom_score_adj(own)
    child.append(pid)
    for number in pending:
        posix.kill(pid, number)
    # Python runs handlers in the main thread only, and a signal the kernel hands to another thread
    # would not interrupt the main thread's waitpid: the forwarding threads (and theirs) start with
    # these signals blocked, so only the main thread receives them.
    _signal.pthread_sigmask(_signal.SIG_BLOCK, _FORWARDED)
    _thread.start_new_thread(_serve, (listener, socket_path))
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, _FORWARDED)
    _, status = posix.waitpid(pid, 0)
    _exit_like(status)


if __name__ == "__main__":
    main(sys.argv[1:])
