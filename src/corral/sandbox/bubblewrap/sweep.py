"""Find and remove what bubblewrap sandboxes of dead processes left on the host.

A sandbox is *resumable* while its run dir still holds ``sandbox/`` (its state): ``attach()`` mounts
again whatever is missing and kills commands left running, so a sweep never touches it, whatever
became of the process that made it. Everything else that carries a sandbox id is a leftover: the
portal in ``/run/corral/sandboxes``, the cgroups, the disk image (and any mount of it), and uid
claims whose run dir is gone. That happens when a process dies half-way through ``destroy()``, or
when a run dir is deleted while its sandbox exists (after a reboot, say, with the image still in
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

from corral.sandbox.bubblewrap import overlay
from corral.sandbox.bubblewrap.dirs import (
    CGROUP_PREFIX,
    DISK_ROOT,
    PORTAL_ROOT,
    STATE_DIRNAME,
    cgroup_for,
    image_owner_path,
    image_path,
    portal_path,
    release_image,
    sandbox_id,
)
from corral.sandbox.bubblewrap.identity import claims, release_uid, runs_as_root
from corral.sandbox.bubblewrap.limits import cgroup_support
from corral.sandbox.workspace import WORKSPACE_DIRNAME

logger = logging.getLogger("corral.sandbox")

_ID_LENGTH = 16


@dataclass
class SweepReport:
    """What a sweep removed, one line per item, and what it could not."""

    removed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _is_id(name: str) -> bool:
    return len(name) == _ID_LENGTH and all(c in "0123456789abcdef" for c in name)


def _resumable(run_dir: Path) -> bool:
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
    """Remove what sandboxes that can no longer be resumed left behind; resumable sandboxes stay."""
    report = SweepReport()
    found = _found_on_host()
    claimed = claims()
    owners = {sandbox_id(run_dir): run_dir for run_dir in claimed.values()}
    for ident in found:
        owner = _image_owner(ident)
        if owner is not None:
            owners.setdefault(ident, owner)
    for ident, paths in sorted(found.items()):
        owner = owners.get(ident)
        if owner is not None and _resumable(owner):
            continue
        await _remove_sandbox(ident, owner, paths, report)
    for uid, run_dir in sorted(claimed.items()):
        if not _resumable(run_dir):
            release_uid(uid, run_dir)
            report.removed.append(f"uid claim {uid} (run dir {run_dir})")
    for line in report.removed:
        logger.info("removed a leftover sandbox item: %s", line)
    for line in report.failed:
        logger.warning("could not remove a leftover sandbox item: %s", line)
    return report


async def _remove_sandbox(ident: str, owner: Path | None, paths: list[Path], report: SweepReport) -> None:
    group = cgroup_for(ident)
    if group is not None and any(path.name == CGROUP_PREFIX + ident for path in paths):
        left = len(group.processes())
        await group.remove()
        if any(directory.exists() for directory in group.dirs.values()):
            report.failed.append(f"cgroup {CGROUP_PREFIX}{ident}")
        else:
            report.removed.append(f"cgroup {CGROUP_PREFIX}{ident}" + (f" ({left} processes killed)" if left else ""))
    for mounted in _mounts_of(ident, owner):
        try:
            overlay.unmount_all(mounted)
            report.removed.append(f"mount {mounted}")
        except Exception as exc:  # SandboxError or OSError: reported, and the sweep goes on
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
    held = await release_image(image, image_owner_path(ident))
    if image in paths:
        report.removed.append(f"disk image {image}" + (f" (still attached to {', '.join(held)})" if held else ""))


def _mounts_of(ident: str, owner: Path | None) -> list[Path]:
    """Host mounts of a sandbox's workspace and disk: at its run dir, or found by their path's id."""
    points = overlay.mount_points()
    found: set[Path] = set()
    for point in map(Path, points):
        for run_dir in (point.parent, point.parent.parent):
            ours = (owner is not None and run_dir == owner) or sandbox_id(run_dir) == ident
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
