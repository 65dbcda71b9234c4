"""``corral diff``, ``corral apply`` and ``commit_to_branch``: a run's patch in hand, never a surprise."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from corral.cli.patches import commit_to_branch
from corral.errors import UsageError
from corral.store import RunStatus, Store
from tests.e2e.cli_helpers import corral

pytestmark = pytest.mark.slow  # the commands run the real entry point and real git

TWO_FILES = """\
diff --git a/a.txt b/a.txt
index 8baef1b..7a8b0a5 100644
--- a/a.txt
+++ b/a.txt
@@ -1 +1 @@
-alpha
+ALPHA
diff --git a/b.txt b/b.txt
index 3f7e6b0..d6459e0 100644
--- a/b.txt
+++ b/b.txt
@@ -1 +1 @@
-beta
+BETA
"""


def git(repo: Path, *args: str) -> str:
    env_args = ["-c", "user.name=t", "-c", "user.email=t@t"]
    return subprocess.run(
        ["git", *env_args, "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    repo = tmp_path / "checkout"
    repo.mkdir()
    (repo / "a.txt").write_text("alpha\n")
    (repo / "b.txt").write_text("beta\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "start")
    return repo


def add_finished_run(home: Path, run_id: str, repo: Path, patch: str, *, continues: str | None = None) -> None:
    store = Store.open(home=home)
    try:
        store.create_run(
            id=run_id,
            parent_id=continues,
            continues_id=continues,
            root_id=continues or run_id,
            agent="fixer",
            spec={},
            spec_hash="h",
            task="change things",
            repo=str(repo),
            run_dir=str(home / "runs" / run_id),
        )
        files = patch.count("diff --git ")
        store.update_run(run_id, status=RunStatus.SUCCEEDED, result={"patch": patch, "files_changed": files})
    finally:
        store.close()


def test_diff_prints_the_patch_byte_for_byte_when_piped_and_its_stat(tmp_path: Path, checkout: Path) -> None:
    home = tmp_path / "home"
    add_finished_run(home, "run1", checkout, TWO_FILES)
    done = corral("diff", "run1", cwd=tmp_path, home=home)
    assert done.returncode == 0, done.stderr
    assert done.stdout == TWO_FILES
    stat = corral("diff", "run1", "--stat", cwd=tmp_path, home=home)
    assert stat.stdout.splitlines() == ["  a.txt  +1 -1", "  b.txt  +1 -1"]
    add_finished_run(home, "run2", checkout, "")
    empty = corral("diff", "run2", cwd=tmp_path, home=home)
    assert (empty.returncode, empty.stdout) == (0, "")
    assert "run run2 changed no files" in empty.stderr


def test_apply_checks_applies_and_recognises_a_patch_already_there(tmp_path: Path, checkout: Path) -> None:
    home = tmp_path / "home"
    add_finished_run(home, "run1", checkout, TWO_FILES)
    check = corral("apply", "run1", "--check", cwd=tmp_path, home=home)
    assert check.returncode == 0, check.stderr
    assert "applies cleanly" in check.stdout
    assert (checkout / "a.txt").read_text() == "alpha\n"  # --check changes nothing

    applied = corral("apply", "run1", cwd=tmp_path, home=home)
    assert applied.returncode == 0, applied.stderr
    assert "applied to" in applied.stdout and "2 file(s)" in applied.stdout and "  b.txt  +1 -1" in applied.stdout
    assert (checkout / "a.txt").read_text() == "ALPHA\n" and (checkout / "b.txt").read_text() == "BETA\n"
    assert git(checkout, "diff", "--cached", "--name-only") == ""  # the index is the user's business

    again = corral("apply", "run1", cwd=tmp_path, home=home)
    assert again.returncode == 0
    assert "already holds" in again.stdout


def test_a_conflict_changes_nothing_and_names_the_file(tmp_path: Path, checkout: Path) -> None:
    home = tmp_path / "home"
    add_finished_run(home, "run1", checkout, TWO_FILES)
    (checkout / "b.txt").write_text("someone else\n")
    done = corral("apply", "run1", cwd=tmp_path, home=home)
    assert done.returncode == 1
    assert "does not apply" in done.stderr and "nothing was changed" in done.stderr
    assert "b.txt" in done.stderr
    assert (checkout / "a.txt").read_text() == "alpha\n"  # all or nothing: a.txt would have applied


def test_apply_works_in_a_subdirectory_of_a_repository_and_outside_any(tmp_path: Path, checkout: Path) -> None:
    home = tmp_path / "home"
    sub = checkout / "pkg"
    sub.mkdir()
    (sub / "a.txt").write_text("alpha\n")
    (sub / "b.txt").write_text("beta\n")
    add_finished_run(home, "insub", sub, TWO_FILES)
    done = corral("apply", "insub", cwd=tmp_path, home=home)
    assert done.returncode == 0, done.stderr
    assert (sub / "a.txt").read_text() == "ALPHA\n" and (checkout / "a.txt").read_text() == "alpha\n"

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.txt").write_text("alpha\n")
    (plain / "b.txt").write_text("beta\n")
    add_finished_run(home, "plain", plain, TWO_FILES)
    assert corral("apply", "plain", cwd=tmp_path, home=home).returncode == 0
    assert (plain / "b.txt").read_text() == "BETA\n"


def test_a_follow_up_applied_before_its_parent_says_which_to_apply_first(tmp_path: Path, checkout: Path) -> None:
    home = tmp_path / "home"
    parent = TWO_FILES.split("diff --git a/b.txt")[0]
    child = "diff --git a/a.txt b/a.txt\n--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-ALPHA\n+ALPHA!\n"
    add_finished_run(home, "parent1", checkout, parent)
    add_finished_run(home, "child1", checkout, child, continues="parent1")
    done = corral("apply", "child1", cwd=tmp_path, home=home)
    assert done.returncode == 1
    assert "apply that one first (corral apply parent1)" in done.stderr
    assert corral("apply", "parent1", cwd=tmp_path, home=home).returncode == 0
    assert corral("apply", "child1", cwd=tmp_path, home=home).returncode == 0
    assert (checkout / "a.txt").read_text() == "ALPHA!\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuch"], "no run 'nosuch'"),
        (["empty"], "changed no files; there is nothing to apply"),
        (["run1", "--repo", "/nonexistent/dir"], "/nonexistent/dir is not a directory"),
    ],
)
def test_apply_usage_errors(tmp_path: Path, checkout: Path, args: list[str], message: str) -> None:
    home = tmp_path / "home"
    add_finished_run(home, "run1", checkout, TWO_FILES)
    add_finished_run(home, "empty", checkout, "")
    done = corral("apply", *args, cwd=tmp_path, home=home)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr


def test_commit_to_branch_leaves_checkout_index_and_head_alone(checkout: Path) -> None:
    (checkout / "b.txt").write_text("uncommitted work\n")
    git(checkout, "add", "b.txt")  # staged, too
    head = git(checkout, "rev-parse", "HEAD")
    patch = TWO_FILES.split("diff --git a/b.txt")[0]
    commit = commit_to_branch(checkout, patch, "corral/fix", message="fix a\n\nby corral")
    assert git(checkout, "rev-parse", "HEAD") == head
    assert git(checkout, "rev-parse", "corral/fix") == commit
    assert git(checkout, "rev-parse", f"{commit}^") == head
    assert git(checkout, "show", f"{commit}:a.txt") == "ALPHA"
    assert git(checkout, "show", f"{commit}:b.txt") == "beta"  # the commit holds HEAD plus the patch only
    assert (checkout / "a.txt").read_text() == "alpha\n"
    assert (checkout / "b.txt").read_text() == "uncommitted work\n"
    assert git(checkout, "diff", "--cached", "--name-only") == "b.txt"
    assert git(checkout, "log", "-1", "--format=%s", commit) == "fix a"


def test_commit_to_branch_refuses_what_it_cannot_do_safely(checkout: Path, tmp_path: Path) -> None:
    patch = TWO_FILES.split("diff --git a/b.txt")[0]
    commit_to_branch(checkout, patch, "taken", message="first")
    taken = git(checkout, "rev-parse", "taken")
    with pytest.raises(UsageError, match="already exists"):
        commit_to_branch(checkout, patch, "taken", message="second")
    assert git(checkout, "rev-parse", "taken") == taken  # never overwritten
    with pytest.raises(UsageError):
        commit_to_branch(checkout, patch, "bad..name", message="x")
    with pytest.raises(UsageError, match="does not apply to HEAD"):
        commit_to_branch(checkout, patch.replace("-alpha", "-gamma"), "other", message="x")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(UsageError):
        commit_to_branch(plain, patch, "x", message="x")


def test_commit_to_branch_in_a_subdirectory_of_a_repository(checkout: Path) -> None:
    sub = checkout / "pkg"
    sub.mkdir()
    (sub / "a.txt").write_text("alpha\n")
    git(checkout, "add", ".")
    git(checkout, "commit", "-qm", "pkg")
    commit = commit_to_branch(sub, TWO_FILES.split("diff --git a/b.txt")[0], "sub-fix", message="fix")
    assert git(checkout, "show", f"{commit}:pkg/a.txt") == "ALPHA"
    assert git(checkout, "show", f"{commit}:a.txt") == "alpha"
