"""``corral demo`` killed with SIGKILL at any moment: ``corral resume`` finishes its run, and nothing is left behind.

The demo's model is ``scripted:demo``, which whichever process executes the run serves itself; before,
the demo's own process served it, so a resumed run found nobody on that port ("Connection error").
Set CORRAL_KILL_SEED to replay a failing sequence of kill moments.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from corral.store import RunStatus, Store
from tests.e2e.cli_helpers import CORRAL

pytestmark = pytest.mark.slow

KILLS = 3  # each a whole demo and resume; the moments vary from run to run (CORRAL_KILL_SEED replays one)
BUBBLEWRAP_EVERY = 4  # iterations 0, 4, 8, ... run in bubblewrap, the others in the faster local sandbox
TCP_LISTEN = "0A"


def bubblewrap_runs() -> bool:
    from corral.sandbox.bubblewrap.backend import bubblewrap_available

    return bubblewrap_available()[0]


def corral_env() -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "120"}
    env.pop("CORRAL_HOME", None)
    return env


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (from its socket fds and /proc/net/tcp*)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    except OSError:
        return set()
    return {port for port, inode in listening_sockets() if inode in inodes}


def listening_sockets() -> list[tuple[int, str]]:
    """(port, inode) of every TCP socket in LISTEN state in this network namespace."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == TCP_LISTEN:
                found.append((int(fields[1].rsplit(":", 1)[1], 16), fields[9]))
    return found


def processes_of(root: Path) -> list[str]:
    """Live processes whose command line names ``root`` or whose working directory is under it."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path("/proc", entry, "cmdline").read_bytes()
            state = Path("/proc", entry, "stat").read_text().rsplit(")", 1)[1].split()[0]
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X") and (str(root).encode() in cmdline or cwd.startswith(str(root))):
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry}: {command[:200]}")
    return found


def wait_until_gone(root: Path, timeout: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := processes_of(root)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def run_statuses(home: Path) -> list[RunStatus]:
    if not (home / "corral.db").exists():
        return []
    store = Store.open(home=home)
    try:
        return [r.status for r in store.list_runs(limit=1000)]
    finally:
        store.close()


def wait_until_listening(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> float:
    """Seconds until ``proc`` listened on a TCP port (the demo serving its scripted model)."""
    started = time.monotonic()
    while not listening_ports(proc.pid):
        assert proc.poll() is None, f"the demo ended ({proc.returncode}) before it served its model"
        assert time.monotonic() - started < timeout, "the demo never served its model"
        time.sleep(0.005)
    return time.monotonic() - started


def model_phase(home: Path) -> tuple[float, float]:
    """When the (only) run in ``home`` sent its first model request, and when it finished (epoch seconds)."""
    store = Store.open(home=home)
    try:
        (run,) = store.list_runs()
        events = store.events(run.id)
    finally:
        store.close()
    first = min(e.ts for e in events if e.type == "model.request")
    return first, max(e.ts for e in events if e.type == "run.finished")


def test_sigkill_of_the_demo_at_random_moments_then_resume_succeeds(tmp_path: Path) -> None:
    seed = int(os.environ.get("CORRAL_KILL_SEED") or random.randrange(2**32))
    print(f"CORRAL_KILL_SEED={seed}")
    rng = random.Random(seed)
    with_bubblewrap = bubblewrap_runs()
    if not with_bubblewrap:
        print("bubblewrap cannot run here: every iteration uses the local sandbox")
    home = tmp_path / "home"  # one store for all kills: each demo also replaces what a killed one left

    started = time.time()
    whole = subprocess.run(
        [*CORRAL, "--home", str(home), "demo", "--sandbox", "local"],
        cwd=tmp_path,
        env=corral_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    duration = time.time() - started
    assert whole.returncode == 0, whole.stdout + whole.stderr
    first_request, finished = model_phase(home)
    model_from, model_to = first_request - started, finished - started
    print(f"an uninterrupted demo took {duration:.1f}s, its model calls {model_from:.1f}s to {model_to:.1f}s")

    served_when_killed = resumed_runs = 0
    for i in range(KILLS):
        sandbox = "bubblewrap" if with_bubblewrap and i % BUBBLEWRAP_EVERY == 0 else "local"
        proc = subprocess.Popen(
            [*CORRAL, "--home", str(home), "demo", "--sandbox", sandbox],
            cwd=tmp_path,
            env=corral_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            # Half the kills anywhere in the demo's life; half while it serves its model: once it
            # listens (its timings shift with the machine's load), at once the first time, then at a
            # random moment of its model calls.
            if i % 2:
                delay = rng.uniform(0.0, duration * 1.1)
                time.sleep(delay)
                moment = f"after {delay:.2f}s"
            else:
                listened = wait_until_listening(proc)
                delay = rng.uniform(0.0, model_to - model_from) if i else 0.0
                time.sleep(delay)
                moment = f"{delay:.2f}s after it served its model (at {listened:.2f}s)"
            print(f"kill {i}: --sandbox {sandbox}, SIGKILL {moment}")
            ports = listening_ports(proc.pid)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        served_when_killed += bool(ports)

        resumed = subprocess.run(
            [*CORRAL, "--home", str(home), "resume"],
            cwd=tmp_path,
            env=corral_env(),
            capture_output=True,
            text=True,
            timeout=180,
        )
        context = f"kill {i} (seed {seed}, {moment}, {sandbox})\n{resumed.stdout}{resumed.stderr}"
        assert resumed.returncode == 0, context
        resumed_runs += "no interrupted runs" not in resumed.stdout
        statuses = run_statuses(home)
        assert statuses and all(s is RunStatus.SUCCEEDED for s in statuses), f"{statuses}\n{context}"

        assert wait_until_gone(home) == [], context
        still_listening = {port for port, _ in listening_sockets()} & ports
        assert not still_listening, f"ports {still_listening} of the killed demo still listen\n{context}"

    print(f"{served_when_killed} of {KILLS} kills hit a demo serving its model; {resumed_runs} resumed a run")
    assert served_when_killed > 0, "no kill landed while the demo served its model: the socket check saw nothing"
