"""Workspace preparation and diffing shared by sandbox backends: copy a repo, snapshot it, diff against it."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import sys
import uuid
from collections.abc import Collection, Iterable, Sequence
from fnmatch import fnmatchcase
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from corral.errors import SandboxError
from corral.sandbox.git import git_binary, init_bare, read_repo, run_git
from corral.sandbox.proc import run_process

logger = logging.getLogger("corral.sandbox")

WORKSPACE_DIRNAME = "workspace"
BASELINE_DIRNAME = "baseline.git"
SCRATCH_DIRNAME = ".corral"
"""The workspace-local scratch dir (spilled tool outputs); never part of the baseline or the diff."""

ENVIRONMENT_DIRS = ("node_modules/", ".tox/", ".nox/", ".eggs/", "*.egg-info/")
"""Installed environments: left out of every patch (unless tracked), and named when they are."""

ENVIRONMENT_EXCLUDES = (
    *ENVIRONMENT_DIRS,
    "__pycache__/",
    "*.py[cod]",
    ".pytest_cache/",
    ".mypy_cache/",
    ".ruff_cache/",
)
"""What installing and running code leaves in a workspace: never part of a patch unless the repo tracks it.

A virtualenv, whatever its name, is left out too: any untracked directory holding ``pyvenv.cfg``
(no ignore pattern can say that; see ``leave_out_environments``)."""

VENV_MARKER = "pyvenv.cfg"

BASELINE_EXCLUDES = ("/.git/", f"/{SCRATCH_DIRNAME}/", *ENVIRONMENT_EXCLUDES)
"""Never snapshotted or diffed, on top of what the repo's own .gitignore files and .git/info/exclude ignore."""

_COPY_TIMEOUT = 600.0
_NOTE_ENTRIES = 10  # directories named in a "left out of the patch" note
# Fixed identity and date make the baseline commit reproducible and independent of the host's git config.
_BASELINE_IDENTITY = {
    "GIT_AUTHOR_NAME": "corral",
    "GIT_AUTHOR_EMAIL": "corral@localhost",
    "GIT_AUTHOR_DATE": "2000-01-01T00:00:00+0000",
    "GIT_COMMITTER_NAME": "corral",
    "GIT_COMMITTER_EMAIL": "corral@localhost",
    "GIT_COMMITTER_DATE": "2000-01-01T00:00:00+0000",
}


class WorkspaceSnapshot(BaseModel):
    """Where a workspace lives and the baseline commit its diff is taken against."""

    model_config = ConfigDict(frozen=True)

    workspace: Path
    git_dir: Path
    commit: str


async def _git(git_dir: Path, workspace: Path, *args: str, env: dict[str, str] | None = None) -> str:
    return await run_git(git_dir, workspace, args, env=env)


async def copy_tree(repo: Path, workspace: Path) -> None:
    """Copy the repo's contents (minus its own .corral dir) into workspace, keeping symlinks and modes."""
    entries = _top_level_entries(repo, workspace)
    cp = shutil.which("cp")
    if entries and sys.platform.startswith("linux") and cp is not None:
        # GNU cp: reflinks make the copy nearly free on btrfs/xfs; -a keeps symlinks, modes and times.
        sources = [str(repo / entry) for entry in entries]
        await run_process([cp, "-a", "--reflink=auto", "--", *sources, str(workspace)], timeout=_COPY_TIMEOUT)
        return
    for entry in entries:
        source, target = repo / entry, workspace / entry
        if source.is_dir() and not source.is_symlink():
            shutil.copytree(source, target, symlinks=True)
        else:
            shutil.copy2(source, target, follow_symlinks=False)


def _top_level_entries(repo: Path, workspace: Path) -> list[str]:
    workspace.mkdir()
    return sorted(entry for entry in os.listdir(repo) if entry != SCRATCH_DIRNAME)


