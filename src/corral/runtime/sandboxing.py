"""A run's sandbox: built from its spec and secrets, created once as a durable step, re-attached on resume."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic import SecretStr

from corral import events as ev
from corral.errors import SandboxError, SpecError
from corral.runtime import workflow
from corral.sandbox.base import (
    EXEC_TIMEOUT,
    OUTPUT_LIMIT,
    SPILL_LIMIT,
    ExecResult,
    Sandbox,
    SandboxRequest,
    ScopedSecret,
    get_backend,
)
from corral.sandbox.patching import PatchReport, apply_patch
from corral.sandbox.view import ReadOnlyView
from corral.sandbox.workspace import copy_tree, remove_tree
from corral.secrets.redact import Redactor
from corral.spec import AgentSpec, SandboxProfile
from corral.store import RunRecord
from corral.store.identity import check_identity

log = logging.getLogger("corral.runtime")

Emit = Callable[[ev.BaseEvent], None]


def load_secrets(
    record: RunRecord, spec: AgentSpec, redactor: Redactor
) -> tuple[dict[str, str], tuple[ScopedSecret, ...]]:
    """The sandbox's secret variables, and the host-scoped secrets its egress proxy may swap in.

    A secret without hosts is passed to commands as it is; a secret scoped to hosts is passed only
    as a placeholder that is stable for the run (so a resumed run's commands see the same one).
    """
    if record.identity is not None:  # checked when it was submitted; the worker checks again before reading
        check_identity(record.identity, spec.secrets, spec.name)
    missing = [name for name in spec.secrets if not os.environ.get(name)]
    if missing:
        raise SpecError(
            f"agent '{spec.name}': secret(s) {', '.join(missing)} not set in the environment",
            hint="export them before starting (or resuming) the run",
        )
    env: dict[str, str] = {}
    scoped: list[ScopedSecret] = []
    for name, scope in spec.secrets.items():
        value = os.environ[name]
        redactor.add(name, value)
        if not scope.hosts:
            env[name] = value
            continue
        digest = hashlib.sha256(f"{record.id}:{name}".encode()).hexdigest()[:20]
        token = f"corral-placeholder-{name}-{digest}"
        scoped.append(ScopedSecret(name=name, value=SecretStr(value), hosts=scope.hosts, placeholder=token))
        env[name] = token
    return env, tuple(scoped)


def egress_sink(emit: Emit) -> Callable[[ev.EgressAttempted], None]:
    """Journal every egress attempt as the proxy reports it (from its own thread or task)."""
    loop = asyncio.get_running_loop()

    def on_egress(attempt: ev.EgressAttempted) -> None:
        loop.call_soon_threadsafe(emit, attempt)

    return on_egress


def sandbox_request(
    record: RunRecord,
    spec: AgentSpec,
    redactor: Redactor,
    emit: Emit,
    *,
    mounts: Sequence[str] = (),
    routes: Mapping[str, str] | None = None,
) -> SandboxRequest:
    """The run's sandbox as its spec says, plus what its engine needs (an external engine: its CLI,
    mounted read-only, and the route to the model gateway)."""
    env, scoped = load_secrets(record, spec, redactor)
    if spec.sandbox.network.mode == "host":
        log.warning("run %s: network 'host': commands can reach any address this machine can", record.id)
    request = profile_request(
        spec.sandbox,
        repo=Path(record.repo),
        run_dir=Path(record.run_dir),
        env=env,
        secrets=scoped,
        on_egress=egress_sink(emit),
    )
    if mounts or routes:
        added = tuple(mount for mount in mounts if mount not in request.mounts)
        # Made anew, not copied: the engine's mounts and routes are checked like a spec's.
        fields = {**dict(request), "mounts": (*request.mounts, *added), "routes": {**request.routes, **(routes or {})}}
        request = SandboxRequest(**fields)
    return request


def profile_request(
    profile: SandboxProfile,
    *,
    repo: Path,
    run_dir: Path,
    env: dict[str, str] | None = None,
    secrets: tuple[ScopedSecret, ...] = (),
    on_egress: Callable[[ev.EgressAttempted], None] | None = None,
) -> SandboxRequest:
    """What a spec's sandbox table asks of a backend: the one mapping, for runs and ``corral sandbox exec``."""
    return SandboxRequest(
        repo=repo,
        run_dir=run_dir,
        env=env or {},
        network=profile.network,
        limits=profile.limits,
        secrets=secrets,
        on_egress=on_egress,
        git_user=profile.git_user,
        package_cache=profile.package_cache,
        mounts=profile.mounts,
        pool=profile.pool,
    )


