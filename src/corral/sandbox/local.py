"""The ``local`` sandbox backend: a copied workspace, commands run on the host with no isolation."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, ClassVar

from corral.sandbox.base import Sandbox, SandboxBackend, SandboxRequest, start_process
from corral.sandbox.workspace import prepare_workspace

logger = logging.getLogger("corral.sandbox")

_WARNING = (
    "local sandbox: commands run on the host without isolation (as your user, with your "
    "filesystem and network); use it only for code and agents you trust. Workspace: %s"
)


class LocalSandbox(Sandbox):
    """Processes run directly on the host, in their own session, with cwd inside the workspace.

    Only the environment and the working directory are controlled. A process that leaves its
    process group (``setsid``, double fork into a new session) is not tracked and survives
    timeouts and ``destroy``; containing that needs an isolated backend.
    """

    backend_name: ClassVar[str] = "local"

    async def _spawn(
        self, protocol: asyncio.SubprocessProtocol, argv: list[str], *, cwd: Path, env: dict[str, str]
    ) -> asyncio.SubprocessTransport:
        return await start_process(protocol, argv, cwd=cwd, env=env)


class LocalSandboxBackend(SandboxBackend):
    """No isolation at all: explicit opt-in, and every sandbox logs a warning saying so."""

    name: ClassVar[str] = "local"
    isolated: ClassVar[bool] = False

    async def create(self, request: SandboxRequest) -> LocalSandbox:
        snapshot = await prepare_workspace(request.repo, request.run_dir)
        logger.warning(_WARNING, snapshot.workspace)
        return LocalSandbox(run_dir=snapshot.workspace.parent, snapshot=snapshot, env=request.exec_env())

    async def attach(self, state: dict[str, Any]) -> LocalSandbox:
        parsed = self._load_state(state)
        logger.warning(_WARNING, parsed.snapshot.workspace)
        return LocalSandbox(run_dir=parsed.run_dir, snapshot=parsed.snapshot, env=parsed.env)
