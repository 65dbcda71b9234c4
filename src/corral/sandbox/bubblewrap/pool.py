"""A warm pool of prepared bubblewrap sandboxes: what ``create()`` costs, paid before it is asked for.

A sandbox's cost is mostly independent of its repository: a uid, cgroups, a disk image, the portal
with its /tmp and home, the egress proxy, and bwrap with its resident init. A pool keeps ``size`` of
those *slots* ready for one shape of request (network, limits, package cache, mounts), each with an
empty /workspace that is a shared mount in its portal. Handing one out (``take``) mounts the
request's workspace (the overlay on the repository, as ``create`` does) and binds it there, which
reaches the running sandbox by mount propagation; the slot's state directory moves into the
request's run dir, and its uid claim and disk-image note name that run dir, under the uid
registry's lock so that a sweep never sees a slot half handed over. The sandbox keeps the id it
was prepared under (recorded in its identity file).

A pool also prepares the workspace ahead, for the repository it handed a sandbox out for last (a
fan-out's workers all copy the same parent workspace): the overlay is mounted and bound when the
slot is made, and handing it out for that repository only moves the mount into the run dir. The
overlay's lower layer is the live repository, so a workspace prepared ahead shows the repository
as it is when the sandbox is handed out, like one made then. A repository with entries of another
owner (their copies would go stale), or that is no longer the same directory, gets its workspace
made at hand-out, as for any other repository.

A pooled sandbox's ``destroy()`` kills its processes at once and returns; unmounting and removing
its files happens in the pool's background (``drain()`` waits for it), and a new slot is prepared.

Only privileged corral (root) pools: the workspace must be a mount. Requests with secrets or TLS
interception are not pooled (their proxy is made for them); neither are one-off shapes unless asked.
A slot's run dir is marked ended from the start and its holder directory carries the one-shot
marker: if the process dies, a sweep removes every slot it left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from corral.errors import SandboxError
from corral.sandbox.base import RUN_ENDED_MARKER, SandboxRequest, mark_run_ended
from corral.sandbox.bubblewrap import overlay
from corral.sandbox.bubblewrap.dirs import (
    POOL_DIRNAME,
    STATE_DIRNAME,
    SandboxDirs,
    hold,
    prepare_package_cache,
    privileged,
    sandbox_id,
    teardown,
    write_identity,
)
from corral.sandbox.bubblewrap.identity import claim_uid, hand_over_uid, registry_lock
from corral.sandbox.bubblewrap.limits import LimitCounters
from corral.sandbox.bubblewrap.overlay import IdShift
from corral.sandbox.bubblewrap.setup import (
    Strategy,
    egress_proxy_class,
    make_disk,
    overlay_possible,
    provision,
    proxy_wanted,
)
from corral.sandbox.bubblewrap.sweep import ONE_SHOT_MARKER
from corral.sandbox.workspace import BASELINE_DIRNAME, WORKSPACE_DIRNAME, WorkspaceSnapshot

if TYPE_CHECKING:
    from corral.sandbox.bubblewrap.resident import ResidentInit

logger = logging.getLogger("corral.sandbox")

_STOP_TIMEOUT = 5.0


def pool_shape(request: SandboxRequest) -> str | None:
    """The key of the pool a request can take from, or None when it cannot be pooled."""
    network = request.network
    if request.pool <= 0 or not privileged() or request.secrets or network.intercept_tls:
        return None
    shape = {
        "network": network.model_dump(mode="json"),
        "limits": request.limits.model_dump(mode="json"),
        "package_cache": request.package_cache,
        "mounts": list(request.mounts),
        "routes": dict(request.routes),
        "root": str(Path(request.run_dir).parent),
    }
    return json.dumps(shape, sort_keys=True)


class RepoKey(NamedTuple):
    """A repository as a prepared workspace was made for it: the same path must still be this directory,
    with this owner."""

    path: str
    device: int
    inode: int
    uid: int
    gid: int


def repo_key(repo: Path) -> RepoKey | None:
    try:
        info = os.stat(repo)
    except OSError:
        return None
    return RepoKey(str(repo), info.st_dev, info.st_ino, info.st_uid, info.st_gid)


@dataclass
class Slot:
    """One prepared sandbox: everything but its workspace, its resident init running."""

    dirs: SandboxDirs
    uid: int
    lock_fd: int
    disk_image: bool
    proxy: Any
    resident: ResidentInit | None
    """None only while the slot is being prepared."""
    holder: Path | None
    """The pool's directory holding the slot's run dir, until the slot is handed over and its workspace moved."""
    workspace_for: RepoKey | None = None
    """The repository whose workspace is mounted and bound in the slot already (see the module docstring)."""
    bound: bool = False
    """The slot's workspace is bound onto its portal's /workspace."""
    counters: LimitCounters | None = None
    """Its cgroups' counters once it was ready (nothing runs in it until it is handed out)."""

    async def prepare_workspace(self, repo: Path) -> None:
        """Mount the workspace for ``repo`` now and bind it as /workspace (nothing done if it cannot be)."""
        key = repo_key(repo)
        if key is None or not overlay_possible(self.dirs, repo):
            return
        shift = IdShift(key.uid, key.gid, self.uid, self.uid)
        if await overlay.foreign_entries(repo, shift):
            return
        layers = self.dirs.layers(repo)
        try:
            overlay.prepare_layers(layers, shift)
            overlay.mount_overlay(layers, shift)
            self.dirs.git_dir.mkdir()
            mount_pending_workspace(self.dirs)
            self.bound = True
        except BaseException:
            self.clear_workspace()
            raise
        self.workspace_for = key

    def clear_workspace(self) -> None:
        """Back to an empty /workspace: unbind and unmount the prepared workspace, empty its layers."""
        assert self.dirs.portal is not None
        if self.bound:  # the top of the stack on the portal's /workspace; the shared empty one stays
            overlay.unmount_top(self.dirs.portal / "workspace")
            self.bound = False
        overlay.unmount_all(self.dirs.workspace)
        layers = self.dirs.layers(self.dirs.run_dir)
        for directory in (layers.upper, layers.work):
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
        os.chown(layers.upper, self.uid, self.uid)
        for directory in (self.dirs.workspace, self.dirs.git_dir):
            with contextlib.suppress(FileNotFoundError):
                directory.rmdir()
        self.workspace_for = None

    def made_for(self, dirs: SandboxDirs) -> tuple[Strategy, WorkspaceSnapshot, int]:
        """After ``hand_over``: move the prepared workspace into ``dirs``' run dir; what ``make_workspace`` returns."""
        assert self.holder is not None
        prepared = self.holder / "run" / dirs.workspace.name
        dirs.workspace.mkdir()
        dirs.git_dir.mkdir()
        overlay.bind_mount(prepared, dirs.workspace)
        overlay.unmount_top(prepared)  # the overlay, the one mount there
        return "overlay", WorkspaceSnapshot(workspace=dirs.workspace, git_dir=dirs.git_dir, commit=""), 0

    async def discard(self) -> None:
        """Destroy a slot (half prepared, never handed out, or whose hand-over failed): all of it, and only
        what corral made."""
        if self.resident is not None:
            self.resident.close()
        try:
            if self.resident is not None:
                await self.resident.wait_closed()
            if self.proxy is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.proxy.stop(), _STOP_TIMEOUT)
            await teardown(self.dirs, uid=self.uid)
            if self.holder is not None:
                remove_holder(self.holder)
        finally:
            os.close(self.lock_fd)


