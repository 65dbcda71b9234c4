"""Setting up a bubblewrap sandbox on the host: its workspace, disk, egress proxy, and talking to bwrap."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Literal

from corral.errors import SandboxError
from corral.sandbox.base import SandboxRequest
from corral.sandbox.bubblewrap import overlay
from corral.sandbox.bubblewrap.dirs import DISK_ROOT, SandboxDirs, ensure_mounted, privileged
from corral.sandbox.bubblewrap.diskimage import create_image, loop_images_available, mount_image
from corral.sandbox.bubblewrap.limits import TMP_SIZE_MB, disk_usage
from corral.sandbox.bubblewrap.overlay import IdShift
from corral.sandbox.proc import run_process
from corral.sandbox.types import Limits, NetworkProfile
from corral.sandbox.workspace import WorkspaceSnapshot, prepare_workspace

logger = logging.getLogger("corral.sandbox")

Strategy = Literal["overlay", "copy"]
SETUP_TIMEOUT = 10.0  # for bwrap to report its sandbox's first process, and for the proxy to start


async def read_child_pid(fd: int) -> int | None:
    """Read bwrap's --info-fd JSON (written right after it clones the sandbox) until EOF."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    data = bytearray()
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            data.extend(chunk)
        elif not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(done, SETUP_TIMEOUT)
    except TimeoutError:
        raise SandboxError(f"bwrap did not start its sandbox within {SETUP_TIMEOUT:.0f}s") from None
    finally:
        loop.remove_reader(fd)
    if not data:
        return None
    try:
        return int(json.loads(data)["child-pid"])
    except (ValueError, KeyError, TypeError):
        raise SandboxError(f"bwrap reported an unreadable status: {bytes(data)[:200]!r}") from None


