"""A writing child's sandbox is made on its first write or command (``runtime/sandboxing.LazySandbox``):
reads before then see its parent's workspace, parallel first writes make one sandbox, one never made has
no changes and nothing to remove, and making one inside another durable step is refused."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

from corral.errors import RuntimeStateError, SandboxError
from corral.runtime import workflow
from corral.runtime.sandboxing import LazySandbox
from corral.sandbox.base import Sandbox, SandboxRequest, get_backend

pytestmark = pytest.mark.anyio


def lazy(parent: Path, run_dir: Path, made: list[Sandbox]) -> LazySandbox:
    async def opener() -> Sandbox:
        await asyncio.sleep(0.01)  # parallel callers arrive while it is being made
        sandbox = await get_backend("local").create(SandboxRequest(repo=parent, run_dir=run_dir))
        made.append(sandbox)
        return sandbox

    return LazySandbox(parent, opener)


async def test_reads_see_the_parent_until_the_first_write_makes_one_sandbox(repo: Path, tmp_path: Path) -> None:
    made: list[Sandbox] = []
    sandbox = lazy(repo, tmp_path / "child", made)
    assert sandbox.opened is None and sandbox.workspace == repo
    assert await sandbox.read_file("calc.py") == (repo / "calc.py").read_bytes()
    assert "calc.py" in await sandbox.list_files()
    with pytest.raises(SandboxError, match="not been made"):
        sandbox.state()
    await asyncio.gather(*(sandbox.write_file(f"new-{i}.txt", b"x\n") for i in range(5)))
    assert len(made) == 1 and sandbox.opened is made[0]
    assert sandbox.workspace == made[0].workspace != repo
    assert not (repo / "new-0.txt").exists()  # the parent's workspace is only read
    assert (await sandbox.exec(["cat", "new-4.txt"])).stdout == "x\n"
    assert await sandbox.read_file("new-0.txt") == b"x\n"  # reads follow the sandbox once made
    assert "new-3.txt" in await sandbox.diff()
    assert sandbox.state() == made[0].state()
    await sandbox.destroy()
    assert not made[0].workspace.exists()


async def test_one_never_made_has_no_changes_and_nothing_to_remove(repo: Path, tmp_path: Path) -> None:
    made: list[Sandbox] = []
    sandbox = lazy(repo, tmp_path / "child", made)
    assert await sandbox.diff() == "" and sandbox.left_out is None
    await sandbox.suspend()
    await sandbox.destroy()
    assert made == [] and (repo / "calc.py").exists()
    with pytest.raises(SandboxError, match="closed"):
        await sandbox.read_file("calc.py")
    with pytest.raises(SandboxError, match="closed"):
        await sandbox.write_file("x", b"")
    assert made == []


async def test_a_parent_workspace_that_is_gone_is_a_clear_error(tmp_path: Path) -> None:
    sandbox = lazy(tmp_path / "gone", tmp_path / "child", [])
    with pytest.raises(SandboxError, match="is gone"):
        await sandbox.read_file("x")


async def test_a_sandbox_is_never_made_inside_another_durable_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside a step DBOS would run the sandbox's step as a plain call, unrecorded: refused, loudly."""
    monkeypatch.setattr(workflow, "DBOS", SimpleNamespace(step_id=7))  # what DBOS says inside step 7
    ran: list[int] = []

    async def make() -> int:
        ran.append(1)
        return 1

    with pytest.raises(RuntimeStateError, match="step of its own"):
        await workflow.sandbox_step(make)
    assert ran == []
