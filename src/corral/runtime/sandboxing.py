"""A run's sandbox: built from its spec and secrets, created once as a durable step, re-attached on resume."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from corral import events as ev
from corral.errors import SandboxError, SpecError
from corral.runtime import workflow
from corral.sandbox.base import Sandbox, SandboxRequest, ScopedSecret, get_backend
from corral.secrets.redact import Redactor
from corral.spec import AgentSpec
from corral.store import RunRecord

log = logging.getLogger("corral.runtime")

Emit = Callable[[ev.BaseEvent], None]


def load_secrets(
    record: RunRecord, spec: AgentSpec, redactor: Redactor
) -> tuple[dict[str, str], tuple[ScopedSecret, ...]]:
    """The sandbox's secret variables, and the host-scoped secrets its egress proxy may swap in.

    A secret without hosts is passed to commands as it is; a secret scoped to hosts is passed only
    as a placeholder that is stable for the run (so a resumed run's commands see the same one).
    """
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


def sandbox_request(record: RunRecord, spec: AgentSpec, redactor: Redactor, emit: Emit) -> SandboxRequest:
    env, scoped = load_secrets(record, spec, redactor)
    profile = spec.sandbox
    if profile.network.mode == "host":
        log.warning("run %s: network 'host': commands can reach any address this machine can", record.id)
    return SandboxRequest(
        repo=Path(record.repo),
        run_dir=Path(record.run_dir),
        env=env,
        network=profile.network,
        limits=profile.limits,
        secrets=scoped,
        on_egress=egress_sink(emit),
    )


async def open_sandbox(record: RunRecord, spec: AgentSpec, redactor: Redactor, emit: Emit) -> Sandbox:
    """Create the run's sandbox (a durable step), or re-attach the one an earlier process created."""
    backend = get_backend(spec.sandbox.backend)
    request = sandbox_request(record, spec, redactor, emit)
    created: list[Sandbox] = []

    async def create() -> dict[str, Any]:
        sandbox = await backend.create(request)
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
                {**state, "env": request.env, "secrets": request.secrets, "on_egress": request.on_egress}
            )
        except SandboxError as err:
            raise SandboxError(f"the workspace of run {record.id} is gone: {err.message}") from None
    emit(
        ev.SandboxCreated(
            key="sandbox.created", backend=backend.name, workspace=str(sandbox.workspace), isolated=backend.isolated
        )
    )
    return sandbox
