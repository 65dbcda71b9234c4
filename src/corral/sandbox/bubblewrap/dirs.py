"""Where a bubblewrap sandbox keeps its state on the host, and how it is set up, re-mounted and torn down."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from corral.errors import SandboxError
from corral.sandbox.bubblewrap import overlay
from corral.sandbox.bubblewrap.diskimage import loop_devices_for, mount_image, wait_detached
from corral.sandbox.bubblewrap.identity import REGISTRY_DIR, release_uid, runs_as_root
from corral.sandbox.bubblewrap.limits import SandboxCgroup, cgroup_support
from corral.sandbox.bubblewrap.overlay import IdShift, OverlayPaths
from corral.sandbox.workspace import BASELINE_DIRNAME, WORKSPACE_DIRNAME, remove_now, remove_tree

logger = logging.getLogger("corral.sandbox")

STATE_DIRNAME = "sandbox"
"""``run_dir/sandbox``: overlay layers, the sandbox's home, and (unprivileged) its /tmp."""
PORTAL_ROOT = Path(os.environ.get("CORRAL_SANDBOX_PORTAL_DIR", "/run/corral/sandboxes"))
"""When corral runs as root, ``PORTAL_ROOT/<id>`` (mode 0700, owned by the sandbox uid) holds binds of the
sandbox's directories: bwrap runs as the sandbox uid, which cannot traverse a private run dir's parents."""
DISK_ROOT = Path(os.environ.get("CORRAL_SANDBOX_DISK_DIR", "/var/lib/corral/sandbox-disks"))
"""Sparse ext4 images holding each sandbox's changes and home (root only); removed by destroy."""
PACKAGE_CACHE_SUBDIRS = ("pip", "npm", "uv")
_QUICK_REMOVE_ENTRIES = 2_000  # trees smaller than this are removed inline, larger ones by `rm -rf`


CGROUP_PREFIX = "sandbox-"


def sandbox_id(run_dir: Path) -> str:
    return hashlib.sha256(os.fsencode(run_dir)).hexdigest()[:16]


# Where a sandbox's host-wide pieces live, by its id: SandboxDirs and the sweep (which knows only ids) share these.
def image_path(ident: str) -> Path:
    return DISK_ROOT / f"{ident}.img"


def image_owner_path(ident: str) -> Path:
    return DISK_ROOT / f"{ident}.owner"


def portal_path(ident: str) -> Path:
    return PORTAL_ROOT / ident


def package_cache_root() -> Path:
    """The one package cache of the user corral runs as (``$CORRAL_PACKAGE_CACHE_DIR`` overrides it)."""
    configured = os.environ.get("CORRAL_PACKAGE_CACHE_DIR")
    if configured:
        return Path(configured).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base, "corral", "packages").absolute()


POOL_DIRNAME = ".sandbox-pool"
"""Beside the run dirs (same filesystem: a slot's state directory is renamed into a run dir); each slot is
prepared in a holder directory of its own there, ``<holder>/run``."""


def lock_path(run_dir: Path) -> Path:
    return run_dir / STATE_DIRNAME / "in-use.lock"


def cgroup_for(ident: str) -> SandboxCgroup | None:
    support = cgroup_support()
    return SandboxCgroup(support, CGROUP_PREFIX + ident) if support else None


