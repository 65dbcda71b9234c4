"""What sandboxes hold on the host, for tests that check destroy and the sweep leave nothing behind."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from corral.sandbox.bubblewrap.dirs import DISK_ROOT, PORTAL_ROOT, sandbox_id
from corral.sandbox.bubblewrap.identity import REGISTRY_DIR
from corral.sandbox.bubblewrap.limits import cgroup_support


def processes_with(token: str) -> list[int]:
    """Live (non-zombie) host processes whose command line contains ``token`` (bwrap and setpriv carry it too)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path("/proc", entry, "cmdline").read_bytes()
            state = Path("/proc", entry, "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if token.encode() in cmdline and state not in ("Z", "X"):
            found.append(int(entry))
    return found


def host_footprint(
    root: Path, run_dirs: list[Path] | None = None, *, ids: set[str] = frozenset()
) -> dict[str, list[str]]:
    """What sandboxes whose run dirs are under ``root`` hold on the host (other tests may run beside us).

    ``run_dirs`` names them when they are not ``root/run*`` or ``root/runs/*`` (they may be gone already);
    ``ids`` adds sandboxes whose id is not their run dir's (pooled ones keep the id they were prepared under).
    """
    if run_dirs is None:
        run_dirs = [p for p in [*root.glob("run*"), *root.glob("runs/*")] if p.is_dir() and p.name != "runs"]
    ids = {sandbox_id(path.resolve()) for path in run_dirs} | set(ids)
    support = cgroup_support()
    bases = support.bases.values() if support else ()
    owners = {str(path.resolve()) for path in run_dirs}
    claims = [
        p
        for p in glob.glob(f"{REGISTRY_DIR}/[0-9]*")
        if (owner := Path(p).read_text(errors="replace")) in owners or owner.startswith(f"{root.resolve()}/")
    ]
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    backing = [Path(p).read_text().strip() for p in glob.glob("/sys/block/loop*/loop/backing_file")]
    return {
        "mounts": sorted(m for m in mounts if m.startswith(str(root)) or any(i in m for i in ids)),
        "cgroups": sorted(
            str(Path(base, f"sandbox-{i}")) for base in bases for i in ids if Path(base, f"sandbox-{i}").exists()
        ),
        "portals": sorted(str(PORTAL_ROOT / i) for i in ids if (PORTAL_ROOT / i).exists()),
        "disk images": sorted(
            str(DISK_ROOT / f"{i}{suffix}")
            for i in ids
            for suffix in (".img", ".owner")
            if (DISK_ROOT / f"{i}{suffix}").exists()
        ),
        "loop devices": sorted(b for b in backing if any(i in b for i in ids)),
        "uid claims": sorted(claims),
        "run dir contents": sorted(str(p) for d in run_dirs if d.is_dir() for p in d.iterdir()),
        "bwrap dirs": sorted(glob.glob("/tmp/.bubblewrap-*")),
    }
