"""Copy-on-write workspaces: an overlayfs over an idmapped, read-only view of the repo, and its exact diff."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import stat
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from corral.errors import SandboxError
from corral.sandbox.bubblewrap.syscalls import check, libc
from corral.sandbox.git import init_bare, run_git
from corral.sandbox.proc import run_process
from corral.sandbox.workspace import (
    BASELINE_EXCLUDES,
    SCRATCH_DIRNAME,
    leave_out_environments,
    left_out_note,
    repo_excludes,
    repo_tracked,
    stage_files,
    tracked_left_out,
    untracked_files,
)

logger = logging.getLogger("corral.sandbox")

_MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_REC, _MS_SHARED = 0x2, 0x4, 0x1000, 0x4000, 1 << 20
_MNT_DETACH, _UMOUNT_NOFOLLOW = 0x2, 0x8
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442  # x86_64 and aarch64 share these
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_OPEN_TREE_CLONE, _OPEN_TREE_CLOEXEC, _AT_EMPTY_PATH = 0x1, 0o2000000, 0x1000
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID, _MOUNT_ATTR_NODEV, _MOUNT_ATTR_IDMAP = 0x1, 0x2, 0x4, 0x100000
_CLONE_NEWUSER = 0x10000000
_OPAQUE_XATTR = "trusted.overlay.opaque"
_UNSAFE_IN_OPTIONS = frozenset(",:\\\n\t ")  # mount(2) option strings cannot carry these in a path
_PATHSPEC_BUDGET = 100_000  # bytes of pathspecs on one command line before diffing falls back to the whole tree
_ARGV_BUDGET = 100_000  # bytes of paths on one cp command line
_TREE_TIMEOUT = 600.0  # for find, cp and chown over a whole repository
_USERNS_CACHE_SIZE = 64


class _MountAttr(ctypes.Structure):
    """struct mount_attr."""

    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


@dataclass(frozen=True)
class IdShift:
    """Files owned by ``host_uid:host_gid`` on disk appear owned by ``sandbox_uid:sandbox_gid``."""

    host_uid: int
    host_gid: int
    sandbox_uid: int
    sandbox_gid: int


_userns_fds: dict[IdShift, int] = {}


def _idmap_userns(shift: IdShift) -> int:
    """A user namespace fd describing ``shift``, made once per shift by a short-lived forked child."""
    if shift in _userns_fds:
        return _userns_fds[shift]
    lib = libc()
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only unshares, reports and waits
        try:
            os.close(ready_r)
            os.close(done_w)
            os.write(ready_w, b"1" if lib.unshare(_CLONE_NEWUSER) == 0 else b"0")
            os.read(done_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise OSError(0, "cannot create a user namespace for the idmapped mount")
        Path(f"/proc/{pid}/uid_map").write_text(f"{shift.host_uid} {shift.sandbox_uid} 1\n")
        Path(f"/proc/{pid}/setgroups").write_text("deny")
        Path(f"/proc/{pid}/gid_map").write_text(f"{shift.host_gid} {shift.sandbox_gid} 1\n")
        fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(done_w)
        os.close(ready_r)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    if len(_userns_fds) >= _USERNS_CACHE_SIZE:
        os.close(_userns_fds.pop(next(iter(_userns_fds))))
    _userns_fds[shift] = fd
    return fd


def _idmapped_view(source: Path, shift: IdShift, *, read_only: bool = True) -> int:
    """A detached, idmapped (by default read-only) clone of the mount at ``source``, as an fd."""
    lib = libc()
    fd = check(
        lib.syscall(_SYS_OPEN_TREE, -100, os.fsencode(source), _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC), "open_tree"
    )
    try:
        flags = _MOUNT_ATTR_IDMAP | _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV | (_MOUNT_ATTR_RDONLY if read_only else 0)
        attrs = _MountAttr(flags, 0, 0, _idmap_userns(shift))
        check(
            lib.syscall(_SYS_MOUNT_SETATTR, fd, b"", _AT_EMPTY_PATH, ctypes.byref(attrs), ctypes.sizeof(attrs)),
            "mount_setattr(MOUNT_ATTR_IDMAP)",
        )
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass(frozen=True)
class OverlayPaths:
    """The layers of one workspace: the repo (read-only lower), changes (upper), overlay's scratch and the view.

    ``owned`` holds copies of the lower's entries that belong to someone other than its owner, given
    to the sandbox user: a read-only layer between the lower and the changes, present only when the
    lower has such entries (see ``copy_foreign``).
    """

    lower: Path
    upper: Path
    work: Path
    merged: Path
    owned: Path | None = None

    def usable(self) -> bool:
        """Whether the paths can go into an overlay mount's option string and do not overlap."""
        paths = [self.upper, self.work, self.merged, *([self.owned] if self.owned is not None else [])]
        if any(set(str(path)) & _UNSAFE_IN_OPTIONS for path in paths):
            return False
        return not any(path.is_relative_to(self.lower) for path in paths)


