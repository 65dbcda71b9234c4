"""``corral runs|show|trace|verify|rm|prune``: read runs and their journals, follow a run, check a journal's
hash chain, remove runs."""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from corral.cli.app import EXIT_OK, EXIT_RUN_FAILED, app, console, err_console, open_runs, open_store
from corral.cli.text import clean, safe
from corral.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from corral.cli.remote import RunReader
    from corral.cli.removal import Removal
    from corral.cli.views import RunTrace
    from corral.store import EventRecord, RunRecord

RunIdArgument = Annotated[str, typer.Argument(help="Run id (or a unique prefix).")]
JsonOption = Annotated[bool, typer.Option("--json", help="JSON output.")]


AGE = re.compile(r"(\d+)([smhdw])")
AGE_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def cutoff_time(value: str, option: str, *, now: float | None = None) -> float:
    """The moment ``value`` names: an age before now (``30m``, ``1h``, ``7d``, ``2w``) or an ISO date.

    A date or date-time without an offset is local time (``2025-12-04``, ``2025-12-04T13:05``).
    """
    text = value.strip()
    age = AGE.fullmatch(text)
    if age is not None:
        return (time.time() if now is None else now) - int(age[1]) * AGE_UNITS_S[age[2]]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise UsageError(
            f"{option} {value!r} is neither an age nor a date",
            hint="an age such as 30m, 1h, 7d or 2w, or a date such as 2025-12-04 or 2025-12-04T13:05",
        ) from None


def write_json(data: object) -> None:
    """``--json`` output: indented, unicode readable, nothing a terminal would act on."""
    from corral.cli.views import json_text

    sys.stdout.write(json_text(data) + "\n")
    sys.stdout.flush()


@app.command()
def runs(
    json_out: JsonOption = False,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many, newest first.")] = 20,
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            help="Only runs with this status: queued, running, waiting_approval, succeeded, failed, cancelled "
            "or interrupted.",
        ),
    ] = None,
    agent: Annotated[str | None, typer.Option("--agent", help="Only runs of this agent.")] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Only runs started since: an age (30m, 1h, 7d, 2w) or a date (2025-12-04)."),
    ] = None,
) -> None:
    """List recent runs, newest first."""
    from corral.cli.views import print_runs, run_summary

    if limit < 0:
        raise UsageError(f"--limit {limit} is negative", hint="--limit 0 shows none; leave it out for 20")
    after = cutoff_time(since, "--since") if since is not None else None
    records = open_runs().list_runs(limit=limit, status=status, agent=agent, since=after) if limit else []
    if json_out:
        write_json([run_summary(r) for r in records])
    elif records:
        print_runs(console, records)
    elif status or agent or since:
        console.print("no runs match", markup=False, highlight=False)
    else:
        console.print("no runs yet" if limit > 0 else "no runs shown (--limit 0)", markup=False, highlight=False)


@app.command()
def show(run_id: RunIdArgument, json_out: JsonOption = False) -> None:
    """Show a run: status, task, result, typed output, patch and cost."""
    from corral.cli.views import print_show, run_summary

    record = open_runs().get_run(run_id)
    if json_out:
        write_json(run_summary(record))
    else:
        print_show(console, record)


@app.command()
def trace(
    run_id: RunIdArgument,
    json_out: JsonOption = False,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Print events as they happen until the run ends (with --json: one per line)."
        ),
    ] = False,
) -> None:
    """Every event of a run's journal, as a tree with durations, tokens and cost."""
    from corral.cli.views import print_trace, trace_data

    store = open_runs()
    record = store.get_run(run_id)
    if follow:
        raise typer.Exit(follow_run(store, record, json_out=json_out))
    events = store.events(record.id)
    children = child_traces(store, record.id)
    if json_out:
        write_json(trace_data(record, events, children))
    else:
        print_trace(console, record, events, children)


@app.command()
def verify(
    run_ids: Annotated[list[str], typer.Argument(help="Run ids (or unique prefixes); their sub-runs are checked too.")],
    json_out: JsonOption = False,
) -> None:
    """Check runs' journals against their hash chains: report any event changed, deleted or reordered.

    Exit 0 when every journal is intact, 1 when one is not. Each run's head (its last event's hash)
    is printed: kept elsewhere, it also shows a rewrite of the whole chain later.
    """
    store = open_store()
    records = store.run_trees([store.get_run(run_id).id for run_id in run_ids])
    results = [store.verify_journal(record.id) for record in records]
    if json_out:
        write_json([result.to_json() for result in results])
    else:
        for result in results:
            head = f"head {result.head_seq} {result.head_hash or '-'}"
            if result.intact:
                line = Text.assemble(safe(result.run_id), "  ", ("intact", "green"), f"  {result.events} events")
                console.print(line, f" {head}", soft_wrap=True)
                continue
            console.print(
                Text.assemble(
                    safe(result.run_id),
                    "  ",
                    ("TAMPERED", "bold red"),
                    f"  {result.events} events  {len(result.problems)} problem(s)  {safe(head)}",
                ),
                soft_wrap=True,
            )
            for problem in result.problems:
                console.print(Text.assemble("  ", (problem.kind, "red"), "  ", safe(problem.message)), soft_wrap=True)
    raise typer.Exit(EXIT_OK if all(result.intact for result in results) else EXIT_RUN_FAILED)


