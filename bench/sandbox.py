"""Sandbox benchmark: what each backend costs per command and per sandbox, next to the floors it builds on.

    .venv/bin/python bench/sandbox.py [--iterations N] [--files N] [--json]

Measures, in one run: create + exec ``true`` + destroy and exec alone for every backend; the fork+exec
floors (asyncio, subprocess, raw bwrap); time to a ready workspace for a generated repository, by each
backend and by the raw strategies a backend could use (cp, reflink, hardlinks, overlayfs, git
worktree, tar); and ``diff()`` after three edits. Figures are printed as a table, or as JSON with
``--json`` (the table then goes to stderr). docs/BENCHMARKS.md records them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as `python bench/sandbox.py`: put the project root on the path so `bench.support` imports.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.strategies import measure_file_creation, measure_git_diff_peer, measure_strategies
from bench.support import (
    CHANGED_FILES,
    BenchError,
    Phases,
    Result,
    Setup,
    changed_paths,
    check_patch,
    describe,
    generate_repo,
    machine_facts,
    now_ms,
    percentile,
    progress,
    repeat,
    repeat_async,
)
from corral.sandbox.base import MINIMAL_PATH, ExecResult, Sandbox, SandboxBackend, SandboxRequest, get_backend

SCHEMA = "corral.bench.sandbox/1"
BACKENDS = ("bubblewrap", "local")
FLOOR_ID = "floor/asyncio_exec"
SEED = 20261201
EXEC_TIMEOUT = 10.0
LIFECYCLE_RATIO_TARGET = 3.0
EXEC_RATIO_TARGET = 2.0
WORKSPACE_TARGET_MS = 50.0


# -- fork+exec floors -------------------------------------------------------------------------

_SPAWN_ENV = {"PATH": MINIMAL_PATH, "LANG": "C.UTF-8"}


def _async_spawn(
    argv: Sequence[str], *, like_exec: bool = False, cwd: Path | None = None
) -> Callable[[], Awaitable[Phases]]:
    """A trial that starts ``argv`` with asyncio and waits for it; ``like_exec`` adds what Sandbox.exec
    sets up around its process (stdin from /dev/null, two pipes read to EOF, a new session, an env)."""

    async def trial() -> Phases:
        start = now_ms()
        if like_exec:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                cwd=cwd,
                env=_SPAWN_ENV,
            )
            await process.communicate()
        else:
            process = await asyncio.create_subprocess_exec(*argv)
            await process.wait()
        elapsed = now_ms() - start
        if process.returncode != 0:
            raise BenchError(f"{argv[0]} exited {process.returncode}")
        return {"total": elapsed}

    return trial


def bwrap_argv(*, share_net: bool = False) -> list[str]:
    """A minimal bwrap call running ``true``: read-only /usr (and the merged-/usr links), /proc, /dev."""
    argv = ["bwrap", "--unshare-all", *(["--share-net"] if share_net else []), "--die-with-parent"]
    argv += ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/", name)
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            argv += ["--ro-bind", str(path), str(path)]
    return [*argv, "--proc", "/proc", "--dev", "/dev", "--", "true"]


async def measure_floors(setup: Setup) -> list[Result]:
    rows: list[Result] = []
    floors = [
        (FLOOR_ID, "asyncio.create_subprocess_exec('true') + wait  [the floor]", ["true"], False),
        ("floor/asyncio_exec_pipes", "same, set up like Sandbox.exec (pipes, new session, env)", ["true"], True),
        ("floor/asyncio_sh", "asyncio: /bin/sh -c true, set up like Sandbox.exec", ["/bin/sh", "-c", "true"], True),
        ("floor/bwrap", "raw bwrap --unshare-all (minimal binds) true", bwrap_argv(), False),
        (
            "floor/bwrap_share_net",
            "raw bwrap --unshare-all --share-net (minimal binds) true",
            bwrap_argv(share_net=True),
            False,
        ),
    ]
    for row_id, label, argv, like_exec in floors:
        progress(row_id)
        row = Result(row_id, label)
        if shutil.which(argv[0]) is None:
            row.status, row.reason = "unavailable", f"{argv[0]} is not installed"
        else:
            trial = _async_spawn(argv, like_exec=like_exec, cwd=setup.small_repo)
            await repeat_async(row, trial, iterations=setup.iterations, warmup=setup.warmup)
        rows.append(row)
    return rows


def measure_subprocess_run(setup: Setup) -> Result:
    progress("floor/subprocess_run")

    def trial() -> Phases:
        start = now_ms()
        subprocess.run(["true"], check=True)
        return {"total": now_ms() - start}

    result = Result("floor/subprocess_run", "subprocess.run(['true'])  [reference]")
    return repeat(result, trial, iterations=setup.iterations, warmup=setup.warmup)


# -- backends ---------------------------------------------------------------------------------


class HelperTrace:
    """Times each helper command the sandbox modules run through ``corral.sandbox.proc.run_process``
    (cp, git, rm...), by name.

    It wraps that function wherever a loaded ``corral.sandbox`` module holds it: the only way to see
    inside create() and destroy() without changing them. Work done any other way is "other".
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        from corral.sandbox import proc

        original = proc.run_process

        async def traced(argv: Any, **kwargs: Any) -> Any:
            start = now_ms()
            try:
                return await original(argv, **kwargs)
            finally:
                self.calls.append((_helper_name(list(argv)), now_ms() - start))

        holders = [
            module
            for name, module in list(sys.modules.items())
            if name.startswith("corral.sandbox") and getattr(module, "run_process", None) is original
        ]
        for module in holders:
            vars(module)["run_process"] = traced
        try:
            yield
        finally:
            for module in holders:
                vars(module)["run_process"] = original

    def take(self, phase: str) -> Phases:
        taken: Phases = {}
        for name, ms in self.calls:
            taken[f"{phase}: {name}"] = taken.get(f"{phase}: {name}", 0.0) + ms
        self.calls.clear()
        return taken


