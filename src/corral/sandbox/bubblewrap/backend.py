"""The ``bubblewrap`` sandbox backend: Linux namespaces, seccomp, cgroup limits and a copy-on-write workspace."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import logging
import os
import shutil
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic import ValidationError

from corral.errors import SandboxError
from corral.sandbox.base import (
    EXEC_TIMEOUT,
    MINIMAL_PATH,
    OUTPUT_LIMIT,
    SPILL_LIMIT,
    ExecResult,
    Sandbox,
    SandboxBackend,
    SandboxRequest,
    SandboxState,
    ScopedSecret,
)
from corral.sandbox.bubblewrap import overlay, rootfs
from corral.sandbox.bubblewrap.dirs import (
    STATE_DIRNAME,
    SandboxDirs,
    check_mounts,
    ensure_mounted,
    hold,
    prepare_package_cache,
    privileged,
    read_identity,
    refuse_system_path,
    release_host,
    teardown,
    write_identity,
)
from corral.sandbox.bubblewrap.diskimage import loop_devices_for, wait_detached
from corral.sandbox.bubblewrap.identity import INSIDE_HOME, INSIDE_SHELL, INSIDE_USER, claim_uid, reclaim_uid
from corral.sandbox.bubblewrap.limits import (
    DISK_POLL_INTERVAL,
    LimitCounters,
    SandboxCgroup,
    apply_rlimits,
    can_limit_other_users,
    disk_usage,
    limit_notes,
    rlimit_wrapper,
    rlimits,
)
from corral.sandbox.bubblewrap.overlay import IdShift
from corral.sandbox.bubblewrap.pool import SandboxPool, hand_over, mount_pending_workspace, pool_shape, repo_key
from corral.sandbox.bubblewrap.resident import LaunchFds, ResidentInit, compiled_init, init_argv
from corral.sandbox.bubblewrap.seccomp import seccomp_available, seccomp_filter
from corral.sandbox.bubblewrap.setup import (
    Strategy,
    egress_proxy_class,
    egress_sources,
    make_disk,
    make_workspace,
    nearly_full,
    overlay_possible,
    parent_guard,
    provision,
    proxy_wanted,
    repo_owner,
    setpriv_argv,
    start_proxy,
    tmp_size_mb,
)
from corral.sandbox.bubblewrap.sweep import sweep_once
from corral.sandbox.patching import patch_paths
from corral.sandbox.types import SANDBOX_PYTHON, Limits, NetworkProfile, PackageCache
from corral.sandbox.workspace import WorkspaceSnapshot, check_paths

logger = logging.getLogger("corral.sandbox")

_EXIT_TIMEOUT = 5.0
_REFILL_DELAY_S = 0.1
_PROXY_PORT = 3128
_INSIDE_RUN = "/run/corral"
_LOCAL = f"{INSIDE_HOME}/.local"
_GIT_CONFIG = (
    # The workspace's files belong to a uid other than the command's (an idmapped view of the repo).
    ("safe.directory", "*"),
    # The repo's index holds the host's inode, device and ctime of every file; the sandbox's view has
    # other ones, so without these git re-reads every file on the first `git status` (10x slower).
    ("core.checkStat", "minimal"),
    ("core.trustctime", "false"),
)
_HOST_NETWORK_WARNING = "bubblewrap sandbox %s: network 'host': commands can reach any address this machine can"


class BubblewrapState(SandboxState):
    """``Sandbox.state()`` of a bubblewrap sandbox: enough to re-mount and re-open it after a restart."""

    strategy: Strategy
    repo: Path
    uid: int
    gid: int
    network: NetworkProfile = NetworkProfile()
    limits: Limits = Limits()
    placeholders: dict[str, str] = {}
    """Secret name to the placeholder the sandbox sees in its place."""
    disk_image: bool = False
    """Changes and home live on a loop-mounted ext4 image of ``disk_mb``: the kernel enforces the limit."""
    disk_baseline: int = 0
    """Bytes the workspace used at creation (copy strategy), subtracted before checking ``disk_mb``."""
    package_cache: PackageCache = "off"
    mounts: tuple[str, ...] = ()
    """Host directories bound read-only at the same path (bound again on every resume)."""
    ident: str | None = None
    """The sandbox's id, when it is not its run dir's (a pooled sandbox keeps the one it was prepared under)."""

    @classmethod
    def of(
        cls,
        request: SandboxRequest,
        dirs: SandboxDirs,
        *,
        uid: int,
        repo: Path,
        made: tuple[Strategy, WorkspaceSnapshot, int],
        disk_image: bool,
    ) -> BubblewrapState:
        """The state of a sandbox made for ``request`` in ``dirs``; ``made`` is ``make_workspace``'s answer."""
        strategy, snapshot, baseline = made
        return cls(
            backend="bubblewrap",
            run_dir=dirs.run_dir,
            snapshot=snapshot,
            strategy=strategy,
            repo=repo,
            uid=uid,
            gid=uid,
            network=request.network,
            limits=request.limits,
            placeholders={secret.name: secret.placeholder for secret in request.secrets},
            disk_image=disk_image,
            disk_baseline=baseline,
            package_cache=request.package_cache,
            mounts=request.mounts,
            ident=dirs.ident,
        )

    @classmethod
    def pending(cls, dirs: SandboxDirs, *, uid: int, request: SandboxRequest, disk_image: bool) -> BubblewrapState:
        """The state of a pooled sandbox before it is handed out: no repository, an empty workspace."""
        empty = WorkspaceSnapshot(workspace=dirs.pending_workspace, git_dir=dirs.git_dir, commit="")
        return cls.of(request, dirs, uid=uid, repo=dirs.run_dir, made=("overlay", empty, 0), disk_image=disk_image)


