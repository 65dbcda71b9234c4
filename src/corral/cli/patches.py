"""TEMPORARY stand-in for the patches helper written on another branch (only ``commit_to_branch``)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from corral.errors import UsageError


def _git(repo: Path, *args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if done.returncode != 0:
        raise UsageError(f"git {args[0]} failed in {repo}: {done.stderr.strip()}")
    return done.stdout.strip()


def commit_to_branch(repo: Path, patch: str, branch: str, *, message: str) -> str:
    """Commit ``patch`` on top of HEAD as the new branch ``branch``; the checkout, index and HEAD stay as they are."""
    _git(repo, "rev-parse", "--verify", "HEAD")
    if (
        subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"]).returncode
        == 0
    ):
        raise UsageError(f"branch {branch!r} already exists in {repo}")
    prefix = _git(repo, "rev-parse", "--show-prefix")
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        _git(repo, "read-tree", "HEAD", env=env)
        _git(repo, "apply", "--cached", *([f"--directory={prefix}"] if prefix else []), "-", env=env, stdin=patch)
        tree = _git(repo, "write-tree", env=env)
    commit = _git(repo, "commit-tree", tree, "-p", "HEAD", "-m", message)
    _git(repo, "update-ref", f"refs/heads/{branch}", commit, "")
    return commit
