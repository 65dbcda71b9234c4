"""``corral engines install|list``: the external engines' CLIs, installed from the npm registry and pinned."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

engines_app = typer.Typer(
    help="External engines (Claude Code, Codex, OpenCode): install their CLIs, list them.", no_args_is_help=True
)
console = Console()


@engines_app.command("install")
def engines_install(
    name: Annotated[str, typer.Argument(help="claude-code, codex or opencode.")],
    version: Annotated[
        str | None, typer.Option("--version", help="An exact version (default: the one corral is tested with).")
    ] = None,
) -> None:
    """Install an engine's CLI from the npm registry into corral's cache, check it starts, and pin it."""
    from corral.engines.install import install

    done = asyncio.run(install(name, version))
    console.print(
        Text.assemble(("installed ", "green"), f"{done.package} {done.version}", " (pinned) at ", str(done.binary)),
        soft_wrap=True,
    )


@engines_app.command("list")
def engines_list(json_out: Annotated[bool, typer.Option("--json", help="JSON output.")] = False) -> None:
    """The external engines, the versions installed, and the one each uses (pinned)."""
    from corral.engines.install import CLIS, installed_versions, pinned

    rows = []
    for cli in CLIS.values():
        current = pinned(cli.engine)
        rows.append(
            {
                "engine": cli.engine,
                "package": cli.package,
                "tested": cli.tested,
                "pinned": current.version if current else None,
                "command": str(current.binary) if current else None,
                "installed": [item.version for item in installed_versions(cli.engine)],
            }
        )
    if json_out:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(box=None, header_style="bold")
    for column in ("engine", "package", "pinned", "installed", "tested with"):
        table.add_column(column)
    for row in rows:
        installed = ", ".join(row["installed"]) or "not installed"
        table.add_row(row["engine"], row["package"], row["pinned"] or "-", installed, row["tested"])
    console.print(table)
    if not any(row["pinned"] for row in rows):
        console.print("install one with `corral engines install NAME`", markup=False, highlight=False)
