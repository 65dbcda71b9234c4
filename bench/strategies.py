"""Raw ways to make a workspace from a repo (cp, reflink, hardlinks, overlayfs, git worktree, tar), timed."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.support import (
    CHANGED_FILES,
    GIT_ENV,
    BenchError,
    Phases,
    Result,
    Setup,
    changed_paths,
    check_patch,
    now_ms,
    progress,
    repeat,
    run_checked,
    tree_files,
)


@dataclass(frozen=True)
class Strategy:
    """One way to make a workspace from a repo: ``prepare`` is timed, ``cleanup`` is a separate phase."""

    id: str
    label: str
    prepare: Callable[[Path, Path], None]
    cleanup: Callable[[Path, Path], None]
    root: Callable[[Path], Path] = lambda target: target
    note: str | None = None


def _cp(*flags: str) -> Callable[[Path, Path], None]:
    def prepare(repo: Path, target: Path) -> None:
        run_checked(["cp", *flags, "--", str(repo), str(target)])

    return prepare


def _remove(repo: Path, target: Path) -> None:
    run_checked(["rm", "-rf", "--", str(target)])


def _tar_pipe(repo: Path, target: Path) -> None:
    target.mkdir()
    with subprocess.Popen(["tar", "-C", str(repo), "-cf", "-", "."], stdout=subprocess.PIPE) as pack:
        unpack = subprocess.run(["tar", "-C", str(target), "-xf", "-"], stdin=pack.stdout, capture_output=True)
    if pack.returncode != 0 or unpack.returncode != 0:
        raise BenchError(f"tar pipe failed: {unpack.stderr.decode(errors='replace').strip()[:300]}")


_libc = ctypes.CDLL(None, use_errno=True)


def _overlay_mount(repo: Path, target: Path) -> None:
    """The mount(2) call itself, not mount(8): a backend would make it without starting a process."""
    upper, work, merged = target / "upper", target / "work", target / "merged"
    for directory in (upper, work, merged):
        directory.mkdir(parents=True)
    options = f"lowerdir={repo},upperdir={upper},workdir={work}".encode()
    if _libc.mount(b"overlay", bytes(merged), b"overlay", 0, options) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"mount -t overlay: {os.strerror(error)}")


def _overlay_cleanup(repo: Path, target: Path) -> None:
    _libc.umount2(bytes(target / "merged"), 0)  # fails harmlessly when the mount never happened
    _remove(repo, target)


def _worktree_add(repo: Path, target: Path) -> None:
    run_checked(["git", "-C", str(repo), "worktree", "add", "--quiet", "--detach", str(target), "HEAD"], env=GIT_ENV)


def _worktree_remove(repo: Path, target: Path) -> None:
    with contextlib.suppress(BenchError):
        run_checked(["git", "-C", str(repo), "worktree", "remove", "--force", str(target)], env=GIT_ENV)
    _remove(repo, target)
    run_checked(["git", "-C", str(repo), "worktree", "prune"], env=GIT_ENV)


STRATEGIES = (
    Strategy("workspace/cp_a", "cp -a", _cp("-a"), _remove),
    Strategy(
        "workspace/cp_a_reflink",
        "cp -a --reflink=auto  (what prepare_workspace runs)",
        _cp("-a", "--reflink=auto"),
        _remove,
        note="ext4 has no reflinks: this is a plain copy there; on btrfs/xfs it shares extents",
    ),
    Strategy(
        "workspace/cp_al",
        "hardlink farm (cp -al)",
        _cp("-al"),
        _remove,
        note="shares inodes with the repo: an in-place write in the workspace changes the repo",
    ),
    Strategy(
        "workspace/overlayfs",
        "overlayfs mount on the host (mkdir x3 + mount(2))",
        _overlay_mount,
        _overlay_cleanup,
        root=lambda target: target / "merged",
        note="needs CAP_SYS_ADMIN (root, or inside a user namespace); the upper dir is the diff",
    ),
    Strategy(
        "workspace/git_worktree",
        "git worktree add --detach",
        _worktree_add,
        _worktree_remove,
        note="committed files only, no .git copy; writes .git/worktrees/ in the repo",
    ),
    Strategy("workspace/tar_pipe", "tar -c | tar -x", _tar_pipe, _remove),
)


def measure_strategies(setup: Setup) -> list[Result]:
    rows = []
    expected = tree_files(setup.large.path)
    for strategy in STRATEGIES:
        progress(strategy.id)
        checked = False

        def trial(strategy: Strategy = strategy) -> Phases:
            nonlocal checked
            target = setup.fresh(strategy.id.rsplit("/", 1)[1])
            start = now_ms()
            try:
                strategy.prepare(setup.large.path, target)
                ready = now_ms()
                if not checked:  # once, untimed: the workspace holds exactly the repo's files
                    found = tree_files(strategy.root(target))
                    if found != expected:
                        extra, missing = sorted(found - expected)[:5], sorted(expected - found)[:5]
                        raise BenchError(f"{strategy.label} made a different tree: extra {extra}, missing {missing}")
                    checked = True
            finally:
                cleaning = now_ms()
                strategy.cleanup(setup.large.path, target)
            return {"total": ready - start, "cleanup": now_ms() - cleaning}

        result = Result(strategy.id, strategy.label, note=strategy.note)
        rows.append(repeat(result, trial, iterations=setup.workspace_iterations, warmup=1))
    return rows


def measure_git_diff_peer(setup: Setup) -> Result:
    """Plain ``git diff`` in a checkout with the same three edits: what git alone needs to find them."""
    progress("diff/git_diff")
    result = Result("diff/git_diff", f"peer: git diff in a plain checkout, {CHANGED_FILES} files changed")
    checkout = setup.fresh("checkout")
    try:
        run_checked(["cp", "-a", "--", str(setup.large.path), str(checkout)])
        # The copy has new inodes and ctimes: refresh the index once so git's stat cache is warm.
        run_checked(["git", "-C", str(checkout), "update-index", "-q", "--refresh"], env=GIT_ENV)
        for path in changed_paths(setup.large):
            with (checkout / path).open("ab") as handle:
                handle.write(b"changed by the benchmark\n")

        def trial() -> Phases:
            start = now_ms()
            patch = run_checked(["git", "-C", str(checkout), "diff", "--no-color", "--no-ext-diff"], env=GIT_ENV)
            elapsed = now_ms() - start
            check_patch(patch, changed_paths(setup.large), made_by="git diff")
            return {"total": elapsed}

        return repeat(result, trial, iterations=setup.workspace_iterations, warmup=1)
    except BenchError as exc:
        result.status, result.reason = "failed", str(exc)
        return result
    finally:
        shutil.rmtree(checkout, ignore_errors=True)


def measure_file_creation(setup: Setup) -> Result:
    """The floor of any strategy that materializes files: create the repo's directories and empty files."""
    progress("workspace/create_files_floor")
    relative = [str(path.relative_to(setup.large.path)) for path in setup.large.path.glob("pkg*/**/file*")]
    directories = sorted({str(Path(path).parent) for path in relative})

    def trial() -> Phases:
        target = setup.fresh("touch")
        start = now_ms()
        for directory in directories:
            (target / directory).mkdir(parents=True)
        for path in relative:
            os.close(os.open(target / path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        ready = now_ms()
        _remove(setup.large.path, target)
        return {"total": ready - start, "cleanup": now_ms() - ready}

    label = f"floor: mkdir {len(directories)} dirs + create {len(relative)} empty files (Python os.open)"
    note = "no data, no .git: what creating the inodes alone costs on this filesystem"
    return repeat(
        Result("workspace/create_files_floor", label, note=note), trial, iterations=setup.workspace_iterations, warmup=1
    )
