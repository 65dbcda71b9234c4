"""The ``corral`` command: run agents, inspect their journals, resume and cancel runs, serve the scripted model."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from corral.errors import CorralError, UsageError

EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 3

app = typer.Typer(
    name="corral",
    help="Run coding agents in sandboxes, durably, with a journal of every step.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(help="Model helpers: the scripted model server for offline testing.", no_args_is_help=True)
app.add_typer(model_app, name="model")


def _add_sandbox_commands() -> None:
    from corral.cli_sandbox import sandbox_app

    app.add_typer(sandbox_app, name="sandbox")


_add_sandbox_commands()

console = Console()
err_console = Console(stderr=True)


class _State:
    debug = False
    home: Path | None = None
    config: Path | None = None


state = _State()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    home: Annotated[
        Path | None,
        typer.Option("--home", envvar="CORRAL_HOME", help="Store directory (default: ./.corral)."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Spec file (default: nearest corral.toml).")
    ] = None,
) -> None:
    state.debug = debug
    state.home = home.resolve() if home else None
    state.config = config
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _store() -> Any:
    from corral.store import Store, default_home

    home = state.home
    if home is None:
        config = _config_path(required=False)
        home = default_home(config.parent if config else None)
    return Store.open(home=home)


def _config_path(*, required: bool = True) -> Path | None:
    from corral.spec import SPEC_FILE_NAME, find_config

    if state.config is not None:
        return state.config
    found = find_config(Path.cwd())
    if found is None and required:
        raise UsageError(f"no {SPEC_FILE_NAME} here or in any parent directory", hint="run `corral init` to write one")
    return found


def _exit_for(record: Any) -> int:
    return {"succeeded": EXIT_OK, "cancelled": EXIT_CANCELLED}.get(record.status.value, EXIT_RUN_FAILED)


async def _execute(store: Any, starter: Any, *, title: str, json_out: bool = False) -> list[Any]:
    """Launch a runtime, start runs with ``starter(runtime) -> [run ids]``, show them live, wait for all."""
    from corral.cli_view import LiveRunView
    from corral.runtime import Runtime

    async with Runtime(store) as runtime:
        view = LiveRunView(console=err_console if json_out else console, title=title)
        runtime.subscribe(view.on_event)
        with view:
            run_ids = await starter(runtime)
            view.run_ids.update(run_ids)
            view.title = f"{title} · {', '.join(run_ids)}" if run_ids else title
            return [await runtime.wait(run_id) for run_id in run_ids]


def _print_outcome(record: Any, store: Any) -> None:
    from corral.cli_view import fmt_cost

    result = record.result or {}
    if record.status.value == "succeeded":
        if result.get("text"):
            console.print(f"\n[bold]result[/bold]: {result['text']}")
        if result.get("output") is not None:
            console.print_json(json.dumps(result["output"]))
        files = result.get("files_changed", 0)
        console.print(f"[green]✓ run {record.id} succeeded[/green] · {files} file(s) changed")
    else:
        console.print(f"[red]✗ run {record.id} {record.status.value}[/red]: {record.error}")
    u = record.usage
    console.print(
        f"cost {fmt_cost(u.cost_usd)} · {u.input_tokens} input tokens ({u.cache_read_tokens} cached) · "
        f"{u.output_tokens} output tokens · {record.turns} turns · {record.elapsed_s or 0:.1f}s"
    )
    console.print(f"journal: {store.url} (`corral trace {record.id}`)")


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the file.")] = Path("corral.toml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter corral.toml."""
    from corral.templates import STARTER_SPEC

    if path.exists() and not force:
        raise UsageError(f"{path} already exists", hint="pass --force to overwrite it")
    path.write_text(STARTER_SPEC)
    console.print(f'wrote {path}; edit it, then: corral run fixer "describe the task" --repo .')


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
    from corral.cli_view import run_summary
    from corral.spec import load_config

    config_path = _config_path()
    assert config_path is not None
    spec = load_config(config_path).agent(agent)
    overrides: dict[str, Any] = {"model": model, "base_url": base_url}
    if sandbox:
        overrides["sandbox"] = {**spec.sandbox.model_dump(), "backend": sandbox}
    spec = spec.with_overrides(**overrides)
    store = _store()

    async def start(runtime: Any) -> list[str]:
        # Like any executing corral process, this one also continues runs whose process died.
        resumed = await runtime.resume()
        own = (await runtime.submit(spec, task, repo)).id
        if resumed:
            err_console.print(f"also resuming {len(resumed)} interrupted run(s): {', '.join(resumed)}")
        return [own, *resumed]

    record, *others = asyncio.run(_execute(store, start, title=f"corral · {spec.name}", json_out=json_out))
    for other in others:
        err_console.print(f"resumed run {other.id}: {other.status.value}")
    if json_out:
        console.print_json(json.dumps(run_summary(record)))
    else:
        _print_outcome(record, store)
    raise typer.Exit(_exit_for(record))


@app.command()
def runs(
    json_out: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
    limit: Annotated[int, typer.Option("--limit", "-n")] = 20,
) -> None:
    """List recent runs."""
    from corral.cli_view import run_summary, runs_table

    records = _store().list_runs(limit=limit)
    if json_out:
        console.print_json(json.dumps([run_summary(r) for r in records]))
    elif not records:
        console.print("no runs yet")
    else:
        console.print(runs_table(records))