def _helper_name(argv: list[str]) -> str:
    name = Path(argv[0]).name
    if name != "git":
        return name
    args = iter(argv[1:])
    for arg in args:
        if arg == "-c":
            next(args, None)
        elif not arg.startswith("-"):
            return f"git {arg}"
    return "git"


def _check_exit(result: ExecResult, command: str | list[str]) -> None:
    if result.exit_code != 0:
        raise BenchError(f"exec({command!r}) exited {result.exit_code}: {result.stderr.strip()[:300]}")


async def _create(backend: SandboxBackend, repo: Path, setup: Setup) -> Sandbox:
    return await backend.create(SandboxRequest(repo=repo, run_dir=setup.fresh("run")))


async def _destroy(sandbox: Sandbox) -> None:
    await sandbox.destroy()
    shutil.rmtree(sandbox.run_dir, ignore_errors=True)  # the emptied run dir; not part of the contract's cost


def _lifecycle(backend: SandboxBackend, setup: Setup, command: str | list[str]) -> Callable[[], Awaitable[Phases]]:
    async def trial() -> Phases:
        start = now_ms()
        sandbox = await _create(backend, setup.small_repo, setup)
        created = now_ms()
        try:
            result = await sandbox.exec(command, timeout=EXEC_TIMEOUT)
            executed = now_ms()
        finally:
            await sandbox.destroy()
        destroyed = now_ms()
        shutil.rmtree(sandbox.run_dir, ignore_errors=True)
        _check_exit(result, command)
        return {
            "total": destroyed - start,
            "create": created - start,
            "exec": executed - created,
            "destroy": destroyed - executed,
        }

    return trial


