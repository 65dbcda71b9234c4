"""Run a host helper command (git, cp, rm, mkfs, du, chown) with a timeout; its whole session dies with the call."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from corral.errors import SandboxError

_REAP_TIMEOUT = 5.0  # after SIGKILL, how long to wait for the kernel to report the exit


@dataclass(frozen=True)
class Completed:
    """What a helper command printed and how it exited."""

    exit_code: int
    stdout: bytes
    stderr: bytes


async def run_process(
    argv: Sequence[str],
    *,
    timeout: float,  # noqa: ASYNC109 - a duration the call enforces itself, as Sandbox.exec does
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    what: str = "",
    purpose: str = "",
) -> Completed:
    """Run ``argv`` in a new session and wait at most ``timeout`` seconds for it.

    ``env=None`` passes the host environment on (these are corral's own helpers, not agent commands).
    On timeout, on cancellation and on any error the whole session is killed, so nothing the helper
    started outlives the call. With ``check``, a non-zero exit raises SandboxError carrying stderr.
    Error messages name the command as ``what`` (default: the program's name) and end with
    ``purpose`` (e.g. "while diffing the workspace").
    """
    name = what or Path(argv[0]).name
    context = f" {purpose}" if purpose else ""
    # Shielded, as Sandbox.exec's start is: a start cancelled after the fork is let finish, then killed.
    starting = asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    )
    try:
        proc = await asyncio.shield(starting)
    except OSError as exc:
        raise SandboxError(f"cannot start {name}{context}: {exc.strerror or exc}") from exc
    except BaseException:  # cancelled: the start may be done already (only the shield was cancelled) or not
        starting.add_done_callback(_kill_started)
        raise
    done = False
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(stdin), timeout)
        done = True
    except TimeoutError:
        command = what or " ".join([name, *argv[1:4]]) + " ..."
        raise SandboxError(f"{command} timed out after {timeout:g}s{context}") from None
    finally:
        # Even when the helper itself has exited, something it started may still hold its pipes.
        if not done:
            kill_session(proc.pid)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), _REAP_TIMEOUT)
    assert proc.returncode is not None  # communicate() returned: the process was reaped
    if check and proc.returncode != 0:
        message = stderr.decode("utf-8", errors="replace").strip()
        raise SandboxError(f"{name} failed (exit {proc.returncode}){context}: {message}")
    return Completed(exit_code=proc.returncode, stdout=stdout, stderr=stderr)


def kill_session(leader: int) -> None:
    """SIGKILL every process in the session (and process group) that ``leader`` started."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader, signal.SIGKILL)


def _kill_started(starting: asyncio.Future[asyncio.subprocess.Process]) -> None:
    if not starting.cancelled() and starting.exception() is None:
        kill_session(starting.result().pid)
