"""The resident init: one bwrap per sandbox, every command forked inside it, nothing left behind."""

from __future__ import annotations

import asyncio
import secrets
import sys

import pytest

from corral.errors import SandboxError
from corral.sandbox.bubblewrap.resident import LaunchFds, ResidentInit, compiled_init
from tests.sandbox.bubblewrap.conftest import MakeBwrap
from tests.sandbox.host import processes_with
from tests.security.sandbox.attacks import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


@pytest.fixture(autouse=True, params=["c", pytest.param("python", marks=pytest.mark.slow)])
def init_program(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with each init: the C one (where it compiles) and the Python one (the fallback)."""
    if request.param == "c" and compiled_init()[0] is None:
        pytest.skip(f"the C init cannot be built here: {compiled_init()[1]}")
    monkeypatch.setenv("CORRAL_SANDBOX_INIT", request.param)
    return request.param


@pytest.fixture
def numeric_token() -> str:
    """Digits unique to the test, for `sleep` arguments that mark its processes on the host."""
    return f"{10**11 + secrets.randbelow(10**10)}"


async def test_one_init_serves_every_command_of_a_sandbox(make: MakeBwrap) -> None:
    sandbox = await make()
    first = await sandbox.exec("echo $PPID")
    second = await sandbox.exec("echo $PPID")
    assert first.exit_code == second.exit_code == 0
    assert first.stdout == second.stdout  # the same parent: the resident init, not a new bwrap


async def test_what_a_command_leaves_running_ends_with_it(make: MakeBwrap, numeric_token: str) -> None:
    sandbox = await make()
    # Three ways out of a command's process group: background, a new session, a double fork.
    result = await sandbox.exec(
        f"sleep {numeric_token}1 & setsid sleep {numeric_token}2 & (setsid sh -c 'sleep {numeric_token}3 &' &); echo ok"
    )
    assert (result.exit_code, result.stdout) == (0, "ok\n")
    assert await wait_until(lambda: not processes_with(numeric_token), within=5), processes_with(numeric_token)


@pytest.mark.slow  # waits out a real timeout (about a second); in the full suite
async def test_a_timeout_kills_the_whole_tree_including_new_sessions(make: MakeBwrap, numeric_token: str) -> None:
    sandbox = await make()
    result = await sandbox.exec(
        f"setsid sleep {numeric_token}1 & (setsid sleep {numeric_token}2 &); sleep 60", timeout=1
    )
    assert result.timed_out and result.exit_code is None
    assert await wait_until(lambda: not processes_with(numeric_token), within=5), processes_with(numeric_token)


@pytest.mark.slow  # waits out a real timeout (about a second); in the full suite
async def test_a_running_commands_background_processes_survive_another_command_ending(
    make: MakeBwrap, numeric_token: str
) -> None:
    sandbox = await make()
    # The long command's daemon (a new session, its parent gone) must live as long as the command does,
    # however many other commands of the sandbox end meanwhile.
    long = asyncio.ensure_future(
        sandbox.exec(
            f"(setsid sh -c 'echo $$ > /tmp/daemon; exec sleep {numeric_token}' &); "
            "while [ ! -s /tmp/daemon ]; do sleep 0.01; done; sleep 1; kill -0 $(cat /tmp/daemon) && echo alive",
            timeout=20,
        )
    )
    assert await wait_until(lambda: bool(processes_with(numeric_token)), within=5)
    for _ in range(5):
        assert (await sandbox.exec(["true"])).exit_code == 0
    result = await long
    assert (result.exit_code, result.stdout) == (0, "alive\n"), result
    assert await wait_until(lambda: not processes_with(numeric_token), within=5), processes_with(numeric_token)


async def test_parallel_commands_get_their_own_output_and_exit_codes(make: MakeBwrap) -> None:
    sandbox = await make()
    results = await asyncio.gather(
        *(sandbox.exec(f"sleep 0.0{n}; echo {n}; echo e{n} >&2; exit {n}") for n in range(8))
    )
    assert [(r.exit_code, r.stdout, r.stderr) for r in results] == [(n, f"{n}\n", f"e{n}\n") for n in range(8)]


async def test_a_command_that_kills_the_init_ends_only_the_commands_in_flight(make: MakeBwrap) -> None:
    sandbox = await make()
    bystander = asyncio.ensure_future(sandbox.exec("sleep 30", timeout=40))
    await asyncio.sleep(0.2)
    killer = await sandbox.exec("kill -9 -1; sleep 5; echo unreachable", timeout=20)
    assert killer.exit_code is None and "unreachable" not in killer.stdout
    assert (await bystander).exit_code is None  # killed with the sandbox's processes, reported as such
    after = await sandbox.exec("echo back")  # the next exec starts a new init
    assert (after.exit_code, after.stdout) == (0, "back\n")


async def test_commands_start_with_only_their_standard_streams_open(make: MakeBwrap) -> None:
    sandbox = await make()
    result = await sandbox.exec(["/usr/bin/python3", "-c", "import os; print(sorted(os.listdir('/proc/self/fd')))"])
    assert result.stdout == "['0', '1', '2', '3']\n", result  # 3: the listing's own directory


async def test_commands_cannot_read_the_init(make: MakeBwrap, init_program: str) -> None:
    sandbox = await make()
    expected = "/proc/self/fd/" if init_program == "c" else "python3"
    assert expected in (await sandbox.exec("tr '\\0' ' ' < /proc/$PPID/cmdline")).stdout
    for what in ("environ", "mem", "fd/0"):
        result = await sandbox.exec(f"cat /proc/$PPID/{what}")
        assert result.exit_code != 0 and "Permission denied" in result.stderr, (what, result)


async def test_an_unknown_init_is_refused(make: MakeBwrap, monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox = await make()
    monkeypatch.setenv("CORRAL_SANDBOX_INIT", "rust")
    with pytest.raises(SandboxError, match="CORRAL_SANDBOX_INIT must be 'c' or 'python'"):
        await sandbox.exec("true")


async def test_a_missing_command_exits_127_and_says_why(make: MakeBwrap) -> None:
    sandbox = await make()
    result = await sandbox.exec(["no-such-command-here"])
    assert result.exit_code == 127
    assert "cannot run 'no-such-command-here': No such file or directory" in result.stderr


async def test_destroy_while_the_init_is_starting_leaves_nothing(make: MakeBwrap) -> None:
    sandbox = await make()
    starting = sandbox.start()
    await sandbox.destroy()
    with pytest.raises(SandboxError):
        await starting.ready()
    await asyncio.to_thread(starting.ended.wait, 10)
    assert starting.ended.is_set()


# -- an init that misbehaves: everything it says is untrusted -----------------------------------

_FAKE_INIT = """
import os, sys, time
fd = int(sys.argv[1])
os.close(int(sys.argv[3]))  # bwrap's --info-fd: never written, as when bwrap fails before cloning
os.write(fd, b"R\\n")
time.sleep(0.2)
os.write(fd, bytes.fromhex(sys.argv[2]))
time.sleep(30)
"""


def _fake(answer: bytes) -> ResidentInit:
    def argv(fds: LaunchFds) -> list[str]:
        return [sys.executable, "-c", _FAKE_INIT, str(fds.init_socket), answer.hex(), str(fds.info)]

    return ResidentInit(argv_for=argv, seccomp=b"", prepare=lambda _pid: None, name="fake")


@pytest.mark.parametrize(
    "answer",
    [b"E not-a-number 0\n", b"E 1 99999\n", b"x" * 200, b"E 1 0 and more\n", b"\x00\xff\n"],
    ids=["words", "huge-code", "endless-line", "trailing", "binary"],
)
async def test_an_init_that_sends_garbage_is_stopped_and_its_commands_end_killed(answer: bytes) -> None:
    init = _fake(answer)
    try:
        await init.ready()
        protocol = _Collect()
        command = await init.run(protocol, ["true"], cwd="/", env={})
        await asyncio.wait_for(protocol.exited.wait(), 10)
        assert command.get_returncode() is None  # not a code the init made up
        await asyncio.to_thread(init.ended.wait, 10)
        assert init.ended.is_set() and not init.alive
    finally:
        init.close()
        await init.wait_closed()


async def test_an_init_that_never_says_ready_is_an_error_naming_what_it_printed() -> None:
    def argv(fds: LaunchFds) -> list[str]:
        return [sys.executable, "-c", "import sys; print('broken init', file=sys.stderr)"]

    init = ResidentInit(argv_for=argv, seccomp=b"", prepare=lambda _pid: None, name="fake")
    with pytest.raises(SandboxError, match="did not start: broken init"):
        await init.ready()
    await init.wait_closed()


class _Collect(asyncio.SubprocessProtocol):
    def __init__(self) -> None:
        self.exited = asyncio.Event()

    def process_exited(self) -> None:
        self.exited.set()