@dataclasses.dataclass
class _ExecRecord:
    """What one exec started (its key for ``_kill``), and whether the disk watcher killed it."""

    command: int | None = None
    disk_killed: bool = False


_current_exec: contextvars.ContextVar[_ExecRecord] = contextvars.ContextVar("corral_bubblewrap_exec")


@functools.cache
def bubblewrap_available() -> tuple[bool, str]:
    """Whether sandboxes can start on this machine, and a line for ``corral doctor``; probed once."""
    bwrap = shutil.which("bwrap") or "/usr/bin/bwrap"
    if not os.access(bwrap, os.X_OK):
        return False, "bwrap not found (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap)"
    ok, seccomp_detail = seccomp_available()
    if not ok:
        return False, seccomp_detail
    probe = [bwrap, *rootfs.namespace_args(network="none"), "--disable-userns", *rootfs.system_args(), "/bin/true"]
    as_user: dict[str, Any] = {"user": 65534, "group": 65534, "extra_groups": []} if privileged() else {}
    try:
        version = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=5).stdout.strip()
        result = subprocess.run(probe, capture_output=True, text=True, timeout=10, env={}, **as_user)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"bwrap cannot run: {exc}"
    if result.returncode != 0:
        return False, f"bwrap cannot create namespaces here: {result.stderr.strip() or result.returncode}"
    who = "a dedicated unprivileged uid per sandbox" if privileged() else f"your uid ({os.getuid()})"
    workspace = "overlayfs on an idmapped view of the repo" if privileged() else "a copy of the repo"
    binary, why_not = compiled_init()
    init = "compiled (C)" if binary is not None else f"Python ({why_not})"
    return True, f"{version}; commands run as {who}; workspace: {workspace}; seccomp: {seccomp_detail}; init: {init}"


