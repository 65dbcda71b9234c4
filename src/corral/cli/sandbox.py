"""``corral sandbox exec|prune`` and ``corral doctor``: run a command as an agent's would, clean up, say what works."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from corral.errors import UsageError

if TYPE_CHECKING:
    from corral.spec import SandboxProfile

sandbox_app = typer.Typer(help="Sandboxes: run a command exactly as an agent's command runs.", no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)

EXIT_TIMEOUT, EXIT_KILLED = 124, 137


def parse_size_mb(text: str) -> int:
    """``512``, ``512M``, ``2G`` → megabytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([mMgG]?)[bB]?\s*", text)
    if not match:
        raise UsageError(f"not a size: {text!r} (use e.g. 512M or 2G)")
    number, unit = int(match.group(1)), match.group(2).lower()
    return number * 1024 if unit == "g" else number


@sandbox_app.command(
    "exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": False}, no_args_is_help=True
)
def sandbox_exec(
    command: Annotated[list[str], typer.Argument(help="The command and its arguments (after --).")],
    agent: Annotated[
        str | None, typer.Option("--agent", help="Start from this agent's [sandbox] table in corral.toml.")
    ] = None,
    network: Annotated[str | None, typer.Option("--network", help="none, allowlist or host.")] = None,
    allow: Annotated[
        list[str] | None,
        typer.Option("--allow", help="Host, host:port, *.domain or a preset (@python, @node, @debian, @github)."),
    ] = None,
    allow_private: Annotated[
        bool,
        typer.Option("--allow-private", help="Allowed hosts may resolve to private addresses (mirrors)."),
    ] = False,
    intercept_tls: Annotated[
        bool, typer.Option("--intercept-tls", help="Terminate TLS with the sandbox's CA (clients trust it).")
    ] = False,
    upstream_proxy: Annotated[
        str | None,
        typer.Option("--upstream-proxy", help="http://[user:pass@]host:port, or env: reach hosts through it."),
    ] = None,
    repo: Annotated[Path | None, typer.Option("--repo", help="Start from a copy of this repository.")] = None,
    memory: Annotated[str | None, typer.Option("--memory", help="Memory limit, e.g. 512M.")] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Wall-clock seconds (default: the agent's, 120).")
    ] = None,
    backend: Annotated[str | None, typer.Option("--backend", help="Sandbox backend (default bubblewrap).")] = None,
    cache: Annotated[
        str | None, typer.Option("--cache", help="The pip/npm/uv package cache: off, read-only or read-write.")
    ] = None,
    mount: Annotated[
        list[str] | None, typer.Option("--mount", help="A host directory (toolchain, virtualenv) mounted read-only.")
    ] = None,
) -> None:
    """Run one command in a fresh sandbox, print its output and exit code, clean up.

    The sandbox is the one an agent's ``execute`` gets: the same options as a spec's sandbox table
    (``--agent`` takes them from one), the same limits, the same network policy.
    """
    profile = _exec_profile(
        agent,
        {
            "backend": backend,
            "network": network,
            "allow": allow,
            "allow_private": allow_private or None,
            "intercept_tls": intercept_tls or None,
            "upstream_proxy": upstream_proxy,
            "memory_mb": memory,
            "exec_timeout_s": timeout,
            "package_cache": cache,
            "mounts": mount,
        },
    )
    if profile.network.mode == "host":
        err_console.print("[yellow]warning:[/yellow] network host: the command can reach any address this machine can")
    if profile.backend == "local":
        err_console.print("[yellow]warning:[/yellow] the local backend runs the command on this machine, unisolated")
    source = repo.resolve() if repo else None
    if source is not None and not source.is_dir():
        raise UsageError(f"--repo {repo}: not a directory", hint="give the repository to start from, or omit --repo")
    from corral.cli.signals import Interrupted, until_signal

    try:
        code = asyncio.run(until_signal(lambda: _exec(command, profile=profile, repo=source)))
    except Interrupted as stop:
        err_console.print(f"corral: interrupted by {stop.signal_name}; the sandbox was removed")
        code = stop.exit_code
    raise typer.Exit(code)


_NETWORK_KEYS = ("allow", "allow_private", "intercept_tls", "upstream_proxy")
"""Flags that set a field of the network profile (``network`` itself picks its mode)."""

