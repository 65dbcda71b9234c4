"""``corral diff`` and ``corral apply``: a run's patch, read or applied to its repository; ``commit_to_branch``."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.syntax import Syntax
from rich.text import Text

from corral.cli.app import EXIT_OK, EXIT_RUN_FAILED, app, console, err_console, open_runs
from corral.cli.text import clean, safe
from corral.errors import UsageError

if TYPE_CHECKING:
    from corral.cli.remote import RunReader
    from corral.store import RunRecord

_GIT_TIMEOUT_S = 120.0
#: Who commits a ``--branch`` when the repository's git configuration names nobody.
_FALLBACK_IDENTITY = {
    "GIT_AUTHOR_NAME": "corral",
    "GIT_AUTHOR_EMAIL": "corral@localhost",
    "GIT_COMMITTER_NAME": "corral",
    "GIT_COMMITTER_EMAIL": "corral@localhost",
}


def print_stat(patch: str, *, limit: int | None = None) -> None:
    """Each file the patch changes with its added and removed lines (the first ``limit``), then the total."""
    from corral.sandbox.patching import diff_stat

    stat = diff_stat(patch)
    for path, plus, minus in stat[:limit]:
        console.print(Text.assemble("  ", safe(path), f"  +{plus} -{minus}"), soft_wrap=True, highlight=False)
    if limit is not None and len(stat) > limit:
        console.print(f"  … and {len(stat) - limit} more", highlight=False)


@app.command()
def diff(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    stat: Annotated[bool, typer.Option("--stat", help="Only the files changed and their +/- counts.")] = False,
) -> None:
    """Print a run's patch: raw when piped (``corral diff RUN | git apply``), coloured in a terminal."""
    from corral.runtime.runtime import run_patch

    record = open_runs().get_run(run_id)
    patch = run_patch(record)
    if not patch:
        err_console.print(safe(f"run {record.id} changed no files"))
        return
    if stat:
        print_stat(patch)
    elif console.is_terminal:
        console.print(Syntax(clean(patch), "diff", word_wrap=True))
    else:
        # Byte for byte what the run produced, so it can be applied or saved as it is.
        sys.stdout.write(patch)
        sys.stdout.flush()


@app.command()
def apply(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    check: Annotated[bool, typer.Option("--check", help="Only say whether it applies; change nothing.")] = False,
    repo: Annotated[
        Path | None, typer.Option("--repo", "-r", help="Apply here instead of the repository the run came from.")
    ] = None,
) -> None:
    """Apply a run's patch to its repository, all or nothing (``git apply``), and report any conflicts."""
    from corral.cli.views import patch_secrets_warning
    from corral.runtime.runtime import run_patch
    from corral.sandbox.patching import apply_patch, check_patch, diff_stat

    store = open_runs()
    record = store.get_run(run_id)
    patch = run_patch(record)
    if not patch:
        raise UsageError(f"run {record.id} changed no files; there is nothing to apply")
    target = (repo or Path(record.repo)).expanduser()
    if not target.is_dir():
        raise UsageError(f"{clean(target)} is not a directory", hint="pass the repository with --repo PATH")
    files = diff_stat(patch)
    report = asyncio.run(check_patch(target, patch) if check else apply_patch(target, patch))
    where = clean(target.resolve())
    if report.applies:
        verb = "applies cleanly to" if check else "applied to"
        console.print(safe(f"✓ run {record.id}'s patch {verb} {where} ({len(files)} file(s))", "green"), soft_wrap=True)
        print_stat(patch)
        if (warning := patch_secrets_warning(record.result or {})) is not None:
            err_console.print(warning, soft_wrap=True, highlight=False)
        raise typer.Exit(EXIT_OK)
    if report.already_applied:
        console.print(safe(f"✓ {where} already holds run {record.id}'s patch; nothing to do", "green"), soft_wrap=True)
        raise typer.Exit(EXIT_OK)
    say = err_console.print
    say(safe(f"✗ run {record.id}'s patch does not apply to {where}; nothing was changed:", "red"), soft_wrap=True)
    for line in report.problems:
        say(Text("  ") + safe(line), soft_wrap=True)
    hint = _hint_for(record, store, target)
    if hint:
        say(safe(f"hint: {hint}", "dim"), soft_wrap=True)
    raise typer.Exit(EXIT_RUN_FAILED)


