"""``corral serve`` (the HTTP API) and the accounts it checks: ``corral team|user|token``."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from corral.cli.app import app, console, err_console, open_store
from corral.cli.inspection import AGE, AGE_UNITS_S, write_json
from corral.cli.text import safe
from corral.errors import UsageError

token_app = typer.Typer(help="API tokens for `corral serve`: create, list, revoke.", no_args_is_help=True)
team_app = typer.Typer(help="Teams: every run and spec submitted through the API belongs to one.", no_args_is_help=True)
user_app = typer.Typer(help="Users: a token acts for one user in one of their teams.", no_args_is_help=True)
agent_app = typer.Typer(
    help="Agent identities: what an agent's runs may use when they act as the agent.", no_args_is_help=True
)
JsonOption = Annotated[bool, typer.Option("--json", help="JSON output.")]


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="Port to listen on.")] = 8000,
) -> None:
    """Serve the HTTP API (runs, events live, approvals, costs, specs, tokens) over the store.

    Runs submitted to it are executed by `corral worker` processes on the same database. On a store
    without any token, the first start prints an admin token, once.
    """
    import uvicorn

    from corral.runtime import workflow
    from corral.server import create_app
    from corral.store.accounts import Accounts

    store = open_store(server_side=True)
    workflow.migrate(store.dbos_url())  # so that runs can be queued before any worker started
    token = Accounts(store.engine).bootstrap()
    if token is not None:
        console.print(
            Text.assemble(("admin token (shown once; keep it): ", "bold"), token), soft_wrap=True, highlight=False
        )
    shown = store.engine.url.render_as_string(hide_password=True)

    class Announced(uvicorn.Server):
        """Says where it listens once the socket is bound (a client may connect from then on)."""

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.should_exit:  # it could not bind; uvicorn has said why
                return
            bound = self.servers[0].sockets[0].getsockname()
            address = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
            console.print(
                safe(f"corral serve on http://{address}:{bound[1]} (API: /docs, /openapi.json) · store {shown}"),
                soft_wrap=True,
            )

    config = uvicorn.Config(create_app(store), host=host, port=port, log_level="warning", access_log=False)
    try:
        Announced(config).run()
    finally:
        store.close()


def _expiry(value: str | None) -> float | None:
    if value is None:
        return None
    age = AGE.fullmatch(value.strip())
    if age is None:
        raise UsageError(f"--expires {value!r} is not a duration", hint="such as 30m, 12h, 30d or 8w")
    return time.time() + int(age[1]) * AGE_UNITS_S[age[2]]


@token_app.command("create")
def token_create(
    user: Annotated[str, typer.Option("--user", help="The user the token acts for.")],
    team: Annotated[str, typer.Option("--team", help="The team it acts in (the user must be a member).")],
    scopes: Annotated[
        list[str], typer.Option("--scope", help="runs:read, runs:write, approvals:decide, specs:write, admin.")
    ],
    name: Annotated[str, typer.Option("--name", help="A name to know it by.")] = "",
    expires: Annotated[str | None, typer.Option("--expires", help="Lifetime: 30m, 12h, 30d, 8w.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Make a token; it is printed once (only its hash is kept)."""
    from corral.store.accounts import Accounts

    token, info = Accounts(open_store(server_side=True).engine).create_token(
        user=user, team=team, scopes=scopes, name=name, expires_at=_expiry(expires)
    )
    if json_out:
        write_json({**info.to_json(), "token": token})
        return
    console.print(token, markup=False, highlight=False, soft_wrap=True)
    err_console.print(safe(f"token {info.id} for {info.user} in {info.team}: {', '.join(info.scopes)} (shown once)"))


@token_app.command("list")
def token_list(
    team: Annotated[str | None, typer.Option("--team", help="Only this team's.")] = None, json_out: JsonOption = False
) -> None:
    """Tokens, newest first (never their secrets)."""
    from corral.store.accounts import Accounts

    tokens = Accounts(open_store(server_side=True).engine).tokens(team)
    if json_out:
        write_json([t.to_json() for t in tokens])
        return
    table = Table("id", "name", "user", "team", "scopes", "state", box=None)
    now = time.time()
    for t in tokens:
        state = (
            "revoked"
            if t.revoked_at
            else "expired"
            if t.expires_at and t.expires_at <= now
            else f"expires {time.strftime('%Y-%m-%d %H:%M', time.localtime(t.expires_at))}"
            if t.expires_at
            else "active"
        )
        table.add_row(safe(t.id), safe(t.name), safe(t.user), safe(t.team), safe(" ".join(t.scopes)), state)
    console.print(table)


