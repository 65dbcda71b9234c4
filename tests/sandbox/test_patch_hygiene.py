"""A patch is the change, not the environment: venvs, node_modules and caches stay out unless the repo tracks them.

Both diff paths are held to the same rules: ``workspace_diff`` (a copied workspace against its
baseline commit) and ``overlay_diff`` (an overlay's changed paths against the repo). The overlay is
played here by plain directories, a lower (the repo), an upper (what changed) and a merged view,
so these tests need neither root nor a mount; tests/sandbox/bubblewrap covers the real thing.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import pytest

from corral.sandbox import Sandbox, SandboxRequest, get_backend
from corral.sandbox.bubblewrap.overlay import OverlayPaths, overlay_diff
from corral.sandbox.workspace import leave_out_environments, prepare_workspace, workspace_diff
from tests.sandbox.conftest import build_repo, skip_unless_bubblewrap_runs

pytestmark = [pytest.mark.anyio, pytest.mark.slow]  # real sandboxes or git: the full suite runs them

GIT_ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
}


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, env=GIT_ENV, check=True, timeout=30, capture_output=True)


def project(root: Path) -> Path:
    """A git repo that ignores build/ and *.local, and vendors one node_modules file."""
    repo = build_repo(root, with_git=True)
    (repo / ".gitignore").write_text("build/\n")
    (repo / ".git" / "info").mkdir(exist_ok=True)
    (repo / ".git" / "info" / "exclude").write_text("*.local\n")
    (repo / "node_modules" / "vendored").mkdir(parents=True)
    (repo / "node_modules" / "vendored" / "index.js").write_text("module.exports = 1;\n")
    (repo / "build").mkdir()
    (repo / "build" / "keep.cfg").write_text("tracked although ignored\n")
    git(repo, "add", ".gitignore", "node_modules")
    git(repo, "add", "--force", "build/keep.cfg")
    git(repo, "commit", "-qm", "vendor")
    return repo


class Workspace(Protocol):
    """One way of diffing a workspace: write files into it, then ask for its patch."""

    async def write(self, path: str, data: str) -> None: ...

    async def diff(self) -> str: ...


class CopiedWorkspace:
    def __init__(self, repo: Path, run_dir: Path) -> None:
        self.repo, self.run_dir = repo, run_dir

    async def start(self) -> None:
        self.snapshot = await prepare_workspace(self.repo, self.run_dir)
        self.root = self.snapshot.workspace

    async def write(self, path: str, data: str) -> None:
        (self.root / path).parent.mkdir(parents=True, exist_ok=True)
        (self.root / path).write_text(data)

    async def diff(self) -> str:
        return await workspace_diff(self.snapshot)


class LayeredWorkspace:
    """An overlay's layers without the mount: every write lands in the upper dir and in the merged view."""

    def __init__(self, repo: Path, run_dir: Path) -> None:
        self.paths = OverlayPaths(
            lower=repo, upper=run_dir / "upper", work=run_dir / "work", merged=run_dir / "merged", owned=run_dir / "o"
        )
        self.git_dir = run_dir / "baseline.git"

    async def start(self) -> None:
        self.paths.upper.mkdir(parents=True)
        self.git_dir.mkdir()
        shutil.copytree(self.paths.lower, self.paths.merged, symlinks=True)
        self.root = self.paths.merged

    async def write(self, path: str, data: str) -> None:
        for top in (self.paths.upper, self.paths.merged):
            (top / path).parent.mkdir(parents=True, exist_ok=True)
            (top / path).write_text(data)

    async def diff(self) -> str:
        return await overlay_diff(self.paths, self.git_dir)


@pytest.fixture(params=["copy", "overlay"])
async def workspace(request: pytest.FixtureRequest, anyio_backend: str, tmp_path: Path) -> Workspace:
    repo = project(tmp_path / "repo")
    made = (CopiedWorkspace if request.param == "copy" else LayeredWorkspace)(repo, tmp_path / "run")
    await made.start()
    return made


async def fake_venv(workspace: Workspace, name: str) -> None:
    await workspace.write(f"{name}/pyvenv.cfg", "home = /usr/bin\n")
    await workspace.write(f"{name}/bin/activate", "# activate\n")
    await workspace.write(f"{name}/lib/python3/site-packages/pkg/__init__.py", "x = 1\n")


def changed_files(patch: str) -> list[str]:
    return [line.split(" b/", 1)[1] for line in patch.splitlines() if line.startswith("diff --git ")]


async def test_a_virtualenv_stays_out_whatever_its_name(workspace: Workspace) -> None:
    await fake_venv(workspace, ".venv")
    await fake_venv(workspace, "tools/my env")
    await workspace.write("src/pkg/mod.py", "def greet():\n    return 'hello'\n")
    assert changed_files(await workspace.diff()) == ["src/pkg/mod.py"]


