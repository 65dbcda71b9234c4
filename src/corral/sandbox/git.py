"""git as the sandbox uses it for baselines and diffs: a fixed configuration, no host config or hooks."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from corral.errors import SandboxError
from corral.sandbox.proc import run_process

GIT_TIMEOUT = 300.0

GIT_CONFIG = (
    "core.hooksPath=/dev/null",
    "core.fileMode=true",
    "core.symlinks=true",
    "core.autocrlf=false",
    "core.quotePath=true",
    "commit.gpgSign=false",
    "diff.noprefix=false",
    "safe.directory=*",
    "gc.auto=0",
)
"""Passed with ``-c`` to every git command, whatever the host's or the repo's configuration says."""


def git_binary() -> str:
    git = shutil.which("git")
    if git is None:
        raise SandboxError(
            "the git binary is required to snapshot and diff sandbox workspaces",
            hint="install git (e.g. `apt-get install git` or `brew install git`) and make sure it is on PATH",
        )
    return git


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment built from scratch: no host GIT_* variables and no user/system config reach git."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": "C",
        "LC_ALL": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_OPTIONAL_LOCKS": "0",
    }
    return env | dict(extra or {})


async def run_git(
    git_dir: Path,
    work_tree: Path,
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    literal_pathspecs: bool = False,
    errors: str = "replace",
    purpose: str = "",
) -> str:
    """Run one git command on ``git_dir`` and ``work_tree``; its stdout, decoded with ``errors``."""
    argv = [git_binary(), f"--git-dir={git_dir}", f"--work-tree={work_tree}"]
    if literal_pathspecs:
        argv.append("--literal-pathspecs")
    for setting in GIT_CONFIG:
        argv += ["-c", setting]
    done = await run_process(
        [*argv, *args], timeout=GIT_TIMEOUT, stdin=stdin, env=git_env(env), what=f"git {args[0]}", purpose=purpose
    )
    return done.stdout.decode("utf-8", errors=errors)


async def init_bare(git_dir: Path, *, excludes: Sequence[str]) -> None:
    """A bare repository (no hooks or templates) whose ``info/exclude`` holds ``excludes``."""
    argv = [git_binary(), "init", "--quiet", "--bare", "--template=", str(git_dir)]
    await run_process(argv, timeout=GIT_TIMEOUT, env=git_env())
    (git_dir / "info").mkdir(exist_ok=True)
    (git_dir / "info" / "exclude").write_text("\n".join(excludes) + "\n")


async def read_repo(repo: Path, args: Sequence[str]) -> bytes | None:
    """Run a read-only git command (``ls-files``, ``rev-parse``) in the repository a sandbox starts from.

    It uses the repository's own git dir, found from ``repo`` as git finds it (``repo`` may be a
    subdirectory of a work tree, or in none: then the answer is None). No hooks or fsmonitor run,
    and the repo's files may belong to any user.
    """
    argv = [git_binary(), "-C", str(repo), "--literal-pathspecs", "-c", "core.fsmonitor=false"]
    for setting in GIT_CONFIG:
        argv += ["-c", setting]
    done = await run_process([*argv, *args], timeout=GIT_TIMEOUT, env=git_env(), check=False)
    return done.stdout if done.exit_code == 0 else None
