"""A read-only view of another sandbox's workspace: what a read-only subagent works in, at no cost.

A subagent that only reads (an ``explorer``, a ``reviewer``) needs no sandbox of its own: it reads
its parent's workspace through this view. Nothing is created, so nothing is removed: ``destroy``
leaves the workspace (its parent's) alone. Writing and running commands are refused — the tools of
such a subagent never ask for them; the refusal is the boundary if one did.

The source is a sandbox (a light child reads its parent's, as it stands) or a directory (a writing
child reads its parent's workspace by path until it makes its own copy: ``runtime/sandboxing.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from corral.errors import SandboxError
from corral.sandbox.base import EXEC_TIMEOUT, OUTPUT_LIMIT, SPILL_LIMIT, ExecResult, Sandbox
from corral.sandbox.patching import PatchReport
from corral.sandbox.workspace import WorkspaceSnapshot


class ReadOnlyView(Sandbox):
    """Reads ``source``'s workspace (a sandbox's, or a directory); writes nothing, runs nothing, owns nothing."""

    backend_name: ClassVar[str] = "view"

    def __init__(self, source: Sandbox | Path) -> None:
        if isinstance(source, Sandbox):
            super().__init__(run_dir=source.run_dir, snapshot=source.snapshot, env={})
        else:
            snapshot = WorkspaceSnapshot(workspace=source, git_dir=source / ".git", commit="")
            super().__init__(run_dir=source.parent, snapshot=snapshot, env={})
        self.source = source

    def _refuse(self, what: str) -> SandboxError:
        return SandboxError(
            f"{what}: this subagent has a read-only view of its parent's workspace",
            hint="dispatch a subagent type whose tools write (a worker) to change files",
        )

    async def _spawn(
        self, protocol: asyncio.SubprocessProtocol, argv: list[str], *, cwd: Path, env: dict[str, str]
    ) -> asyncio.SubprocessTransport:
        raise self._refuse("cannot run commands")

    async def exec(
        self,
        command: str | Sequence[str],
        *,
        timeout: float = EXEC_TIMEOUT,  # noqa: ASYNC109 - the contract's signature
        output_limit: int = OUTPUT_LIMIT,
        spill_limit: int = SPILL_LIMIT,
        cwd: str = ".",
        env: Mapping[str, str] | None = None,
        on_stdout: Callable[[bytes], None] | None = None,
    ) -> ExecResult:
        raise self._refuse("cannot run commands")

    async def write_file(self, path: str, data: bytes) -> None:
        raise self._refuse(f"cannot write {path}")

    async def apply_patch(self, patch: str) -> PatchReport:
        raise self._refuse("cannot take a patch")

    async def diff(self) -> str:
        """Nothing changed here: whatever its parent changed is its parent's patch."""
        self._check_open()
        self.left_out = None
        return ""

    def state(self) -> dict[str, Any]:
        raise SandboxError("a read-only view is not recorded; it is made again from its parent's sandbox")

    async def suspend(self) -> None:
        """Nothing to give back: the view holds nothing."""

    async def destroy(self) -> None:
        """Nothing to remove: the workspace is its parent's and stays. The view stays usable, so one view
        serves every read-only child of a run (its parent's sandbox closing closes it)."""

    def _check_open(self) -> None:
        if isinstance(self.source, Sandbox):
            self.source._check_open()
        elif not self.workspace.is_dir():
            raise SandboxError(f"the workspace this view reads is gone: {self.workspace}")