def _pooled_lifecycle(backend: SandboxBackend, setup: Setup) -> Callable[[], Awaitable[Phases]]:
    """create + exec(['true']) + destroy of a sandbox from a warm pool, the pool idle and ready first.

    The pool's background work is timed too, outside the total: preparing the slot that replaces the
    one handed out, and releasing the destroyed sandbox (unmounts, removal, uid).
    """
    from corral.sandbox.bubblewrap.backend import drain_pools

    async def trial() -> Phases:
        request = SandboxRequest(repo=setup.small_repo, run_dir=setup.fresh("run"), pool=1)
        await drain_pools()  # untimed: the last sandbox released, a slot ready, nothing in the background
        if await backend.warm(request) != 1:  # type: ignore[attr-defined] - bubblewrap's
            raise BenchError("the pool could not prepare a sandbox")
        start = now_ms()
        sandbox = await backend.create(request)
        created = now_ms()
        try:
            result = await sandbox.exec(["true"], timeout=EXEC_TIMEOUT)
            executed = now_ms()
        finally:
            await sandbox.destroy()
        destroyed = now_ms()
        if not getattr(sandbox, "pooled", False):
            raise BenchError("create() did not take the prepared sandbox")
        _check_exit(result, ["true"])
        await drain_pools()
        settled = now_ms()
        shutil.rmtree(sandbox.run_dir, ignore_errors=True)
        return {
            "total": destroyed - start,
            "create": created - start,
            "exec": executed - created,
            "destroy": destroyed - executed,
            "background: release + prepare the next": settled - destroyed,
        }

    return trial


def _exec_only(sandbox: Sandbox, command: str | list[str]) -> Callable[[], Awaitable[Phases]]:
    async def trial() -> Phases:
        start = now_ms()
        result = await sandbox.exec(command, timeout=EXEC_TIMEOUT)
        elapsed = now_ms() - start
        _check_exit(result, command)
        return {"total": elapsed}

    return trial


def _traced_lifecycle(backend: SandboxBackend, repo: Path, setup: Setup) -> Callable[[], Awaitable[Phases]]:
    """create() then destroy(), split into the helper commands each ran and the rest ("other")."""
    trace = HelperTrace()

    async def trial() -> Phases:
        with trace.installed():
            start = now_ms()
            sandbox = await _create(backend, repo, setup)
            ready = now_ms()
            create_steps = trace.take("create")
            await sandbox.destroy()
            destroyed = now_ms()
            destroy_steps = trace.take("destroy")
        shutil.rmtree(sandbox.run_dir, ignore_errors=True)
        phases: Phases = {"total": destroyed - start}
        for phase, elapsed, steps in (
            ("create", ready - start, create_steps),
            ("destroy", destroyed - ready, destroy_steps),
        ):
            phases |= {phase: elapsed, **steps, f"{phase}: other": elapsed - sum(steps.values())}
        return phases

    return trial


def _diff_trial(sandbox: Sandbox, expected: list[str]) -> Callable[[], Awaitable[Phases]]:
    async def trial() -> Phases:
        start = now_ms()
        patch = await sandbox.diff()
        elapsed = now_ms() - start
        check_patch(patch, expected, made_by="diff()")
        return {"total": elapsed}

    return trial