async def test_node_modules_tool_envs_and_caches_stay_out(workspace: Workspace) -> None:
    junk = [
        "node_modules/left-pad/index.js",
        "web/node_modules/react/index.js",
        ".tox/py311/log.txt",
        ".nox/tests/log.txt",
        "src/pkg.egg-info/PKG-INFO",
        ".eggs/README.txt",
        "src/pkg/__pycache__/mod.cpython-311.pyc",
        ".pytest_cache/v/cache/lastfailed",
        ".mypy_cache/3.11/mod.json",
        ".ruff_cache/0.5/cache",
    ]
    for path in junk:
        await workspace.write(path, "environment\n")
    await workspace.write("web/app.js", "app();\n")
    assert changed_files(await workspace.diff()) == ["web/app.js"]


async def test_a_tracked_file_inside_node_modules_stays_in_the_patch(workspace: Workspace) -> None:
    await workspace.write("node_modules/vendored/index.js", "module.exports = 2;\n")
    await workspace.write("node_modules/vendored/untracked.js", "new\n")
    patch = await workspace.diff()
    assert changed_files(patch) == ["node_modules/vendored/index.js"]
    assert "+module.exports = 2;" in patch


async def test_the_repos_gitignore_and_info_exclude_apply_but_tracked_files_stay(workspace: Workspace) -> None:
    await workspace.write("build/out.o", "object\n")
    await workspace.write("settings.local", "mine\n")
    await workspace.write("build/keep.cfg", "edited\n")
    assert changed_files(await workspace.diff()) == ["build/keep.cfg"]


async def test_a_tracked_venv_is_part_of_the_repo(tmp_path: Path) -> None:
    repo = build_repo(tmp_path / "repo", with_git=False)
    (repo / "env").mkdir()
    (repo / "env" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    git(repo, "init", "-q")
    git(repo, "add", "env/pyvenv.cfg")
    git(repo, "commit", "-qm", "a committed venv")
    layered = LayeredWorkspace(repo, tmp_path / "run")
    await layered.start()
    await layered.write("env/pyvenv.cfg", "home = /usr/local/bin\n")
    await layered.write("env/added.txt", "new\n")
    assert changed_files(await layered.diff()) == ["env/added.txt", "env/pyvenv.cfg"]


async def test_the_left_out_environments_are_named_in_the_log(
    workspace: Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    await fake_venv(workspace, ".venv")
    await workspace.write("web/node_modules/react/index.js", "x\n")
    await workspace.write("src/pkg/__pycache__/mod.pyc", "x\n")
    await workspace.write("src/pkg/mod.py", "changed\n")
    with caplog.at_level(logging.INFO, logger="corral.sandbox"):
        await workspace.diff()
    notes = [record.getMessage() for record in caplog.records if "left out of the patch" in record.getMessage()]
    assert len(notes) == 1
    assert notes[0].endswith("left out of the patch: .venv/ (3 files), web/node_modules/")


def test_leave_out_environments_keeps_tracked_files_and_counts_the_rest() -> None:
    untracked = ["a.py", "v/pyvenv.cfg", "v/bin/python", "v/lib/x.py", "pyvenv.cfg", "w/pyvenv.cfg", "w/k"]
    kept, venvs = leave_out_environments(untracked, tracked={"v/lib/x.py", "w/pyvenv.cfg"})
    # A pyvenv.cfg at the top would make the whole repo a venv: it is only a file there.
    assert kept == ["a.py", "v/lib/x.py", "pyvenv.cfg", "w/pyvenv.cfg", "w/k"]
    assert venvs == {"v": 2}


# -- a real sandbox ------------------------------------------------------------------------------


@pytest.fixture
async def sandboxes(anyio_backend: str) -> AsyncIterator[list[Sandbox]]:
    made: list[Sandbox] = []
    yield made
    for sandbox in made:
        await sandbox.destroy()


@pytest.mark.slow
async def test_a_bubblewrap_run_patch_holds_only_the_source_change(tmp_path: Path, sandboxes: list[Sandbox]) -> None:
    skip_unless_bubblewrap_runs()
    repo = project(tmp_path / "repo")
    sandbox = await get_backend("bubblewrap").create(SandboxRequest(repo=repo, run_dir=tmp_path / "run"))
    sandboxes.append(sandbox)
    script = " && ".join(
        [
            "python3 -m venv .venv",
            "mkdir -p node_modules/left-pad build",
            "echo 'module.exports = 0' > node_modules/left-pad/index.js",
            "echo 'module.exports = 2;' > node_modules/vendored/index.js",
            "echo object > build/out.o",
            "echo \"    return 'hello'\" >> src/pkg/mod.py",
            "python3 -m compileall -q src",
        ]
    )
    result = await sandbox.exec(script, timeout=120)
    assert result.exit_code == 0, result.stderr
    assert (sandbox.workspace / ".venv" / "pyvenv.cfg").exists()
    assert (sandbox.workspace / "src" / "pkg" / "__pycache__").is_dir()
    patch = await sandbox.diff()
    assert changed_files(patch) == ["node_modules/vendored/index.js", "src/pkg/mod.py"]
    assert sandbox.left_out is not None and sandbox.left_out.startswith("left out of the patch: .venv/ (")
