"""Fixtures for the sandbox contract suite: backends to test, a sample repo, sandboxes made from it."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from corral.sandbox import Sandbox, SandboxBackend, SandboxRequest, get_backend

# Every backend listed here must pass tests/sandbox/test_contract.py unchanged.
BACKENDS = ["local", "bubblewrap"]

MakeSandbox = Callable[..., Awaitable[Sandbox]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def skip_unless_bubblewrap_runs() -> None:
    """Skip (with bwrap's own reason) on machines where bubblewrap sandboxes cannot start."""
    from corral.sandbox.bubblewrap.backend import bubblewrap_available

    ok, detail = bubblewrap_available()
    if not ok:
        pytest.skip(f"bubblewrap cannot run on this machine: {detail}")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> SandboxBackend:
    if request.param == "bubblewrap":
        skip_unless_bubblewrap_runs()
    return get_backend(request.param)


def build_repo(root: Path, *, with_git: bool) -> Path:
    """A small repo: nested dirs, an in-repo file and dir symlink, an executable and a binary file."""
    (root / "src" / "pkg" / "data").mkdir(parents=True)
    (root / "README.md").write_text("# sample\nhello\n")
    (root / "src" / "pkg" / "mod.py").write_text("def greet():\n    return 'hi'\n")
    (root / "src" / "pkg" / "data" / "deep.txt").write_text("deep\n")
    run = root / "run.sh"
    run.write_text("#!/bin/sh\necho running\n")
    run.chmod(0o755)
    (root / "blob.bin").write_bytes(bytes(range(256)) * 4)
    (root / "readme-link").symlink_to("README.md")
    (root / "pkg-link").symlink_to("src/pkg", target_is_directory=True)
    if with_git:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(root),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.com",
        }
        for argv in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "initial"]):
            subprocess.run(argv, cwd=root, env=env, check=True, timeout=30)
    return root


def digest_tree(root: Path) -> str:
    """A hash over every path, mode, symlink target and file content under root."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted([*dirnames, *filenames]):
            path = Path(dirpath, name)
            info = path.lstat()
            digest.update(f"{path.relative_to(root)}\0{info.st_mode}\0{info.st_mtime_ns}\0".encode())
            if path.is_symlink():
                digest.update(os.readlink(path).encode())
            elif path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def tree_digest() -> Callable[[Path], str]:
    return digest_tree


@pytest.fixture
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A plain directory; parametrize indirectly with "git-repo" to get one that is a git repository."""
    kind = getattr(request, "param", "plain-dir")
    return build_repo(tmp_path / "repo", with_git=kind == "git-repo")


@pytest.fixture
async def make_sandbox(
    anyio_backend: str, backend: SandboxBackend, repo: Path, tmp_path: Path
) -> AsyncIterator[MakeSandbox]:
    created: list[Sandbox] = []

    async def make(env: dict[str, str] | None = None, name: str = "run") -> Sandbox:
        request = SandboxRequest(repo=repo, run_dir=tmp_path / f"{name}-{len(created)}", env=env or {})
        sandbox = await backend.create(request)
        created.append(sandbox)
        return sandbox

    yield make
    for sandbox in created:
        await sandbox.destroy()


@pytest.fixture
async def sandbox(make_sandbox: MakeSandbox) -> Sandbox:
    return await make_sandbox()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside every workspace, holding a file no sandbox operation may touch."""
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "secret.txt").write_text("host secret\n")
    return directory
