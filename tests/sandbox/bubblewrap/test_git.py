"""git and plain file edits inside a bubblewrap sandbox work on any repository, whoever owns its files."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from corral.sandbox import SandboxRequest
from corral.sandbox.bubblewrap.backend import BubblewrapSandbox, BubblewrapSandboxBackend
from corral.sandbox.bubblewrap.overlay import IdShift, foreign_entries
from tests.sandbox.bubblewrap.conftest import simulate_reboot
from tests.sandbox.conftest import build_repo, digest_tree, skip_unless_bubblewrap_runs

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs corral to run as root (own uid, overlay, chown)"),
]

MakeBwrap = Callable[..., Awaitable[BubblewrapSandbox]]
# Until corral gives the sandbox a git identity of its own.
IDENTITY = {
    "GIT_AUTHOR_NAME": "agent",
    "GIT_AUTHOR_EMAIL": "agent@example.com",
    "GIT_COMMITTER_NAME": "agent",
    "GIT_COMMITTER_EMAIL": "agent@example.com",
}


def mixed_owner_repo(root: Path) -> Path:
    """A git repo whose tree belongs to uid 1001, whose ``.git`` belongs to root, with a few strays."""
    repo = build_repo(root, with_git=True)
    subprocess.run(["chown", "-R", "-h", "1001:1001", str(repo)], check=True)
    subprocess.run(["chown", "-R", "-h", "0:0", str(repo / ".git")], check=True)
    os.chown(repo / "README.md", 1001, 1002, follow_symlinks=False)  # another group only
    os.chown(repo / "src" / "pkg", 1003, 1003, follow_symlinks=False)  # a directory of a third user
    os.chown(repo / "readme-link", 1004, 1004, follow_symlinks=False)
    return repo


def ownership(root: Path) -> dict[str, tuple[int, int]]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            info = Path(dirpath, name).lstat()
            found[str(Path(dirpath, name).relative_to(root))] = (info.st_uid, info.st_gid)
    return found


@pytest.fixture
async def make(anyio_backend: str, tmp_path: Path) -> AsyncIterator[MakeBwrap]:
    skip_unless_bubblewrap_runs()
    created: list[BubblewrapSandbox] = []

    async def make(repo: Path) -> BubblewrapSandbox:
        request = SandboxRequest(repo=repo, run_dir=tmp_path / f"run-{len(created)}", env=IDENTITY)
        sandbox = await BubblewrapSandboxBackend().create(request)
        created.append(sandbox)
        return sandbox

    yield make
    for sandbox in created:
        await sandbox.destroy()


async def sh(sandbox: BubblewrapSandbox, command: str) -> str:
    result = await sandbox.exec(command, timeout=60)
    assert result.exit_code == 0, f"{command}: {result.stderr}"
    return result.stdout


async def test_foreign_entries_are_the_topmost_ones_of_another_owner(tmp_path: Path) -> None:
    repo = mixed_owner_repo(tmp_path / "repo")
    (repo / ".corral").mkdir()  # a corral store in the repo is hidden from the sandbox: never looked at
    os.chown(repo / ".corral", 0, 0)
    found = await foreign_entries(repo, IdShift(1001, 1001, 2000, 2000))
    assert found == [".git", "README.md", "readme-link", "src/pkg"]
    assert await foreign_entries(repo / ".git", IdShift(0, 0, 2000, 2000)) == []


@pytest.mark.slow
async def test_git_and_edits_work_on_a_repo_with_several_owners(make: MakeBwrap, tmp_path: Path) -> None:
    repo = mixed_owner_repo(tmp_path / "repo")
    before = (digest_tree(repo), ownership(repo))
    sandbox = await make(repo)
    assert sandbox.state()["strategy"] == "overlay"
    # Every entry is the sandbox user's own, whichever host user owns it.
    assert await sh(sandbox, 'find . \\( ! -user "$(id -u)" -o ! -group "$(id -g)" \\) -print') == ""
    status = await sandbox.exec("git status --porcelain", timeout=60)
    assert (status.exit_code, status.stdout) == (0, ""), status.stderr
    await sh(sandbox, "touch README.md .git/touched src/pkg/mod.py && echo more >> src/pkg/mod.py")
    await sh(sandbox, "rm blob.bin src/pkg/data/deep.txt readme-link && mkdir src/pkg/new && echo n > src/pkg/new/n")
    await sh(sandbox, "git commit -qam 'agent edit' && git log --format=%s -1 | grep -qx 'agent edit'")
    patch = await sandbox.diff()
    assert "deleted file mode 100644" in patch
    assert "diff --git a/src/pkg/mod.py b/src/pkg/mod.py" in patch
    assert "+more" in patch
    assert "src/pkg/new/n" in patch
    assert ".git/" not in patch
    assert "a/README.md" not in patch  # touched, not changed
    await sandbox.destroy()
    assert (digest_tree(repo), ownership(repo)) == before


@pytest.mark.slow
async def test_a_reattached_sandbox_keeps_the_other_owners_files_its_own(make: MakeBwrap, tmp_path: Path) -> None:
    repo = mixed_owner_repo(tmp_path / "repo")
    sandbox = await make(repo)
    await sh(sandbox, "echo edit >> README.md")
    state = json.loads(json.dumps(sandbox.state()))
    simulate_reboot(sandbox)
    attached = await BubblewrapSandboxBackend().attach({**state, "env": IDENTITY})
    assert await sh(attached, 'find . \\( ! -user "$(id -u)" -o ! -group "$(id -g)" \\) -print') == ""
    await sh(attached, "git commit -qam again")
    assert "+edit" in await attached.diff()
