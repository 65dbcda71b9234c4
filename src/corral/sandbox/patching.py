"""Applying a run's patch to a directory with ``git apply``: all or nothing, with a report of what failed.

Used by ``corral apply`` (a run's patch onto the repository it came from) and by follow-up runs,
whose workspace starts from the repository plus the patches of the runs they continue. The target
may be a git work tree (or a directory inside one) or a plain directory: ``git apply`` works on
both, and never touches the index or HEAD here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from corral.sandbox.git import GIT_TIMEOUT, git_binary, git_env
from corral.sandbox.proc import run_process


@dataclass(frozen=True)
class PatchReport:
    """What ``git apply`` said about a patch and a directory."""

    applies: bool
    """The patch applies cleanly (with ``check``: would apply)."""
    already_applied: bool = False
    """It does not apply because the directory already holds it (it applies in reverse)."""
    problems: list[str] = field(default_factory=list)
    """git's own lines saying which file and hunk failed, and why."""


def diff_stat(patch: str) -> list[tuple[str, int, int]]:
    """(path, lines added, lines removed) for each file of a git patch, in order."""
    files: list[tuple[str, int, int]] = []
    path, added, removed, in_hunks = "", 0, 0, False
    for line in patch.splitlines():
        if line.startswith("diff --git "):
            if path:
                files.append((path, added, removed))
            path, added, removed, in_hunks = line.rpartition(" b/")[2], 0, 0, False
        elif line.startswith("@@"):
            in_hunks = True
        elif in_hunks and line.startswith("+"):
            added += 1
        elif in_hunks and line.startswith("-"):
            removed += 1
    if path:
        files.append((path, added, removed))
    return files


async def _prefix(target: Path) -> str:
    """``target``'s path inside its git work tree (``sub/dir/``), or "" at the top or outside any repository.

    A patch's paths are relative to the directory it was taken in; inside a work tree, ``git apply``
    reads them from the top of the tree unless told the directory (``--directory``).
    """
    done = await run_process(
        [git_binary(), "-C", str(target), "rev-parse", "--show-prefix"],
        timeout=GIT_TIMEOUT,
        env=git_env(),
        check=False,
    )
    return done.stdout.decode("utf-8", errors="replace").strip() if done.exit_code == 0 else ""


async def _git_apply(target: Path, patch: str, *flags: str) -> tuple[bool, list[str]]:
    prefix = await _prefix(target)
    argv = [git_binary(), "-C", str(target), "apply", *flags]
    if prefix:
        argv.append(f"--directory={prefix}")
    done = await run_process(
        [*argv, "-"],
        timeout=GIT_TIMEOUT,
        stdin=patch.encode("utf-8", errors="surrogateescape"),
        env=git_env(),
        check=False,
        what="git apply",
    )
    lines = done.stderr.decode("utf-8", errors="replace").splitlines()
    return done.exit_code == 0, [line for line in lines if line.strip()]


async def check_patch(target: Path, patch: str) -> PatchReport:
    """Would ``patch`` apply to ``target``? If not, is it there already, and what fails?"""
    ok, problems = await _git_apply(target, patch, "--check")
    if ok:
        return PatchReport(applies=True)
    reverse_ok, _ = await _git_apply(target, patch, "--check", "--reverse")
    return PatchReport(applies=False, already_applied=reverse_ok, problems=problems)


async def apply_patch(target: Path, patch: str) -> PatchReport:
    """Apply ``patch`` to the files in ``target``, all or nothing (``git apply`` is atomic)."""
    report = await check_patch(target, patch)
    if not report.applies:
        return report
    ok, problems = await _git_apply(target, patch)
    return PatchReport(applies=ok, problems=problems)


async def patch_paths(target: Path, patch: str) -> list[str]:
    """The paths ``patch`` leaves in ``target`` (new, changed, renamed-to; relative to it), as git reads them."""
    done = await run_process(
        [git_binary(), "-C", str(target), "apply", "--numstat", "-z", "-"],
        timeout=GIT_TIMEOUT,
        stdin=patch.encode("utf-8", errors="surrogateescape"),
        env=git_env(),
        what="git apply --numstat",
    )
    # "ADDED\tDELETED\tPATH\0" per file; a rename: "ADDED\tDELETED\t\0OLD\0NEW\0".
    fields = done.stdout.decode("utf-8", errors="surrogateescape").split("\0")
    paths: list[str] = []
    index = 0
    while index < len(fields) and fields[index]:
        path = fields[index].split("\t", 2)[2]
        if path:
            paths.append(path)
            index += 1
        else:
            paths.append(fields[index + 2])
            index += 3
    return paths