def prepare_layers(paths: OverlayPaths, shift: IdShift) -> None:
    """Make empty upper/work dirs (a pooled sandbox has them already) and the mount point; the repo's own
    ``.corral`` is hidden by a whiteout."""
    for directory in (paths.upper, paths.work):
        directory.mkdir(parents=True, exist_ok=True)
    paths.merged.mkdir(parents=True)
    lower_root = paths.lower.stat()
    os.chmod(paths.upper, stat.S_IMODE(lower_root.st_mode))
    os.chown(paths.upper, shift.sandbox_uid, shift.sandbox_gid)  # the workspace root belongs to the sandbox
    if os.path.lexists(paths.lower / SCRATCH_DIRNAME):  # it may be a corral store: never show it inside
        os.mknod(paths.upper / SCRATCH_DIRNAME, stat.S_IFCHR | 0o600, os.makedev(0, 0))


def mount_overlay(paths: OverlayPaths, shift: IdShift) -> None:
    """Mount the workspace view at ``paths.merged``; the repo is reached only through a read-only idmapped clone."""
    lower_fd = _idmapped_view(paths.lower, shift)
    lowers = f"/proc/self/fd/{lower_fd}"
    if paths.owned is not None and paths.owned.is_dir():  # above the repo: hides its foreign-owned entries
        lowers = f"{paths.owned}:{lowers}"
    try:
        options = (
            f"lowerdir={lowers},upperdir={paths.upper},workdir={paths.work},redirect_dir=off,metacopy=off,index=off"
        )
        check(
            libc().mount(b"overlay", os.fsencode(paths.merged), b"overlay", _MS_NOSUID | _MS_NODEV, options.encode()),
            "mount overlay",
        )
    finally:
        os.close(lower_fd)  # the overlay keeps its own private clone of the layer


def bind_idmapped(source: Path, target: Path, shift: IdShift) -> None:
    """Bind ``source`` writable at ``target`` with its owner shifted: a shared directory each sandbox uid may use."""
    fd = _idmapped_view(source, shift, read_only=False)
    try:
        check(
            libc().syscall(_SYS_MOVE_MOUNT, fd, b"", -100, os.fsencode(target), _MOVE_MOUNT_F_EMPTY_PATH),
            "move_mount",
        )
    finally:
        os.close(fd)


_SMALL_TREE = 2_000  # entries walked in-process before handing the walk to find(1)


def _foreign_in_small_tree(starts: Sequence[str], shift: IdShift) -> list[str] | None:
    """What ``foreign_entries`` finds, walked here when the tree is small (a subprocess would cost more
    than the walk); None once it has seen ``_SMALL_TREE`` entries."""
    found: list[str] = []
    pending = list(starts)
    seen = 0
    while pending:
        path = pending.pop()
        seen += 1
        if seen > _SMALL_TREE:
            return None
        info = os.lstat(path)
        if info.st_uid != shift.host_uid or info.st_gid != shift.host_gid:
            found.append(path)  # a foreign directory stands for its subtree
        elif stat.S_ISDIR(info.st_mode):
            pending.extend(os.path.join(path, name) for name in os.listdir(path))
    return found