class BubblewrapSandbox(Sandbox):
    """Commands run in the sandbox's namespaces, as an unprivileged uid, under seccomp and its cgroups.

    One bwrap per sandbox, started on the first exec (or ahead, ``start()``): its resident init
    (``sandbox_init.c`` compiled, or ``sandbox_init.py``) forks every command. Each command is a child
    subreaper leading its own session, so what it leaves running (double forks, ``setsid``) comes back
    to the init, which kills it when the command ends; a timeout kills the command's whole tree.
    Killing the namespace's pid 1 takes everything at once (destroy, suspend). An init that dies (a
    command may kill it: same uid) is started again by the next exec.
    """

    backend_name: ClassVar[str] = "bubblewrap"

    def __init__(
        self,
        *,
        state: BubblewrapState,
        env: Mapping[str, str],
        proxy: Any = None,
        secret_values: Sequence[str] = (),
        lock_fd: int | None = None,
        resident: ResidentInit | None = None,
        pool: SandboxPool | None = None,
        counters: LimitCounters | None = None,
    ) -> None:
        super().__init__(run_dir=state.run_dir, snapshot=state.snapshot, env=env)
        self._state = state
        self._dirs = SandboxDirs(state.run_dir, privileged=privileged(), ident=state.ident)
        self._pool = pool  # a pooled sandbox's destroy() leaves the host's side of it to its pool
        self._release: asyncio.Task[None] | None = None
        self._cgroup = self._dirs.cgroup()
        # The cgroups' kill and refusal counts, as last read (a pooled sandbox's, read while it waited).
        self._counters: LimitCounters | None = counters
        self._proxy = proxy
        self._secret_values = tuple(value for value in secret_values if value)
        self._resident = resident
        self._last_disk_usage: int | None = None
        # Held until destroy: while it is, no sweep touches this sandbox. Taken over last, so that
        # if anything above raises, the caller still owns (and closes) the fd.
        self._lock_fd = lock_fd

    # -- starting commands ----------------------------------------------------------------

    @functools.cached_property
    def _launch(self) -> tuple[list[str], list[tuple[int, tuple[int, int]]]]:
        """How bwrap is started (the commands before it) and the rlimits set on the sandbox's first process.

        Worked out when the resident init first starts, not when the sandbox is made: a pooled sandbox
        is handed out with its init running and may never need it.
        """
        state = self._state
        controllers = self._cgroup.controllers if self._cgroup else frozenset()
        limits = rlimits(state.limits, cgroup_controllers=controllers)
        # Without the right to prlimit(2) the sandbox's processes, bwrap is started through prlimit(1).
        launcher = [] if can_limit_other_users() else rlimit_wrapper(limits)
        if launcher:
            limits = []
        # The sandbox dies with this process (see ``parent_guard``): the death signal is asked for after
        # the last change of credentials (a change clears it), and a shell then checks the parent lives.
        guard, alive = parent_guard()
        check = ["/bin/sh", "-c", f'{alive} && exec "$@"', "corral-guard"]
        if privileged():
            # setpriv drops to the sandbox uid; Popen(user=...) would do it too, but only with a full fork.
            launcher = [*setpriv_argv(state.uid, state.gid, pdeathsig=True), *check, *launcher]
            if self._cgroup is not None:  # first, while it may still move
                launcher = [*self._cgroup.join_argv(), *launcher]
        elif self._cgroup is not None:
            launcher = [*guard, *self._cgroup.join_argv(first=alive), *launcher]
        else:
            launcher = [*guard, *check, *launcher]
        return launcher, limits

    def _bwrap_prefix(self) -> list[str]:
        dirs, network = self._dirs, self._state.network.mode
        extra: list[str] = []
        if self._proxy is not None:
            socket, ca = egress_sources(dirs, self._proxy)
            extra += ["--ro-bind", str(socket), f"{_INSIDE_RUN}/egress.sock"]
            if ca is not None:
                extra += ["--ro-bind", str(ca), f"{_INSIDE_RUN}/ca.pem"]
        etc_dir, etc_extra = rootfs.etc_template(network=network)
        state = self._state
        cache = [(dirs.bind_package_cache(), rootfs.PACKAGE_CACHE)] if state.package_cache != "off" else []
        # Unprivileged, a read-only cache is a read-only bind; as root it is a copy-on-write overlay.
        cache_ro = state.package_cache == "read-only" and dirs.portal is None
        memory_mb = state.limits.memory_mb
        return rootfs.sandbox_args(
            bwrap=shutil.which("bwrap") or "/usr/bin/bwrap",
            network=network,
            etc_dir=etc_dir,
            etc_extra=etc_extra,
            tmp_dir=dirs.tmp,
            home_dir=dirs.bind_home,
            workspace_source=dirs.bind_workspace,
            meminfo=rootfs.meminfo_file(memory_mb) if memory_mb is not None else None,
            cgroup_binds=self._cgroup.inside_binds() if self._cgroup is not None else (),
            binds=[] if cache_ro else cache,
            ro_binds=[(dirs.bind_mount(index, path), path) for index, path in enumerate(state.mounts)]
            + (cache if cache_ro else []),
            extra=extra,
        )

    def _base_env(self) -> dict[str, str]:
        env = {
            # ~/.local/bin first: where `pip install --user` and `npm install -g` put their commands.
            "PATH": f"{_LOCAL}/bin:{MINIMAL_PATH}",
            "HOME": INSIDE_HOME,
            "USER": INSIDE_USER,
            "LOGNAME": INSIDE_USER,
            "SHELL": INSIDE_SHELL,
            "TERM": "dumb",  # output goes to a pipe, not a terminal: no colours, no cursor movement
            "LANG": "C.UTF-8",
            "TMPDIR": "/tmp",
            "PYTHONDONTWRITEBYTECODE": "1",
            # npm -g into the home (/usr is read-only), and npm's config files are the sandbox's own.
            "npm_config_prefix": _LOCAL,
            "npm_config_globalconfig": f"{_LOCAL}/etc/npmrc",
            "npm_config_userconfig": f"{INSIDE_HOME}/.npmrc",
            # The system Python is read-only and the home is this sandbox's: `pip install --user` cannot
            # break anything PEP 668 protects. (Not PIP_USER: it would break pip inside a virtualenv.)
            "PIP_BREAK_SYSTEM_PACKAGES": "1",
            "GIT_CONFIG_COUNT": str(len(_GIT_CONFIG)),
        }
        for index, (key, value) in enumerate(_GIT_CONFIG):
            env[f"GIT_CONFIG_KEY_{index}"] = key
            env[f"GIT_CONFIG_VALUE_{index}"] = value
        if self._state.package_cache != "off":
            cache = rootfs.PACKAGE_CACHE
            # uv links from its cache into environments; across mounts that fails, so it copies.
            env |= {
                "PIP_CACHE_DIR": f"{cache}/pip",
                "npm_config_cache": f"{cache}/npm",
                "UV_CACHE_DIR": f"{cache}/uv",
                "UV_LINK_MODE": "copy",
            }
        if self._proxy is not None:
            # The proxy says what its clients need: the relay's address and, when it intercepts
            # TLS, its CA for every common client (one list: pip's and npm's included).
            ca = f"{_INSIDE_RUN}/ca.pem" if self._proxy.ca_cert_path is not None else None
            env |= self._proxy.sandbox_env(_PROXY_PORT, ca_cert_in_sandbox=ca)
        return env

    def _sandbox_env(self, env: Mapping[str, str]) -> dict[str, str]:
        """The exec's variables with every scoped secret replaced by its placeholder."""
        clean = dict(env) | self._state.placeholders
        for name, value in clean.items():
            for secret in self._secret_values:
                if secret in value:
                    clean[name] = value.replace(secret, "[redacted]")
        return clean

    @property
    def pooled(self) -> bool:
        """Whether this sandbox came from a pool of prepared ones (its destroy() then finishes in the background)."""
        return self._pool is not None

    def start(self) -> ResidentInit:
        """Start the sandbox's resident init now if it is not running (``await ….ready()`` to wait for it)."""
        self._check_open()
        if self._resident is None or not self._resident.alive:
            self._resident = ResidentInit(
                argv_for=self._init_argv, seccomp=seccomp_filter(), prepare=self._prepare, name=str(self.workspace)
            )
        return self._resident

    def _init_argv(self, fds: LaunchFds) -> list[str]:
        command = init_argv(SANDBOX_PYTHON, fds)
        if self._proxy is not None:
            command = [*self._proxy.relay_argv(f"{_INSIDE_RUN}/egress.sock", _PROXY_PORT), "--", *command]
        return [
            *self._launch[0],
            *self._bwrap_prefix(),
            "--chdir", "/",
            "--seccomp", str(fds.seccomp),
            "--info-fd", str(fds.info),
            "--block-fd", str(fds.block),
            "--",
            *command,
        ]  # fmt: skip

    def _prepare(self, child: int) -> None:
        """Put the sandbox's first process under the rlimits (bwrap started in its cgroups) before it runs anything."""
        try:
            apply_rlimits(child, self._launch[1])
        except ProcessLookupError:
            return  # bwrap's setup failed and exited meanwhile; its stderr says why
        except OSError as exc:
            raise SandboxError(f"cannot apply the sandbox's limits: {exc}") from exc

    async def _spawn(
        self, protocol: asyncio.SubprocessProtocol, argv: list[str], *, cwd: Path, env: dict[str, str]
    ) -> asyncio.SubprocessTransport:
        record = _current_exec.get(None) or _ExecRecord()
        inside_cwd = self.inside_path(cwd)
        env = self._sandbox_env(env) | {"PWD": inside_cwd}
        command = await self.start().run(protocol, argv, cwd=inside_cwd, env=env)
        record.command = command.get_pid()
        return command

    def _kill(self, pgid: int) -> None:
        # Only keys of this sandbox's commands come here (negative: never a host process group).
        if self._resident is not None and pgid < 0:
            self._resident.kill(-pgid)

    async def exec(
        self,
        command: str | Sequence[str],
        *,
        timeout: float = EXEC_TIMEOUT,  # noqa: ASYNC109 - the contract's signature
        output_limit: int = OUTPUT_LIMIT,
        spill_limit: int = SPILL_LIMIT,
        cwd: str = ".",
        env: Mapping[str, str] | None = None,
        on_stdout: Callable[[bytes], None] | None = None,
    ) -> ExecResult:
        if self._state.limits.disk_mb is not None:  # a command's output file must not use up its disk
            spill_limit = min(spill_limit, self._state.limits.disk_mb * 1024 * 1024 // 4)
        record = _ExecRecord()
        token = _current_exec.set(record)
        # The counters only grow: what the last exec read after it is where this one starts.
        before = self._counters if self._counters is not None else self._read_counters()
        self._counters = None  # read afresh by the next exec if this one raises
        polled = self._state.limits.disk_mb is not None and not self._state.disk_image
        watcher = asyncio.create_task(self._watch_disk(record)) if polled else None
        try:
            result = await super().exec(
                command,
                timeout=timeout,
                output_limit=output_limit,
                spill_limit=spill_limit,
                cwd=cwd,
                env=env,
                on_stdout=on_stdout,
            )
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            _current_exec.reset(token)
        after = self._counters = self._read_counters()
        notes = limit_notes(self._state.limits, before, after, result.exit_code, disk_killed=record.disk_killed)
        if self._state.disk_image and nearly_full(self._dirs.disk):
            notes.append(
                f"corral: workspace disk limit ({self._state.limits.disk_mb} MB) reached; delete files to go on"
            )
        if record.disk_killed:
            result = dataclasses.replace(result, exit_code=None)
        if notes:
            stderr = result.stderr + ("" if not result.stderr or result.stderr.endswith("\n") else "\n")
            result = dataclasses.replace(result, stderr=stderr + "\n".join(notes) + "\n")
        return result

    def _read_counters(self) -> LimitCounters:
        return self._cgroup.counters() if self._cgroup else LimitCounters()

    async def _watch_disk(self, record: _ExecRecord) -> None:
        """Kill the command when the workspace grows past ``disk_mb`` (checked every DISK_POLL_INTERVAL s)."""
        limit = (self._state.limits.disk_mb or 0) * 1024 * 1024
        previous = self._last_disk_usage
        while True:
            await asyncio.sleep(DISK_POLL_INTERVAL)
            try:
                used = await self._disk_used()
            except (SandboxError, OSError, ValueError) as exc:
                logger.warning("cannot measure the disk use of %s (%s); not checking it now", self.workspace, exc)
                return
            self._last_disk_usage = used
            growing = previous is None or used > previous
            if used > limit and growing and record.command is not None:
                record.disk_killed = True
                self._kill(record.command)
                return
            previous = used

    async def _disk_used(self) -> int:
        dirs = self._dirs
        tracked = [dirs.layers(self._state.repo).upper] if self._state.strategy == "overlay" else [self.workspace]
        return max(0, await disk_usage([*tracked, dirs.home]) - self._state.disk_baseline)

    # -- files, diff, state ----------------------------------------------------------------

    def inside_path(self, host_path: Path) -> str:
        """Where commands see a host path of the workspace: under /workspace, on every run and resume."""
        relative = host_path.relative_to(self.workspace).as_posix()
        return rootfs.WORKSPACE if relative == "." else f"{rootfs.WORKSPACE}/{relative}"

    def resolve(self, path: str, *, must_exist: bool = False) -> Path:
        # Commands print /workspace/...: a tool call may pass such a path back.
        text = os.fspath(path)
        inside = text == rootfs.WORKSPACE or text.startswith(rootfs.WORKSPACE + "/")
        if inside and not Path(text).is_relative_to(self.workspace):
            text = "." + text.removeprefix(rootfs.WORKSPACE)
        return super().resolve(text, must_exist=must_exist)

    async def write_file(self, path: str, data: bytes) -> None:
        # As in Sandbox.write_file, plus: what the host (root) creates is handed to the sandbox's uid,
        # through the descriptors the safe walk opened, so the agent's own tools can edit it later.
        real = self.resolve(path)
        fd = self._open_beneath(real, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, path=path, create_parents=True)
        with os.fdopen(fd, "wb") as handle:
            self._give_to_sandbox(fd)
            handle.write(data)

    def _open_dir(self, name: str, dir_fd: int, *, create: bool, path: str) -> int:
        fd = super()._open_dir(name, dir_fd, create=create, path=path)
        if create:
            self._give_to_sandbox(fd)
        return fd

    def _release_output_file(self, fd: int) -> None:
        super()._release_output_file(fd)
        self._give_to_sandbox(fd)

    async def _patched(self, patch: str) -> None:
        """Hand the sandbox's uid what ``git apply`` (run by the host) wrote: each path of the patch and the
        directories it made, walked down from the workspace root without following a symlink (a command
        may swap a directory for one meanwhile), the last component changed without being followed."""
        me = os.geteuid()
        if me == self._state.uid:
            return
        for path in await patch_paths(self.workspace, patch):
            *parents, name = Path(path).parts
            try:
                dir_fd = os.open(self.workspace, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    for part in parents:
                        next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
                        os.close(dir_fd)
                        dir_fd = next_fd
                        self._give_to_sandbox(dir_fd)
                    if os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_uid == me:
                        os.chown(name, self._state.uid, self._state.gid, dir_fd=dir_fd, follow_symlinks=False)
                finally:
                    os.close(dir_fd)
            except OSError as exc:  # deleted by the patch, or no longer what git wrote: not ours to hand over
                logger.debug("not handing %s to the sandbox: %s", path, exc)

    def _give_to_sandbox(self, fd: int) -> None:
        me = os.geteuid()
        if me != self._state.uid and os.fstat(fd).st_uid == me:
            os.fchown(fd, self._state.uid, self._state.gid)

    async def _diff(self, notes: list[str]) -> str:
        if self._state.strategy == "overlay":
            return await overlay.overlay_diff(self._dirs.layers(self._state.repo), self.snapshot.git_dir, notes=notes)
        return await super()._diff(notes)

    def state(self) -> dict[str, Any]:
        return self._state.model_dump(mode="json", exclude={"env"})

    def __del__(self) -> None:
        # Dropped without destroy(): the sandbox stays on the host (resumable), but no longer in use here.
        lock_fd = getattr(self, "_lock_fd", None)
        if lock_fd is not None:
            os.close(lock_fd)

    async def suspend(self) -> None:
        """Kill every process, stop the proxy, unmount and drop the cgroups; keep the files for ``attach``."""
        await self._close(lambda: release_host(self._dirs))

    async def destroy(self) -> None:
        """Kill every process, stop the proxy, unmount, remove the run's files and give back the uid.

        A pooled sandbox's processes are killed at once; the rest is its pool's background work
        (``SandboxPool.drain()``, ``close_pools()``), so that handing sandboxes out and back stays cheap.
        """
        if self._pool is None:
            await self._close(lambda: teardown(self._dirs, uid=self._state.uid))
            return
        if self._release is None:  # a second destroy() finds the release under way
            self._stop_commands()
            if self._resident is not None:
                self._resident.close()  # every process of the sandbox dies now, not when the release runs
            self._release = asyncio.get_running_loop().create_task(
                self._close(lambda: teardown(self._dirs, uid=self._state.uid))
            )
            self._pool.defer(self._release)

    async def _close(self, release: Callable[[], Awaitable[None]]) -> None:
        """What suspend and destroy share: no process, no proxy, then ``release`` the host's side, then the lock."""
        self._stop_commands()
        try:
            if self._resident is not None:
                resident, self._resident = self._resident, None
                resident.close()
                await resident.wait_closed()
            if self._proxy is not None:
                proxy, self._proxy = self._proxy, None
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(proxy.stop(), _EXIT_TIMEOUT)
        finally:  # cancelled while waiting, the host's side is still given back
            try:
                await release()
            finally:
                if self._lock_fd is not None:
                    lock_fd, self._lock_fd = self._lock_fd, None
                    os.close(lock_fd)


_pools: dict[tuple[int, str], SandboxPool] = {}
"""This process's pools, by event loop and shape (a slot's egress proxy serves on the loop that made it)."""


def _pool_for(shape: str, request: SandboxRequest) -> SandboxPool:
    key = (id(asyncio.get_running_loop()), shape)
    pool = _pools.get(key)
    if pool is None:
        pool = _pools[key] = SandboxPool(template=request.model_copy(update={"on_egress": None}), size=request.pool)
    return pool


def _loop_pools() -> list[tuple[int, str]]:
    """The keys of the running loop's pools."""
    loop = id(asyncio.get_running_loop())
    return [key for key in _pools if key[0] == loop]


async def drain_pools() -> None:
    """Wait until every pooled sandbox destroyed so far is released and every pool refilled (this loop's)."""
    for key in _loop_pools():
        await _pools[key].drain()
        await _pools[key].filled()


async def close_pools() -> None:
    """Destroy the prepared sandboxes of this loop's pools and finish every pooled sandbox's release;
    every pool is closed even when one fails, then the first failure is raised.

    A long-lived process calls it before it exits; a process that dies instead leaves its slots to the
    next sweep (they are marked ended from the start).
    """
    failures: list[Exception] = []
    for key in _loop_pools():
        try:
            await _pools.pop(key).close()
        except Exception as exc:
            failures.append(exc)
    if failures:
        raise failures[0]


async def _emptied(cgroup: SandboxCgroup) -> None:
    """Kill every process in the sandbox's cgroups and wait (a few seconds at most) until none is left."""
    deadline = asyncio.get_running_loop().time() + _EXIT_TIMEOUT
    cgroup.kill_all()
    while cgroup.processes() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
        cgroup.kill_all()


class BubblewrapSandboxBackend(SandboxBackend):
    """Isolated sandboxes with bubblewrap: the default backend wherever ``bubblewrap_available()`` holds."""

    name: ClassVar[str] = "bubblewrap"
    isolated: ClassVar[bool] = True

    async def create(self, request: SandboxRequest) -> BubblewrapSandbox:
        ok, detail = bubblewrap_available()
        if not ok:
            raise SandboxError(
                f"the bubblewrap sandbox cannot run here: {detail}",
                hint="fix the cause above, or choose the `local` backend explicitly (no isolation)",
            )
        await sweep_once()  # what sandboxes of dead processes left behind, once per process
        repo, workspace, _git_dir = check_paths(Path(request.repo), Path(request.run_dir))
        refuse_system_path(workspace)
        check_mounts(request.mounts, repo=repo, run_dir=workspace.parent)
        if request.package_cache != "off":
            prepare_package_cache()
        # Creation is a durable step: it may run again, over what an earlier attempt made.
        earlier = SandboxDirs.of(workspace.parent, privileged=privileged())
        await teardown(earlier, uid=read_identity(earlier))
        shape = pool_shape(request)
        if shape is not None:
            pooled = await self._from_pool(shape, request, repo)
            if pooled is not None:
                return pooled
        dirs = SandboxDirs(workspace.parent, privileged=privileged())
        proxy_class = egress_proxy_class() if proxy_wanted(request.network) else None
        dirs.state.mkdir()
        lock_fd = hold(dirs)
        uid = claim_uid(dirs.run_dir, state_dirname=STATE_DIRNAME)
        proxy: Any = None
        try:
            write_identity(dirs, uid)
            shift = IdShift(*repo_owner(repo), uid, uid)
            disk_image = await make_disk(dirs, request.limits, overlay_possible=overlay_possible(dirs, repo))
            strategy, snapshot, baseline = await make_workspace(dirs, repo, shift)
            if strategy == "copy" and disk_image:  # the copy is not on the image: fall back to polling
                overlay.unmount_all(dirs.disk)
                dirs.image.unlink()
                dirs.image_owner.unlink(missing_ok=True)
                disk_image = False
            proxy = await provision(
                dirs,
                request,
                uid,
                repo=repo,
                strategy=strategy,
                shift=shift,
                disk_image=disk_image,
                proxy_class=proxy_class,
            )
            state = BubblewrapState.of(
                request, dirs, uid=uid, repo=repo, made=(strategy, snapshot, baseline), disk_image=disk_image
            )
            values = [secret.value.get_secret_value() for secret in request.secrets]
            sandbox = BubblewrapSandbox(
                state=state, env=request.exec_env(), proxy=proxy, secret_values=values, lock_fd=lock_fd
            )
        except BaseException:
            try:
                if proxy is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(proxy.stop(), _EXIT_TIMEOUT)
                await teardown(dirs, uid=uid)
            finally:
                os.close(lock_fd)
            raise
        if request.network.mode == "host":
            logger.warning(_HOST_NETWORK_WARNING, sandbox.workspace)
        return sandbox

    async def close(self) -> None:
        await close_pools()

    async def warm(self, request: SandboxRequest) -> int:
        """Prepare ``request.pool`` sandboxes of the request's shape now (a server calls it at start-up);
        the number ready. 0 when the request cannot be pooled (see ``SandboxRequest.pool``)."""
        shape = pool_shape(request)
        return 0 if shape is None else await _pool_for(shape, request).filled()

    async def _from_pool(self, shape: str, request: SandboxRequest, repo: Path) -> BubblewrapSandbox | None:
        """A prepared sandbox of the request's shape with the request's workspace, or None (none ready)."""
        pool = _pool_for(shape, request)
        slot = pool.take(repo)
        if slot is None:
            pool.fill()
            return None
        holder = slot.holder
        try:
            # Its workspace was prepared for this repository (the same directory, owner unchanged), and the
            # run dir can hold it: moved there. Otherwise made now, as create() makes it.
            target = SandboxDirs(request.run_dir, privileged=True, ident=slot.dirs.id)
            prepared = slot.workspace_for is not None and slot.workspace_for == repo_key(repo)
            prepared = prepared and target.layers(repo).usable()
            if slot.workspace_for is not None and not prepared:
                slot.clear_workspace()
            dirs = hand_over(slot, request.run_dir)
            if prepared:
                strategy, snapshot, baseline = slot.made_for(dirs)
            else:
                shift = IdShift(*repo_owner(repo), slot.uid, slot.uid)
                strategy, snapshot, baseline = await make_workspace(dirs, repo, shift)
                mount_pending_workspace(dirs)
            if slot.proxy is not None:
                slot.proxy.report_to(request.on_egress)
            state = BubblewrapState.of(
                request,
                dirs,
                uid=slot.uid,
                repo=repo,
                made=(strategy, snapshot, baseline),
                disk_image=slot.disk_image and strategy == "overlay",  # a copy is not on the image
            )
            sandbox = BubblewrapSandbox(
                state=state,
                env=request.exec_env(),
                proxy=slot.proxy,
                lock_fd=slot.lock_fd,
                resident=slot.resident,
                pool=pool,
                counters=slot.counters,
            )
        except BaseException:
            await slot.discard()  # what is left of it is in the run dir now, and its holder
            raise
        else:
            slot.holder = None
            if holder is not None:
                pool.spent(holder)
        finally:
            # The next slot is prepared once this sandbox is handed out and has started its first work:
            # on a small machine, preparing one (bwrap, a disk image) competes with its first commands.
            pool.fill_later(_REFILL_DELAY_S)
        if request.network.mode == "host":
            logger.warning(_HOST_NETWORK_WARNING, sandbox.workspace)
        return sandbox

    async def attach(self, state: dict[str, Any]) -> BubblewrapSandbox:
        """Re-open a sandbox; mounts and cgroups lost to a reboot are made again.

        Like ``env``, an allowlist sandbox's ``secrets`` (ScopedSecret objects), ``on_egress`` and ``routes``
        may be passed back in ``state``: the restarted egress proxy needs them and the recorded state has none
        (a route names a service of the process that re-opens the sandbox, on a port of its own).
        """
        self._load_state(state)
        try:
            recorded = {key: value for key, value in state.items() if key not in ("secrets", "on_egress", "routes")}
            parsed = BubblewrapState.model_validate(recorded)
        except ValidationError as exc:
            raise SandboxError(f"not a bubblewrap sandbox state: {exc.error_count()} invalid field(s)") from exc
        dirs = SandboxDirs(parsed.run_dir, privileged=privileged(), ident=parsed.ident)
        try:
            lock_fd = hold(dirs)
        except (FileNotFoundError, NotADirectoryError):
            raise SandboxError(f"sandbox is gone: {dirs.state} no longer exists") from None
        try:
            return await self._reopen(parsed, dirs, state, lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise

    async def _reopen(
        self, parsed: BubblewrapState, dirs: SandboxDirs, state: dict[str, Any], lock_fd: int
    ) -> BubblewrapSandbox:
        if not reclaim_uid(parsed.uid, dirs.run_dir, state_dirname=STATE_DIRNAME):
            raise SandboxError(f"sandbox uid {parsed.uid} is now held by another sandbox; cannot re-open it")
        shift = IdShift(*repo_owner(parsed.repo), parsed.uid, parsed.gid)
        check_mounts(parsed.mounts, repo=parsed.repo, run_dir=parsed.run_dir)
        if parsed.package_cache != "off":
            prepare_package_cache()
        cgroup = dirs.cgroup()
        if cgroup is not None:
            # Processes left by the corral that died are nobody's now, and the mounts they still hold
            # (a disk image's filesystem, with writes not yet on the image) must be gone before the
            # workspace is mounted again.
            cgroup.create(parsed.limits)
            await _emptied(cgroup)
        if parsed.disk_image and str(dirs.disk) not in overlay.mount_points() and loop_devices_for(dirs.image):
            # Its filesystem is still mounted in a namespace the kernel is tearing down: a second mount of
            # the image now would be a second filesystem over the same blocks, missing the first's writes.
            held = await wait_detached(dirs.image)
            if held:
                raise SandboxError(f"sandbox's disk image {dirs.image} is still in use ({', '.join(held)})")
        try:
            ensure_mounted(
                dirs,
                repo=parsed.repo,
                strategy=parsed.strategy,
                shift=shift,
                tmp_mb=tmp_size_mb(parsed.limits),
                disk_image=parsed.disk_image,
                package_cache=parsed.package_cache,
                mounts=parsed.mounts,
            )
        except OSError as exc:
            raise SandboxError(f"sandbox is gone: its workspace cannot be mounted again ({exc})") from exc
        secrets = tuple(ScopedSecret.model_validate(secret) for secret in state.get("secrets", ()))
        proxy = None
        if proxy_wanted(parsed.network):
            request = SandboxRequest(
                repo=parsed.repo,
                run_dir=parsed.run_dir,
                network=parsed.network,
                secrets=secrets,
                on_egress=state.get("on_egress"),
                routes=state.get("routes") or {},
            )
            proxy = await start_proxy(egress_proxy_class(), request, dirs, parsed.uid)
        elif parsed.network.mode == "host":
            logger.warning(_HOST_NETWORK_WARNING, parsed.snapshot.workspace)
        values = [secret.value.get_secret_value() for secret in secrets]
        return BubblewrapSandbox(state=parsed, env=parsed.env, proxy=proxy, secret_values=values, lock_fd=lock_fd)
