"""The ``corral`` Typer app: global options, shared helpers, small commands, and ``main`` (errors → exit codes)."""

from __future__ import annotations

import copy
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup, TyperOption

from corral.cli.text import safe
from corral.errors import CorralError, UsageError

EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 3

GLOBAL_OPTIONS = ("debug", "home", "config", "database_url", "server")


class _CorralGroup(TyperGroup):
    """The top-level group, whose global options also work after the command: ``corral show RUN --home H``.

    click parses a group's options only before the command's name. So every command (and
    sub-group) gets a copy of each global option that records its value in ``state`` instead of
    passing it to the command; the copies read no environment variable, which the group's own
    options have read already. After ``--`` every word is the command's
    (``corral sandbox exec -- CMD --debug``). ``--version`` goes before the command.
    """

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        copies = [
            _option_after_command(option)
            for option in self.params
            if isinstance(option, TyperOption) and option.name in GLOBAL_OPTIONS
        ]
        _add_options(self, copies)


def _option_after_command(option: TyperOption) -> TyperOption:
    after = copy.copy(option)
    after.expose_value = False
    after.envvar = None
    after.callback = lambda _ctx, param, value: _apply_global_option(param.name, value)
    after.rich_help_panel = "Global options"
    return after


def _add_options(group: TyperGroup, options: list[TyperOption]) -> None:
    """Add ``options`` to every command under ``group``; a command that already has one of their names is a bug."""
    for name, command in group.commands.items():
        taken = {flag for param in command.params for flag in (*param.opts, *param.secondary_opts)}
        clash = taken.intersection(flag for option in options for flag in option.opts)
        if clash:
            raise TypeError(f"command {name!r} defines {', '.join(sorted(clash))}, which are global options")
        command.params.extend(options)
        if isinstance(command, TyperGroup):
            _add_options(command, options)


app = typer.Typer(
    name="corral",
    cls=_CorralGroup,
    help="Run coding agents in sandboxes, durably, with a journal of every step.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(help="Model helpers: the scripted model server for offline testing.", no_args_is_help=True)
app.add_typer(model_app, name="model")


console = Console()
err_console = Console(stderr=True)


class _State:
    debug = False
    home: Path | None = None
    config: Path | None = None
    server: str | None = None
    context: typer.Context | None = None
    """The top-level command's context: the command's name, and cleanups when it ends."""


state = _State()


def _apply_global_option(name: str | None, value: Any) -> None:
    """Record a global option given before or after the command (an absent one changes nothing)."""
    if name == "debug" and value:
        state.debug = True
        logging.getLogger().setLevel(logging.DEBUG)
    elif name == "home" and value is not None:
        state.home = Path(value).resolve()
    elif name == "config" and value is not None:
        state.config = Path(value)
    elif name == "database_url" and value:
        # Where every part of corral (and the processes it starts) reads it: Store.open, DBOS.
        os.environ["CORRAL_DATABASE_URL"] = value
    elif name == "server" and value:
        state.server = value


def _print_version(value: bool) -> None:
    if value:
        import corral

        console.print(f"corral {corral.__version__}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    context: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", envvar="CORRAL_DEBUG", help="Show tracebacks and debug logs.")
    ] = False,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home", envvar="CORRAL_HOME", help="Store directory (default: .corral/ beside corral.toml, or here)."
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Spec file (default: the nearest corral.toml).")
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            envvar="CORRAL_DATABASE_URL",
            help="The store's database (default: SQLite in the store directory), e.g. postgresql+psycopg://…",
            show_envvar=True,
        ),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            envvar="CORRAL_SERVER",
            help="A `corral serve` to work with instead of a local store (run, runs, show, trace, cancel, "
            "resume, approvals, approve, deny, diff, apply); its token from $CORRAL_TOKEN or `corral login`.",
            show_envvar=True,
        ),
    ] = None,
) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    state.context = context
    options = (("debug", debug), ("home", home), ("config", config), ("database_url", database_url))
    for name, value in (*options, ("server", server)):
        _apply_global_option(name, value)


def store_home() -> Path:
    """``--home``/``$CORRAL_HOME``, else ``.corral/`` beside the nearest corral.toml (or here)."""
    from corral.store import default_home

    if state.home is not None:
        return state.home
    config = config_path(required=False)
    return default_home(config.parent if config else None)


def open_store(*, server_side: bool = False) -> Any:
    """The local store; a command that has no remote form refuses ``--server`` here.

    ``server_side``: a command of the server's own machine (serve, worker, token…), which works on
    the database itself whatever ``CORRAL_SERVER`` says.
    """
    from corral.store import Store

    if state.server is not None and not server_side:
        command = state.context.invoked_subcommand if state.context is not None else None
        raise UsageError(
            f"`corral {command or '…'}` works on a local store, not through a server (--server / CORRAL_SERVER is set)",
            hint="leave out --server (or unset CORRAL_SERVER) and run it where the store is",
        )
    return Store.open(home=store_home())


def remote() -> Any:
    """A client of the server named by ``--server``/``CORRAL_SERVER``, or None for the local store."""
    if state.server is None:
        return None
    from corral.cli.remote import ServerClient, normalize_url, token_for

    server = normalize_url(state.server)
    client = ServerClient(server, token_for(server))
    if state.context is not None:
        state.context.call_on_close(client.close)  # its connections, whatever way the command ends
    return client