async def foreign_entries(lower: Path, shift: IdShift) -> list[str]:
    """Repo-relative paths of the topmost entries not owned by ``shift.host_uid:host_gid``, sorted.

    The idmapped view shows only that owner as the sandbox user; anything else appears as the overflow
    id (nobody), which the sandbox user can neither write nor copy up (EOVERFLOW). A foreign
    directory stands for its whole subtree. The repo's own ``.corral`` is never looked at.
    """
    starts = [str(lower / name) for name in sorted(os.listdir(lower)) if name != SCRATCH_DIRNAME]
    if not starts:
        return []
    small = _foreign_in_small_tree(starts, shift)
    if small is not None:
        prefix = len(str(lower)) + 1
        return sorted(path[prefix:] for path in small)
    find = shutil.which("find") or "/usr/bin/find"
    owner = ["(", "!", "-uid", str(shift.host_uid), "-o", "!", "-gid", str(shift.host_gid), ")"]
    done = await run_process(
        [find, *starts, *owner, "-printf", "%p\\0", "-prune"],
        timeout=_TREE_TIMEOUT,
        purpose="while looking for files the repository's owner does not own",
    )
    prefix = len(os.fsencode(lower)) + 1
    return sorted(os.fsdecode(path[prefix:]) for path in done.stdout.split(b"\0") if path)


async def copy_foreign(paths: OverlayPaths, entries: Sequence[str], shift: IdShift) -> None:
    """Copy ``entries`` (and their parent directories) into ``paths.owned``, owned by the sandbox user.

    The copies keep modes, times and symlinks (reflinked where the filesystem can), so the view shows
    the same tree as the repo, only with every entry the sandbox's own. They sit in a read-only lower
    layer, not in the upper one: they are no change, and count neither in the diff nor against the
    disk limit.
    """
    owned = paths.owned
    if owned is None:
        raise SandboxError(f"no layer to copy the entries of {paths.lower} that another user owns into")
    owned.mkdir(mode=0o700)
    by_parent: dict[str, list[str]] = {}
    for entry in entries:
        parent, _, _ = entry.rpartition("/")
        by_parent.setdefault(parent, []).append(entry)
    made: list[str] = []  # parent directories made here, to be given the repo's times at the end
    for parent in by_parent:
        for depth in range(parent.count("/") + 1 if parent else 0):
            rel = "/".join(parent.split("/")[: depth + 1])
            if not (owned / rel).exists():
                (owned / rel).mkdir()
                shutil.copystat(paths.lower / rel, owned / rel, follow_symlinks=False)
                made.append(rel)
    cp = shutil.which("cp") or "/bin/cp"
    for parent, names in by_parent.items():
        for batch in _batches([str(paths.lower / name) for name in names]):
            await run_process(
                [cp, "-a", "--reflink=auto", "--", *batch, str(owned / parent)],
                timeout=_TREE_TIMEOUT,
                purpose="while copying files the repository's owner does not own",
            )
    chown = shutil.which("chown") or "/bin/chown"
    # -h: a copied symlink must not make chown change its target.
    await run_process(
        [chown, "-R", "-h", f"{shift.sandbox_uid}:{shift.sandbox_gid}", "--", str(owned)], timeout=_TREE_TIMEOUT
    )
    for rel in reversed(made):  # deepest first: setting a directory's times does not touch its parent's
        shutil.copystat(paths.lower / rel, owned / rel, follow_symlinks=False)


def _batches(args: Sequence[str]) -> list[list[str]]:
    """``args`` split into command lines of at most _ARGV_BUDGET bytes."""
    batches: list[list[str]] = [[]]
    size = 0
    for arg in args:
        if batches[-1] and size + len(arg) + 1 > _ARGV_BUDGET:
            batches.append([])
            size = 0
        batches[-1].append(arg)
        size += len(arg) + 1
    return batches