def _hint_for(record: RunRecord, store: RunReader, target: Path) -> str | None:
    """A follow-up's patch holds only its own changes: if its parent's patch is missing, say so."""
    from corral.runtime.runtime import run_patch
    from corral.sandbox.patching import check_patch

    if record.continues_id is None:
        return f"the files changed since the run started; `corral diff {record.id}` shows what it expects"
    parent = store.get_run(record.continues_id)
    parent_patch = run_patch(parent)
    if parent_patch and asyncio.run(check_patch(target, parent_patch)).applies:
        return f"run {record.id} continues run {parent.id}: apply that one first (corral apply {parent.id})"
    return None


# -- --branch -----------------------------------------------------------------------------------------


def _git(repo: Path, *args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
    """Run git in ``repo`` with the user's own configuration (identity, safe.directory); raise UsageError."""
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise UsageError(f"git {args[0]} did not finish in {_GIT_TIMEOUT_S:.0f}s in {clean(repo)}") from None
    if done.returncode != 0:
        raise UsageError(f"git {args[0]} failed in {clean(repo)}: {clean(done.stderr.strip())}")
    return done.stdout.strip()


def _git_ok(repo: Path, *args: str) -> bool:
    """Whether a git query succeeds in ``repo`` (its output is not needed)."""
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, timeout=_GIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise UsageError(f"git {args[0]} did not finish in {_GIT_TIMEOUT_S:.0f}s in {clean(repo)}") from None
    return done.returncode == 0


def _has_identity(repo: Path) -> bool:
    return _git_ok(repo, "var", "GIT_COMMITTER_IDENT")


def check_new_branch(repo: Path, branch: str) -> None:
    """``branch`` can be created in ``repo``: a git repository with a commit, a valid name, not taken yet.

    Checked before a run starts (``corral run --branch``), so a bad name fails in a second, not after the run.
    """
    if not _git_ok(repo, "rev-parse", "--verify", "--quiet", "HEAD^{commit}"):
        raise UsageError(
            f"--branch needs a git repository with a commit: {clean(repo)}",
            hint="--branch commits the patch on top of the repository's HEAD",
        )
    if not _git_ok(repo, "check-ref-format", "--branch", branch):
        raise UsageError(f"--branch: {clean(branch)!r} is not a valid branch name")
    if _git_ok(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"):
        raise UsageError(f"--branch: branch {clean(branch)!r} already exists", hint="name a new branch")


def commit_to_branch(repo: Path, patch: str, branch: str, *, message: str) -> str:
    """Commit ``patch`` on top of HEAD as the new branch ``branch``; returns the commit's id.

    The checkout, the index and HEAD stay as they are: the tree is built in a throwaway index, and
    the branch is created only if it does not exist (``update-ref`` with an empty old value), so an
    existing branch is never overwritten, even by a race. The commit's author is the repository's
    configured user, or "corral" where none is configured.
    """
    _git(repo, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    ref = _git(repo, "check-ref-format", "--branch", branch)
    prefix = _git(repo, "rev-parse", "--show-prefix")
    with tempfile.TemporaryDirectory(prefix="corral-branch-") as tmp:
        index = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        _git(repo, "read-tree", "HEAD", env=index)
        try:
            _git(repo, "apply", "--cached", *([f"--directory={prefix}"] if prefix else []), "-", env=index, stdin=patch)
        except UsageError as err:
            raise UsageError(
                f"the patch does not apply to HEAD of {clean(repo)}: {err.message}",
                hint="--branch commits onto HEAD; the run started from uncommitted changes it does not hold",
            ) from None
        tree = _git(repo, "write-tree", env=index)
    identity = {} if _has_identity(repo) else _FALLBACK_IDENTITY
    commit = _git(repo, "commit-tree", tree, "-p", "HEAD", "-F", "-", env=identity, stdin=message)
    try:
        _git(repo, "update-ref", "-m", "corral run --branch", f"refs/heads/{ref}", commit, "")
    except UsageError:
        raise UsageError(f"branch {clean(ref)!r} already exists in {clean(repo)}", hint="name a new branch") from None
    return commit