def patch_conflict(run_id: str, repo: Path, problems: Sequence[str]) -> SandboxError:
    """The error for a follow-up whose starting patch (run ``run_id``'s) no longer applies to ``repo``."""
    return SandboxError(
        f"the changes of run {run_id} do not apply to {repo} any more: {'; '.join(problems[:5]) or 'git apply failed'}",
        hint=f"`corral diff {run_id}` shows them; restore the files it changes, or start a new run",
    )


START_DIRNAME = "start"
"""In a follow-up's run directory: the repository with the patches of the runs it continues applied."""


async def prepare_start(repo: Path, run_dir: Path, patches: Sequence[tuple[str, str]], *, notes: list[str]) -> Path:
    """The tree a follow-up's workspace starts from: a copy of ``repo`` with ``patches`` applied in order.

    A patch the repository already holds (the user applied it with ``corral apply``) is skipped
    with a note; one that neither applies nor is there fails with git's report of the conflict.
    """
    start = run_dir / START_DIRNAME
    if start.exists():  # left by an earlier attempt at this durable step
        await remove_tree(start)
    run_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - one local mkdir
    await copy_tree(repo, start)
    for run_id, patch in patches:
        if not patch:
            continue
        report = await apply_patch(start, patch)
        if report.already_applied:
            notes.append(f"{repo} already holds the changes of run {run_id}; they were not applied again")
        elif not report.applies:
            raise patch_conflict(run_id, repo, report.problems)
    return start


async def open_sandbox(
    record: RunRecord,
    spec: AgentSpec,
    redactor: Redactor,
    emit: Emit,
    *,
    start_patches: Sequence[tuple[str, str]] = (),
    notes: list[str] | None = None,
    mounts: Sequence[str] = (),
    routes: Mapping[str, str] | None = None,
) -> Sandbox:
    """Create the run's sandbox (a durable step), or re-attach the one an earlier process created.

    With ``start_patches`` (a follow-up run), the workspace starts from the repository with those
    runs' patches applied (see :func:`prepare_start`), inside the same step: a resumed run never
    applies them twice.
    """
    backend = get_backend(spec.sandbox.backend)
    request = sandbox_request(record, spec, redactor, emit, mounts=mounts, routes=routes)
    created: list[Sandbox] = []
    said = [] if notes is None else notes

    async def create() -> dict[str, Any]:
        start = request
        if any(patch for _, patch in start_patches):
            tree = await prepare_start(request.repo, request.run_dir, start_patches, notes=said)
            start = request.model_copy(update={"repo": tree})
        sandbox = await backend.create(start)
        created.append(sandbox)
        return sandbox.state()  # no environment in it: secrets are re-read on resume

    try:
        state = await workflow.sandbox_step(create)
    except BaseException:
        # Created, but the step did not complete (cancelled while recording it): nobody else will
        # ever attach to this sandbox, so it goes now.
        for sandbox in created:
            await asyncio.shield(sandbox.destroy())
        raise
    if created:
        sandbox = created[0]
    else:  # the step completed in an earlier process: re-open what it made
        try:
            sandbox = await backend.attach(
                {
                    **state,
                    "env": request.exec_env(),
                    "secrets": request.secrets,
                    "on_egress": request.on_egress,
                    "routes": request.routes,
                }
            )
        except SandboxError as err:
            raise SandboxError(f"the workspace of run {record.id} is gone: {err.message}") from None
    emit(
        ev.SandboxCreated(
            key="sandbox.created",
            backend=backend.name,
            workspace=str(sandbox.workspace),
            isolated=backend.isolated,
            network=request.network.redacted(),
        )
    )
    return sandbox