@dataclass(frozen=True)
class SandboxDirs:
    """Every host path of one sandbox."""

    run_dir: Path
    privileged: bool
    ident: str | None = None
    """The sandbox's id when it is not its run dir's (a pooled sandbox keeps the id it was prepared under)."""

    @classmethod
    def of(cls, run_dir: Path, *, privileged: bool) -> SandboxDirs:
        """The dirs of an existing sandbox: its id as its identity file records it."""
        return cls(run_dir, privileged=privileged, ident=read_identity_id(run_dir))

    @property
    def id(self) -> str:
        return self.ident or sandbox_id(self.run_dir)

    @property
    def workspace(self) -> Path:
        return self.run_dir / WORKSPACE_DIRNAME

    @property
    def git_dir(self) -> Path:
        return self.run_dir / BASELINE_DIRNAME

    @property
    def state(self) -> Path:
        return self.run_dir / STATE_DIRNAME

    @property
    def disk(self) -> Path:
        """Holds the overlay's upper and work dirs and the home: the mount point of the disk image, if any."""
        return self.state / "disk"

    @property
    def image(self) -> Path:
        """The disk image: outside the run dir, so that tools walking a run dir do not read 10 GB of holes."""
        return image_path(self.id)

    @property
    def image_owner(self) -> Path:
        """Names the run dir an image belongs to, so a sweep can tell a resumable image from a leftover."""
        return image_owner_path(self.id)

    @property
    def home(self) -> Path:
        return self.disk / "home"

    @property
    def pending_workspace(self) -> Path:
        """A pooled sandbox's /workspace until it is handed out: empty, under a shared mount in the portal."""
        return self.state / "pending-workspace"

    @property
    def identity_file(self) -> Path:
        return self.state / "identity.json"

    @property
    def lock(self) -> Path:
        """Share-locked by every process that has the sandbox open; a sweep leaves a locked sandbox alone."""
        return lock_path(self.run_dir)

    @property
    def portal(self) -> Path | None:
        return portal_path(self.id) if self.privileged else None

    def _visible(self, name: str, fallback: Path) -> Path:
        return self.portal / name if self.portal is not None else fallback

    @property
    def tmp(self) -> Path:
        """The sandbox's /tmp: a tmpfs in the portal, or (unprivileged) a plain directory."""
        return self._visible("tmp", self.state / "tmp")

    @property
    def bind_home(self) -> Path:
        """The path bwrap binds as the sandbox's home."""
        return self._visible("home", self.home)

    @property
    def bind_workspace(self) -> Path:
        return self._visible("workspace", self.workspace)

    def bind_package_cache(self) -> Path:
        """The path bwrap binds as the package cache: in the portal a view made for this sandbox's uid."""
        return self.portal / "package-cache" if self.portal is not None else package_cache_root()

    def bind_mount(self, index: int, path: str) -> Path:
        """The path bwrap binds as the profile's ``index``-th mount (``path`` on the host)."""
        return self.portal / "mounts" / str(index) if self.portal is not None else Path(path)

    def package_cache_layers(self) -> OverlayPaths:
        """A read-only cache as a copy-on-write overlay (root only): what the sandbox writes stays its own."""
        assert self.portal is not None
        return OverlayPaths(
            lower=package_cache_root(),
            upper=self.disk / "package-cache-upper",
            work=self.disk / "package-cache-work",
            merged=self.portal / "package-cache",
        )

    def layers(self, repo: Path) -> OverlayPaths:
        return OverlayPaths(
            lower=repo,
            upper=self.disk / "upper",
            work=self.disk / "work",
            merged=self.workspace,
            owned=self.state / "owned",  # not on the disk image: these copies are not the agent's usage
        )

    def cgroup(self) -> SandboxCgroup | None:
        return cgroup_for(self.id)