@dataclass
class SandboxPool:
    """Prepared sandboxes of one shape, refilled in the background on the loop that made the pool."""

    template: SandboxRequest
    size: int
    ready: list[Slot] = field(default_factory=list)
    _filling: asyncio.Task[None] | None = None
    _refill: asyncio.TimerHandle | None = None
    hint: Path | None = None
    """The repository the last sandbox was handed out for: slots made from now on have its workspace."""
    _spent: list[Path] = field(default_factory=list)
    """Holder directories of slots handed out: removed in the background, not while a run waits."""
    _releases: set[asyncio.Task[None]] = field(default_factory=set)
    _failures: list[BaseException] = field(default_factory=list)
    _closed: bool = False

    @property
    def root(self) -> Path:
        return Path(self.template.run_dir).parent / POOL_DIRNAME

    def fill(self) -> None:
        """Prepare slots in the background until ``size`` are ready (no-op while one fill runs)."""
        if self._closed or (self._filling is not None and not self._filling.done()):
            return
        self._filling = asyncio.get_running_loop().create_task(self._fill())

    def fill_later(self, delay: float) -> None:
        """``fill()`` after ``delay`` seconds without a newer call: a burst of hand-outs is refilled after it."""
        if self._refill is not None:
            self._refill.cancel()
        self._refill = asyncio.get_running_loop().call_later(delay, self.fill)

    async def filled(self) -> int:
        """Fill now and wait for it; the number of ready slots (fewer than ``size`` if preparing one failed)."""
        self.fill()
        if self._filling is not None:
            await asyncio.shield(self._filling)
        return len(self.ready)

    async def _fill(self) -> None:
        self._remove_spent()
        while not self._closed and len(self.ready) < self.size:
            try:
                slot = await self._prepare()
            except Exception as exc:  # a pool must never stop a run: create() makes its own sandbox
                logger.warning("could not prepare a pooled sandbox (%s); later creates make their own", exc)
                return
            if self._closed:
                await slot.discard()
                return
            self.ready.append(slot)

    def take(self, repo: Path) -> Slot | None:
        """A ready slot for ``repo`` (its workspace prepared, if one is), or None; the caller then calls ``fill()``.

        The slot comes out as it is: the caller moves or clears its workspace (``made_for``,
        ``clear_workspace``). Slots prepared from now on are for ``repo``.
        """
        self.hint = repo
        if not self.ready:
            return None
        key = repo_key(repo)
        for preferred in (key, None):
            for index, slot in enumerate(self.ready):
                if slot.workspace_for == preferred:
                    return self.ready.pop(index)
        return self.ready.pop(0)

    def spent(self, holder: Path) -> None:
        """A handed-out slot's holder directory, to remove in the background."""
        self._spent.append(holder)

    def _remove_spent(self) -> None:
        spent, self._spent = self._spent, []
        for holder in spent:
            remove_holder(holder)

    def defer(self, release: asyncio.Task[None]) -> None:
        """Track a handed-out sandbox's release (after its ``destroy()``) until it is done."""
        self._releases.add(release)
        release.add_done_callback(self._released)

    def _released(self, release: asyncio.Task[None]) -> None:
        self._releases.discard(release)
        error = None if release.cancelled() else release.exception()
        if error is not None:
            logger.error("releasing a pooled sandbox failed: %s", error)
            self._failures.append(error)

    async def drain(self) -> None:
        """Wait for every deferred release; SandboxError if any failed (each is also logged when it does)."""
        while self._releases:
            await asyncio.gather(*list(self._releases), return_exceptions=True)
        if self._failures:
            failures, self._failures = self._failures, []
            raise SandboxError(f"{len(failures)} pooled sandbox(es) could not be released; the first: {failures[0]}")

    async def close(self) -> None:
        """Destroy the ready slots, stop filling, and wait for deferred releases."""
        self._closed = True
        if self._refill is not None:
            self._refill.cancel()
        if self._filling is not None:
            self._filling.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._filling
        slots, self.ready = self.ready, []
        for slot in slots:
            try:
                await slot.discard()
            except Exception as exc:
                self._failures.append(exc)
        await self.drain()
        self._remove_spent()
        with contextlib.suppress(OSError):
            self.root.rmdir()  # corral's own directory, once empty

    async def _prepare(self) -> Slot:
        from corral.sandbox.bubblewrap.backend import BubblewrapSandbox, BubblewrapState

        request = self.template
        holder = self.root / secrets.token_hex(8)
        run_dir = holder / "run"
        # The id is recorded from the start: the identity file moves with the state into the run dir.
        dirs = SandboxDirs(run_dir, privileged=True, ident=sandbox_id(run_dir))
        lock_fd: int | None = None
        try:
            run_dir.mkdir(parents=True)
            (holder / ONE_SHOT_MARKER).write_text("corral sandbox pool\n")
            mark_run_ended(run_dir)  # if this process dies, the slot is garbage, not a run to resume
            dirs.state.mkdir()
            lock_fd = hold(dirs)
            uid = claim_uid(run_dir, state_dirname=STATE_DIRNAME)
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            shutil.rmtree(holder, ignore_errors=True)
            raise
        assert lock_fd is not None
        # Filled in as it is made: a failure half way discards exactly what exists.
        slot = Slot(dirs=dirs, uid=uid, lock_fd=lock_fd, disk_image=False, proxy=None, resident=None, holder=holder)
        try:
            write_identity(dirs, uid)
            shift = IdShift(0, 0, uid, uid)  # the repository's owner is not known yet: unused while pending
            if request.package_cache != "off":
                prepare_package_cache()
            slot.disk_image = await make_disk(dirs, request.limits, overlay_possible=True)
            layers = dirs.layers(run_dir)  # the overlay's upper and work dirs, ready on the disk
            for directory in (layers.upper, layers.work):
                directory.mkdir()
            os.chown(layers.upper, uid, uid)
            slot.proxy = await provision(
                dirs,
                request,
                uid,
                repo=run_dir,
                strategy="overlay",
                shift=shift,
                disk_image=slot.disk_image,
                proxy_class=egress_proxy_class() if proxy_wanted(request.network) else None,
                pending=True,
            )
            state = BubblewrapState.pending(dirs, uid=uid, request=request, disk_image=slot.disk_image)
            pending = BubblewrapSandbox(state=state, env={}, proxy=slot.proxy)
            slot.resident = pending.start()
            await slot.resident.ready()
            if self.hint is not None:
                await slot.prepare_workspace(self.hint)
                if slot.workspace_for is not None:
                    await pending.exec(["true"])
            cgroup = dirs.cgroup()
            slot.counters = cgroup.counters() if cgroup is not None else LimitCounters()
        except BaseException:
            await slot.discard()
            raise
        return slot


