"""Escape attempts through processes: seeing, tracing, signalling and reading host and sibling processes."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import termios
import tty

import pytest

from corral.sandbox import Sandbox
from tests.sandbox.host import processes_with
from tests.security.sandbox.attacks import describe_processes, run_attack, wait_until
from tests.security.sandbox.conftest import HostProcess, SandboxFactory

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


def assert_host_process_untouched(target: HostProcess, what: str) -> None:
    assert target.alive(), f"ESCAPE: {what} killed host process {target.pid}"
    status = target.status()
    assert status["TracerPid"] == "0", f"ESCAPE: {what} left host process {target.pid} traced by {status['TracerPid']}"
    assert status["State"][0] in "SR", f"ESCAPE: {what} left host process {target.pid} in state {status['State']}"


async def test_cannot_see_or_ptrace_a_host_process(make_sandbox: SandboxFactory, host_process: HostProcess) -> None:
    sandbox = await make_sandbox()
    attack = await run_attack(
        sandbox,
        """
        pid = P["pid"]
        PTRACE_ATTACH, PTRACE_SEIZE, PTRACE_DETACH = 16, 0x4206, 17
        attempt("signal 0 (exists?)", os.kill, pid, 0)
        attempt("read /proc/<pid>/status", read, f"/proc/{pid}/status")
        attempt("read /proc/<pid>/mem", read, f"/proc/{pid}/mem")
        def trace(request):
            sys_call("ptrace", request, pid, 0, 0)
            sys_call("ptrace", PTRACE_DETACH, pid, 0, 0)  # only reached if the attach worked
            return "attached"
        attempt("ptrace attach", trace, PTRACE_ATTACH)
        attempt("ptrace seize", trace, PTRACE_SEIZE)
        def visible():
            # Exact argv matches: this script's own command line (and the sandbox init's) holds the marker too.
            hits = []
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        argv = read(f"/proc/{entry}/cmdline").decode(errors="replace").split("\\0")
                    except OSError:
                        continue
                    if argv[:2] == ["sleep", P["marker"]] or any(arg.endswith("/pytest") for arg in argv):
                        hits.append(f"{entry}: {' '.join(argv)[:200]}")
            return require(hits, "no host process visible")
        attempt("find host processes in /proc", visible)
        if os.path.exists("/usr/bin/strace"):
            import subprocess
            def strace():
                run = subprocess.run(["/usr/bin/strace", "-p", str(pid)], capture_output=True, timeout=2)
                if run.returncode:
                    raise OSError(1, run.stderr.decode(errors="replace").strip())
                return "traced"
            attempt("strace -p", strace)
        """,
        {"pid": host_process.pid, "marker": host_process.marker},
    )
    succeeded = {label: str(outcome) for label, outcome in attack.succeeded().items()}
    assert not succeeded, f"ESCAPE: host process {host_process.pid} is visible or traceable inside: {succeeded}"
    assert_host_process_untouched(host_process, "ptrace from the sandbox")


async def test_cannot_kill_a_host_process_by_pid(make_sandbox: SandboxFactory, host_process: HostProcess) -> None:
    sandbox = await make_sandbox()
    attack = await run_attack(
        sandbox,
        """
        import signal
        pid = P["pid"]
        for name in ("SIGSTOP", "SIGTERM", "SIGKILL"):
            attempt("kill " + name, os.kill, pid, getattr(signal, name))
        attempt("kill process group", os.killpg, pid, signal.SIGKILL)
        def by_pidfd():
            fd = sys_call("pidfd_open", pid, 0)
            sys_call("pidfd_send_signal", fd, signal.SIGKILL, None, 0)
            return "signalled"
        attempt("pidfd_send_signal", by_pidfd)
        import subprocess
        run = subprocess.run(["kill", "-9", str(pid)], capture_output=True)
        RESULTS["kill -9 binary"] = {"ok": run.returncode == 0, "error": run.stderr.decode(errors="replace")}
        """,
        {"pid": host_process.pid},
    )
    succeeded = {label: str(outcome) for label, outcome in attack.succeeded().items()}
    assert not succeeded, f"ESCAPE: signals reached host process {host_process.pid}: {succeeded}"
    await asyncio.sleep(0.1)
    assert_host_process_untouched(host_process, "kill from the sandbox")


async def _hold(sandbox: Sandbox, marker: str) -> asyncio.Task:
    """Start a long `sleep marker` in ``sandbox`` and wait until it shows on the host."""
    task = asyncio.ensure_future(sandbox.exec(f"sleep {marker}; echo survived", timeout=30))
    assert await wait_until(lambda: bool(processes_with(marker)), within=5), "the victim's process did not start"
    return task


async def test_kill_minus_one_does_not_reach_the_host_or_other_sandboxes(
    make_sandbox: SandboxFactory, host_process: HostProcess, numeric_token: str
) -> None:
    victim = await make_sandbox(name="victim")
    attacker = await make_sandbox(name="attacker")
    victim_marker = str(int(numeric_token) + 1)
    holding = await _hold(victim, victim_marker)
    try:
        attack = await run_attack(
            attacker,
            """
            import signal
            # Guard: kill(-1) from a process that shares the host's pid namespace would kill this host.
            try:
                os.kill(P["pid"], 0)
                host_visible = True
            except OSError:
                host_visible = os.path.exists(f"/proc/{P['pid']}")
            RESULTS["host pid visible"] = {"ok": host_visible}
            # Reported first: kill -1 takes the sandbox's init, and with it the sandbox's every process,
            # this one included, sometimes before it could report. What counts happens outside it.
            _report()
            if not host_visible:
                attempt("kill -1 SIGKILL", os.kill, -1, signal.SIGKILL)
            """,
            {"pid": host_process.pid},
        )
        assert not attack["host pid visible"].ok, (
            "ESCAPE: the sandbox shares the host's pid namespace (host pid visible); kill -1 was not tried "
            "because it would have killed every host process"
        )
        await asyncio.sleep(0.2)
        assert_host_process_untouched(host_process, "kill -1 in a sandbox")
        assert processes_with(victim_marker), "ESCAPE: kill -1 in one sandbox killed another sandbox's process"
        assert not holding.done(), "ESCAPE: kill -1 in one sandbox ended another sandbox's command"
    finally:
        holding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await holding


async def test_host_environment_is_not_visible(
    make_sandbox: SandboxFactory, monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    monkeypatch.setenv("CORRAL_ESCAPE_CANARY", token)
    monkeypatch.setenv("ANTHROPIC_API_KEY", f"sk-ant-{token}")
    sandbox = await make_sandbox(env={"VISIBLE": "yes"})
    attack = await run_attack(
        sandbox,
        """
        RESULTS["own environ"] = {"ok": True, "value": dict(os.environ)}
        for entry in [p for p in os.listdir("/proc") if p.isdigit()] + ["self"]:
            attempt(f"/proc/{entry}/environ", read, f"/proc/{entry}/environ")
        import subprocess
        attempt("env binary", lambda: subprocess.run(["env"], capture_output=True).stdout)
        """,
    )
    leaked = attack.leaking(token)
    assert not leaked, f"ESCAPE: the host environment is visible inside: {attack.describe(list(leaked))}"
    assert attack["own environ"].value.get("VISIBLE") == "yes", "the request env did not reach the sandbox"


async def test_cannot_read_a_host_processs_environment_via_proc(
    make_sandbox: SandboxFactory, host_process: HostProcess
) -> None:
    sandbox = await make_sandbox()
    attack = await run_attack(
        sandbox,
        """
        for pid in (P["pid"], P["test_pid"]):
            for part in ("environ", "cmdline", "cwd", "root", "exe"):
                path = f"/proc/{pid}/{part}"
                attempt(path, os.listdir if part in ("cwd", "root") else read, path)
        for entry in [p for p in os.listdir("/proc") if p.isdigit()]:
            attempt(f"scan /proc/{entry}/environ", read, f"/proc/{entry}/environ")
        """,
        {"pid": host_process.pid, "test_pid": os.getpid()},
    )
    leaked = attack.leaking(host_process.env_secret)
    assert not leaked, f"ESCAPE: a host process's environment was read: {attack.describe(list(leaked))}"
    direct = {
        label: str(outcome)
        for label, outcome in attack.succeeded().items()
        if label.startswith((f"/proc/{host_process.pid}/", f"/proc/{os.getpid()}/"))
    }
    assert not direct, f"ESCAPE: host processes' /proc entries are readable inside: {direct}"


async def test_cannot_signal_another_sandboxs_process(make_sandbox: SandboxFactory, numeric_token: str) -> None:
    victim = await make_sandbox(name="victim")
    attacker = await make_sandbox(name="attacker")
    holding = await _hold(victim, numeric_token)
    try:
        host_pids = processes_with(numeric_token)
        attack = await run_attack(
            attacker,
            """
            import signal
            for pid in P["host_pids"]:
                attempt(f"kill host pid {pid}", os.kill, pid, signal.SIGKILL)
            def scan_and_kill():
                killed = []
                for entry in [p for p in os.listdir("/proc") if p.isdigit()]:
                    try:
                        argv = read(f"/proc/{entry}/cmdline").decode(errors="replace").split("\\0")
                    except OSError:
                        continue
                    if argv[:2] == ["sleep", P["marker"]]:  # exact: this script's argv holds the marker too
                        os.kill(int(entry), signal.SIGKILL)
                        killed.append(entry)
                return require(killed, "the other sandbox's processes are not visible")
            attempt("find and kill by /proc scan", scan_and_kill)
            """,
            {"host_pids": host_pids, "marker": numeric_token},
        )
        succeeded = {label: str(outcome) for label, outcome in attack.succeeded().items()}
        assert not succeeded, f"ESCAPE: one sandbox signalled another's processes: {succeeded}"
        await asyncio.sleep(0.1)
        assert processes_with(numeric_token), "ESCAPE: the other sandbox's process was killed"
        assert not holding.done(), "ESCAPE: the other sandbox's command was ended"
    finally:
        holding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await holding


# Each launcher lingers a moment so that its escape (setsid, reparenting) is complete before it exits.
LAUNCHERS = {
    "background": "sleep {m} & sleep 0.3; echo started",
    "nohup": "nohup sleep {m} >/dev/null 2>&1 & sleep 0.3; echo started",
    "setsid": "setsid sleep {m} >/dev/null 2>&1 < /dev/null & sleep 0.3; echo started",
    "setsid_fork": "setsid -f sleep {m} >/dev/null 2>&1 < /dev/null; sleep 0.3; echo started",
    "double_fork": (
        "/usr/bin/python3 -c 'import os,sys\n"
        "if os.fork(): sys.exit(0)\n"
        "os.setsid()\n"
        "if os.fork(): os._exit(0)\n"
        "os.closerange(0, 1024)\n"
        'os.execv("/usr/bin/sleep", ["sleep", "{m}"])\'; sleep 0.3; echo started'
    ),
    "ignores_signals": "sh -c 'trap \"\" HUP TERM INT; sleep {m}' >/dev/null 2>&1 & sleep 0.3; echo started",
}


@pytest.mark.slow  # six launchers, a sandbox each
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
async def test_background_process_does_not_outlive_destroy(
    make_sandbox: SandboxFactory, numeric_token: str, launcher: str
) -> None:
    sandbox = await make_sandbox()
    try:
        result = await sandbox.exec(LAUNCHERS[launcher].format(m=numeric_token), timeout=10)
        assert "started" in result.stdout, f"the launcher did not run: {result}"
        await sandbox.destroy()
        gone = await wait_until(lambda: not processes_with(numeric_token), within=3)
        survivors = processes_with(numeric_token)
        assert gone, f"ESCAPE: a {launcher} process outlived destroy: {describe_processes(survivors)}"
    finally:
        for pid in processes_with(numeric_token):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def test_cannot_inject_into_a_host_terminal_with_tiocsti(make_sandbox: SandboxFactory, token: str) -> None:
    master, slave = os.openpty()
    try:
        tty.setraw(slave)
        slave_path = os.ttyname(slave)
        sandbox = await make_sandbox()
        attack = await run_attack(
            sandbox,
            """
            import fcntl, termios
            payload = ("# " + P["token"] + "\\n").encode()  # a shell comment, should it ever land anywhere
            def inject(fd):
                for byte in payload:
                    fcntl.ioctl(fd, termios.TIOCSTI, bytes([byte]))
                return "injected"
            def open_and_inject(path):
                fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
                try:
                    return inject(fd)
                finally:
                    os.close(fd)
            attempt("host pty by path", open_and_inject, P["slave"])
            attempt("controlling tty", open_and_inject, "/dev/tty")
            for fd in (0, 1, 2):
                attempt(f"stdio fd {fd}", inject, fd)
            """,
            {"slave": slave_path, "token": token},
        )
        succeeded = {label: str(outcome) for label, outcome in attack.succeeded().items()}
        assert not succeeded, f"ESCAPE: TIOCSTI injected input into a terminal: {succeeded}"
        flags = fcntl.fcntl(slave, fcntl.F_GETFL)
        fcntl.fcntl(slave, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        try:
            typed = os.read(slave, 4096)
        except BlockingIOError:
            typed = b""
        assert token.encode() not in typed, f"ESCAPE: the sandbox typed into the host terminal: {typed!r}"
        termios.tcflush(slave, termios.TCIOFLUSH)
    finally:
        os.close(master)
        os.close(slave)


async def test_commands_cannot_reach_into_the_process_that_starts_them(make_sandbox: SandboxFactory) -> None:
    """A sandbox's commands run as the same uid as its resident init, which holds the line to corral:
    its memory, descriptors and socket must stay out of their reach."""
    sandbox = await make_sandbox()
    attack = await run_attack(
        sandbox,
        """
        init = os.getppid()
        def peek():
            with open(f"/proc/{init}/mem", "rb") as handle:
                for line in read(f"/proc/{init}/maps").decode().splitlines():
                    handle.seek(int(line.split("-")[0], 16))
                    return handle.read(16)
        attempt("read its memory", peek)
        attempt("open its memory for writing", os.open, f"/proc/{init}/mem", os.O_WRONLY)
        attempt("read its environment", read, f"/proc/{init}/environ")
        attempt("list its descriptors", os.listdir, f"/proc/{init}/fd")
        def open_descriptors():
            opened = []
            for fd in range(3, 64):
                try:
                    opened.append(os.open(f"/proc/{init}/fd/{fd}", os.O_RDWR))
                except FileNotFoundError:
                    continue
            return require(opened, "no descriptor of the init could be opened")
        attempt("open its descriptors by path", open_descriptors)
        def steal():
            pidfd = sys_call("pidfd_open", init, 0)
            return [sys_call("pidfd_getfd", pidfd, fd, 0) for fd in range(3, 16)]
        attempt("pidfd_getfd its descriptors", steal)
        attempt("ptrace attach", sys_call, "ptrace", 16, init, 0, 0)
        """,
    )
    succeeded = {label: str(outcome) for label, outcome in attack.succeeded().items()}
    assert not succeeded, f"ESCAPE: a command reached into the sandbox's init: {succeeded}"
    assert len(attack.outcomes) == 7, attack.evidence()