@app.command()
def show(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    json_out: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Show a run: status, result, typed output, patch and cost."""
    from corral.cli_view import print_show, run_summary

    record = _store().get_run(run_id)
    if json_out:
        console.print_json(json.dumps(run_summary(record)))
    else:
        print_show(console, record)


@app.command()
def trace(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    json_out: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Every event of a run's journal, as a tree with durations, tokens and cost."""
    from corral.cli_view import trace_data, trace_tree

    store = _store()
    record = store.get_run(run_id)
    events = store.events(record.id)
    if json_out:
        sys.stdout.write(json.dumps(trace_data(record, events), indent=2) + "\n")
    else:
        console.print(trace_tree(record, events))


@app.command()
def resume(
    run_id: Annotated[str | None, typer.Argument(help="One run; default: every interrupted run.")] = None,
) -> None:
    """Continue interrupted runs from their last completed step."""
    store = _store()

    async def start(runtime: Any) -> list[str]:
        return await runtime.resume(run_id)

    records = asyncio.run(_execute(store, start, title="corral · resume"))
    if not records:
        console.print("no interrupted runs")
    for record in records:
        _print_outcome(record, store)
    raise typer.Exit(max((_exit_for(r) for r in records), default=EXIT_OK))


@app.command()
def cancel(run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")]) -> None:
    """Cancel a run; it stops at its next step."""
    from corral.runtime import Runtime

    record = Runtime(_store()).cancel(run_id)
    console.print(f"run {record.id} {record.status.value}")


@app.command()
def demo(
    keep: Annotated[bool, typer.Option("--keep", help="Keep the demo's store from earlier demos.")] = False,
    sandbox: Annotated[
        str, typer.Option("--sandbox", help="Sandbox backend; 'local' (no isolation) only when named.")
    ] = "bubblewrap",
) -> None:
    """Fix a bug in a bundled sample repository, offline, on the scripted model."""
    from corral.demo import DEMO_SCRIPT, SAMPLE_REPO
    from corral.models.scripted import ScriptedServer, load_script
    from corral.spec import AgentSpec

    home = state.home or Path.cwd() / ".corral" / "demo"
    if home.exists() and not keep:
        shutil.rmtree(home)
    repo = home / "sample_repo"
    shutil.copytree(SAMPLE_REPO, repo, dirs_exist_ok=True)
    console.print(
        "[bold]corral demo[/bold]: an agent fixes a failing test in a sample repository.\n"
        "The model is corral's scripted model server on 127.0.0.1 (no network, no API key).\n"
    )
    from corral.store import Store

    store = Store.open(home=home)
    with ScriptedServer(load_script(DEMO_SCRIPT)) as server:
        spec = AgentSpec.model_validate(
            {
                "name": "demo-fixer",
                "instructions": "Find why the test suite fails, fix the bug with the smallest change, "
                "and rerun the tests.",
                "model": "openai:gpt-5-mini",
                "base_url": server.openai_base_url,
                "sandbox": sandbox,
                "retry": {"initial_backoff_s": 0.2},
            }
        )

        async def start(runtime: Any) -> list[str]:
            task = "The test suite fails. Find the bug and fix it."
            return [(await runtime.submit(spec, task, repo)).id]

        (record,) = asyncio.run(_execute(store, start, title="corral demo"))
    from rich.panel import Panel
    from rich.syntax import Syntax

    patch = (record.result or {}).get("patch")
    if patch:
        console.print(Panel(Syntax(patch, "diff"), title="patch"))
    _print_outcome(record, store)
    console.print(f"sample repository: {repo} (unchanged; the patch applies to it)")
    console.print(f"see the whole session: corral --home {home} trace {record.id}")
    raise typer.Exit(_exit_for(record))


@app.command()
def doctor() -> None:
    """Say what works on this machine: sandbox backends, isolation, limits, network profiles."""
    from corral.cli_sandbox import print_doctor

    try:
        url = _store().url
    except CorralError:
        url = None
    raise typer.Exit(EXIT_OK if print_doctor(url) else EXIT_RUN_FAILED)


@model_app.command("serve")
def model_serve(
    script: Annotated[Path, typer.Argument(help="Script file (TOML or JSON).")],
    port: Annotated[int, typer.Option("--port", "-p", help="Port on 127.0.0.1 (0 picks a free one).")] = 0,
    record: Annotated[Path | None, typer.Option("--record", help="Append every request as a JSON line here.")] = None,
) -> None:
    """Serve a scripted model on 127.0.0.1 (OpenAI Chat, OpenAI Responses, Anthropic Messages)."""
    from corral.models.scripted import serve

    serve(script, host="127.0.0.1", port=port, record_path=record)


def main() -> None:
    """Entry point: run the app, turning corral's errors into messages and exit codes."""
    try:
        code = app(standalone_mode=False)
    except CorralError as err:
        if state.debug:
            raise
        err_console.print(f"[red]error:[/red] {err.message}")
        if err.hint:
            err_console.print(f"[dim]hint: {err.hint}[/dim]")
        sys.exit(err.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted; `corral resume` continues interrupted runs")
        sys.exit(130)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(EXIT_USAGE)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        if state.debug or os.environ.get("CORRAL_DEBUG"):
            raise
        err_console.print(f"[red]internal error:[/red] {type(exc).__name__}: {exc} (rerun with --debug for details)")
        sys.exit(70)
    sys.exit(code if isinstance(code, int) else 0)
