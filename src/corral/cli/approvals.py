"""``corral approvals|approve|deny``: the actions runs wait on a person for, and that person's decisions.

A decision is taken from any process on the same store (or through a server, ``--server``); the run
waiting on it goes on within a second if its process is alive, or when it is resumed. Arguments and
reasons are the agent's and the repository's text: printed as plain text, never markup.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from corral.cli.app import app, console, open_runs, open_store, remote
from corral.cli.text import clean
from corral.errors import UsageError

ApprovalArgument = Annotated[str, typer.Argument(help="The request's id (from `corral approvals`).")]


def _age(seconds: float) -> str:
    seconds = max(seconds, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


@app.command()
def approvals(json_out: Annotated[bool, typer.Option("--json", help="JSON output.")] = False) -> None:
    """List the pending approval requests: id, run, agent, action (arguments redacted), rule, age."""
    pending = open_runs().approvals()
    if json_out:
        sys.stdout.write(json.dumps([request.model_dump(mode="json") for request in pending], indent=2) + "\n")
        return
    if not pending:
        console.print("no pending approvals")
        return
    now = time.time()
    table = Table(box=None, header_style="bold")
    for column in ("id", "run", "agent", "action", "rule", "age", "expires in"):
        table.add_column(column, overflow="fold")
    for request in pending:
        action = f"{request.tool} {json.dumps(request.arguments, ensure_ascii=False)}"
        table.add_row(
            Text(request.id),
            Text(request.run_id),
            Text(clean(request.agent)),
            Text(clean(action)),
            Text(clean(request.rule or "(default)")),
            Text(_age(now - request.created_at)),
            Text(_age(request.expires_at - now)),
        )
    console.print(table)


@app.command()
def approve(
    approval_id: ApprovalArgument,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (journaled with the decision).")] = None,
) -> None:
    """Let a waiting run's action go ahead."""
    _decide(approval_id, approve=True, reason=reason)


@app.command()
def deny(
    approval_id: ApprovalArgument,
    reason: Annotated[str, typer.Option("--reason", help="Why: the agent reads it as the tool's error.")] = "",
) -> None:
    """Refuse a waiting run's action; the agent is told the reason and goes on."""
    _decide(approval_id, approve=False, reason=reason)


def _decide(approval_id: str, *, approve: bool, reason: str | None) -> None:
    from corral.runtime import approvals as approving

    if not approve and not (reason or "").strip():
        raise UsageError("corral deny needs --reason TEXT: the agent reads it")
    server = remote()
    if server is not None:  # decided as the token's user
        settled = server.decide(approval_id, approve=approve, reason=reason)
    else:
        settled = approving.decide(open_store(), approval_id, approve=approve, reason=reason, by=approving.who_am_i())
    verb = "approved" if approve else "denied"
    console.print(
        Text.assemble(f"{verb} {settled.id}", (f" (run {settled.run_id}, {clean(settled.tool)})", "dim")),
    )
