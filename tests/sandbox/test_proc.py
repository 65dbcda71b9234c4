"""run_process: corral's host helpers get a timeout, and nothing they start outlives the call."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from corral.errors import SandboxError
from corral.sandbox.proc import run_process
from tests.sandbox.host import processes_with

pytestmark = pytest.mark.anyio

SH = "/bin/sh"


def sleep_token() -> str:
    return f"93.{secrets.randbelow(10**6):06d}"


async def gone(token: str) -> list[int]:
    for _ in range(100):
        if not processes_with(token):
            break
        await asyncio.sleep(0.02)
    return processes_with(token)


async def test_output_exit_code_stdin_and_env() -> None:
    done = await run_process([SH, "-c", 'cat; echo "$GREETING" >&2'], timeout=10, stdin=b"in\n", env={"GREETING": "hi"})
    assert (done.exit_code, done.stdout, done.stderr) == (0, b"in\n", b"hi\n")


async def test_a_failure_raises_with_stderr_and_purpose_unless_unchecked() -> None:
    argv = [SH, "-c", "echo broken >&2; exit 3"]
    with pytest.raises(SandboxError, match=r"^git add failed \(exit 3\) while testing: broken$"):
        await run_process(argv, timeout=10, what="git add", purpose="while testing")
    assert (await run_process(argv, timeout=10, check=False)).exit_code == 3


async def test_a_missing_program_is_a_sandbox_error() -> None:
    with pytest.raises(SandboxError, match="cannot start no-such-helper"):
        await run_process(["/nonexistent/no-such-helper"], timeout=10, what="no-such-helper")


@pytest.mark.slow  # waits out a real time limit: the full suite runs it, the fast lane does not
async def test_a_timeout_kills_the_whole_session() -> None:
    token = sleep_token()
    with pytest.raises(SandboxError, match=r"timed out after 0.3s"):
        await run_process([SH, "-c", f"sleep {token} & sleep {token}; wait"], timeout=0.3)
    assert await gone(token) == []


@pytest.mark.slow  # waits out a real time limit: the full suite runs it, the fast lane does not
async def test_a_helper_that_exits_leaving_a_child_on_its_pipe_times_out_and_the_child_dies() -> None:
    token = sleep_token()
    with pytest.raises(SandboxError, match="timed out"):
        await run_process([SH, "-c", f"(sleep {token} &); exit 0"], timeout=0.5)
    assert await gone(token) == []


async def test_cancelling_the_call_kills_the_whole_session() -> None:
    token = sleep_token()
    call = asyncio.create_task(run_process([SH, "-c", f"sleep {token} & sleep {token}; wait"], timeout=60))
    for _ in range(100):
        if len(processes_with(token)) == 3:  # sh and its two sleeps
            break
        await asyncio.sleep(0.02)
    assert len(processes_with(token)) == 3
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await gone(token) == []


async def test_cancelling_the_call_at_any_point_of_its_start_leaves_no_process() -> None:
    token = sleep_token()
    for ticks in range(12):
        call = asyncio.create_task(run_process([SH, "-c", f"sleep {token}; echo never"], timeout=60))
        for _ in range(ticks):
            await asyncio.sleep(0)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert await gone(token) == [], ticks