@token_app.command("revoke")
def token_revoke(token_id: Annotated[str, typer.Argument(help="The token's id (or the token itself).")]) -> None:
    """Revoke a token at once."""
    from corral.store.accounts import Accounts

    if not Accounts(open_store(server_side=True).engine).revoke(token_id):
        raise UsageError(f"no unrevoked token {token_id!r}", hint="`corral token list` lists them")
    console.print(safe(f"token {token_id.removeprefix('corral_').split('_', 1)[0]} revoked"))


@team_app.command("create")
def team_create(name: Annotated[str, typer.Argument(help="The team's name.")]) -> None:
    """Make a team."""
    from corral.store.accounts import Accounts

    team_id = Accounts(open_store(server_side=True).engine).create_team(name)
    console.print(safe(f"team {name} ({team_id})"))


@user_app.command("create")
def user_create(
    name: Annotated[str, typer.Argument(help="The user's name.")],
    teams: Annotated[list[str] | None, typer.Option("--team", help="A team the user belongs to (repeat).")] = None,
) -> None:
    """Make a user, member of the teams named."""
    from corral.store.accounts import Accounts

    user_id = Accounts(open_store(server_side=True).engine).create_user(name, teams or [])
    console.print(safe(f"user {name} ({user_id}) in {', '.join(teams or []) or 'no team'}"))


GrantsArgument = Annotated[list[str], typer.Argument(help="Grants: secret:NAME (a secret) or secret:* (any).")]
TeamOption = Annotated[str, typer.Option("--team", help="The team the grants hold in.")]


def _print_grants(who: str, grants: list[str]) -> None:
    console.print(safe(f"{who} holds: {' '.join(grants) or 'nothing'}"), soft_wrap=True, highlight=False)


@user_app.command("grant")
def user_grant(
    name: Annotated[str, typer.Argument(help="The user.")], team: TeamOption, grants: GrantsArgument
) -> None:
    """Let a user's runs in a team use these (on their behalf, a run may use what both it and its agent hold)."""
    _grant("user", name, team, grants, revoke=False)


@user_app.command("ungrant")
def user_ungrant(
    name: Annotated[str, typer.Argument(help="The user.")], team: TeamOption, grants: GrantsArgument
) -> None:
    """Take grants back from a user in a team (runs submitted from now on)."""
    _grant("user", name, team, grants, revoke=True)


@agent_app.command("grant")
def agent_grant(
    name: Annotated[str, typer.Argument(help="The agent (its spec's name).")], team: TeamOption, grants: GrantsArgument
) -> None:
    """Give an agent an identity of its own in a team, or more grants: its runs may act as it (``acting_as: agent``)."""
    _grant("agent", name, team, grants, revoke=False)


@agent_app.command("ungrant")
def agent_ungrant(
    name: Annotated[str, typer.Argument(help="The agent (its spec's name).")], team: TeamOption, grants: GrantsArgument
) -> None:
    """Take grants back from an agent in a team (runs submitted from now on)."""
    _grant("agent", name, team, grants, revoke=True)


def _grant(kind: str, name: str, team: str, grants: list[str], *, revoke: bool) -> None:
    """Change a user's or an agent's grants in a team, and print what it holds after."""
    from corral.store.accounts import Accounts

    accounts = Accounts(open_store(server_side=True).engine)
    change = accounts.grant_user if kind == "user" else accounts.grant_agent
    _print_grants(f"{kind} {name} in {team}", change(name, team, grants, revoke=revoke))


@agent_app.command("list")
def agent_list(team: TeamOption, json_out: JsonOption = False) -> None:
    """The agents with an identity of their own in a team, and their grants."""
    from corral.store.accounts import Accounts

    agents = Accounts(open_store(server_side=True).engine).agents(team)
    if json_out:
        write_json([{"agent": name, "grants": grants} for name, grants in agents])
        return
    if not agents:
        console.print(safe(f"no agent has an identity in {team}"), highlight=False)
    for name, grants in agents:
        _print_grants(f"agent {name}", grants)


@app.command()
def login(
    server: Annotated[str, typer.Argument(help="The server's address, e.g. http://127.0.0.1:8000.")],
) -> None:
    """Keep a token for a server, so `corral --server URL …` finds it (read from stdin, or asked for).

    The token is tried against the server first, then stored in ~/.config/corral/credentials.toml
    (``$XDG_CONFIG_HOME``), a file only you can read. ``$CORRAL_TOKEN`` still comes first.
    """
    import sys

    from corral.cli.remote import ServerClient, normalize_url, save_token

    url = normalize_url(server)
    if sys.stdin.isatty():
        token = typer.prompt(f"token for {url}", hide_input=True, default="", show_default=False)
    else:
        token = sys.stdin.readline()
    token = token.strip()
    if not token:
        raise UsageError("no token given", hint="give the token `corral token create` printed")
    client = ServerClient(url, token)
    try:
        client.check()
    finally:
        client.close()
    path = save_token(url, token)
    console.print(safe(f"token for {url} kept in {path}"), soft_wrap=True, highlight=False)
