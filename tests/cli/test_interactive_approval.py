"""`corral run --interactive` in a real terminal (a pseudo-terminal): the person answers the approval
request inline, like Claude Code's permission prompt; a decision taken meanwhile in another terminal
settles it too; without a terminal the option is refused before anything runs."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.events import ApprovalDecided, ToolReturned
from corral.runtime.approvals import who_am_i
from tests.cli.run_support import CORRAL, corral_env, run_corral, scripted_project, stored
from tests.cli.test_approvals_cli import POLICY, SCRIPT, wait_for_request

pytestmark = pytest.mark.slow  # the real entry point in a pseudo-terminal

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[()][0-9A-B]|\r")


class Terminal:
    """``corral`` running with a pseudo-terminal as stdin, stdout and stderr."""

    def __init__(self, *args: str, cwd: Path) -> None:
        master, slave = pty.openpty()
        env = corral_env(None, TERM="xterm-256color", COLUMNS="160", LINES="50")
        self.proc = subprocess.Popen([*CORRAL, *args], cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        self.master = master
        self.seen = ""

    def read_until(self, needle: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while needle not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"{needle!r} never appeared; the terminal shows:\n{self.seen[-3000:]}"
            ready, _, _ = select.select([self.master], [], [], min(left, 0.5))
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the process ended and closed its side
                    chunk = b""
                if not chunk and self.proc.poll() is not None:
                    raise AssertionError(f"exited before {needle!r} appeared:\n{self.seen[-3000:]}")
                self.seen += _ANSI.sub("", chunk.decode(errors="replace"))
        return self.seen

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, f"still running; the terminal shows:\n{self.seen[-3000:]}"
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                with contextlib.suppress(OSError):  # the process ended and closed its side
                    self.seen += _ANSI.sub("", os.read(self.master, 65536).decode(errors="replace"))
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return scripted_project(tmp_path / "project", SCRIPT, agent_extra=POLICY)


@pytest.fixture
def term(tmp_path: Path, repo: Path, project: Path) -> Iterator[Terminal]:
    """``corral run … --interactive`` in a terminal, on the push script, with its store in ``tmp_path/home``."""
    home = tmp_path / "home"
    terminal = Terminal(
        "--home", str(home), "run", "fixer", "push it", "--repo", str(repo), "--interactive", cwd=project
    )
    try:
        yield terminal
    finally:
        terminal.close()


def pushed_once(home: Path) -> bool:
    record, _ = stored(home)
    return record.status.value == "succeeded" and (record.result or {})["patch"].count("+pushed") == 1


def test_no_with_a_reason_at_the_prompt_reaches_the_model(tmp_path: Path, term: Terminal) -> None:
    shown = term.read_until("approve? ")
    assert "execute needs your approval (rule pushes: a push leaves the sandbox)" in shown
    assert "command: echo pushed >> pushes.txt; git push" in shown
    term.type("maybe\n")
    term.read_until("answer y, n or l")
    term.type("n\n")
    term.read_until("reason (the agent reads it): ")
    term.type("\n")  # a denial needs a reason: asked again
    term.seen = ""
    term.read_until("reason (the agent reads it): ")
    term.type("Not On Fridays\n")
    assert term.wait() == 0, term.seen[-3000:]
    record, events = stored(tmp_path / "home")
    assert record.status.value == "succeeded"
    (decided,) = [e.event for e in events if isinstance(e.event, ApprovalDecided)]
    assert (decided.outcome, decided.reason, decided.by) == ("denied", "Not On Fridays", who_am_i())
    (result,) = [e.event for e in events if isinstance(e.event, ToolReturned)]
    assert not result.ok and result.text.endswith("Not On Fridays")


def test_yes_at_the_prompt_runs_the_command_once(tmp_path: Path, term: Terminal) -> None:
    term.read_until("approve? ")
    term.type("y\n")
    term.read_until("approved ap-")
    assert term.wait() == 0, term.seen[-3000:]
    assert pushed_once(tmp_path / "home")


def test_a_decision_from_another_terminal_settles_the_question(tmp_path: Path, project: Path, term: Terminal) -> None:
    home = tmp_path / "home"
    term.read_until("approve? ")
    request = wait_for_request(home, project)
    approved = run_corral("--home", str(home), "approve", str(request["id"]), cwd=project, home=None)
    assert approved.returncode == 0, approved.stderr
    term.read_until(f"{request['id']} was approved by {who_am_i()} meanwhile")
    assert term.wait() == 0, term.seen[-3000:]
    assert pushed_once(home)


def test_interactive_without_a_terminal_is_refused(tmp_path: Path, repo: Path, project: Path) -> None:
    home = tmp_path / "home"
    refused = run_corral(
        "--home", str(home), "run", "fixer", "push it", "--repo", str(repo), "--interactive", cwd=project, home=None
    )
    assert refused.returncode == 2
    assert "--interactive needs a terminal on stdin" in refused.stderr
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())
