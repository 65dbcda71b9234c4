"""``corral runs|show|trace``: read runs and their journals."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from corral.cli.app import app, console, open_store


@app.command()
def runs(
    json_out: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
    limit: Annotated[int, typer.Option("--limit", "-n")] = 20,
) -> None:
    """List recent runs."""
    from corral.cli.views import run_summary, runs_table

    records = open_store().list_runs(limit=limit)
    if json_out:
        console.print_json(json.dumps([run_summary(r) for r in records]))
    elif not records:
        console.print("no runs yet" if limit > 0 else "no runs shown (--limit 0)")
    else:
        console.print(runs_table(records))


@app.command()
def show(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    json_out: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Show a run: status, result, typed output, patch and cost."""
    from corral.cli.views import print_show, run_summary

    record = open_store().get_run(run_id)
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
    from corral.cli.views import trace_data, trace_tree

    store = open_store()
    record = store.get_run(run_id)
    events = store.events(record.id)
    if json_out:
        sys.stdout.write(json.dumps(trace_data(record, events), indent=2) + "\n")
    else:
        console.print(trace_tree(record, events))
