"""The patch in hand at the end of ``corral run``: its stat and the commands for it, ``--patch``, ``--branch``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.cli.run_support import json_lines, run_corral, scripted_project, stored
from tests.conftest import FIX_SCRIPT

pytestmark = pytest.mark.slow  # every case starts the real `corral` entry point

NO_CHANGE = '[[turns]]\ntext = "nothing to change"\n'


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return scripted_project(tmp_path / "project", FIX_SCRIPT)


@pytest.fixture
def git_repo(repo: Path) -> Path:
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "buggy calc")
    (repo / "notes.txt").write_text("uncommitted work of the user\n")  # must survive untouched
    git(repo, "add", "notes.txt")
    return repo


def checkout_state(repo: Path) -> tuple[str, str, str, str]:
    """HEAD, the branch checked out, the index and the working tree's status: what --branch must not touch."""
    return (
        git(repo, "rev-parse", "HEAD"),
        git(repo, "symbolic-ref", "HEAD"),
        git(repo, "ls-files", "--stage"),
        git(repo, "status", "--porcelain"),
    )


def test_the_end_of_a_run_shows_the_patch_stat_and_how_to_see_and_apply_it(project: Path, repo: Path) -> None:
    home = project / "home"
    done = run_corral("run", "fixer", "fix it", "--repo", str(repo), cwd=project, home=home)
    assert done.returncode == 0, done.stderr
    record, _ = stored(home)
    assert "patch: 1 file(s), +1 -1" in done.stdout
    assert "  calc.py  +1 -1" in done.stdout
    assert f"see it: corral diff {record.id} · apply it: corral apply {record.id}" in done.stdout
    assert "+    return a + b" not in done.stdout  # the stat, not the diff


def test_patch_prints_the_whole_diff(project: Path, repo: Path) -> None:
    done = run_corral("run", "fixer", "fix it", "--repo", str(repo), "--patch", cwd=project, home=project / "home")
    assert done.returncode == 0, done.stderr
    assert "diff --git a/calc.py b/calc.py" in done.stdout
    assert "-    return a - b\n+    return a + b\n" in done.stdout


def test_file_names_in_the_stat_are_text(project: Path, repo: Path) -> None:
    script = '[[turns]]\n[[turns.tool_calls]]\nname = "write_file"\n'
    script += 'args = { path = "[bold]x[/bold]\\u001b[2J.py", content = "x = 1\\n" }\n[[turns]]\ntext = "wrote"\n'
    (project / "script.toml").write_text(script)
    done = run_corral("run", "fixer", "write", "--repo", str(repo), cwd=project, home=project / "home")
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout
    assert "[bold]x[/bold]" in done.stdout


def test_branch_commits_the_patch_without_touching_the_checkout(project: Path, git_repo: Path) -> None:
    before = checkout_state(git_repo)
    args = ["--repo", str(git_repo), "--branch", "corral/fix-add", "--json"]
    done = run_corral("run", "fixer", "fix add()\n\nin calc.py", *args, cwd=project, home=project / "home")
    assert done.returncode == 0, done.stderr
    result = json_lines(done.stdout)[-1]

    assert checkout_state(git_repo) == before
    assert result["branch"] == {
        "name": "corral/fix-add",
        "commit": git(git_repo, "rev-parse", "corral/fix-add").strip(),
    }
    assert git(git_repo, "rev-parse", "corral/fix-add~1") == before[0]
    assert "return a + b" in git(git_repo, "show", "corral/fix-add:calc.py")
    assert git(git_repo, "log", "-1", "--format=%s", "corral/fix-add").strip() == "fix add()"
    assert result["run_id"] in git(git_repo, "log", "-1", "--format=%b", "corral/fix-add")


def test_branch_says_so_when_there_is_nothing_to_commit(project: Path, git_repo: Path) -> None:
    (project / "script.toml").write_text(NO_CHANGE)
    done = run_corral(
        "run", "fixer", "look", "--repo", str(git_repo), "--branch", "b", cwd=project, home=project / "home"
    )
    assert done.returncode == 0, done.stderr
    assert "branch b not created: the run changed no file" in done.stdout
    assert git(git_repo, "branch", "--list", "b") == ""


@pytest.mark.parametrize(
    ("branch", "in_git", "message"),
    [
        ("main", True, "--branch: branch 'main' already exists"),
        ("bad..name", True, "--branch: 'bad..name' is not a valid branch name"),
        ("-x", True, "--branch: '-x' is not a valid branch name"),
        ("fix", False, "--branch needs a git repository with a commit"),
    ],
)
def test_a_branch_that_cannot_be_made_is_refused_before_the_run(
    project: Path, repo: Path, branch: str, in_git: bool, message: str
) -> None:
    if in_git:
        git(repo, "init", "-q", "-b", "main")
        git(repo, "add", ".")
        git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "init")
    home = project / "home"
    done = run_corral("run", "fixer", "fix", "--repo", str(repo), f"--branch={branch}", cwd=project, home=home)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert not (home / "corral.db").exists()


def test_a_patch_that_no_longer_applies_is_reported_after_the_run(project: Path, git_repo: Path) -> None:
    """The working tree differs from HEAD (the run saw the edit; HEAD has not): the run is kept, the branch refused."""
    (git_repo / "calc.py").write_text((git_repo / "calc.py").read_text().replace("def mul", "def multiply"))
    (project / "script.toml").write_text(
        FIX_SCRIPT.replace('old = "return a - b", new = "return a + b"', 'old = "def multiply", new = "def mul"')
    )
    home = project / "home"
    done = run_corral("run", "fixer", "fix", "--repo", str(git_repo), "--branch", "fix", cwd=project, home=home)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "succeeded" in done.stdout  # the outcome first
    assert "error:" in done.stderr
    assert stored(home)[0].status.value == "succeeded"
    assert json.loads(run_corral("show", stored(home)[0].id, "--json", cwd=project, home=home).stdout)["result"][
        "patch"
    ]
