"""The in-sandbox relay: forwards loopback TCP to the proxy's Unix socket, runs the command, reports its status."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from corral.sandbox.egress.proxy import SANDBOX_PYTHON, bind_unix, relay_argv
from tests.sandbox.egress.support import free_port, run_relayed

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

_CLIENT = """
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5) as sock:
    sock.sendall(b"ping " * 20000)
    sock.shutdown(socket.SHUT_WR)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
print(len(received), received[:10].decode())
"""


@contextlib.asynccontextmanager
async def echo_server(path: Path) -> AsyncIterator[list[int]]:
    """A Unix-socket server that echoes each connection upper-cased; yields the sizes it saw."""
    sizes: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await asyncio.wait_for(reader.read(), 10)
        sizes.append(len(data))
        writer.write(data.upper())
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(handle, sock=bind_unix(path))
    try:
        yield sizes
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)


async def test_relay_forwards_connections_and_listens_before_the_command_starts(tmp_path: Path) -> None:
    socket_path = tmp_path / "proxy.sock"
    async with echo_server(socket_path) as sizes:
        port = free_port()
        # The command connects at once: the listener must already be there.
        process = await asyncio.create_subprocess_exec(
            *relay_argv(str(socket_path), port), "--", SANDBOX_PYTHON, "-c", _CLIENT, str(port),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, stderr.decode()
    assert stdout.decode().split() == ["100000", "PING", "PING"]
    assert sizes == [100_000]


async def test_relay_exits_with_the_commands_status(tmp_path: Path) -> None:
    assert (await run_relayed(tmp_path / "none.sock", ["true"])).returncode == 0
    assert (await run_relayed(tmp_path / "none.sock", ["sh", "-c", "exit 7"])).returncode == 7
    killed = await run_relayed(tmp_path / "none.sock", ["sh", "-c", "kill -TERM $$"])
    assert killed.returncode == -signal.SIGTERM  # the relay dies of the same signal


async def test_relay_passes_stdio_arguments_and_environment_through(tmp_path: Path) -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *relay_argv(str(tmp_path / "none.sock"), port), "--", "sh", "-c", 'cat; echo "$FOO" "$1" >&2', "sh", "arg 1",
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={"FOO": "bar", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(b"from stdin\n"), 20)
    assert (process.returncode, stdout, stderr) == (0, b"from stdin\n", b"bar arg 1\n")


async def test_missing_command_exits_127_with_a_message(tmp_path: Path) -> None:
    run = await run_relayed(tmp_path / "none.sock", ["no-such-command-xyz"])
    assert run.returncode == 127
    assert "corral egress relay: cannot run 'no-such-command-xyz'" in run.stderr


async def test_busy_port_fails_before_running_the_command(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = await asyncio.create_subprocess_exec(
            *relay_argv(str(tmp_path / "none.sock"), port), "--", "touch", str(tmp_path / "ran"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 125
    assert f"cannot listen on 127.0.0.1:{port}" in stderr.decode()
    assert not (tmp_path / "ran").exists()


async def test_relay_forwards_sigterm_to_the_command(tmp_path: Path) -> None:
    # `wait` returns as soon as a trapped signal arrives; the trap then cleans up its sleep.
    script = "trap 'kill $!; echo got-term; exit 3' TERM; sleep 60 >/dev/null 2>&1 & echo ready; wait"
    process = await asyncio.create_subprocess_exec(
        *relay_argv(str(tmp_path / "none.sock"), free_port()), "--", "sh", "-c", script,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    assert await asyncio.wait_for(process.stdout.readline(), 30) == b"ready\n"
    # A process-directed signal goes to any thread that does not block it; Python handles signals in
    # the main thread only, so the relay's forwarding thread must block them.
    masks: list[int] = []
    for _ in range(100):
        tasks = Path(f"/proc/{process.pid}/task")
        masks = [int(_status_field(task / "status", "SigBlk"), 16) for task in tasks.iterdir()]
        if len(masks) > 1:
            break
        await asyncio.sleep(0.01)
    term = 1 << (signal.SIGTERM - 1)
    assert len(masks) == 2 and sorted(bool(mask & term) for mask in masks) == [False, True]
    process.send_signal(signal.SIGTERM)
    stdout, _ = await asyncio.wait_for(process.communicate(), 30)
    assert (process.returncode, stdout) == (3, b"got-term\n")


def _status_field(path: Path, name: str) -> str:
    return next(line.split()[1] for line in path.read_text().splitlines() if line.startswith(f"{name}:"))


async def test_relay_kills_nothing_when_its_command_leaves_a_process_behind(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    run = await run_relayed(tmp_path / "none.sock", ["sh", "-c", f"sleep 30 >/dev/null 2>&1 & echo $! > {pid_file}"])
    assert run.returncode == 0
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, 0)  # still alive: cleaning up a process group is the sandbox's job, not the relay's
    finally:
        os.kill(pid, signal.SIGKILL)


async def test_relay_reaches_sockets_past_the_sun_path_limit(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    socket_path = deep / "proxy.sock"
    assert len(str(socket_path)) > 108
    async with echo_server(socket_path) as sizes:
        port = free_port()
        process = await asyncio.create_subprocess_exec(
            *relay_argv(str(socket_path), port), "--", SANDBOX_PYTHON, "-c", _CLIENT, str(port),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, stderr.decode()
    assert stdout.decode().split() == ["100000", "PING", "PING"]
    assert sizes == [100_000]


def _median_ms(argv: list[str], runs: int = 15) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True, timeout=20)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def test_relay_adds_little_start_up_time(tmp_path: Path) -> None:
    bare = _median_ms(["true"])
    python = _median_ms([SANDBOX_PYTHON, "-I", "-S", "-c", "pass"])
    relayed = _median_ms([*relay_argv(str(tmp_path / "none.sock"), free_port()), "--", "true"])
    print(
        f"\nstart-up, median of 15: true {bare:.1f} ms, bare python3 -I -S {python:.1f} ms, relay+true {relayed:.1f} ms"
    )
    assert relayed < python + 25  # the relay is an interpreter start and little else
