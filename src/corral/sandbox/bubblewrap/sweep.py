"""Find and remove what bubblewrap sandboxes left on the host once no run can use them again.

A sandbox is kept while

- a live process has it open (creating, using or destroying it): the process holds a lock on the
  sandbox's state (``dirs.hold``) that the kernel drops when the process dies, however it dies; or
- it is *resumable*: its run dir still holds ``sandbox/`` (its state) and the run was not marked
  ended (``corral.sandbox.mark_run_ended``). ``attach()`` mounts again whatever is missing and kills
  commands left running, so a crashed run can go on.

Everything else that carries a sandbox id is removed: the portal in ``/run/corral/sandboxes``, the
cgroups, the disk image (and any mount of it), the workspace, baseline and state of an ended run,
and uid claims whose sandbox state is gone. That is what a process leaves when it dies during
``destroy()``, or before it with its run already ended (a cancelled run whose process was killed),
or when a run dir is deleted while its sandbox exists (after a reboot, say, with the image still in
``/var/lib/corral``).

The sweep lists the leftovers *before* it reads the claims: everything a sandbox makes on the host
comes after its uid claim, so anything found first whose claim is then missing or stale is no longer
anyone's, even while other processes create and destroy sandboxes.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from corral.sandbox.base import run_ended
from corral.sandbox.bubblewrap import overlay
from corral.sandbox.bubblewrap.dirs import (
    CGROUP_PREFIX,
    DISK_ROOT,
    POOL_DIRNAME,
    PORTAL_ROOT,
    STATE_DIRNAME,
    SandboxDirs,
    cgroup_for,
    image_owner_path,
    image_path,
    in_use,
    portal_path,
    release_image,
    remove_quickly,
)
from corral.sandbox.bubblewrap.identity import claims, registry_lock, release_uid, runs_as_root
from corral.sandbox.bubblewrap.limits import cgroup_support
from corral.sandbox.workspace import WORKSPACE_DIRNAME

logger = logging.getLogger("corral.sandbox")

_ID_LENGTH = 16

ONE_SHOT_MARKER = "corral-one-shot"
"""In the directory that holds a one-shot sandbox's run dir (``corral sandbox exec``'s temporary
directory): once that run's sandbox is swept, the whole directory goes too, since corral made all of it."""


@dataclass
class SweepReport:
    """What a sweep removed (one line per item), what it could not, and the sandboxes it kept."""

    removed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    resumable: list[Path] = field(default_factory=list)
    """Run dirs whose sandboxes were kept because their runs may still resume."""
    in_use: list[Path] = field(default_factory=list)
    """Run dirs whose sandboxes a live process has open."""


def _is_id(name: str) -> bool:
    return len(name) == _ID_LENGTH and all(c in "0123456789abcdef" for c in name)


def _has_state(run_dir: Path) -> bool:
    return (run_dir / STATE_DIRNAME).is_dir()


def _found_on_host() -> dict[str, list[Path]]:
    """Sandbox id to the host paths that carry it: portals, disk images (and owner notes), cgroups."""
    found: dict[str, list[Path]] = {}

    def add(ident: str, path: Path) -> None:
        if _is_id(ident):
            found.setdefault(ident, []).append(path)

    with contextlib.suppress(OSError):
        for entry in PORTAL_ROOT.iterdir():
            add(entry.name, entry)
    with contextlib.suppress(OSError):
        for entry in DISK_ROOT.iterdir():
            if entry.suffix in (".img", ".owner"):
                add(entry.stem, entry)
    support = cgroup_support()
    for base in support.bases.values() if support else ():
        with contextlib.suppress(OSError):
            for entry in base.iterdir():
                if entry.name.startswith(CGROUP_PREFIX):
                    add(entry.name.removeprefix(CGROUP_PREFIX), entry)
    return found


def _image_owner(ident: str) -> Path | None:
    with contextlib.suppress(OSError):
        return Path(image_owner_path(ident).read_text())
    return None


async def sweep_orphans() -> SweepReport:
    """Remove what sandboxes that can no longer be used left behind; open and resumable sandboxes stay."""
    report = SweepReport()
    found = _found_on_host()
    claimed = claims()
    owners = {SandboxDirs.of(run_dir, privileged=True).id: run_dir for run_dir in claimed.values()}
    for ident in found:
        owner = _image_owner(ident)
        if owner is not None:
            owners.setdefault(ident, owner)
    for ident in sorted(found.keys() | owners.keys()):
        owner = owners.get(ident)
        # Under the lock: two sweeps' probes (see ``in_use``) must not meet, and a pool may have handed
        # this sandbox to a run since the claims were read.
        with registry_lock():
            if _kept(owner, report):
                continue
            now = _owner_now(ident)
            if now is not None and now != owner and _kept(now, report):
                continue
        await _remove_sandbox(ident, owner, found.get(ident, []), report)
    for uid, run_dir in sorted(claimed.items()):
        if not _has_state(run_dir):
            release_uid(uid, run_dir)
            report.removed.append(f"uid claim {uid} (run dir {run_dir})")
    roots = {run_dir.parent for run_dir in claimed.values()} | {owner.parent for owner in owners.values()}
    for root in sorted(roots):
        await _remove_spent_holders(root / POOL_DIRNAME, report)
    for line in report.removed:
        logger.info("removed a leftover sandbox item: %s", line)
    for line in report.failed:
        logger.warning("could not remove a leftover sandbox item: %s", line)
    return report