async def measure_backend(name: str, setup: Setup) -> list[Result]:
    files = setup.large.files
    rows = {
        "lifecycle_sh": Result(f"lifecycle/{name}/sh", f"{name}: create + exec('true') + destroy"),
        "lifecycle_argv": Result(f"lifecycle/{name}/argv", f"{name}: create + exec(['true']) + destroy"),
        "exec_sh": Result(f"exec/{name}/sh", f"{name}: exec('true')  (through /bin/sh -c)"),
        "exec_argv": Result(f"exec/{name}/argv", f"{name}: exec(['true'])  (no shell)"),
        "breakdown_small": Result(f"breakdown/{name}/small", f"{name}: create + destroy, tiny repo"),
        "workspace": Result(f"workspace/{name}", f"{name}: create() until ready (phase: destroy)"),
        "breakdown_large": Result(f"breakdown/{name}/large", f"{name}: create + destroy, {files} files"),
        "diff": Result(f"diff/{name}", f"{name}: diff() with {CHANGED_FILES} files changed"),
    }
    progress(f"{name}: probing")
    backend, reason = await _probe(name, setup)
    if backend is None:
        for row in rows.values():
            row.status, row.reason = "unavailable", reason
        return list(rows.values())
    n, warmup, n_ws = setup.iterations, setup.warmup, setup.workspace_iterations
    for key, command in (("lifecycle_sh", "true"), ("lifecycle_argv", ["true"])):
        progress(rows[key].id)
        await repeat_async(rows[key], _lifecycle(backend, setup, command), iterations=n, warmup=warmup)
    pooled = Result(f"lifecycle/{name}/pooled", f"{name}, from a warm pool: create + exec(['true']) + destroy")
    if hasattr(backend, "warm") and os.geteuid() == 0:
        from corral.sandbox.bubblewrap.backend import close_pools

        progress(pooled.id)
        try:
            await repeat_async(pooled, _pooled_lifecycle(backend, setup), iterations=n, warmup=warmup)
        finally:
            await close_pools()
        rows["lifecycle_pooled"] = pooled
    sandbox = await _create(backend, setup.small_repo, setup)
    try:
        for key, command in (("exec_sh", "true"), ("exec_argv", ["true"])):
            progress(rows[key].id)
            await repeat_async(rows[key], _exec_only(sandbox, command), iterations=n, warmup=warmup)
    finally:
        await _destroy(sandbox)
    progress(rows["breakdown_small"].id)
    await repeat_async(
        rows["breakdown_small"], _traced_lifecycle(backend, setup.small_repo, setup), iterations=n, warmup=warmup
    )
    progress(rows["workspace"].id)
    # One traced pass gives both rows: tracing adds a list append per helper command.
    large = await repeat_async(
        rows["breakdown_large"], _traced_lifecycle(backend, setup.large.path, setup), iterations=n_ws, warmup=1
    )
    rows["workspace"].status, rows["workspace"].reason = large.status, large.reason
    if large.status == "ok":
        rows["workspace"].phases = {"total": large.phases["create"], "destroy": large.phases["destroy"]}
    progress(rows["diff"].id)
    strategy = await _measure_diff(rows["diff"], backend, setup)
    if strategy is not None:  # a backend that picks its workspace strategy records it in state()
        for key in ("workspace", "diff"):
            rows[key].note = f"workspace strategy: {strategy}"
    return list(rows.values())


async def _probe(name: str, setup: Setup) -> tuple[SandboxBackend | None, str | None]:
    """The backend, if a create + exec('true') + destroy works; otherwise why not."""
    try:
        backend = get_backend(name)
        sandbox = await _create(backend, setup.small_repo, setup)
        try:
            _check_exit(await sandbox.exec("true", timeout=EXEC_TIMEOUT), "true")
        finally:
            await _destroy(sandbox)
    except Exception as exc:  # anything the backend raises makes its rows unavailable, with the reason
        return None, describe(exc)
    return backend, None


async def _measure_diff(row: Result, backend: SandboxBackend, setup: Setup) -> str | None:
    """Time diff() after editing three files; return the workspace strategy the sandbox's state names."""
    try:
        sandbox = await _create(backend, setup.large.path, setup)
    except Exception as exc:  # recorded in the row like any trial failure
        row.status, row.reason = "failed", describe(exc)
        return None
    try:
        strategy = sandbox.state().get("strategy")
        for path in changed_paths(setup.large):
            await sandbox.write_file(path, await sandbox.read_file(path) + b"changed by the benchmark\n")
        trial = _diff_trial(sandbox, changed_paths(setup.large))
        await repeat_async(row, trial, iterations=setup.workspace_iterations, warmup=1)
    finally:
        await _destroy(sandbox)
    return str(strategy) if strategy is not None else None


# -- report -------------------------------------------------------------------------------------

_GROUPS = {
    "floor": "fork+exec floors: start `true` and wait for it",
    "lifecycle": "per sandbox: create + exec + destroy (tiny repo: 2 files, no .git)",
    "exec": "per command: exec on an already-created sandbox",
    "workspace": "workspace ready from a {files}-file repo (backend create(), raw strategies)",
    "diff": "diff() on the {files}-file workspace",
    "breakdown": "where create()/destroy() time goes (p50 of each helper command)",
}


