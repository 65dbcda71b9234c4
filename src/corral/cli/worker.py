"""``corral worker``: execute the runs submitted to run queues, alongside other workers, until stopped."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer
from rich.text import Text

from corral.cli.app import app, console, open_store
from corral.cli.signals import Interrupted, until_signal
from corral.cli.text import safe

log = logging.getLogger("corral.worker")

RECOVER_EVERY_S = 2.0
"""How often a worker looks for gone workers of its queues, whose runs it then puts back on them."""


@app.command()
def worker(
    queues: Annotated[
        list[str] | None,
        typer.Option("--queue", "-q", help="A run queue to serve (repeat for several; default corral.runs)."),
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-n", min=1, help="Runs at once in this worker (the queue's setting).")
    ] = 4,
    global_concurrency: Annotated[
        int | None,
        typer.Option("--global-concurrency", min=1, help="Runs at once over every worker of the queue."),
    ] = None,
) -> None:
    """Execute runs submitted to run queues (`corral run --submit`, `corral serve`) until stopped.

    Start as many as you like, on this machine or others sharing the database (and the runs
    directory). A worker that dies (even SIGKILL) has its runs finished by another worker of the
    same queue, from their last completed step. SIGINT or SIGTERM stops a worker: its runs in flight
    are left to the other workers the same way.
    """
    from corral.runtime import workflow

    names = [workflow.check_queue_name(q) for q in (queues or [workflow.RUN_QUEUE])]
    try:
        asyncio.run(until_signal(lambda: _serve(names, concurrency, global_concurrency)))
    except Interrupted as stop:
        console.print(f"worker stopped ({stop.signal_name})", markup=False)
        raise typer.Exit(0) from None


async def _serve(queues: list[str], concurrency: int, global_concurrency: int | None) -> None:
    from corral.runtime import Runtime

    store = open_store(server_side=True)
    async with Runtime(
        store, run_queues=queues, concurrency=concurrency, global_concurrency=global_concurrency
    ) as runtime:
        where = store.engine.url.render_as_string(hide_password=True)
        console.print(
            Text.assemble(
                "corral worker ",
                safe(runtime.executor_id),
                f" serving {', '.join(queues)} (concurrency {concurrency}) on ",
                safe(where),
            ),
            soft_wrap=True,
        )
        while True:
            try:
                await asyncio.to_thread(runtime.recover_workers)
            except Exception:  # the database may be away for a moment: say so, try again
                log.exception("recovering the runs of gone workers failed")
            await asyncio.sleep(RECOVER_EVERY_S)