def nearly_full(mount_point: Path) -> bool:
    try:
        info = os.statvfs(mount_point)
    except OSError:
        return False
    free = info.f_bavail * info.f_frsize
    return free < max(1024 * 1024, info.f_blocks * info.f_frsize // 100)


def parent_guard() -> tuple[list[str], str]:
    """A prefix and a shell test that tie a sandbox's processes to this process's life.

    bwrap's ``--die-with-parent`` asks for SIGKILL when its parent dies, but only once bwrap has
    started: a corral killed while bwrap is still starting leaves it orphaned, and it runs the command
    anyway. So the launcher asks first (``setpriv --pdeathsig``, inherited across the execs that follow),
    and the shell that comes next checks that its parent is still this process: if not, it died before
    the signal was asked for, and nothing starts.
    """
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    return [setpriv, "--pdeathsig", "KILL", "--"], f'[ "$PPID" = "{os.getpid()}" ] || exit 137'


def setpriv_argv(uid: int, gid: int, *, pdeathsig: bool = False) -> list[str]:
    """Drop to ``uid``/``gid``; with ``pdeathsig``, ask for SIGKILL when the parent dies, after the drop
    (setpriv applies it last; a death signal asked for before a change of credentials is cleared)."""
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    death = ["--pdeathsig", "KILL"] if pdeathsig else []
    return [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *death, "--"]


def repo_owner(repo: Path) -> tuple[int, int]:
    try:
        info = repo.stat()
    except OSError:  # only a re-mount needs it, and that fails with a clear message
        return 0, 0
    return info.st_uid, info.st_gid


def tmp_size_mb(limits: Limits) -> int:
    return min(TMP_SIZE_MB, limits.memory_mb) if limits.memory_mb else TMP_SIZE_MB


async def make_workspace(dirs: SandboxDirs, repo: Path, shift: IdShift) -> tuple[Strategy, WorkspaceSnapshot, int]:
    """An overlay over the repo when possible (root, idmapped mounts), else a copy; with the disk baseline.

    Either way every file in the workspace belongs to the sandbox user, so that git trusts the repository
    and the agent can edit, touch and remove anything: the overlay's idmapped view maps the repo's owner,
    and what other users own in the repo is copied into a layer of its own (see ``overlay.copy_foreign``).
    """
    layers = dirs.layers(repo)
    if overlay_possible(dirs, repo):
        try:
            overlay.prepare_layers(layers, shift)
            foreign = await overlay.foreign_entries(repo, shift)
            if foreign:
                logger.info("%d entries of %s have another owner: copying them for the sandbox", len(foreign), repo)
                await overlay.copy_foreign(layers, foreign, shift)
            overlay.mount_overlay(layers, shift)
        except (OSError, SandboxError) as exc:
            logger.info("overlay workspace unavailable (%s); copying the repository instead", exc)
            overlay.unmount_all(dirs.workspace)
            for leftover in (layers.upper, layers.work, layers.merged, layers.owned):
                if leftover is not None:
                    shutil.rmtree(leftover, ignore_errors=True)
        else:
            dirs.git_dir.mkdir()
            return "overlay", WorkspaceSnapshot(workspace=dirs.workspace, git_dir=dirs.git_dir, commit=""), 0
    snapshot = await prepare_workspace(repo, dirs.run_dir)
    if privileged() and shift.sandbox_uid != os.geteuid():
        # -h: a symlink in the repo must not make chown change its target on the host.
        owner = f"{shift.sandbox_uid}:{shift.sandbox_gid}"
        await run_process(["chown", "-R", "-h", owner, "--", str(snapshot.workspace)], timeout=600)
    baseline = await disk_usage([snapshot.workspace])
    return "copy", snapshot, baseline


def overlay_possible(dirs: SandboxDirs, repo: Path) -> bool:
    return privileged() and dirs.layers(repo).usable()


async def make_disk(dirs: SandboxDirs, limits: Limits, *, overlay_possible: bool) -> bool:
    """Make ``dirs.disk``: a mounted ext4 image of ``disk_mb`` where that is possible, else a plain directory."""
    dirs.disk.mkdir()
    if limits.disk_mb is None or not overlay_possible or not loop_images_available():
        return False
    try:
        DISK_ROOT.mkdir(parents=True, exist_ok=True, mode=0o700)
        dirs.image_owner.write_text(str(dirs.run_dir))
        await create_image(dirs.image, limits.disk_mb)
        mount_image(dirs.image, dirs.disk)
    except (OSError, SandboxError) as exc:
        logger.warning("no disk image for %s (%s); the disk limit is checked by polling instead", dirs.run_dir, exc)
        dirs.image.unlink(missing_ok=True)
        dirs.image_owner.unlink(missing_ok=True)
        return False
    return True


def egress_proxy_class() -> Any:
    """The egress proxy class, imported when a sandbox needs one (h11 and cryptography otherwise stay out)."""
    try:
        from corral.sandbox.egress.proxy import EgressProxy  # type: ignore[import-not-found]
    except ImportError as exc:
        raise SandboxError(
            "allowlist needs the egress proxy",
            hint=f"the egress proxy (corral.sandbox.egress.proxy) is not available: {exc}",
        ) from None
    return EgressProxy


def proxy_wanted(network: NetworkProfile) -> bool:
    """Whether a sandbox gets an egress proxy: ``allowlist`` always; ``none`` a deny-all one, so that clients
    fail at once with a reason naming the policy instead of retrying DNS, wherever the relay can run."""
    if network.mode == "allowlist":
        return True
    if network.mode != "none":
        return False
    from corral.sandbox.egress.proxy import egress_available  # h11 and cryptography: only when used

    return egress_available()[0]


async def provision(
    dirs: SandboxDirs,
    request: SandboxRequest,
    uid: int,
    *,
    repo: Path,
    strategy: Strategy,
    shift: IdShift,
    disk_image: bool,
    proxy_class: Any,
    pending: bool = False,
) -> Any:
    """What a new sandbox gets on the host beside its workspace and disk: its home, its mounts (portal,
    /tmp, package cache, the request's mounts; see ``ensure_mounted`` for ``pending``), its cgroups and,
    with a ``proxy_class`` (``egress_proxy_class()`` where ``proxy_wanted``), its egress proxy, which is
    returned (None otherwise)."""
    dirs.home.mkdir()
    os.chown(dirs.home, uid, uid)
    ensure_mounted(
        dirs,
        repo=repo,
        strategy=strategy,
        shift=shift,
        tmp_mb=tmp_size_mb(request.limits),
        disk_image=disk_image,
        package_cache=request.package_cache,
        mounts=request.mounts,
        pending=pending,
    )
    cgroup = dirs.cgroup()
    if cgroup is not None:
        cgroup.create(request.limits)
    return await start_proxy(proxy_class, request, dirs, uid) if proxy_class is not None else None


async def start_proxy(proxy_class: Any, request: SandboxRequest, dirs: SandboxDirs, uid: int) -> Any:
    """Start the sandbox's egress proxy and expose its socket (and CA) to the sandbox's uid."""
    network = request.network
    proxy = proxy_class(
        allow=network.allow,
        allow_private_addresses=network.allow_private,
        intercept=True if network.intercept_tls else None,
        upstream_proxy=network.upstream_proxy,
        deny_all=network.mode == "none",
        secrets=request.secrets,
        on_event=request.on_egress,
        state_dir=dirs.state / "egress",
        routes=request.route_addresses(),
    )
    await asyncio.wait_for(proxy.start(), SETUP_TIMEOUT)
    if dirs.portal is not None:
        # bwrap, running as the sandbox uid, reaches the socket and CA through the portal only.
        os.chown(proxy.socket_path, uid, uid)
        socket, ca = egress_sources(dirs, proxy)
        overlay.unmount_all(socket)
        socket.touch()
        overlay.bind_mount(proxy.socket_path, socket)
        if ca is not None:
            shutil.copyfile(proxy.ca_cert_path, ca)
    return proxy


def egress_sources(dirs: SandboxDirs, proxy: Any) -> tuple[Path, Path | None]:
    """Host paths bwrap binds as /run/corral/egress.sock and /run/corral/ca.pem."""
    ca = proxy.ca_cert_path
    if dirs.portal is None:
        return Path(proxy.socket_path), Path(ca) if ca is not None else None
    return dirs.portal / "egress.sock", dirs.portal / "egress-ca.pem" if ca is not None else None
