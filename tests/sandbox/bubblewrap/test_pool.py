"""The warm pool: sandboxes prepared before their repository is known, handed out, and cleaned up on every path."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from corral.events import EgressAttempted
from corral.sandbox import SandboxRequest, ScopedSecret
from corral.sandbox.bubblewrap.backend import BubblewrapSandbox, BubblewrapSandboxBackend, close_pools, drain_pools
from corral.sandbox.bubblewrap.dirs import POOL_DIRNAME, PORTAL_ROOT, SandboxDirs, sandbox_id
from corral.sandbox.bubblewrap.identity import runs_as_root
from corral.sandbox.bubblewrap.pool import pool_shape
from corral.sandbox.bubblewrap.sweep import sweep_orphans
from corral.sandbox.types import NetworkProfile
from tests.sandbox.bubblewrap.conftest import simulate_reboot
from tests.sandbox.conftest import build_repo, skip_unless_bubblewrap_runs
from tests.sandbox.host import host_footprint

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

_REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
async def backend(anyio_backend: str) -> AsyncIterator[BubblewrapSandboxBackend]:
    skip_unless_bubblewrap_runs()
    if not runs_as_root():
        pytest.skip("sandboxes are pooled only when corral runs as root")
    try:
        yield BubblewrapSandboxBackend()
    finally:
        await close_pools()


def _request(tmp_path: Path, name: str, **fields: object) -> SandboxRequest:
    repo = tmp_path / "repo"
    if not repo.exists():
        build_repo(repo, with_git=True)
    return SandboxRequest(repo=repo, run_dir=tmp_path / "runs" / name, **{"pool": 1, **fields})  # type: ignore[arg-type]


async def _pooled(
    backend: BubblewrapSandboxBackend, tmp_path: Path, name: str = "run-0", **fields: object
) -> tuple[SandboxRequest, BubblewrapSandbox]:
    """A request and a sandbox handed out for it from a pool prepared first."""
    request = _request(tmp_path, name, **fields)
    assert await backend.warm(request) == 1
    sandbox = await backend.create(request)
    assert sandbox.pooled
    return request, sandbox


def _slot_ids(tmp_path: Path) -> set[str]:
    return {sandbox_id(run) for run in (tmp_path / "runs" / POOL_DIRNAME).glob("*/run")}


def _clean(tmp_path: Path, ids: set[str], *, kept: tuple[str, ...] = ()) -> None:
    left = host_footprint(tmp_path, ids=ids)
    left["run dir contents"] = [path for path in left["run dir contents"] if Path(path).name not in kept]
    assert left == {name: [] for name in left}


async def test_a_pooled_sandbox_gets_the_requests_repository_and_leaves_nothing(
    backend: BubblewrapSandboxBackend, tmp_path: Path
) -> None:
    request = _request(tmp_path, "run-0")
    assert await backend.warm(request) == 1
    ids = _slot_ids(tmp_path)
    sandbox = await backend.create(request)
    assert isinstance(sandbox, BubblewrapSandbox) and sandbox.pooled
    assert sandbox.state()["ident"] in ids
    assert sandbox.workspace == (tmp_path / "runs" / "run-0" / "workspace").resolve()
    listing = await sandbox.exec("ls; echo made > new.txt; pwd")
    assert listing.exit_code == 0 and "README.md" in listing.stdout and listing.stdout.endswith("/workspace\n")
    assert (sandbox.workspace / "new.txt").read_text() == "made\n"  # the host's view is the sandbox's
    assert "+made" in await sandbox.diff()
    await sandbox.destroy()
    await close_pools()  # the pooled release finishes, the slot prepared meanwhile goes
    _clean(tmp_path, ids | _slot_ids(tmp_path))
    assert not (tmp_path / "runs" / POOL_DIRNAME).exists()


async def test_the_first_create_of_a_shape_makes_its_own_and_starts_the_pool(
    backend: BubblewrapSandboxBackend, tmp_path: Path
) -> None:
    first = await backend.create(_request(tmp_path, "run-0"))
    assert not first.pooled  # nothing was prepared yet
    for _ in range(200):
        if _slot_ids(tmp_path) and await backend.warm(_request(tmp_path, "probe")) == 1:
            break
        await asyncio.sleep(0.05)
    second = await backend.create(_request(tmp_path, "run-1"))
    assert second.pooled
    for sandbox in (first, second):
        assert (await sandbox.exec("cat README.md")).exit_code == 0
        await sandbox.destroy()


async def test_the_sweep_keeps_a_pool_and_what_it_handed_out_while_their_process_lives(
    backend: BubblewrapSandboxBackend, tmp_path: Path
) -> None:
    request, sandbox = await _pooled(backend, tmp_path)
    await backend.warm(request)  # a slot ready again beside the handed-out sandbox
    ids = {sandbox.state()["ident"], *_slot_ids(tmp_path)}
    report = await sweep_orphans()
    assert not [line for line in report.removed if any(ident in line for ident in ids)], report.removed
    assert sandbox.run_dir in report.in_use
    assert (await sandbox.exec("true")).exit_code == 0
    await sandbox.destroy()


async def test_a_killed_process_leaves_its_pool_to_the_next_sweep(
    backend: BubblewrapSandboxBackend, tmp_path: Path
) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from pathlib import Path
        from corral.sandbox import SandboxRequest
        from corral.sandbox.bubblewrap.backend import BubblewrapSandboxBackend
        async def main():
            repo, run_dir = Path({str(tmp_path / "repo")!r}), Path({str(tmp_path / "runs" / "run-0")!r})
            request = SandboxRequest(repo=repo, run_dir=run_dir, pool=2)
            backend = BubblewrapSandboxBackend()
            print(await backend.warm(request), flush=True)
            sandbox = await backend.create(request)
            print(sandbox.pooled, flush=True)
            await asyncio.sleep(600)
        asyncio.run(main())
        """
    )
    build_repo(tmp_path / "repo", with_git=True)
    holder = subprocess.Popen(  # noqa: ASYNC220 - its lines are read as they come, the test waits on nothing else
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=_REPO_ROOT
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "2"
        assert holder.stdout.readline().strip() == "True"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    ids = _slot_ids(tmp_path) | {SandboxDirs.of(tmp_path / "runs" / "run-0", privileged=True).id}
    assert len(ids) >= 2  # the handed-out sandbox and the slot left (its refill may have started too)
    from corral.sandbox.base import mark_run_ended

    mark_run_ended(tmp_path / "runs" / "run-0")  # the runtime's part: the handed-out sandbox's run ended
    await sweep_orphans()
    _clean(tmp_path, ids, kept=("run-ended",))
    assert not list((tmp_path / "runs" / POOL_DIRNAME).iterdir())


async def test_secrets_and_intercepted_tls_are_never_pooled(backend: BubblewrapSandboxBackend, tmp_path: Path) -> None:
    secret = ScopedSecret(name="TOKEN", value=SecretStr("s3cret"), hosts=("api.example.com",), placeholder="ph")
    assert pool_shape(_request(tmp_path, "a", secrets=(secret,))) is None
    network = NetworkProfile(mode="allowlist", allow=("example.com",), intercept_tls=True)
    assert pool_shape(_request(tmp_path, "b", network=network)) is None
    assert pool_shape(_request(tmp_path, "c", pool=0)) is None
    assert await backend.warm(_request(tmp_path, "d", secrets=(secret,))) == 0


async def test_a_pooled_sandbox_reports_egress_to_the_run_it_was_handed_to(
    backend: BubblewrapSandboxBackend, tmp_path: Path
) -> None:
    events: list[EgressAttempted] = []
    _, sandbox = await _pooled(backend, tmp_path, on_egress=events.append)
    fetch = "import urllib.request as u; u.urlopen('http://pypi.org/simple/', timeout=5)"
    result = await sandbox.exec(["/usr/bin/python3", "-c", fetch], timeout=30)
    assert result.exit_code != 0
    assert [(event.host, event.allowed) for event in events] == [("pypi.org", False)]
    await sandbox.destroy()


async def test_creating_again_over_a_pooled_sandbox_removes_it_first(
    backend: BubblewrapSandboxBackend, tmp_path: Path
) -> None:
    request, first = await _pooled(backend, tmp_path)
    old = first.state()["ident"]
    simulate_reboot(first)  # the process that made it died; creation (a durable step) runs again
    second = await backend.create(request.model_copy(update={"pool": 0}))
    assert not second.pooled and second.state().get("ident") is None
    assert not (PORTAL_ROOT / old).exists()  # the earlier attempt's sandbox was removed by its recorded id
    assert (await second.exec("cat README.md")).exit_code == 0
    await second.destroy()
    await close_pools()
    _clean(tmp_path, {old} | _slot_ids(tmp_path))


async def test_a_pooled_sandbox_is_attached_again_after_a_reboot(
    backend: BubblewrapSandboxBackend, tmp_path: Path
) -> None:
    _, sandbox = await _pooled(backend, tmp_path)
    await sandbox.exec("echo kept > note.txt && echo home > ~/h")
    state = json.loads(json.dumps(sandbox.state()))
    simulate_reboot(sandbox)
    attached = await BubblewrapSandboxBackend().attach(state)
    result = await attached.exec("cat note.txt ~/h")
    assert (result.exit_code, result.stdout) == (0, "kept\nhome\n")
    await attached.destroy()
    await close_pools()
    _clean(tmp_path, {state["ident"]} | _slot_ids(tmp_path))
    assert not os.path.exists(state["run_dir"] + "/sandbox")


async def test_a_slot_that_fails_half_way_leaves_nothing_and_creates_go_on(
    backend: BubblewrapSandboxBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from corral.sandbox.bubblewrap import pool

    made: list[str] = []

    async def broken(dirs: SandboxDirs, *args: object, **kwargs: object) -> None:
        made.append(dirs.id)  # the disk, the identity and the uid claim exist by now
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pool, "provision", broken)
    request = _request(tmp_path, "run-0")
    assert await backend.warm(request) == 0  # logged, not raised: a pool never stops a run
    assert made
    _clean(tmp_path, set(made))
    monkeypatch.undo()
    sandbox = await backend.create(request)  # made for the request, as without a pool
    assert not sandbox.pooled and (await sandbox.exec("cat README.md")).exit_code == 0
    await sandbox.destroy()


def _prepared_workspaces(tmp_path: Path) -> list[Path]:
    """The ready slots' workspaces mounted ahead (for the repository the pool served last)."""
    runs = (tmp_path / "runs" / POOL_DIRNAME).glob("*/run")
    return [run / "workspace" for run in runs if os.path.ismount(run / "workspace")]


@pytest.mark.slow
async def test_the_pool_prepares_the_workspace_of_the_repository_it_served_last(
    backend: BubblewrapSandboxBackend, tmp_path: Path
) -> None:
    made: list[BubblewrapSandbox] = []

    async def create(request: SandboxRequest) -> BubblewrapSandbox:
        made.append(await backend.create(request))
        return made[-1]

    try:
        assert await backend.warm(_request(tmp_path, "run-0")) == 1
        first = await create(_request(tmp_path, "run-0"))
        assert first.pooled
        ids = {first.state()["ident"]}
        await first.destroy()
        await drain_pools()
        assert len(_prepared_workspaces(tmp_path)) == 1  # the next slot comes with this repository mounted
        ids |= _slot_ids(tmp_path)
        repo = tmp_path / "repo"
        (repo / "README.md").write_text("changed after the workspace was prepared\n")
        second = await create(_request(tmp_path, "run-1"))
        assert second.pooled and second.workspace == (tmp_path / "runs" / "run-1" / "workspace").resolve()
        seen = await second.exec("cat README.md && echo made > new.txt && ls")
        assert seen.exit_code == 0, seen.stderr
        assert "changed after the workspace was prepared" in seen.stdout  # the live repository, as a fresh one
        patch = await second.diff()
        assert "+made" in patch and "README" not in patch
        assert not (repo / "new.txt").exists()

        # Another repository: the slot prepared for the first one is cleared and made for it.
        await drain_pools()
        ids |= _slot_ids(tmp_path)
        other = tmp_path / "other"
        build_repo(other, with_git=True)
        (other / "ONLY-HERE.md").write_text("other\n")
        third = await create(SandboxRequest(repo=other, run_dir=tmp_path / "runs" / "run-2", pool=1))
        assert third.pooled
        assert "ONLY-HERE.md" in (await third.exec("ls")).stdout
        assert "changed after" not in (await third.exec("cat README.md")).stdout
    finally:
        for sandbox in made:
            await sandbox.destroy()
    await close_pools()
    _clean(tmp_path, ids | _slot_ids(tmp_path))


@pytest.mark.slow
async def test_a_repository_replaced_or_with_foreign_entries_gets_its_workspace_at_hand_out(
    backend: BubblewrapSandboxBackend, tmp_path: Path
) -> None:
    made: list[BubblewrapSandbox] = []

    async def create(name: str) -> BubblewrapSandbox:
        made.append(await backend.create(_request(tmp_path, name)))
        return made[-1]

    try:
        assert await backend.warm(_request(tmp_path, "run-0")) == 1
        await (await create("run-0")).destroy()
        await drain_pools()
        assert len(_prepared_workspaces(tmp_path)) == 1
        repo = tmp_path / "repo"
        # The same path, another directory: the workspace prepared for the old one is not handed out.
        os.rename(repo, tmp_path / "old-repo")
        build_repo(repo, with_git=True)
        (repo / "NEW-REPO.md").write_text("new\n")
        second = await create("run-1")
        assert second.pooled and "NEW-REPO.md" in (await second.exec("ls")).stdout
        await second.destroy()
        # An entry owned by another user: its copy would go stale in the pool, so nothing is prepared ahead.
        os.chown(repo / "NEW-REPO.md", 54321, 54321)
        await (await create("run-2")).destroy()
        await drain_pools()
        assert _prepared_workspaces(tmp_path) == []
        fourth = await create("run-3")
        assert fourth.pooled
        edited = await fourth.exec("cat NEW-REPO.md && echo more >> NEW-REPO.md")
        assert edited.exit_code == 0 and "new" in edited.stdout, edited.stderr
    finally:
        for sandbox in made:
            await sandbox.destroy()