class LazySandbox(Sandbox):
    """A writing subagent's sandbox, made on its first write or command: a child that only reads costs none.

    Until then it reads its parent's workspace through a read-only view, which is what a copy made at
    that moment would hold (the parent's files as they stand, with its other children's merged work).
    ``open()`` makes the real one (``open_sandbox``: a durable step, so the engine calls it before the
    tool's own step, never inside it); from then on every call goes to it. One that was never opened
    has no changes (``diff`` is empty), and nothing to suspend or destroy.
    """

    backend_name: ClassVar[str] = "lazy"

    def __init__(self, parent_workspace: Path, opener: Callable[[], Awaitable[Sandbox]]) -> None:
        self._reader = ReadOnlyView(parent_workspace)
        super().__init__(run_dir=self._reader.run_dir, snapshot=self._reader.snapshot, env={})
        self._opener = opener
        self._opened: Sandbox | None = None
        self._opening = asyncio.Lock()

    @property
    def opened(self) -> Sandbox | None:
        """The sandbox, once made."""
        return self._opened

    def reader(self) -> Sandbox:
        """What reads go to now: the parent's workspace, or the sandbox once it is made."""
        self._check_open()
        return self._reader if self._opened is None else self._opened

    async def open(self) -> None:
        self._check_open()
        async with self._opening:  # parallel tool calls make it once
            if self._opened is None:
                sandbox = await self._opener()
                self._opened = sandbox
                self.run_dir, self.snapshot, self.workspace = sandbox.run_dir, sandbox.snapshot, sandbox.workspace

    async def _made(self) -> Sandbox:
        await self.open()
        assert self._opened is not None
        return self._opened

    async def _spawn(
        self, protocol: asyncio.SubprocessProtocol, argv: list[str], *, cwd: Path, env: dict[str, str]
    ) -> asyncio.SubprocessTransport:
        raise AssertionError("LazySandbox.exec runs commands in the sandbox it makes")  # pragma: no cover

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
        sandbox = await self._made()
        return await sandbox.exec(
            command,
            timeout=timeout,
            output_limit=output_limit,
            spill_limit=spill_limit,
            cwd=cwd,
            env=env,
            on_stdout=on_stdout,
        )

    async def write_file(self, path: str, data: bytes) -> None:
        await (await self._made()).write_file(path, data)

    async def apply_patch(self, patch: str) -> PatchReport:
        return await (await self._made()).apply_patch(patch)

    async def read_file(self, path: str) -> bytes:
        return await self.reader().read_file(path)

    async def list_files(self, path: str = ".", pattern: str = "**/*") -> list[str]:
        return await self.reader().list_files(path, pattern)

    def resolve(self, path: str, *, must_exist: bool = False) -> Path:
        return self.reader().resolve(path, must_exist=must_exist)

    async def diff(self) -> str:
        self._check_open()
        if self._opened is None:
            self.left_out = None
            return ""
        patch = await self._opened.diff()
        self.left_out = self._opened.left_out
        return patch

    def state(self) -> dict[str, Any]:
        if self._opened is None:
            raise SandboxError("this sandbox is made on first use and has not been made yet")
        return self._opened.state()

    async def suspend(self) -> None:
        self._destroyed = True
        if self._opened is not None:
            await self._opened.suspend()

    async def destroy(self) -> None:
        self._destroyed = True
        if self._opened is not None:
            await self._opened.destroy()
