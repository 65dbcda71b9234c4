"""Cancelling a program (a cancelled run, a run out of time) cancels its host calls; closing the pool ends its
worker processes."""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest

from corral.orchestration.interpreter import Interpreter
from corral.orchestration.stubs import LOG_CALL, TOOL_CALL, prelude, stubs

pytestmark = pytest.mark.anyio

TOOLS = {"read_file": {"properties": {"path": {"type": "string"}}, "required": ["path"]}}


def children() -> list[str]:
    return subprocess.run(["pgrep", "-P", str(os.getpid())], capture_output=True, text=True).stdout.split()


async def test_cancel_mid_program_cancels_its_calls_and_close_ends_the_workers() -> None:
    interpreter = Interpreter()
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def slow(name: str, arguments: dict[str, object]) -> str:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "late"

    before = set(children())
    try:
        program = "await asyncio.gather(tools.read_file(path='a'), tools.read_file(path='b'))"
        task = asyncio.create_task(
            interpreter.run(
                program, functions={TOOL_CALL: slow, LOG_CALL: slow}, prelude=prelude(TOOLS), stubs=stubs(TOOLS)
            )
        )
        await asyncio.wait_for(started.wait(), 30)
        assert set(children()) - before  # the pool's worker
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cancelled.is_set()
    finally:
        interpreter.close()
    assert not set(children()) - before
