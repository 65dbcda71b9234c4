"""The ``corral`` command: run agents, inspect their journals, resume and cancel runs, serve the scripted model."""

from corral.cli import approvals, check, inspection, patches, run, server, worker  # noqa: F401  (their commands register on ``app``)
from corral.cli.app import app, main
from corral.cli.engines import engines_app
from corral.cli.sandbox import sandbox_app

app.add_typer(sandbox_app, name="sandbox")
app.add_typer(engines_app, name="engines")
app.add_typer(server.token_app, name="token")
app.add_typer(server.team_app, name="team")
app.add_typer(server.user_app, name="user")
app.add_typer(server.agent_app, name="agent")

__all__ = ["app", "main"]
