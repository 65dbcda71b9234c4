"""Workspace preparation details shared by backends: what is copied, where runs may live, glob matching."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.errors import SandboxError
from corral.sandbox import workspace as workspace_module
from corral.sandbox.workspace import match_files, prepare_workspace, remove_tree, workspace_diff

pytestmark = pytest.mark.anyio


async def test_the_repos_own_corral_dir_is_not_copied(repo: Path) -> None:
    (repo / ".corral" / "runs").mkdir(parents=True)
    (repo / ".corral" / "store.db").write_text("db")
    snapshot = await prepare_workspace(repo, repo / ".corral" / "runs" / "r1")
    try:
        assert not (snapshot.workspace / ".corral").exists()
        assert (snapshot.workspace / "README.md").exists()
        assert await workspace_diff(snapshot) == ""
    finally:
        await remove_tree(snapshot.workspace)
        await remove_tree(snapshot.git_dir)


async def test_run_dir_inside_the_copied_repo_is_refused(repo: Path) -> None:
    with pytest.raises(SandboxError, match="inside the repository"):
        await prepare_workspace(repo, repo / "src" / "run")


async def test_gitignored_files_stay_out_of_the_diff(repo: Path, tmp_path: Path) -> None:
    (repo / ".gitignore").write_text("*.log\n")
    snapshot = await prepare_workspace(repo, tmp_path / "run")
    (snapshot.workspace / "build.log").write_text("noise\n")
    (snapshot.workspace / "kept.txt").write_text("signal\n")
    patch = await workspace_diff(snapshot)
    assert "kept.txt" in patch
    assert "build.log" not in patch


async def test_bytecode_and_tool_caches_stay_out_of_the_diff(repo: Path, tmp_path: Path) -> None:
    snapshot = await prepare_workspace(repo, tmp_path / "run")
    for junk in ("__pycache__/mod.cpython-311.pyc", "src/.pytest_cache/v/x", "old.pyc"):
        (snapshot.workspace / junk).parent.mkdir(parents=True, exist_ok=True)
        (snapshot.workspace / junk).write_bytes(b"\0cache")
    assert await workspace_diff(snapshot) == ""


async def test_missing_git_is_reported_with_an_install_hint(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_which = workspace_module.shutil.which
    monkeypatch.setattr(workspace_module.shutil, "which", lambda name: None if name == "git" else real_which(name))
    with pytest.raises(SandboxError) as caught:
        await prepare_workspace(repo, tmp_path / "run")
    assert "git" in str(caught.value)
    assert caught.value.hint is not None
    assert "install git" in caught.value.hint


async def test_an_empty_repo_gets_an_empty_baseline(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    snapshot = await prepare_workspace(tmp_path / "empty", tmp_path / "run")
    assert await workspace_diff(snapshot) == ""
    (snapshot.workspace / "first.txt").write_text("1\n")
    assert "new file mode" in await workspace_diff(snapshot)


PATHS = ["a.py", "src/b.py", "src/x/c.py", "README", ".hidden", "src/x/d.txt"]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("**/*", PATHS),
        ("*.py", ["a.py"]),
        ("**/*.py", ["a.py", "src/b.py", "src/x/c.py"]),
        ("src/*.py", ["src/b.py"]),
        ("src/**", ["src/b.py", "src/x/c.py", "src/x/d.txt"]),
        ("src/**/**/*.txt", ["src/x/d.txt"]),
        ("./[ab].py", ["a.py"]),
        ("[!a.]*", ["README"]),
        ("src/?/*", ["src/x/c.py", "src/x/d.txt"]),
    ],
)
def test_glob_matching(pattern: str, expected: list[str]) -> None:
    assert match_files(PATHS, pattern) == expected


async def test_copy_and_removal_work_without_cp_and_rm(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_which = workspace_module.shutil.which
    monkeypatch.setattr(
        workspace_module.shutil, "which", lambda name: None if name in ("cp", "rm") else real_which(name)
    )
    snapshot = await prepare_workspace(repo, tmp_path / "run")
    ws = snapshot.workspace
    assert (ws / "readme-link").is_symlink()
    assert (ws / "run.sh").stat().st_mode & 0o111
    assert await workspace_diff(snapshot) == ""
    (ws / "src").chmod(0o500)
    await remove_tree(ws)
    assert not ws.exists()