def mount_tmpfs(target: Path, *, size_mb: int, uid: int, gid: int) -> None:
    """A size-capped tmpfs owned by the sandbox user (its /tmp)."""
    options = f"size={size_mb}m,mode=1777,uid={uid},gid={gid}".encode()
    check(libc().mount(b"tmpfs", os.fsencode(target), b"tmpfs", _MS_NOSUID | _MS_NODEV, options), "mount tmpfs")


def bind_mount(source: Path, target: Path) -> None:
    """Bind ``source`` (with the mounts below it) at ``target``."""
    check(libc().mount(os.fsencode(source), os.fsencode(target), None, _MS_BIND | _MS_REC, None), "bind mount")


def make_shared(target: Path) -> None:
    """Make the mount at ``target`` shared: mounts made on it later reach its copies in sandboxes."""
    check(libc().mount(None, os.fsencode(target), None, _MS_SHARED, None), "make shared")


def mount_points() -> set[str]:
    """Every mount point in this mount namespace."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return set()
    return {_unescape(line.split(" ", 5)[4]) for line in lines}


def mount_points_under(path: Path, points: set[str] | None = None) -> list[str]:
    """Mount points at or below ``path``, deepest first."""
    top = str(path)
    prefix = top.rstrip("/") + "/"
    found = [
        point for point in (mount_points() if points is None else points) if point == top or point.startswith(prefix)
    ]
    return sorted(found, key=lambda point: point.count("/"), reverse=True)


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    if "\\" not in field:
        return field
    return bytes(field, "ascii").decode("unicode_escape").encode("latin-1").decode("utf-8", "surrogateescape")


_UNMOUNT_ROUNDS = 8


def unmount_top(path: Path) -> None:
    """Unmount the topmost mount at ``path`` only (detaching it if busy)."""
    lib, target = libc(), os.fsencode(path)
    if lib.umount2(target, _UMOUNT_NOFOLLOW) != 0:
        check(lib.umount2(target, _UMOUNT_NOFOLLOW | _MNT_DETACH), f"umount {path}")


def unmount_all(path: Path) -> None:
    """Unmount everything at or below ``path`` (detaching what is busy); raise if something stays."""
    lib = libc()
    points = mount_points_under(path)
    for _ in range(_UNMOUNT_ROUNDS):  # a path may hold mounts stacked on each other: one comes off per round
        if not points:
            return
        for point in points:
            target = os.fsencode(point)
            if lib.umount2(target, _UMOUNT_NOFOLLOW) != 0:
                check(lib.umount2(target, _UMOUNT_NOFOLLOW | _MNT_DETACH), f"umount {point}")
        points = mount_points_under(path)
    if points:
        raise SandboxError(f"could not unmount {', '.join(points)}")


# -- the diff --------------------------------------------------------------------------------


def changed_pathspecs(lower: Path, upper: Path) -> list[str]:
    """Workspace-relative paths that cover every difference between the repo and the view.

    Only the upper layer is walked: a file, symlink or whiteout there is a change; a directory that is
    opaque or new covers its whole subtree. A changed .gitignore or .gitattributes widens the set to
    its directory, because it can change how unchanged files there are treated.
    """
    specs: set[str] = set()
    pending = [""]
    while pending:
        rel = pending.pop()
        with os.scandir(upper / rel) as entries:
            for entry in entries:
                path = f"{rel}/{entry.name}" if rel else entry.name
                if not rel and entry.name in (".git", SCRATCH_DIRNAME):
                    continue  # never part of the diff
                if entry.name in (".gitignore", ".gitattributes"):
                    specs.add(rel or ".")
                if entry.is_dir(follow_symlinks=False):
                    lower_path = lower / path
                    opaque = _xattr(entry.path, _OPAQUE_XATTR) == b"y"
                    if opaque or not (lower_path.is_dir() and not lower_path.is_symlink()):
                        specs.add(path)
                    else:
                        pending.append(path)
                else:
                    specs.add(path)
    if "." in specs or sum(len(spec) + 1 for spec in specs) > _PATHSPEC_BUDGET:
        return ["."]
    # Drop paths inside a directory that is listed itself.
    ordered = sorted(specs)
    kept: list[str] = []
    for spec in ordered:
        if not kept or not spec.startswith(kept[-1] + "/"):
            kept.append(spec)
    return kept


def _xattr(path: str, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


async def _git_run(
    git_dir: Path,
    work_tree: Path,
    args: Sequence[str],
    *,
    index: Path,
    stdin: bytes | None = None,
    errors: str = "surrogateescape",
) -> str:
    env = {"GIT_INDEX_FILE": str(index)}
    return await run_git(
        git_dir,
        work_tree,
        args,
        env=env,
        stdin=stdin,
        literal_pathspecs=True,
        errors=errors,
        purpose="while diffing the workspace",
    )


async def overlay_diff(paths: OverlayPaths, git_dir: Path, *, notes: list[str] | None = None) -> str:
    """The same patch ``workspace_diff`` makes against a full baseline, computed from the changed paths only.

    The repo's version of the changed paths is staged into one throwaway index, the view's into another
    (starting from the first, so tracked files stay tracked whatever the ignore rules say now), and the
    two trees are diffed. Cost follows the size of the change, not of the repo. The repo's version
    holds what its index tracks, plus what no ignore rule or environment rule leaves out.
    """
    specs = changed_pathspecs(paths.lower, paths.upper)
    if not specs:
        return ""
    if not (git_dir / "HEAD").exists():
        await init_bare(git_dir, excludes=[*await repo_excludes(paths.lower), *BASELINE_EXCLUDES])
    token = uuid.uuid4().hex
    before, after = git_dir / f"index.before-{token}", git_dir / f"index.after-{token}"
    try:
        tracked = await repo_tracked(paths.lower, specs)
        listed = await untracked_files(git_dir, paths.lower, before, specs)
        kept, _ = leave_out_environments(listed, tracked)
        old_files = kept + tracked_left_out(paths.lower, tracked, kept)
        await stage_files(git_dir, paths.lower, before, "--add", old_files)
        old_tree = (await _git_run(git_dir, paths.lower, ["write-tree"], index=before)).strip()
        if before.exists():
            shutil.copyfile(before, after)
        listed = await untracked_files(git_dir, paths.merged, after, specs)
        new_files, venvs = leave_out_environments(listed, ())
        gone = {name for name in old_files if not _is_file_or_link(paths.merged / name)}
        kept_files = [name for name in old_files if name not in gone]
        await stage_files(git_dir, paths.merged, after, "--force-remove", sorted(gone))
        await stage_files(git_dir, paths.merged, after, "--add", kept_files + new_files)
        note = await left_out_note(git_dir, paths.merged, after, specs, venvs)
        if note:
            logger.info("%s: %s", paths.merged, note)
            if notes is not None:
                notes.append(note)
        new_tree = (await _git_run(git_dir, paths.merged, ["write-tree"], index=after)).strip()
        if new_tree == old_tree:
            return ""
        diff_args = ["diff", "--binary", "--no-color", "--no-ext-diff", "--no-renames", "--no-textconv"]
        return await _git_run(
            git_dir, paths.merged, [*diff_args, old_tree, new_tree, "--"], index=after, errors="replace"
        )
    finally:
        for leftover in (before, after):
            for name in (leftover, leftover.with_name(leftover.name + ".lock")):
                name.unlink(missing_ok=True)


def _is_file_or_link(path: Path) -> bool:
    try:
        mode = path.lstat().st_mode
    except OSError:
        return False
    return stat.S_ISREG(mode) or stat.S_ISLNK(mode)