async def prepare_workspace(repo: Path, run_dir: Path) -> WorkspaceSnapshot:
    """Copy ``repo`` into ``run_dir/workspace`` and commit its starting state to ``run_dir/baseline.git``.

    The repo is only read. Its own ``.git`` is copied so agents can use git; the baseline lives in a
    separate git dir so that nothing the agent does to the workspace's ``.git`` affects the diff.
    Files the repo ignores (``.gitignore`` files, ``.git/info/exclude``) or that are environments
    (BASELINE_EXCLUDES, virtualenvs) are in neither the baseline nor later diffs, unless the repo
    tracks them. Leftovers of an earlier attempt in the same ``run_dir`` are replaced.
    """
    git_binary()
    repo, workspace, git_dir = check_paths(Path(repo), Path(run_dir))
    for leftover in (workspace, git_dir):
        # Creation runs at least once (a durable step): a crash can leave a half-made workspace behind.
        if _lexists(leftover):
            logger.info("replacing %s left by an earlier attempt to create this sandbox", leftover)
            await remove_tree(leftover)
    try:
        await copy_tree(repo, workspace)
        await init_bare(git_dir, excludes=[*await repo_excludes(repo), *BASELINE_EXCLUDES])
        index = git_dir / "index"
        tracked = await repo_tracked(repo)
        kept, _venvs = leave_out_environments(await untracked_files(git_dir, workspace, index), tracked)
        await stage_files(git_dir, workspace, index, "--add", kept + tracked_left_out(workspace, tracked, kept))
        await _git(
            git_dir,
            workspace,
            "commit",
            "--quiet",
            "--allow-empty",
            "--no-verify",
            "--message=corral baseline",
            env=_BASELINE_IDENTITY,
        )
        commit = (await _git(git_dir, workspace, "rev-parse", "HEAD")).strip()
    except BaseException:
        await remove_tree(workspace)
        await remove_tree(git_dir)
        raise
    return WorkspaceSnapshot(workspace=workspace, git_dir=git_dir, commit=commit)


def check_paths(repo: Path, run_dir: Path) -> tuple[Path, Path, Path]:
    """Validate the request's directories; return the real repo, workspace and baseline git dir paths."""
    if not repo.is_dir():
        raise SandboxError(f"repository to start from is not a directory: {repo}")
    repo = repo.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    run_dir = run_dir.resolve()
    if run_dir.is_relative_to(repo) and not run_dir.is_relative_to(repo / SCRATCH_DIRNAME):
        raise SandboxError(
            f"run_dir {run_dir} is inside the repository {repo}",
            hint=f"put run directories outside the repository or under its {SCRATCH_DIRNAME}/ directory",
        )
    return repo, run_dir / WORKSPACE_DIRNAME, run_dir / BASELINE_DIRNAME


async def workspace_diff(snapshot: WorkspaceSnapshot, *, notes: list[str] | None = None) -> str:
    """A git-style patch (a/ b/ prefixes, new/deleted files, mode changes, binary) against the baseline.

    The current tree is staged into a throwaway index, so the baseline git dir's own index and the
    workspace's ``.git`` are never touched and untracked new files show up as additions. What the
    baseline tracks stays in the diff; new files the repo ignores, or environments, stay out.
    """
    index = snapshot.git_dir / f"index.diff-{uuid.uuid4().hex}"
    # Starting from the baseline index keeps git's stat cache: unchanged files are not re-hashed.
    # copy2 keeps the index file's mtime, which git's racy-entry check compares file mtimes with:
    # a fresh mtime would let a same-size edit made in the baseline's second pass as unchanged.
    try:
        shutil.copy2(snapshot.git_dir / "index", index)
    except OSError as exc:
        raise SandboxError(f"the workspace baseline in {snapshot.git_dir} is unusable: {exc}") from exc
    env = {"GIT_INDEX_FILE": str(index)}
    try:
        await _git(snapshot.git_dir, snapshot.workspace, "add", "--update", "--", ".", env=env)
        listed = await untracked_files(snapshot.git_dir, snapshot.workspace, index)
        new_files, venvs = leave_out_environments(listed, ())
        await stage_files(snapshot.git_dir, snapshot.workspace, index, "--add", new_files)
        note = await left_out_note(snapshot.git_dir, snapshot.workspace, index, ["."], venvs)
        if note:
            logger.info("%s: %s", snapshot.workspace, note)
            if notes is not None:
                notes.append(note)
        return await _git(
            snapshot.git_dir,
            snapshot.workspace,
            "diff",
            "--cached",
            "--binary",
            "--no-color",
            "--no-ext-diff",
            "--no-renames",
            "--no-textconv",
            snapshot.commit,
            "--",
            env=env,
        )
    finally:
        for leftover in (index, index.with_name(index.name + ".lock")):
            leftover.unlink(missing_ok=True)


# -- what the patch leaves out -----------------------------------------------------------------