def targets(results: dict[str, Result], files: int) -> list[dict[str, Any]]:
    floor = results[FLOOR_ID].p50() if FLOOR_ID in results else None
    found: list[dict[str, Any]] = []
    for row_id, limit, what in (
        ("lifecycle/bubblewrap/pooled", LIFECYCLE_RATIO_TARGET, "bubblewrap pooled create+exec+destroy"),
        ("exec/bubblewrap/argv", EXEC_RATIO_TARGET, "bubblewrap exec(['true']) on an existing sandbox"),
    ):
        if row_id in results:
            found.append(_ratio_target(f"target/{row_id}_vs_floor", what, results[row_id], floor, limit))
    for name in BACKENDS:
        lifecycle, ready = results.get(f"lifecycle/{name}/sh"), results.get(f"workspace/{name}")
        if lifecycle is not None:
            what = f"{name} create+exec+destroy"
            found.append(
                _ratio_target(f"target/{name}/lifecycle_vs_floor", what, lifecycle, floor, LIFECYCLE_RATIO_TARGET)
            )
        if ready is not None:
            p50 = ready.p50()
            found.append(
                {
                    "id": f"target/{name}/workspace_ready",
                    "description": f"{name} workspace ready in <= {WORKSPACE_TARGET_MS:g} ms for {files} files (p50)",
                    "measured": round(p50, 3) if p50 is not None else None,
                    "limit": WORKSPACE_TARGET_MS,
                    "met": p50 <= WORKSPACE_TARGET_MS if p50 is not None else None,
                    "reason": None if p50 is not None else ready.reason,
                }
            )
    return found


def _ratio_target(target_id: str, what: str, row: Result, floor: float | None, limit: float) -> dict[str, Any]:
    """A target of the form "``what`` p50 within ``limit``x of the floor's p50", measured on ``row``."""
    p50 = row.p50()
    ratio = p50 / floor if p50 is not None and floor else None
    return {
        "id": target_id,
        "description": f"{what} p50 within {limit:g}x of raw fork+exec p50",
        "measured": round(ratio, 2) if ratio is not None else None,
        "limit": limit,
        "met": ratio <= limit if ratio is not None else None,
        "reason": None if ratio is not None else row.reason,
    }


def render_table(report: dict[str, Any], results: list[Result]) -> str:
    machine, parameters, large = report["machine"], report["parameters"], report["repos"]["large"]
    fs = machine["tmpdir_filesystem"]
    lines = [
        f"corral sandbox benchmark, {report['date']}: {machine['cpu_model']} ({machine['usable_cores']} cores), "
        f"{machine['memory_gib']} GiB, {machine['os']}, Linux {machine['kernel']}, "
        f"{fs['type']} at {machine['tmpdir']}, {machine['bwrap']}, Python {machine['python']}",
        f"iterations {parameters['iterations']} (warm-up {parameters['warmup']}); workspace iterations "
        f"{parameters['workspace_iterations']} (warm-up 1); repo {large['files']} files, {large['directories']} dirs, "
        f"{large['bytes'] / 1e6:.1f} MB",
    ]
    by_id = {row.id: row for row in results}
    references = {"floor": FLOOR_ID, "lifecycle": FLOOR_ID, "exec": FLOOR_ID, "diff": "diff/git_diff"}
    for group, title in _GROUPS.items():
        rows = [row for row in results if row.group == group]
        if not rows:
            continue
        reference = by_id.get(references.get(group, ""))
        base = reference.p50() if reference else None
        ratio_title = {"workspace": f"/{WORKSPACE_TARGET_MS:g}ms", "diff": "x peer"}.get(group, "x floor")
        lines += ["", title.format(files=large["files"])]
        lines.append(f"  {'':64} {'n':>4} {'p50 ms':>9} {'p90 ms':>9} {ratio_title:>8}  phases (p50 ms)")
        for row in rows:
            lines += _render_row(row, WORKSPACE_TARGET_MS if group == "workspace" else base)
    lines += ["", "targets"]
    for target in report["targets"]:
        verdict = {True: "met", False: "MISSED", None: "pending"}[target["met"]]
        measured = target["measured"] if target["measured"] is not None else target["reason"]
        lines.append(f"  {target['description']}: {measured} -> {verdict}")
    return "\n".join(lines)


