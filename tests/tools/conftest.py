"""Fixtures for tool tests: a real local sandbox over a small repo, and a ToolContext for it."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from corral.sandbox import Sandbox, SandboxRequest, get_backend
from corral.tools import BUILTIN_TOOLS, ToolContext, ToolOutcome, run_tool

CallTool = Callable[..., Awaitable[ToolOutcome]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "src" / "app").mkdir(parents=True)
    (root / "README.md").write_text("# demo\n\nA demo repository.\n")
    (root / "src" / "app" / "main.py").write_text(
        "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
    )
    (root / "src" / "app" / "util.py").write_text("VALUE = 1\n")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    return root


@pytest.fixture
async def sandbox(anyio_backend: str, repo: Path, tmp_path: Path) -> AsyncIterator[Sandbox]:
    sandbox = await get_backend("local").create(SandboxRequest(repo=repo, run_dir=tmp_path / "run"))
    yield sandbox
    await sandbox.destroy()


@pytest.fixture
def ctx(sandbox: Sandbox) -> ToolContext:
    return ToolContext(sandbox=sandbox, run_id="run-1", idempotency_key="run-1/step-7")


@pytest.fixture
def call(ctx: ToolContext) -> CallTool:
    async def call(name: str, **args: Any) -> ToolOutcome:
        return await run_tool(BUILTIN_TOOLS[name], ctx, args)

    return call


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "secret.txt").write_text("host secret\n")
    return directory


def digest_tree(root: Path) -> str:
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath, name)
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            digest.update(os.readlink(path).encode() if path.is_symlink() else path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def tree_digest() -> Callable[[Path], str]:
    return digest_tree