def hand_over(slot: Slot, run_dir: Path) -> SandboxDirs:
    """Move a slot's state into ``run_dir`` and make ``run_dir`` its owner, all at once for a sweep.

    The slot's holder directory stays (its prepared workspace is still mounted there, see ``made_for``):
    the caller hands it to ``SandboxPool.spent`` once done with it, or ``discard`` removes it.
    """
    dirs = SandboxDirs(run_dir, privileged=True, ident=slot.dirs.id)
    with registry_lock():
        os.rename(slot.dirs.state, dirs.state)  # its identity file, recording the id, goes with it
        try:
            hand_over_uid(slot.uid, slot.dirs.run_dir, run_dir)
        except BaseException:
            os.rename(dirs.state, slot.dirs.state)
            raise
        if slot.disk_image:
            dirs.image_owner.write_text(str(run_dir))
    slot.dirs = dirs
    return dirs


def remove_holder(holder: Path) -> None:
    """The pool's directory a slot was prepared in, once the slot is handed over or discarded: only
    markers and empty mount points are left in it (whatever is still mounted there comes off first)."""
    run = holder / "run"
    try:  # the entries it holds, without a tree walk
        for name in (WORKSPACE_DIRNAME, BASELINE_DIRNAME):
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(run / name)
        os.unlink(run / RUN_ENDED_MARKER)
        os.rmdir(run)
        os.unlink(holder / ONE_SHOT_MARKER)
        os.rmdir(holder)
    except OSError:
        try:
            overlay.unmount_all(holder)
        except SandboxError as exc:
            logger.error("a pooled sandbox's directory %s is still mounted: %s", holder, exc)
            return
        shutil.rmtree(holder, ignore_errors=True)


def mount_pending_workspace(dirs: SandboxDirs) -> None:
    """Show the run dir's workspace (just mounted) as the pooled sandbox's /workspace."""
    assert dirs.portal is not None
    try:
        overlay.bind_mount(dirs.workspace, dirs.portal / "workspace")
    except OSError as exc:
        raise SandboxError(f"cannot show the workspace to a pooled sandbox: {exc}") from exc