def child_traces(store: RunReader, run_id: str) -> dict[str, RunTrace]:
    """The traces of the runs ``run_id``'s programs dispatched, and of theirs, by child run id."""
    from corral.cli.views import RunTrace

    return {
        child.id: RunTrace(child, store.events(child.id), child_traces(store, child.id))
        for child in store.children(run_id)
        if child.dispatched_by == run_id
    }


# -- trace --follow ---------------------------------------------------------------------------------

FOLLOW_POLL_S = 0.2
#: A run's status is recorded just before its run.finished event: wait this long for the event.
FINISH_GRACE_S = 5.0
EXIT_SIGINT, EXIT_SIGPIPE = 130, 141


def follow_run(store: RunReader, record: RunRecord, *, json_out: bool) -> int:
    """Print a run's events as its journal commits them, until it ends; the exit code of its status.

    The run may execute in any process (or behind a server): this one only reads. Ctrl-C stops
    following (exit 130), not the run.
    """
    try:
        return _follow(store, record, json_out=json_out)
    except KeyboardInterrupt:
        err_console.print(safe(f"stopped following run {record.id}; it goes on"), highlight=False)
        return EXIT_SIGINT
    except BrokenPipeError:  # the reader went away (`| head -3`): stop quietly, as a pipe tool does
        _silence_stdout()
        return EXIT_SIGPIPE


def _follow(store: RunReader, record: RunRecord, *, json_out: bool) -> int:
    from corral.cli.stream import JsonLines
    from corral.cli.views import event_lines, print_lines

    stream = JsonLines() if json_out else None  # the event lines of `corral run --json`
    if stream is None:
        _print_header(record)
    for entry in journal_until_end(store, record.id):
        if stream is None:
            print_lines(console, event_lines(entry))
        else:
            stream.on_event(entry)
            if stream.reader_gone:  # `| head -n 3`: nobody reads any more
                return EXIT_SIGPIPE
    return _followed_to_the_end(store, record.id, json_out=json_out)


def journal_until_end(store: RunReader, run_id: str, *, after_seq: int = 0) -> Iterator[EventRecord]:
    """A run's journal entries as they are committed, from ``after_seq`` until the run has ended.

    An interrupted run is said so once on stderr, and followed on until it is resumed and ends.
    """
    return journals_until_end(store, {run_id: after_seq}, children=False)


@dataclass
class _Followed:
    """Where following one run's journal stands."""

    after: int = 0
    dispatcher: str | None = None
    """The run whose program dispatched it (followed with ``children``), else None."""
    ended: bool = False
    warned: bool = False
    grace_ends: float | None = None


def journals_until_end(store: RunReader, runs: dict[str, int], *, children: bool) -> Iterator[EventRecord]:
    """The journal entries of ``runs`` (each from after the ``seq`` given) as they are committed, until
    every one has ended; with ``children``, those of the runs their programs dispatch too, at any depth.

    This is what ``corral run --json`` streams locally, where the journal's listener sees the whole
    tree. Runs are read in turn: entries of runs going on at once interleave a poll at a time, each
    run's in order. An interrupted run is said so once on stderr, and followed on until it is resumed
    and ends. A dispatched run that was never made (its dispatcher ended first) is not waited for.
    """
    from corral.errors import RunNotFoundError
    from corral.events import RunFinished, TaskDispatched

    following = {run_id: _Followed(after=after) for run_id, after in runs.items()}
    while True:
        for run_id, state in list(following.items()):
            if state.ended:
                continue
            try:
                record = store.get_run(run_id)  # before its events: a run.finished event comes after the status
            except RunNotFoundError:
                if state.dispatcher is None:
                    raise
                state.ended = following[state.dispatcher].ended  # dispatched, and not made yet
                continue
            if record.interrupted and not state.warned:
                state.warned = True
                err_console.print(
                    safe(f"run {record.id} is interrupted (its process is gone); following it until it is resumed"),
                    highlight=False,
                )
            for entry in store.iter_events(record.id, after_seq=state.after):
                state.after = entry.seq
                yield entry
                if children and isinstance(entry.event, TaskDispatched) and entry.event.child_id not in following:
                    following[entry.event.child_id] = _Followed(dispatcher=record.id)
                if isinstance(entry.event, RunFinished):
                    state.ended = True
                    break
            # Finished but no run.finished yet, or its dispatcher ended without it: its process may have died.
            orphaned = state.dispatcher is not None and following[state.dispatcher].ended
            if not state.ended and (record.status.finished or orphaned):
                state.grace_ends = state.grace_ends or time.monotonic() + FINISH_GRACE_S
                state.ended = time.monotonic() > state.grace_ends
        if all(state.ended for state in following.values()):
            return
        time.sleep(FOLLOW_POLL_S)