def _render_row(row: Result, base: float | None) -> list[str]:
    if row.status != "ok":
        return [f"  {row.label:64} {row.status}: {row.reason}"]
    total = row.phases["total"]
    p50, p90 = percentile(total, 0.5), percentile(total, 0.9)
    ratio = f"{p50 / base:.1f}" if base else ""
    if row.group == "breakdown":
        lines = [f"  {row.label:64} {len(total):>4} {p50:>9.2f} {p90:>9.2f} {ratio:>8}"]
        for phase, samples in row.phases.items():
            if phase != "total":
                lines.append(
                    f"      {phase:60} {'':>4} {percentile(samples, 0.5):>9.2f} {percentile(samples, 0.9):>9.2f}"
                )
        return lines
    phases = ", ".join(f"{name} {percentile(ms, 0.5):.2f}" for name, ms in row.phases.items() if name != "total")
    return [f"  {row.label:64} {len(total):>4} {p50:>9.2f} {p90:>9.2f} {ratio:>8}  {phases}"]


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100, help="timed runs per per-command row (default 100)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first (default: iterations/10, >= 2)")
    parser.add_argument("--files", type=int, default=10_000, help="files in the generated repo (default 10000)")
    parser.add_argument(
        "--workspace-iterations",
        type=int,
        default=None,
        help="timed runs per workspace/diff row (default: min(iterations, 10))",
    )
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated (default: bubblewrap,local)")
    parser.add_argument(
        "--tmpdir", type=Path, default=Path(tempfile.gettempdir()), help="where repos and workspaces go"
    )
    parser.add_argument("--json", action="store_true", help="print JSON on stdout (the table goes to stderr)")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.files < 1:
        parser.error("--iterations and --files must be at least 1")
    args.warmup = args.warmup if args.warmup is not None else max(2, args.iterations // 10)
    args.workspace_iterations = args.workspace_iterations or min(args.iterations, 10)
    return args


def _tiny_repo(root: Path) -> Path:
    root.mkdir()
    (root / "README.md").write_text("# tiny\n")
    (root / "app.py").write_text("print('hello')\n")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("corral").setLevel(logging.ERROR)  # the local backend warns once per sandbox
    started_at = datetime.now(UTC)
    machine = machine_facts(args.tmpdir)  # before the run loads the machine (loadavg)
    with tempfile.TemporaryDirectory(prefix="corral-bench-", dir=args.tmpdir) as tmp:
        root = Path(tmp)
        progress(f"generating a {args.files}-file repository")
        large = generate_repo(root / "repo", files=args.files, seed=SEED)
        (root / "scratch").mkdir()
        setup = Setup(
            args.iterations, args.warmup, args.workspace_iterations, _tiny_repo(root / "tiny"), large, root / "scratch"
        )
        results = asyncio.run(measure_floors(setup))
        results.append(measure_subprocess_run(setup))
        for name in [name.strip() for name in args.backends.split(",") if name.strip()]:
            results += asyncio.run(measure_backend(name, setup))
        results.append(measure_file_creation(setup))
        results += measure_strategies(setup)
        results.append(measure_git_diff_peer(setup))
    report_duration = (datetime.now(UTC) - started_at).total_seconds()
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "date": started_at.date().isoformat(),
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round(report_duration, 1),
        "command": " ".join(["bench/sandbox.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine,
        "parameters": {
            "iterations": args.iterations,
            "warmup": args.warmup,
            "workspace_iterations": args.workspace_iterations,
            "files": args.files,
            "seed": SEED,
            "exec_timeout_s": EXEC_TIMEOUT,
        },
        "repos": {"tiny": {"files": 2, "git": False}, "large": large.to_json()},
        "results": [row.to_json() for row in results],
        "targets": targets({row.id: row for row in results}, args.files),
    }
    table = render_table(report, results)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(report, indent=2))
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