def hold(dirs: SandboxDirs) -> int:
    """Take a shared lock on the sandbox for as long as this process has it open; returns the fd to close.

    The kernel drops the lock when the process dies, however it dies: that is how a sweep tells a
    sandbox some process is using (or destroying) from one whose process is gone.
    """
    fd = os.open(dirs.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except BaseException:
        os.close(fd)
        raise
    return fd


def in_use(run_dir: Path) -> bool:
    """Whether a live process holds the sandbox of ``run_dir`` open (see ``hold``).

    The probe takes the lock exclusively for an instant, so two probes at once would each take the
    other for a user: call it under ``registry_lock()``, as the sweep does.
    """
    try:
        fd = os.open(lock_path(run_dir), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:  # cannot tell: keep the sandbox
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # and with it the lock, if we got it
    return False


def write_identity(dirs: SandboxDirs, uid: int) -> None:
    """Record the sandbox's uid and id (its id is its run dir's unless it was prepared elsewhere: a pool)."""
    record = {"uid": uid} | ({"id": dirs.ident} if dirs.ident else {})
    dirs.identity_file.write_text(json.dumps(record))


def read_identity(dirs: SandboxDirs) -> int | None:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return int(json.loads(dirs.identity_file.read_text())["uid"])
    return None


def read_identity_id(run_dir: Path) -> str | None:
    """The id recorded in ``run_dir``'s identity file, if it records one."""
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        ident = json.loads((run_dir / STATE_DIRNAME / "identity.json").read_text()).get("id")
        if isinstance(ident, str) and len(ident) == 16 and all(c in "0123456789abcdef" for c in ident):
            return ident
    return None


def ensure_mounted(
    dirs: SandboxDirs,
    *,
    repo: Path,
    strategy: str,
    shift: IdShift,
    tmp_mb: int,
    disk_image: bool,
    package_cache: str = "off",
    mounts: Sequence[str] = (),
    pending: bool = False,
) -> None:
    """Make every mount the sandbox needs, skipping those that exist (after a reboot, all of them).

    ``pending``: a pooled sandbox, with no repository yet: its /workspace is an empty directory bound
    shared in the portal, so that the workspace mounted on it when it is handed out reaches the
    sandbox's running namespace (``repo`` and ``strategy`` are then unused).
    """
    mounted = overlay.mount_points()
    if disk_image and str(dirs.disk) not in mounted:
        mount_image(dirs.image, dirs.disk)
    if strategy == "overlay" and not pending and str(dirs.workspace) not in mounted:
        overlay.mount_overlay(dirs.layers(repo), shift)
    portal = dirs.portal
    if portal is None:
        dirs.tmp.mkdir(exist_ok=True)
        return
    PORTAL_ROOT.mkdir(parents=True, exist_ok=True)
    os.chmod(PORTAL_ROOT, 0o711)
    portal.mkdir(mode=0o700, exist_ok=True)
    os.chown(portal, shift.sandbox_uid, shift.sandbox_gid)
    if pending:
        dirs.pending_workspace.mkdir(exist_ok=True)
        os.chown(dirs.pending_workspace, shift.sandbox_uid, shift.sandbox_gid)
    workspace = dirs.pending_workspace if pending else dirs.workspace
    for name, source in (("workspace", workspace), ("home", dirs.home)):
        target = portal / name
        target.mkdir(exist_ok=True)
        if str(target) not in mounted:
            overlay.bind_mount(source, target)
    if pending:
        overlay.make_shared(portal / "workspace")
    dirs.tmp.mkdir(exist_ok=True)
    if str(dirs.tmp) not in mounted:
        overlay.mount_tmpfs(dirs.tmp, size_mb=tmp_mb, uid=shift.sandbox_uid, gid=shift.sandbox_gid)
    for index, path in enumerate(mounts):
        target = dirs.bind_mount(index, path)
        target.mkdir(parents=True, exist_ok=True)
        if str(target) not in mounted:
            overlay.bind_mount(Path(path), target)
    if package_cache != "off":
        _mount_package_cache(dirs, package_cache, shift, mounted)


def _mount_package_cache(dirs: SandboxDirs, mode: str, shift: IdShift, mounted: set[str]) -> None:
    """The cache, seen by the sandbox's uid as its own: shared (read-write) or copy-on-write (read-only)."""
    root = package_cache_root()
    target = dirs.bind_package_cache()
    target.mkdir(exist_ok=True)
    if str(target) in mounted:
        return
    owner = root.stat()
    # On disk every sandbox's files belong to the cache's owner; each sandbox sees them as its own uid's.
    cache_shift = IdShift(owner.st_uid, owner.st_gid, shift.sandbox_uid, shift.sandbox_gid)
    try:
        if mode == "read-write":
            overlay.bind_idmapped(root, target, cache_shift)
            return
        layers = dirs.package_cache_layers()
        if not layers.usable():
            raise OSError(0, f"{root} cannot be an overlay layer (a comma, colon or space in a path)")
        for directory in (layers.upper, layers.work):
            directory.mkdir(exist_ok=True)
        os.chown(layers.upper, shift.sandbox_uid, shift.sandbox_gid)
        overlay.mount_overlay(layers, cache_shift)
    except OSError as exc:
        raise SandboxError(
            f"cannot mount the package cache {root} ({mode}): {exc.strerror or exc}",
            hint="its filesystem must support idmapped mounts (ext4, xfs, btrfs, tmpfs on Linux 6.3+); "
            'or set package_cache = "off"',
        ) from exc


def prepare_package_cache() -> Path:
    """Make the cache (owner-only) with a directory per tool; refuse one that another user owns."""
    root = package_cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        owner = root.stat().st_uid
        if owner != os.geteuid():
            raise SandboxError(
                f"the package cache {root} belongs to uid {owner}, not to this user ({os.geteuid()})",
                hint="a cache another user can write could feed this user's runs; set CORRAL_PACKAGE_CACHE_DIR",
            )
        for name in PACKAGE_CACHE_SUBDIRS:
            (root / name).mkdir(exist_ok=True, mode=0o700)
    except OSError as exc:
        raise SandboxError(f"cannot prepare the package cache {root}: {exc.strerror or exc}") from exc
    return root


def check_mounts(mounts: Sequence[str], *, repo: Path, run_dir: Path) -> None:
    """Refuse a mount that is missing, not a directory, reached through a link, or shows corral's own files.

    The profile's own checks (``corral.sandbox.types.MountPath``) already refused system paths;
    these need the host: the repository, the run directories (and the store above them), the
    package cache and corral's host-wide state.
    """
    private = [repo, run_dir.parent, PORTAL_ROOT, DISK_ROOT, REGISTRY_DIR, package_cache_root()]
    if run_dir.parent.name == "runs":  # a store's runs/: the store (corral's home) is private too
        private.append(run_dir.parent.parent)
    for path in map(Path, mounts):
        if not path.is_dir():
            what = "does not exist" if not os.path.lexists(path) else "is not a directory"
            raise SandboxError(f"mount {path} {what} on this machine", hint="mounts name host directories")
        real = Path(os.path.realpath(path))
        if real != path:
            raise SandboxError(f"mount {path} leads through a symlink to {real}", hint=f"name {real} instead")
        mode = path.stat().st_mode
        if privileged() and mode & 0o005 != 0o005:  # the sandbox's own uid is "other" to every host file
            raise SandboxError(
                f"mount {path} is not readable by the sandbox's user (mode {mode & 0o777:o})",
                hint=f"make it readable by others (chmod o+rx {path}), or mount a copy that is",
            )
        for other in private:
            other = Path(os.path.realpath(other))
            if path.is_relative_to(other) or other.is_relative_to(path):
                raise SandboxError(
                    f"mount {path} would show {other} to the sandbox",
                    hint="the repository reaches the sandbox as its workspace; corral's own files never do",
                )


async def teardown(dirs: SandboxDirs, *, uid: int | None) -> None:
    """Remove everything a sandbox left on the host: groups, mounts, directories, its uid claim.

    Nothing is deleted while anything below it is still mounted, so a bind of the repository can
    never be removed through.
    """
    portal = dirs.portal
    leftovers = [dirs.workspace, dirs.git_dir, dirs.state, dirs.image, *([portal] if portal is not None else [])]
    if not any(map(os.path.lexists, leftovers)):  # a fresh run dir: nothing was ever made here
        if uid is not None:
            release_uid(uid, dirs.run_dir)
        return
    await release_host(dirs)
    for directory in (dirs.workspace, dirs.git_dir, dirs.state):
        await remove_quickly(directory)
    await release_image(dirs.image, dirs.image_owner)
    if uid is not None:
        release_uid(uid, dirs.run_dir)


async def release_host(dirs: SandboxDirs) -> None:
    """Give back what a sandbox holds on the host while it runs — processes, cgroups, mounts, portal, loop
    device — and keep its files: ``ensure_mounted`` makes the rest again when the sandbox is re-opened."""
    cgroup = dirs.cgroup()
    if cgroup is not None:
        await cgroup.remove()  # kills what is left in it first
    portal = dirs.portal
    if portal is not None:
        overlay.unmount_all(portal)
    overlay.unmount_all(dirs.workspace)  # before the disk image that holds its upper layer
    overlay.unmount_all(dirs.run_dir)
    if portal is not None and portal.exists():
        shutil.rmtree(portal)
    if loop_devices_for(dirs.image):
        await wait_detached(dirs.image)


async def release_image(image: Path, owner_note: Path) -> list[str]:
    """Delete a disk image once its loop device has let go of it, so destroy returns with nothing attached.

    Returns the loop devices that still held it after the wait (normally none).
    """
    held: list[str] = []
    if loop_devices_for(image):
        held = await wait_detached(image)
        if held:
            logger.warning(
                "sandbox disk image %s is still attached to %s 2 s after unmount; unlinking it anyway (its "
                "space is freed when the kernel detaches the device)",
                image,
                ", ".join(f"/dev/{name}" for name in held),
            )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(image)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(owner_note)
    return held


async def remove_quickly(path: Path) -> None:
    """Remove a tree inline when it is small (the common case), with ``rm -rf`` when it is large."""
    size = _tree_size(path)
    if size is None:
        return
    if size <= _QUICK_REMOVE_ENTRIES:
        remove_now(path)
    else:
        await remove_tree(path)


def _tree_size(path: Path) -> int | None:
    """Entries under ``path``, counted up to just past the inline-removal budget; None if it does not exist."""
    if not os.path.lexists(path):
        return None
    count = 0
    for _dirpath, dirnames, filenames in os.walk(path):
        count += len(dirnames) + len(filenames)
        if count > _QUICK_REMOVE_ENTRIES:
            break
    return count


def refuse_system_path(workspace: Path) -> None:
    """A workspace must not sit where the sandbox's own system directories are mounted."""
    for system in ("/usr", "/etc", "/proc", "/dev", "/sys", "/bin", "/sbin", "/lib", "/lib64", "/run/corral"):
        if workspace == Path(system) or workspace.is_relative_to(system):
            raise SandboxError(
                f"the workspace {workspace} is under {system}, which the sandbox mounts itself",
                hint="put run directories elsewhere (e.g. under the corral store or your home directory)",
            )


def privileged() -> bool:
    """Whether sandboxes get their own uid and an overlay workspace (corral runs as root)."""
    return runs_as_root()