def _kept(owner: Path | None, report: SweepReport) -> bool:
    """Whether the sandbox of ``owner`` (a run dir) stays: open in a live process, or resumable.

    The caller holds ``registry_lock()``.
    """
    if owner is None or not _has_state(owner):
        return False
    if in_use(owner):
        report.in_use.append(owner)
        return True
    if not run_ended(owner):
        report.resumable.append(owner)
        return True
    return False


def _owner_now(ident: str) -> Path | None:
    """The run dir that holds sandbox ``ident`` now (the caller holds ``registry_lock()``)."""
    for run_dir in claims(locked=True).values():
        if SandboxDirs.of(run_dir, privileged=True).id == ident:
            return run_dir
    return _image_owner(ident)


async def _remove_sandbox(ident: str, owner: Path | None, paths: list[Path], report: SweepReport) -> None:
    group = cgroup_for(ident)
    if group is not None and any(directory.exists() for directory in group.dirs.values()):
        left = len(group.processes())
        await group.remove()
        if any(directory.exists() for directory in group.dirs.values()):
            report.failed.append(f"cgroup {CGROUP_PREFIX}{ident}")
        else:
            report.removed.append(f"cgroup {CGROUP_PREFIX}{ident}" + (f" ({left} processes killed)" if left else ""))
    mounts_left = False
    for mounted in _mounts_of(ident, owner):
        try:
            overlay.unmount_all(mounted)
            report.removed.append(f"mount {mounted}")
        except Exception as exc:  # SandboxError or OSError: reported, and the sweep goes on
            mounts_left = True
            report.failed.append(f"mount {mounted}: {exc}")
    portal = portal_path(ident)
    if portal.exists():
        try:
            overlay.unmount_all(portal)
            shutil.rmtree(portal)
            report.removed.append(f"portal {portal}")
        except Exception as exc:
            report.failed.append(f"portal {portal}: {exc}")
    image = image_path(ident)
    had_image = image.exists()
    held = await release_image(image, image_owner_path(ident))
    if had_image:
        report.removed.append(f"disk image {image}" + (f" (still attached to {', '.join(held)})" if held else ""))
    if owner is not None and _has_state(owner) and not mounts_left:
        await _remove_run_files(owner, report)


async def _remove_spent_holders(pool_root: Path, report: SweepReport) -> None:
    """A pool's holder directories whose slot was handed out (its state moved to a run dir) and which
    its process did not get to remove: only markers and empty mount points are left in them."""
    try:
        holders = sorted(pool_root.iterdir())  # noqa: ASYNC240 - one small local directory
    except OSError:
        return
    for holder in holders:
        run_dir = holder / "run"
        if not (holder / ONE_SHOT_MARKER).is_file() or _has_state(run_dir) or not run_ended(run_dir):
            continue
        await _remove_holder(holder, "pool directory", report)  # unless a hand-over or discard is under way


async def _remove_run_files(run_dir: Path, report: SweepReport) -> None:
    """The workspace, baseline and state of an ended run: what its sandbox's destroy() would have removed."""
    dirs = SandboxDirs.of(run_dir, privileged=True)
    mounted = overlay.mount_points_under(run_dir)
    if mounted:  # never delete through a mount (the repository's view, say)
        report.failed.append(f"files of ended run {run_dir}: still mounted: {', '.join(mounted)}")
        return
    try:
        for directory in (dirs.workspace, dirs.git_dir, dirs.state):
            await remove_quickly(directory)
    except Exception as exc:
        report.failed.append(f"files of ended run {run_dir}: {exc}")
    else:
        report.removed.append(f"workspace, baseline and state of ended run {run_dir}")
        holder = run_dir.parent
        if (holder / ONE_SHOT_MARKER).is_file():
            await _remove_holder(holder, "one-shot sandbox directory", report)


async def _remove_holder(holder: Path, what: str, report: SweepReport) -> None:
    """A directory corral made to hold one run dir (it carries ONE_SHOT_MARKER), unless something is
    still mounted below it."""
    if overlay.mount_points_under(holder):
        return
    try:
        await remove_quickly(holder)
    except Exception as exc:
        report.failed.append(f"{what} {holder}: {exc}")
    else:
        report.removed.append(f"{what} {holder}")


def _mounts_of(ident: str, owner: Path | None) -> list[Path]:
    """Host mounts of a sandbox's workspace and disk: at its run dir, or found by their path's id."""
    points = overlay.mount_points()
    found: set[Path] = set()
    for point in map(Path, points):
        for run_dir in (point.parent, point.parent.parent):
            ours = (owner is not None and run_dir == owner) or SandboxDirs.of(run_dir, privileged=True).id == ident
            if ours and point in (run_dir / WORKSPACE_DIRNAME, run_dir / STATE_DIRNAME / "disk"):
                found.add(point)
    # The workspace's overlay sits on the disk: unmount it first.
    return sorted(found, key=lambda path: path.name != WORKSPACE_DIRNAME)


_swept = False


async def sweep_once() -> None:
    """Sweep the first time this process makes a sandbox; later calls return at once.

    Sandboxes created meanwhile need not wait: the sweep never removes a sandbox being created.
    """
    global _swept
    if _swept or not runs_as_root():
        return
    _swept = True
    try:
        await sweep_orphans()
    except Exception:  # a sweep must never stop a run from starting
        logger.exception("sweeping leftover sandboxes failed")