def _print_header(record: RunRecord) -> None:
    from corral.cli.views import print_lines, run_header

    print_lines(console, [run_header(record)])


def _followed_to_the_end(store: RunReader, run_id: str, *, json_out: bool) -> int:
    """The run's last line (its status, tokens and cost) and its exit code."""
    from corral.cli.run import exit_for

    record = store.get_run(run_id)
    if not json_out:
        _print_header(record)
    return exit_for(record)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit does not raise again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


# -- rm and prune -----------------------------------------------------------------------------------


@app.command("rm")
def rm(
    run_ids: Annotated[list[str], typer.Argument(help="Run ids (or unique prefixes).")],
    force: Annotated[
        bool, typer.Option("--force", help="Cancel unfinished runs first (as `corral cancel` does), then remove them.")
    ] = False,
) -> None:
    """Remove runs: their journals, their files and the runs started under them."""
    from corral.cli.removal import (
        cancel_unfinished,
        execute_removal,
        plan_removal,
        refuse_busy_followers,
        unfinished_error,
        whole_trees,
    )

    store = open_store()
    records = [store.get_run(run_id) for run_id in run_ids]
    trees = whole_trees(store, records)
    unfinished = [r for r in trees if not r.status.finished]
    if unfinished and not force:
        raise unfinished_error(unfinished[0])
    if unfinished:
        cancel_unfinished(store, unfinished)
        trees = whole_trees(store, [store.get_run(r.id) for r in records])
    if not force:
        refuse_busy_followers(store, trees)
    removal = plan_removal(store, trees)
    removed, events, failed = execute_removal(store, removal)
    _report_removal(removal, removed, events, failed)
    raise typer.Exit(EXIT_RUN_FAILED if failed else EXIT_OK)


@app.command()
def prune(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than", help="Remove finished runs started before this: an age (7d, 2w) or a date (2025-12-04)."
        ),
    ],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be removed; remove nothing.")] = False,
) -> None:
    """Remove finished runs older than an age, with their journals and files."""
    from corral.cli.removal import execute_removal, plan_removal, prunable

    store = open_store()
    before = cutoff_time(older_than, "--older-than")
    trees, kept = prunable(store, store.list_runs(limit=None, before=before))
    for record, why in kept:
        err_console.print(safe(f"kept run {record.id}: {why}"), highlight=False)
    removal = plan_removal(store, trees)
    if dry_run:
        _report_removal(removal, removal.runs, None, [], dry_run=True)
        return
    removed, events, failed = execute_removal(store, removal)
    _report_removal(removal, removed, events, failed)
    raise typer.Exit(EXIT_RUN_FAILED if failed else EXIT_OK)


def _report_removal(
    removal: Removal, removed: list[RunRecord], events: int | None, failed: list[str], *, dry_run: bool = False
) -> None:
    """One line per run, then the totals and what was kept or unlinked; failures on stderr."""
    from corral.cli.removal import fmt_bytes
    from corral.cli.views import fmt_when

    verb = "would remove" if dry_run else "removed"
    for run in removed:
        task = run.task.strip().splitlines()
        line = f"{verb} run {run.id} ({run.agent}, {run.display_status}, {fmt_when(run.created_at)})"
        console.print(safe(f"{line}: {task[0] if task else ''}"), soft_wrap=True, highlight=False)
    if not removed:
        console.print("nothing to remove", markup=False, highlight=False)
    else:
        freed = fmt_bytes(sum(removal.sizes.get(r.id, 0) for r in removed))
        journal = "" if dry_run else f" and {events} journal event(s)"
        console.print(
            f"{verb} {len(removed)} run(s){journal}; {'would free' if dry_run else 'freed'} {freed} of files",
            markup=False,
            highlight=False,
        )
    removed_ids = {r.id for r in removed}
    notes = [
        f"kept the files of run {r.id} at {r.run_dir}: not this store's run directory"
        for r in removal.foreign
        if r.id in removed_ids
    ]
    notes += [
        f"run {f.id} continues run {f.continues_id}: that link {'would be' if dry_run else 'is'} cleared"
        for f in removal.unlinked
        if f.continues_id in removed_ids
    ]
    for note in notes:
        console.print(safe(note), soft_wrap=True, highlight=False)
    for failure in failed:
        err_console.print(Text.assemble(("error:", "red"), " ", clean(failure)), soft_wrap=True)