async def repo_excludes(repo: Path) -> list[str]:
    """The patterns of the repo's own ``.git/info/exclude`` (none when ``repo`` is not the top of a work tree).

    They are relative to the top of the work tree, which is the top of the workspace only then.
    """
    out = await read_repo(repo, ["rev-parse", "--show-prefix", "--git-path", "info/exclude"])
    if out is None:
        return []
    prefix, _, path = out.decode("utf-8", "surrogateescape").partition("\n")
    if prefix:
        return []
    try:
        return (repo / path.rstrip("\n")).read_text(errors="surrogateescape").splitlines()
    except OSError:
        return []


async def repo_tracked(repo: Path, specs: Sequence[str] = (".",)) -> set[str]:
    """Paths under ``specs`` (relative to ``repo``) that the repository's index tracks; none outside a repo."""
    out = await read_repo(repo, ["ls-files", "-z", "--cached", "--", *specs])
    if out is None:
        return set()
    names = out.decode("utf-8", "surrogateescape").split("\0")
    return {name for name in names if name and not name.startswith(f"{SCRATCH_DIRNAME}/")}


def leave_out_environments(untracked: Iterable[str], tracked: Collection[str]) -> tuple[list[str], dict[str, int]]:
    """``untracked`` without the files of virtualenvs, and those virtualenvs with how many files each lost.

    A virtualenv is a directory holding a ``pyvenv.cfg`` that is not in ``tracked``; a tracked file
    inside one is kept.
    """
    names = list(untracked)
    venvs: dict[str, int] = {}
    for name in names:
        parent, _, base = name.rpartition("/")
        if base == VENV_MARKER and parent and name not in tracked:
            venvs[parent] = 0
    if not venvs:
        return names, venvs
    kept: list[str] = []
    for name in names:
        parts = name.split("/")
        venv = next((top for top in ("/".join(parts[:i]) for i in range(1, len(parts))) if top in venvs), None)
        if venv is None or name in tracked:
            kept.append(name)
        else:
            venvs[venv] += 1
    return kept, venvs


def tracked_left_out(root: Path, tracked: Iterable[str], kept: Iterable[str]) -> list[str]:
    """Files ``root`` holds that are in ``tracked`` but not in ``kept``: what the rules left out but stays.

    Only a file or symlink below real directories can be staged (git refuses a path beyond a symlink).
    """
    kept_set = set(kept)
    return sorted(name for name in tracked if name not in kept_set and _stageable(root, name))


def _stageable(root: Path, name: str) -> bool:
    parts = name.split("/")
    for depth in range(1, len(parts)):
        try:
            if not stat.S_ISDIR((root / "/".join(parts[:depth])).lstat().st_mode):
                return False
        except OSError:
            return False
    try:
        mode = (root / name).lstat().st_mode
    except OSError:
        return False
    return stat.S_ISREG(mode) or stat.S_ISLNK(mode)


async def untracked_files(git_dir: Path, work_tree: Path, index: Path, specs: Sequence[str] = (".",)) -> list[str]:
    """Files under ``specs`` in ``work_tree`` that are not in ``index`` and not ignored, as ``git add -A`` sees them."""
    out = await run_git(
        git_dir,
        work_tree,
        ["ls-files", "-z", "--others", "--exclude-standard", "--", *specs],
        env={"GIT_INDEX_FILE": str(index)},
        literal_pathspecs=True,
        errors="surrogateescape",
        purpose="while diffing the workspace",
    )
    return [name.rstrip("/") for name in out.split("\0") if name]


async def stage_files(git_dir: Path, work_tree: Path, index: Path, flag: str, names: Sequence[str]) -> None:
    """``git update-index flag`` for ``names`` (``--add`` or ``--force-remove``) in ``index``."""
    if names:
        data = "\0".join(names).encode("utf-8", "surrogateescape") + b"\0"
        await run_git(
            git_dir,
            work_tree,
            ["update-index", flag, "-z", "--stdin"],
            env={"GIT_INDEX_FILE": str(index)},
            stdin=data,
            purpose="while diffing the workspace",
        )