_FLAGS = {
    "backend": "--backend",
    "network": "--network and its options",
    "limits": "--memory",
    "exec_timeout_s": "--timeout",
    "package_cache": "--cache",
    "mounts": "--mount",
}
"""The ``sandbox exec`` flag for each field of a spec's sandbox table, for errors."""


def _exec_profile(agent: str | None, flags: dict[str, Any]) -> SandboxProfile:
    """The sandbox profile of ``--agent`` (or the defaults) with the given flags on top, validated as a spec's."""
    from pydantic import ValidationError

    from corral.spec import SandboxProfile

    base = SandboxProfile()
    if agent is not None:
        from corral.cli.app import config_path
        from corral.spec import load_config

        path = config_path()
        assert path is not None
        base = load_config(path).agent(agent).sandbox
    given = {key: value for key, value in flags.items() if value is not None}
    if given.get("network") not in (None, "none", "allowlist", "host"):
        raise UsageError(f"--network must be none, allowlist or host, not {given['network']!r}")
    if "memory_mb" in given:
        given["memory_mb"] = parse_size_mb(given["memory_mb"])
    data = base.model_dump(mode="json")
    network = data["network"]
    if "network" in given:
        network = {"mode": given.pop("network")}  # a new mode starts a new profile: no allowlist carried over
    for key in _NETWORK_KEYS:
        if key in given:
            network[key] = given.pop(key)
    data["network"] = network
    if "memory_mb" in given:
        data["limits"]["memory_mb"] = given.pop("memory_mb")
    data |= given
    try:
        return SandboxProfile.model_validate(data)
    except ValidationError as err:
        problem = err.errors()[0]
        field = str(problem["loc"][0]) if problem["loc"] else ""
        raise UsageError(f"{_FLAGS.get(field, field)}: {problem['msg'].removeprefix('Value error, ')}") from None


async def _exec(command: list[str], *, profile: SandboxProfile, repo: Path | None) -> int:
    from corral.events import EgressAttempted
    from corral.runtime.sandboxing import profile_request
    from corral.sandbox import get_backend, mark_run_ended
    from corral.sandbox.bubblewrap.sweep import ONE_SHOT_MARKER

    chosen = get_backend(profile.backend)
    wall_s = profile.exec_timeout_s

    def on_egress(event: EgressAttempted) -> None:
        # Host and reason come from the sandboxed command: plain text, never markup.
        verdict = Text("allowed", style="green") if event.allowed else Text("denied", style="red")
        err_console.print(Text.assemble("egress ", verdict, f" {event.host}:{event.port} ({event.reason})"))

    with tempfile.TemporaryDirectory(prefix="corral-exec-") as tmp:
        # A one-shot sandbox never resumes: marked so before it exists, a sweep (`corral sandbox prune`)
        # removes all of it, this directory included, if this process is killed before its cleanup.
        Path(tmp, ONE_SHOT_MARKER).write_text("corral sandbox exec\n")  # noqa: ASYNC240 - tiny local writes
        run_dir = Path(tmp, "run")
        run_dir.mkdir()  # noqa: ASYNC240
        mark_run_ended(run_dir)
        source = repo or Path(tmp, "empty")
        source.mkdir(exist_ok=True)
        request = profile_request(profile, repo=source, run_dir=run_dir, on_egress=on_egress)
        request = request.model_copy(update={"pool": 0})  # one sandbox, one command: nothing to prepare ahead
        sandbox = await chosen.create(request)
        kept: Path | None = None
        try:
            argv = command[0] if len(command) == 1 and " " in command[0] else command
            result = await sandbox.exec(argv, timeout=wall_s)
            if result.output_path is not None:  # the workspace goes with the sandbox: keep the whole output
                kept = await _keep_output(sandbox.read_file(result.output_path))
        finally:
            await sandbox.destroy()
    sys.stdout.write(result.stdout)
    sys.stdout.flush()  # before anything goes to stderr: a terminal shows both in the order they came
    sys.stderr.write(result.stderr)
    if kept is not None:
        print_hint(f"corral: the output was longer than an agent sees; all {result.saved_bytes} bytes are in {kept}")
    if result.timed_out:
        err_console.print(f"corral: timed out after {wall_s:g}s; the whole process tree was killed")
        return EXIT_TIMEOUT
    if result.exit_code is None:
        err_console.print("corral: the command was killed by a sandbox limit")
        return EXIT_KILLED
    err_console.print(f"[dim]corral: exit {result.exit_code} · {result.duration_ms:.0f} ms · {chosen.name}[/dim]")
    return result.exit_code


