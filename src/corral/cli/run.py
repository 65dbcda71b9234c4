"""``corral run|resume|cancel|demo``: execute runs in this process with a live view."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from corral.cli.app import (
    EXIT_CANCELLED,
    EXIT_OK,
    EXIT_RUN_FAILED,
    app,
    config_path,
    console,
    err_console,
    open_store,
    state,
)


def exit_for(record: Any) -> int:
    return {"succeeded": EXIT_OK, "cancelled": EXIT_CANCELLED}.get(record.status.value, EXIT_RUN_FAILED)


async def execute(store: Any, starter: Any, *, title: str, json_out: bool = False) -> list[Any]:
    """Launch a runtime, start runs with ``starter(runtime) -> [run ids]``, show them live, wait for all."""
    from corral.cli.views import LiveRunView
    from corral.runtime import Runtime

    async with Runtime(store) as runtime:
        view = LiveRunView(console=err_console if json_out else console, title=title)
        runtime.subscribe(view.on_event)
        with view:
            run_ids = await starter(runtime)
            view.run_ids.update(run_ids)
            view.title = f"{title} · {', '.join(run_ids)}" if run_ids else title
            return [await runtime.wait(run_id) for run_id in run_ids]


def print_outcome(record: Any, store: Any) -> None:
    """The end of a run in a few lines; what the agent or a tool wrote is printed as text, never markup."""
    from rich.text import Text

    from corral.cli.views import fmt_cost

    result = record.result or {}
    files = result.get("files_changed", 0)
    if record.status.value == "succeeded":
        if result.get("text"):
            console.print(Text.assemble("\n", ("result", "bold"), ": ", str(result["text"])))
        if result.get("output") is not None:
            console.print_json(json.dumps(result["output"]))
        console.print(Text.assemble((f"✓ run {record.id} succeeded", "green"), f" · {files} file(s) changed"))
    else:
        console.print(Text.assemble((f"✗ run {record.id} {record.status.value}", "red"), f": {record.error}"))
        if files:
            console.print(
                Text(f"partial work kept: {files} file(s) changed (`corral show {record.id}`, patch.diff)", "yellow")
            )
    for note in result.get("notes") or ():
        console.print(Text(f"note: {note}", "yellow"))
    u = record.usage
    console.print(
        f"cost {fmt_cost(u)} · {u.input_tokens} input tokens ({u.cache_read_tokens} cached) · "
        f"{u.output_tokens} output tokens · {record.turns} turns · {record.elapsed_s or 0:.1f}s",
        markup=False,
        highlight=False,
    )
    console.print(f"journal: {store.url} (`corral trace {record.id}`)", markup=False, highlight=False)


@app.command()
def run(
    agent: Annotated[str, typer.Argument(help="Agent name from corral.toml.")],
    task: Annotated[str, typer.Argument(help="What the agent should do.")],
    repo: Annotated[Path, typer.Option("--repo", "-r", help="Repository to work on (it is never modified).")] = Path(
        "."
    ),
    model: Annotated[str | None, typer.Option("--model", "-m", help="Override the spec's model.")] = None,
    base_url: Annotated[str | None, typer.Option("--base-url", help="Override the model endpoint.")] = None,
    sandbox: Annotated[str | None, typer.Option("--sandbox", help="Sandbox backend (e.g. local).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the final run as JSON.")] = False,
) -> None:
    """Run an agent on a task in a fresh sandbox, with a live view."""
    from corral.cli.views import run_summary
    from corral.spec import load_config

    path = config_path()
    assert path is not None
    spec = load_config(path).agent(agent)
    overrides: dict[str, Any] = {"model": model, "base_url": base_url}
    if sandbox:
        overrides["sandbox"] = {**spec.sandbox.model_dump(), "backend": sandbox}
    spec = spec.with_overrides(**overrides)
    store = open_store()

    async def start(runtime: Any) -> list[str]:
        interrupted = runtime.interrupted_runs()
        if interrupted:
            ids = ", ".join(r.id for r in interrupted)
            err_console.print(
                f"{len(interrupted)} interrupted run(s) wait for `corral resume`: {ids}", markup=False, highlight=False
            )
        return [(await runtime.submit(spec, task, repo)).id]

    (record,) = asyncio.run(execute(store, start, title=f"corral · {spec.name}", json_out=json_out))
    if json_out:
        console.print_json(json.dumps(run_summary(record)))
    else:
        print_outcome(record, store)
    raise typer.Exit(exit_for(record))


@app.command()
def resume(
    run_id: Annotated[str | None, typer.Argument(help="One run; default: every interrupted run.")] = None,
) -> None:
    """Continue interrupted runs from their last completed step."""
    store = open_store()

    async def start(runtime: Any) -> list[str]:
        return await runtime.resume(run_id)

    records = asyncio.run(execute(store, start, title="corral · resume"))
    if not records:
        console.print("no interrupted runs")
    for record in records:
        print_outcome(record, store)
    raise typer.Exit(max((exit_for(r) for r in records), default=EXIT_OK))


@app.command()
def cancel(run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")]) -> None:
    """Cancel a run wherever it executes: its command in flight is killed, its patch kept."""
    from corral.runtime import Runtime

    record = asyncio.run(Runtime(open_store()).cancel(run_id))
    if record.status.finished:
        console.print(f"run {record.id} {record.status.value}", markup=False)
    else:
        console.print(f"run {record.id}: cancel requested; it stops at its next step", markup=False)


@app.command()
def demo(
    sandbox: Annotated[
        str, typer.Option("--sandbox", help="Sandbox backend; 'local' (no isolation) only when named.")
    ] = "bubblewrap",
) -> None:
    """Fix a bug in a bundled sample repository, offline, on the scripted model."""
    from rich.markup import escape
    from rich.panel import Panel
    from rich.syntax import Syntax

    from corral.demo import prepare_demo_dir
    from corral.errors import UsageError
    from corral.models.providers import resolve_target
    from corral.sandbox import available_backends
    from corral.spec import AgentSpec
    from corral.store import Store

    # Everything that can be wrong with the request is checked before anything is written.
    if sandbox not in available_backends():
        raise UsageError(f"unknown sandbox backend {sandbox!r}; available: {', '.join(available_backends())}")
    spec = AgentSpec.model_validate(
        {
            "name": "demo-fixer",
            "instructions": "Find why the test suite fails, fix the bug with the smallest change, and rerun the tests.",
            "model": "scripted:demo",
            "sandbox": sandbox,
            "retry": {"initial_backoff_s": 0.2},
        }
    )
    resolve_target(spec.model)
    home = state.home or Path.cwd() / ".corral" / "demo"
    repo = prepare_demo_dir(home)
    console.print(
        "[bold]corral demo[/bold]: an agent fixes a failing test in a sample repository.\n"
        "The model is corral's scripted model (scripted:demo), served on 127.0.0.1 by this process "
        "(no network, no API key).\n"
    )
    store = Store.open(home=home)

    async def start(runtime: Any) -> list[str]:
        task = "The test suite fails. Find the bug and fix it."
        return [(await runtime.submit(spec, task, repo)).id]

    (record,) = asyncio.run(execute(store, start, title="corral demo"))
    patch = (record.result or {}).get("patch")
    if patch:
        console.print(Panel(Syntax(patch, "diff"), title="patch"))
    print_outcome(record, store)
    console.print(f"sample repository: {escape(str(repo))} (unchanged; the patch applies to it)")
    console.print(f"see the whole session: corral --home {escape(str(home))} trace {record.id}")
    raise typer.Exit(exit_for(record))