async def left_out_note(
    git_dir: Path, work_tree: Path, index: Path, specs: Sequence[str], venvs: dict[str, int]
) -> str:
    """``left out of the patch: .venv/ (749 files), node_modules/``: the environments a diff did not include.

    Names the ENVIRONMENT_DIRS under ``specs`` (git does not look inside them) and the virtualenvs
    ``leave_out_environments`` found; caches are too many and too dull to name.
    """
    patterns = [arg for pattern in ENVIRONMENT_DIRS for arg in ("-x", pattern)]
    out = await run_git(
        git_dir,
        work_tree,
        ["ls-files", "-z", "--others", "--ignored", "--directory", "--no-empty-directory", *patterns, "--", *specs],
        env={"GIT_INDEX_FILE": str(index)},
        literal_pathspecs=True,
        errors="surrogateescape",
        purpose="while diffing the workspace",
    )
    dirs: list[str] = []
    for name in sorted(name for name in out.split("\0") if name.endswith("/")):
        if not any(name.startswith(f"{venv}/") for venv in venvs):  # a venv's insides are the venv's
            dirs += _environment_dirs(work_tree, name.rstrip("/"))
    parts = [f"{venv}/ ({count} files)" for venv, count in sorted(venvs.items())] + [f"{name}/" for name in dirs]
    if not parts:
        return ""
    shown = ", ".join(parts[:_NOTE_ENTRIES])
    more = f" and {len(parts) - _NOTE_ENTRIES} more" if len(parts) > _NOTE_ENTRIES else ""
    return f"left out of the patch: {shown}{more}"


def _environment_dirs(work_tree: Path, name: str) -> list[str]:
    """``name`` if it is one of ENVIRONMENT_DIRS, else those inside it.

    git names a new directory holding nothing but ignored entries (``web/`` for ``web/node_modules/``)
    instead of what it holds; only such directories are walked, and never into an environment.
    """
    if _is_environment(name.rpartition("/")[2]):
        return [name]
    found: list[str] = []
    for dirpath, dirnames, _filenames in os.walk(work_tree / name):
        dirnames.sort()
        for child in list(dirnames):
            if _is_environment(child):
                found.append(Path(dirpath, child).relative_to(work_tree).as_posix())
                dirnames.remove(child)
    return found


def _is_environment(dirname: str) -> bool:
    return any(fnmatchcase(dirname, pattern.rstrip("/")) for pattern in ENVIRONMENT_DIRS)


async def remove_tree(path: Path) -> None:
    """Delete a directory tree even if the agent made parts of it read-only; a missing path is fine."""
    if not _lexists(path):
        return
    chmod, rm = shutil.which("chmod"), shutil.which("rm")
    if chmod is None or rm is None or _is_file_or_link(path):
        remove_now(path)
        return
    # Subprocesses keep a large tree's removal off the event loop. chmod -R ignores symlinks it meets.
    with contextlib.suppress(SandboxError):
        await run_process([chmod, "-R", "u+rwX", "--", str(path)], timeout=_COPY_TIMEOUT)
    await run_process([rm, "-rf", "--", str(path)], timeout=_COPY_TIMEOUT)


def _lexists(path: Path) -> bool:
    return os.path.lexists(path)


def _is_file_or_link(path: Path) -> bool:
    return path.is_symlink() or not path.is_dir()


def remove_now(path: Path) -> None:
    """Delete a file or tree inline (no subprocess), making read-only directories writable first."""
    if _is_file_or_link(path):
        path.unlink()
        return
    _make_owner_writable(path)
    # Directories are fixed before os.walk descends into them, so unreadable ones are reached too.
    for dirpath, dirnames, _filenames in os.walk(path):
        for name in dirnames:
            _make_owner_writable(Path(dirpath, name))
    try:
        shutil.rmtree(path)
    except OSError as exc:
        raise SandboxError(f"could not remove {path}: {exc}") from exc


def _make_owner_writable(directory: Path) -> None:
    with contextlib.suppress(OSError):
        mode = os.lstat(directory).st_mode
        if stat.S_ISDIR(mode):
            os.chmod(directory, stat.S_IMODE(mode) | stat.S_IRWXU)


def match_files(paths: Iterable[str], pattern: str) -> list[str]:
    """The posix paths matching a glob: ``*``/``?``/``[..]`` stay within one segment, ``**`` spans any.

    A pattern without ``**`` matches only at its own depth, as ``pathlib.Path.glob`` does.
    """
    segments: list[str] = []
    for segment in pattern.split("/"):
        # Repeated ** are one **; collapsing them keeps matching from going combinatorial.
        if segment not in ("", ".") and not (segment == "**" and segments[-1:] == ["**"]):
            segments.append(segment)
    return [path for path in paths if _match(tuple(segments or ["**"]), tuple(path.split("/")))]


def _match(segments: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    if not segments:
        return not parts
    head, rest = segments[0], segments[1:]
    if head == "**":
        return any(_match(rest, parts[skip:]) for skip in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], head) and _match(rest, parts[1:])