async def _keep_output(content: Awaitable[bytes]) -> Path:
    """Save a command's whole output (its spill file) where the user can read it after the sandbox is gone."""
    descriptor, name = tempfile.mkstemp(prefix="corral-exec-output-", suffix=".log")
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(await content)
    return Path(name)


def print_hint(line: str) -> None:
    err_console.print(line, markup=False, highlight=False, soft_wrap=True)


@sandbox_app.command("prune")
def sandbox_prune() -> None:
    """Remove what sandboxes of dead processes and ended runs left on this machine; resumable sandboxes stay."""
    from corral.sandbox.bubblewrap.identity import runs_as_root
    from corral.sandbox.bubblewrap.sweep import sweep_orphans

    if not runs_as_root():
        console.print("nothing to prune: unprivileged sandboxes keep everything in their run directories")
        return
    report = asyncio.run(sweep_orphans())
    # Paths are file names: printed as plain text, never as markup.
    for line in report.removed:
        console.print(f"removed {line}", markup=False, highlight=False, soft_wrap=True)
    for line in report.failed:
        err_console.print(Text.assemble(("could not remove", "red"), f" {line}"), soft_wrap=True)
    if not report.removed and not report.failed:
        console.print("nothing to prune")
    if report.resumable:
        console.print(f"kept {len(report.resumable)} resumable sandbox(es) (their runs may still resume):")
        for run_dir in report.resumable:
            console.print(f"  {run_dir}", markup=False, highlight=False, soft_wrap=True)
    if report.in_use:
        console.print(f"kept {len(report.in_use)} sandbox(es) in use by a running process")
    if report.failed:
        raise typer.Exit(1)


def doctor_report() -> list[tuple[str, bool, str]]:
    """(check, ok, detail) rows: what corral can use on this machine."""
    import platform

    import corral

    rows: list[tuple[str, bool, str]] = [
        ("corral", True, corral.__version__),
        ("python", sys.version_info >= (3, 11), platform.python_version()),
        ("git", shutil.which("git") is not None, shutil.which("git") or "not found: apt-get install git"),
    ]
    try:
        from corral.sandbox.bubblewrap.backend import bubblewrap_available

        ok, detail = bubblewrap_available()
    except ImportError as err:
        ok, detail = False, f"backend not installed ({err})"
    rows.append(("sandbox: bubblewrap", ok, detail))
    try:
        from corral.sandbox.bubblewrap.limits import enforced_limits

        for name, how in enforced_limits().items():
            rows.append((f"limit: {name}", not how.startswith("not "), how))
    except ImportError:
        rows.append(("limits", False, "unknown (bubblewrap backend missing)"))
    try:
        from corral.sandbox.egress.proxy import egress_available

        ok, detail = egress_available()
    except ImportError as err:
        ok, detail = False, f"egress proxy not installed ({err})"
    rows.append(("network: allowlist (egress proxy)", ok, detail))
    from corral.sandbox.base import available_backends

    rows.append(("sandbox backends", True, ", ".join(available_backends())))
    from corral.engines.install import doctor_rows

    rows += doctor_rows()
    return rows


def print_doctor(rows: list[tuple[str, bool, str]], *, json_out: bool = False) -> bool:
    """Print the checks (a table, or JSON); whether corral can run here (limits, networks, engines are optional)."""
    ok_all = all(ok or name.startswith(("limit", "network", "engine")) for name, ok, _ in rows)
    if json_out:
        checks = [{"check": name, "ok": ok, "detail": str(detail)} for name, ok, detail in rows]
        sys.stdout.write(json.dumps({"ok": ok_all, "checks": checks}, indent=2) + "\n")
        return ok_all
    table = Table(box=None, header_style="bold")
    table.add_column("")
    table.add_column("check")
    table.add_column("detail")
    for name, ok, detail in rows:
        # Details quote the system (paths, database errors): plain text, never markup.
        table.add_row(Text("✓", style="green") if ok else Text("✗", style="red"), Text(name), Text(str(detail)))
    console.print(table)
    return ok_all
