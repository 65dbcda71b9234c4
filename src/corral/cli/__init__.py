"""The ``corral`` command: run agents, inspect their journals, resume and cancel runs, serve the scripted model."""

from corral.cli import approvals, check, inspection, patches, run, worker  # noqa: F401  (their commands register on ``app``)
from corral.cli.app import app, main
from corral.cli.engines import engines_app
from corral.cli.sandbox import sandbox_app

app.add_typer(sandbox_app, name="sandbox")
app.add_typer(engines_app, name="engines")

__all__ = ["app", "main"]