def open_runs() -> Any:
    """Where the run views read (a :class:`corral.cli.remote.RunReader`): the server if one is set, else the store."""
    return remote() or open_store()


def config_path(*, required: bool = True) -> Path | None:
    from corral.spec import SPEC_FILE_NAME, find_config

    if state.config is not None:
        return state.config
    found = find_config(Path.cwd())
    if found is None and required:
        raise UsageError(f"no {SPEC_FILE_NAME} here or in any parent directory", hint="run `corral init` to write one")
    return found


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the file; a directory gets DIR/corral.toml.")] = Path(
        "corral.toml"
    ),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter corral.toml."""
    try:
        target = _write_starter_spec(path, force=force)
    except OSError as err:  # a name too long, a read-only file system, no permission
        raise UsageError(
            f"cannot write {err.filename or path}: {err.strerror or err}", hint="choose a path you can write"
        ) from None
    console.print(safe(f'wrote {target}; edit it, then: corral run fixer "describe the task" --repo .'), soft_wrap=True)


def _write_starter_spec(path: Path, *, force: bool) -> Path:
    """Write the starter spec to ``path`` (``path/corral.toml`` for a directory) and return where it went.

    A file that exists or a missing parent directory is a UsageError naming it; what only the
    operating system can tell (a name too long, a read-only file system) is its OSError.
    """
    from corral.spec import SPEC_FILE_NAME
    from corral.templates import STARTER_SPEC

    target = path / SPEC_FILE_NAME if path.is_dir() else path
    if target.exists() and not force:
        raise UsageError(f"{target} already exists", hint="pass --force to overwrite it")
    parent = target.parent
    if not parent.exists():
        raise UsageError(f"{parent}: no such directory", hint=f"create it first (mkdir -p {shlex.quote(str(parent))})")
    if not parent.is_dir():
        raise UsageError(f"{parent} is not a directory", hint="give a path inside a directory")
    target.write_text(STARTER_SPEC)
    return target


@app.command()
def doctor(json_out: Annotated[bool, typer.Option("--json", help="JSON output.")] = False) -> None:
    """Say what works on this machine: the store, sandbox backends, isolation, limits, network profiles."""
    from corral.cli.sandbox import doctor_report, print_doctor

    rows = [*doctor_report(), check_store()]
    raise typer.Exit(EXIT_OK if print_doctor(rows, json_out=json_out) else EXIT_RUN_FAILED)


def check_store() -> tuple[str, bool, str]:
    """The doctor's store row: open the store and query it (a SQLite store not created yet is fine)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from corral.store import Store, store_url

    try:
        home = store_home()
        url = store_url(home)
        parsed = make_url(url)
    except (CorralError, ArgumentError) as err:  # a bad --config or database URL
        return ("store", False, str(err))
    shown = parsed.render_as_string(hide_password=True)
    database = parsed.database if parsed.get_backend_name() == "sqlite" else None
    if database and database != ":memory:" and not Path(database).exists():
        # Do not create a store in whatever directory `corral doctor` was run: say where it would go.
        ancestor = Path(database).parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            return ("store", False, f"{shown}: cannot be created ({ancestor} is not a writable directory)")
        return ("store", True, f"{shown} (not created yet; the first run creates it)")
    try:
        store = Store(url, home=home)
        try:
            runs = store.check()
        finally:
            store.close()
    except CorralError as err:
        return ("store", False, err.message)
    return ("store", True, f"{shown} ({runs} runs)")


@model_app.command("serve")
def model_serve(
    script: Annotated[Path, typer.Argument(help="Script file (TOML or JSON).")],
    port: Annotated[int, typer.Option("--port", "-p", help="Port on 127.0.0.1 (0 picks a free one).")] = 0,
    record: Annotated[Path | None, typer.Option("--record", help="Append every request as a JSON line here.")] = None,
) -> None:
    """Serve a scripted model on 127.0.0.1 (OpenAI Chat, OpenAI Responses, Anthropic Messages)."""
    from corral.models.scripted import serve

    serve(script, host="127.0.0.1", port=port, record_path=record)


def _print_error(label: str, message: object, *, hint: str | None = None) -> None:
    """An error on stderr as the text it is (never markup or terminal control), unwrapped: a path or an
    id cut over two lines cannot be copied, and the terminal wraps long lines itself."""
    err_console.print(Text.assemble((label, "red"), " ", safe(message)), soft_wrap=True)
    if hint:
        err_console.print(safe(f"hint: {hint}", "dim"), soft_wrap=True)


def main() -> None:
    """Entry point: run the app, turning corral's errors into messages and exit codes."""
    try:
        code = app(standalone_mode=False)
    except CorralError as err:
        if state.debug:
            raise
        _print_error("error:", err.message, hint=err.hint)
        sys.exit(err.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted; `corral resume` continues interrupted runs")
        sys.exit(130)
    except typer.Abort:
        sys.exit(130)
    except typer.TyperException as exc:
        # Usage errors (a missing argument, a bad value, an unknown option): click's own message and
        # exit 2. typer bundles its own click, so these are typer's classes, not the click package's.
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            _print_error("error:", exc)
        code = getattr(exc, "exit_code", EXIT_USAGE)
        sys.exit(code if isinstance(code, int) and code > 0 else EXIT_USAGE)
    except Exception as exc:
        if state.debug:
            raise
        _print_error("internal error:", f"{type(exc).__name__}: {exc} (rerun with --debug for details)")
        sys.exit(70)
    sys.exit(code if isinstance(code, int) else 0)
