"""``corral run|continue|resume|cancel|demo``: execute runs in this process, show them, hand over their results."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import json
import logging
import os
import shlex
import sys
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from corral.cli.app import (
    EXIT_CANCELLED,
    EXIT_OK,
    EXIT_RUN_FAILED,
    app,
    config_path,
    console,
    err_console,
    open_store,
    remote,
    state,
)
from corral.cli.signals import Interrupted, until_signal
from corral.cli.stream import JsonLines, result_line
from corral.cli.text import clean, safe
from corral.errors import UsageError

if typing.TYPE_CHECKING:
    from corral.cli.prompt import ApprovalPrompter
    from corral.cli.remote import RunReader, ServerClient
    from corral.runtime import Runtime
    from corral.spec import AgentSpec
    from corral.store import RunRecord, Store

Starter = Callable[["Runtime"], Awaitable[list[str]]]
"""Starts a command's runs in the runtime it is given; returns their ids."""

PATCH_FILES_LISTED = 20


def exit_for(record: RunRecord) -> int:
    return {"succeeded": EXIT_OK, "cancelled": EXIT_CANCELLED}.get(record.status.value, EXIT_RUN_FAILED)


# -- hints: commands a person can paste ------------------------------------------------------------


def explicit_home() -> Path | None:
    """The store directory when the commands in hints must name it: given with ``--home``, not the default."""
    from corral.store import default_home

    if state.home is None:
        return None
    config = config_path(required=False)
    return None if state.home == default_home(config.parent if config else None) else state.home


def command_hint(*args: str, home: Path | None) -> str:
    """A ``corral`` command line, quoted for a POSIX shell, with ``--home`` when ``home`` is given, and
    ``--server`` when the server was named on the command line (not by ``CORRAL_SERVER``)."""
    if state.server is not None:
        given = state.server != os.environ.get("CORRAL_SERVER")
        return shlex.join(["corral", *(["--server", state.server] if given else []), *args])
    return shlex.join(["corral", *(["--home", str(home)] if home else []), *args])


def print_hint(text: str, console_: Console | None = None) -> None:
    """Print a line holding a command: never wrapped (it stays copy-pasteable), never markup."""
    (console_ or console).print(safe(text), soft_wrap=True, highlight=False)


# -- the task ----------------------------------------------------------------------------------------


def read_text_file(path: Path, option: str) -> str:
    """A UTF-8 text file named by ``option``; unreadable is a usage error naming the option and the file."""
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UsageError(f"{option} {clean(path)}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{option} {clean(path)}: is a directory") from None
    except OSError as err:
        raise UsageError(f"{option} {clean(path)}: cannot read it ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise UsageError(f"{option} {clean(path)}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def read_task(argument: str | None, task_file: Path | None) -> str:
    """The task: the argument, stdin when the argument is ``-``, or ``--task-file`` (exactly one, not empty).

    Files and stdin have no size limit; an argument is limited by the system (128 KB on Linux).
    """
    if argument is not None and task_file is not None:
        raise UsageError("the task is given twice: as an argument and with --task-file", hint="give only one")
    if task_file is not None:
        task = read_text_file(task_file, "--task-file")
    elif argument == "-":
        try:
            task = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError as err:
            raise UsageError(f"the task on stdin is not UTF-8 text ({err.reason} at byte {err.start})") from None
    elif argument is not None:
        task = argument
    else:
        raise UsageError("no task given", hint="give it as an argument, '-' to read it from stdin, or --task-file PATH")
    if not task.strip():
        raise UsageError("the task is empty", hint="say what the agent should do")
    return task


# -- options shared by `run` and `continue` ----------------------------------------------------------

OVERRIDES = "Overrides of the agent's spec (recorded with the run)"
TASK_AND_OUTPUT = "Task and output"


def read_context(path: Path) -> str:
    """``--context``: a file's text, or a directory's files (one ``size path`` line each, ``.git`` left out)."""
    path = path.expanduser()
    if path.is_dir():
        lines = [
            f"{p.stat().st_size}\t{p.relative_to(path)}"
            for p in sorted(path.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(path).parts
        ]
        return "\n".join(lines) + "\n"
    return read_text_file(path, "--context")


def override_option(*names: str, help: str) -> Any:
    """An option of :class:`SpecOverrides`, listed under its own heading in ``--help``."""
    return typer.Option(*names, help=help, rich_help_panel=OVERRIDES)


def output_option(*names: str, help: str) -> Any:
    """An option of :class:`RunOptions`, listed under its own heading in ``--help``."""
    return typer.Option(*names, help=help, rich_help_panel=TASK_AND_OUTPUT)


#: What each spec field overridden on the command line is called there (errors name the option).
OVERRIDE_OPTIONS = {
    "model": "--model",
    "base_url": "--base-url",
    "budget.max_turns": "--max-turns",
    "budget.max_cost_usd": "--max-cost",
    "instructions": "--instructions",
    "tools": "--tools",
    "output_schema": "--output-schema",
    "sandbox.backend": "--sandbox",
    "sandbox.network": "--network",
}


@dataclass(frozen=True)
class SpecOverrides:
    """Changes to the agent's spec for one run; they are part of the spec the run records (and its hash)."""

    model: Annotated[str | None, override_option("--model", "-m", help="Override the spec's model.")] = None
    base_url: Annotated[str | None, override_option("--base-url", help="Override the model endpoint.")] = None
    max_turns: Annotated[int | None, override_option("--max-turns", help="Budget: at most this many model calls.")] = (
        None
    )
    max_cost: Annotated[float | None, override_option("--max-cost", help="Budget: at most this many USD.")] = None
    instructions: Annotated[
        str | None, override_option("--instructions", help="Replace the instructions; @FILE reads them from FILE.")
    ] = None
    tools: Annotated[str | None, override_option("--tools", help="The tools the agent may use, comma-separated.")] = (
        None
    )
    output_schema: Annotated[
        Path | None, override_option("--output-schema", help="A JSON schema file: the run returns typed output.")
    ] = None
    sandbox: Annotated[str | None, override_option("--sandbox", help="Sandbox backend (bubblewrap, local).")] = None
    network: Annotated[
        str | None, override_option("--network", help="The sandbox's network: none, allowlist or host.")
    ] = None

    def apply(self, spec: AgentSpec) -> AgentSpec:
        """``spec`` with these overrides, validated like a spec file; a bad value is a usage error naming its option."""
        changes = {
            "model": self.model,
            "base_url": self.base_url,
            "budget.max_turns": self.max_turns,
            "budget.max_cost_usd": self.max_cost,
            "instructions": self._instructions(),
            "tools": self._tools(),
            "output_schema": self._output_schema(),
            "sandbox.backend": self._sandbox(),
            "sandbox.network": self._network(spec),
        }
        return spec.with_overrides(changes, names=OVERRIDE_OPTIONS)

    def _instructions(self) -> str | None:
        if self.instructions is None or not self.instructions.startswith("@"):
            return self.instructions
        return read_text_file(Path(self.instructions[1:]).expanduser(), "--instructions")

    def _tools(self) -> tuple[str, ...] | None:
        from corral.spec import DEFAULT_TOOLS, unknown_tools

        if self.tools is None:
            return None
        names = tuple(name.strip() for name in self.tools.split(",") if name.strip())
        unknown = unknown_tools(names)
        if unknown:
            raise UsageError(
                f"--tools: unknown tool(s) {', '.join(map(clean, unknown))}",
                hint=f"built-in tools: {', '.join(DEFAULT_TOOLS)}",
            )
        return names

    def _output_schema(self) -> Any:
        if self.output_schema is None:
            return None
        text = read_text_file(self.output_schema, "--output-schema")
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise UsageError(f"--output-schema {clean(self.output_schema)}: not valid JSON ({err})") from None

    def _sandbox(self) -> str | None:
        from corral.sandbox import available_backends

        if self.sandbox is not None and self.sandbox not in available_backends():
            raise UsageError(
                f"--sandbox: unknown sandbox backend {clean(self.sandbox)!r}",
                hint=f"available: {', '.join(available_backends())}",
            )
        return self.sandbox

    def _network(self, spec: AgentSpec) -> dict[str, Any] | None:
        if self.network is None:
            return None
        # Switching to allowlist keeps the hosts the spec allows; other modes take no hosts.
        allow = spec.sandbox.network.allow if self.network == "allowlist" else ()
        return {"mode": self.network, "allow": allow}


@dataclass(frozen=True)
class RunOptions:
    """Where the task comes from and how the run's end is handed over (text, JSON lines, a file, a branch)."""

    task_file: Annotated[Path | None, output_option("--task-file", help="Read the task from this file.")] = None
    json_out: Annotated[
        bool, output_option("--json", help="Print one JSON event per line as the run goes, then its result.")
    ] = False
    quiet: Annotated[
        bool, output_option("--quiet", "-q", help="Print only the final answer; errors only on stderr.")
    ] = False
    last_message: Annotated[
        Path | None, output_option("--output-last-message", help="Write the final answer (or typed output) here.")
    ] = None
    patch: Annotated[bool, output_option("--patch", help="Print the whole patch, not only its stat.")] = False
    branch: Annotated[
        str | None, output_option("--branch", help="Commit the patch to this new branch of the repository.")
    ] = None
    interactive: Annotated[
        bool,
        output_option(
            "--interactive",
            help="Ask here about each action policy sends to a person (else the run waits for `corral approve`).",
        ),
    ] = False

    def check(self, repo: Path) -> None:
        """Refuse now what could only fail after the run: a bad ``--branch`` or ``--output-last-message``."""
        if self.interactive:
            from corral.cli.prompt import check_terminal

            check_terminal()
        if self.last_message is not None and not self.last_message.expanduser().absolute().parent.is_dir():
            raise UsageError(f"--output-last-message {clean(self.last_message)}: its directory does not exist")
        if self.branch is not None:
            from corral.cli.patches import check_new_branch

            check_new_branch(repo, self.branch)


def option_groups(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` the fields of its dataclass-typed parameters as options, and call it with the dataclasses.

    Typer reads a command's options from its signature. ``run`` and ``continue`` share a dozen
    options; declared once as fields of :class:`SpecOverrides` and :class:`RunOptions`, they reach
    each command as one object per group.
    """
    hints = typing.get_type_hints(command, include_extras=True)
    params: list[inspect.Parameter] = []
    groups: dict[str, type[Any]] = {}
    for param in inspect.signature(command).parameters.values():
        kind = hints[param.name]
        if not (isinstance(kind, type) and dataclasses.is_dataclass(kind)):
            params.append(param.replace(annotation=kind))
            continue
        groups[param.name] = kind
        field_hints = typing.get_type_hints(kind, include_extras=True)
        params += [
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=field_hints[f.name])
            for f in dataclasses.fields(kind)
        ]

    @functools.wraps(command)
    def with_groups(**kwargs: Any) -> None:
        for name, kind in groups.items():
            kwargs[name] = kind(**{f.name: kwargs.pop(f.name) for f in dataclasses.fields(kind)})
        command(**kwargs)

    with_groups.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    with_groups.__annotations__ = {p.name: p.annotation for p in params}
    return with_groups


# -- --branch ------------------------------------------------------------------------------------------


def commit_branch(record: RunRecord, branch: str) -> dict[str, str] | None:
    """Commit the run's patch to the new ``branch`` of its repository; None when there is nothing to commit.

    The run must have succeeded, or failed with work kept (partial); a cancelled run's patch is not
    committed. The checkout, the index and HEAD are never touched.
    """
    from corral.cli.patches import commit_to_branch

    patch = (record.result or {}).get("patch") or ""
    if not patch or record.status.value not in ("succeeded", "failed"):
        return None
    title = record.task.strip().splitlines()[0][:72]
    message = f"{title}\n\ncorral run {record.id} ({record.agent}, {record.status.value})\n"
    commit = commit_to_branch(Path(record.repo), patch, branch, message=message)
    return {"name": branch, "commit": commit}


# -- executing runs until they end, or until a signal ---------------------------------------------------


@dataclass
class Session:
    """One command's runs in this process: started, shown while they execute, awaited.

    ``view`` is the console of the live view (None: no view, as with ``--quiet``); ``stream`` receives
    every event as the journal commits it (``--json``).
    """

    store: Store
    title: str
    view: Console | None = None
    stream: JsonLines | None = None
    interactive: bool = False
    """Ask at the terminal about this session's approval requests (``--interactive``)."""
    run_ids: list[str] = field(default_factory=list)

    def execute(self, starter: Starter) -> list[RunRecord]:
        """Start the runs and wait until they end; a stop signal raises :class:`Interrupted`."""
        return asyncio.run(self._until_signal(starter))

    async def _until_signal(self, starter: Starter) -> list[RunRecord]:
        # The signal cancels the work: the runtime shuts down as on any exit, its runs are left
        # interrupted with their sandboxes, and the command says how to resume them.
        try:
            return await until_signal(lambda: self._execute(starter))
        except Interrupted as stop:
            raise Interrupted(stop.signum, list(self.run_ids)) from None

    async def _execute(self, starter: Starter) -> list[RunRecord]:
        from corral.runtime import Runtime

        async with Runtime(self.store) as runtime:
            with self._shown(runtime) as view:
                async with self._prompting(runtime, view) as prompter:
                    self.run_ids += await starter(runtime)
                    if prompter is not None:  # a resumed run may have been waiting already
                        await prompter.ask_pending()
                    if view is not None:
                        view.run_ids.update(self.run_ids)
                        view.title = f"{self.title} · {', '.join(self.run_ids)}" if self.run_ids else self.title
                    return [await runtime.wait(run_id) for run_id in self.run_ids]

    @contextlib.asynccontextmanager
    async def _prompting(self, runtime: Runtime, view: Any) -> AsyncIterator[ApprovalPrompter | None]:
        """With ``--interactive``, a prompter answers this session's approval requests while the runs go on."""
        if not self.interactive:
            yield None
            return
        from corral.cli.prompt import ApprovalPrompter
        from corral.runtime.approvals import who_am_i

        prompter = ApprovalPrompter(runtime, self.view or err_console, self.run_ids, view=view, by=who_am_i())
        runtime.subscribe(prompter.on_event)
        task = asyncio.create_task(prompter.serve())
        try:
            yield prompter
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @contextlib.contextmanager
    def _shown(self, runtime: Runtime) -> Iterator[Any]:
        """The live view and the JSON stream, for as long as the runs execute."""
        from corral.cli.views import LiveRunView

        with contextlib.ExitStack() as stack:
            if self.stream is not None:
                stack.callback(self.store.journal.subscribe(self.stream.on_event))
            view = None
            if self.view is not None:
                view = stack.enter_context(LiveRunView(console=self.view, title=self.title))
                runtime.subscribe(view.on_event)
            else:
                stack.enter_context(_only_errors_logged())
            yield view


@contextlib.contextmanager
def _only_errors_logged() -> Iterator[None]:
    """Without a live view (``--quiet``), warnings such as the local sandbox's do not reach stderr."""
    root = logging.getLogger()
    level = root.level
    if not state.debug:
        root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def report_interrupted(stop: Interrupted, store: Store, *, home: Path | None, stream: JsonLines | None) -> NoReturn:
    """Say that the runs stopped, and the one command that resumes them; exit 130 (SIGINT) or 143 (SIGTERM)."""
    ids = stop.run_ids
    resume = command_hint("resume", *ids[:1] if len(ids) == 1 else (), home=home)
    if len(ids) == 1:
        what = f"run {ids[0]} stopped; its sandbox is kept"
    elif ids:
        what = f"{len(ids)} runs stopped; their sandboxes are kept"
    else:  # stopped while submitting: a run it recorded is interrupted, and `corral resume` starts it
        what = "stopped before its run started"
    print_hint(f"interrupted by {stop.signal_name}: {what}", err_console)
    print_hint(f"resume: {resume}", err_console)
    if stream is not None:
        for run_id in ids:
            stream.write(result_line(store.get_run(run_id), exit_code=stop.exit_code, resume_command=resume))
    raise typer.Exit(stop.exit_code)


# -- what a run leaves: answer, patch, cost -------------------------------------------------------------


def final_answer(record: RunRecord) -> str | None:
    """The run's answer: its typed output as JSON when it has one, else its text."""
    result = record.result or {}
    if result.get("output") is not None:
        return json.dumps(result["output"], indent=2, ensure_ascii=False)
    return result.get("text")


_DIFF_STYLES = (("+++", "bold"), ("---", "bold"), ("diff --git", "bold"), ("@@", "cyan"), ("+", "green"), ("-", "red"))


def print_patch(record: RunRecord, *, home: Path | None, full: bool) -> None:
    """The patch in hand: its stat (or the whole diff with ``full``) and the commands to see and apply it."""
    result = record.result or {}
    patch = result.get("patch") or ""
    if not patch:
        return
    from corral.cli.patches import print_stat
    from corral.cli.views import patch_secrets_warning
    from corral.sandbox.patching import diff_stat

    stat = diff_stat(patch)
    label = "patch" if record.status.value == "succeeded" else "partial work kept"
    added, removed = sum(s[1] for s in stat), sum(s[2] for s in stat)
    console.print(Text.assemble((label, "bold"), f": {len(stat)} file(s), +{added} -{removed}"))
    if full:
        for line in patch.splitlines():
            style = next((style for prefix, style in _DIFF_STYLES if line.startswith(prefix)), "")
            console.print(safe(line, style), soft_wrap=True, highlight=False)
    else:
        print_stat(patch, limit=PATCH_FILES_LISTED)
    if (warning := patch_secrets_warning(result)) is not None:
        console.print(warning, soft_wrap=True, highlight=False)
    see, apply = command_hint("diff", record.id, home=home), command_hint("apply", record.id, home=home)
    print_hint(f"  see it: {see} · apply it: {apply}")


def print_outcome(record: RunRecord, store: RunReader, *, home: Path | None, full_patch: bool = False) -> None:
    """The end of a run in a few lines; what the agent, a tool or a file wrote is printed as text, never markup."""
    from sqlalchemy.engine import make_url

    from corral.cli.views import fmt_cost

    result = record.result or {}
    files = result.get("files_changed", 0)
    if record.status.value == "succeeded":
        if result.get("text"):
            console.print(Text.assemble("\n", ("result", "bold"), ": ", safe(result["text"])))
        if result.get("output") is not None:
            console.print(safe(json.dumps(result["output"], indent=2, ensure_ascii=False)))
        console.print(Text.assemble((f"✓ run {record.id} succeeded", "green"), f" · {files} file(s) changed"))
    else:
        console.print(
            Text.assemble((f"✗ run {record.id} {record.status.value}", "red"), ": ", safe(record.error or ""))
        )
    print_patch(record, home=home, full=full_patch)
    for note in result.get("notes") or ():
        console.print(safe(f"note: {note}", "yellow"))
    u = record.usage
    console.print(
        f"cost {fmt_cost(u)} · {u.input_tokens} input tokens ({u.cache_read_tokens} cached) · "
        f"{u.output_tokens} output tokens · {record.turns} turns · {record.elapsed_s or 0:.1f}s",
        markup=False,
        highlight=False,
    )
    journal = make_url(store.url).render_as_string(hide_password=True)
    print_hint(f"journal: {journal} · every step: {command_hint('trace', record.id, home=home)}")


def hand_over(record: RunRecord, store: RunReader, options: RunOptions, *, home: Path | None) -> NoReturn:
    """End ``corral run``/``continue``: the answer file, the branch, the outcome as asked, and the exit code."""
    code = exit_for(record)
    if options.last_message is not None:
        options.last_message.expanduser().write_text(final_answer(record) or "", encoding="utf-8")
    branch, branch_error = None, None
    if options.branch is not None:
        try:
            branch = commit_branch(record, options.branch)
        except UsageError as err:  # reported after the outcome, which is recorded whatever happens here
            branch_error = err
    if options.json_out:
        JsonLines().write(result_line(record, exit_code=code, branch=branch))
    elif options.quiet:
        answer = final_answer(record)
        if answer:
            console.print(safe(answer), soft_wrap=True, highlight=False)
        if code != EXIT_OK:
            err_console.print(
                safe(f"error: run {record.id} {record.status.value}: {record.error or ''}"),
                soft_wrap=True,
                highlight=False,
            )
    else:
        print_outcome(record, store, home=home, full_patch=options.patch)
        if options.branch is not None and branch_error is None:
            print_branch(record, options.branch, branch, home=home)
    if branch_error is not None:
        raise branch_error
    raise typer.Exit(code)


def print_branch(record: RunRecord, name: str, branch: dict[str, str] | None, *, home: Path | None) -> None:
    if branch is not None:
        print_hint(f"branch {name}: commit {branch['commit'][:12]} (your checkout is unchanged)")
    elif record.status.value == "cancelled":
        see = command_hint("diff", record.id, home=home)
        print_hint(f"branch {name} not created: the run was cancelled (its patch: {see})")
    else:
        print_hint(f"branch {name} not created: the run changed no file")


def run_to_end(store: Store, starter: Starter, options: RunOptions, *, title: str) -> NoReturn:
    """Execute the one run ``starter`` starts, shown as ``options`` ask, and hand it over."""
    home = explicit_home()
    session = Session(
        store,
        title,
        view=None if options.quiet else err_console if options.json_out else console,
        stream=JsonLines() if options.json_out else None,
        interactive=options.interactive,
    )
    try:
        (record,) = session.execute(starter)
    except Interrupted as stop:
        report_interrupted(stop, store, home=home, stream=session.stream)
    hand_over(record, store, options, home=home)


def name_interrupted_runs(runtime: Runtime, options: RunOptions) -> None:
    """``corral run`` never adopts another process's interrupted runs: it names them (on stderr)."""
    interrupted = runtime.interrupted_runs()
    if interrupted and not options.quiet:
        ids = ", ".join(r.id for r in interrupted)
        print_hint(f"{len(interrupted)} interrupted run(s) wait for `corral resume`: {ids}", err_console)


# -- the commands ---------------------------------------------------------------------------------------

TaskArgument = Annotated[
    str | None, typer.Argument(help="What the agent should do; '-' reads it from stdin.", show_default=False)
]


@app.command()
@option_groups
def run(
    agent: Annotated[str, typer.Argument(help="Agent name from corral.toml.")],
    task: TaskArgument = None,
    repo: Annotated[Path, typer.Option("--repo", "-r", help="Repository to work on (it is never modified).")] = Path(
        "."
    ),
    context: Annotated[
        Path | None,
        typer.Option(
            "--context",
            help="A long input kept out of the prompt (a file's text, or a directory's file list): "
            "the agent's programs read it as `context` (needs the eval tool).",
            rich_help_panel=TASK_AND_OUTPUT,
        ),
    ] = None,
    submit: Annotated[
        bool,
        typer.Option("--submit", help="Put the run on a run queue for `corral worker`s instead of running it here."),
    ] = False,
    queue: Annotated[
        str | None, typer.Option("--queue", help="The run queue for --submit (default corral.runs).")
    ] = None,
    as_agent: Annotated[
        bool,
        typer.Option(
            "--as-agent",
            help="Through a server: act as the agent's own identity (its grants), not on your behalf.",
        ),
    ] = False,
    *,
    overrides: SpecOverrides,
    options: RunOptions,
) -> None:
    """Run an agent on a task in a fresh sandbox, with a live view."""
    from corral.spec import load_config

    text = read_task(task, options.task_file)
    path = config_path()
    assert path is not None
    spec = overrides.apply(load_config(path).agent(agent))
    options.check(repo)
    long_input = read_context(context) if context is not None else None
    if queue is not None and not submit and state.server is None:
        raise UsageError("--queue names where --submit puts the run", hint="add --submit")
    server = remote()
    if server is not None:
        acting_as = "agent" if as_agent else "user"
        run_on_server(
            server, spec, text, repo, long_input, queue=queue, submit=submit, acting_as=acting_as, options=options
        )
    if as_agent:
        raise UsageError("--as-agent chooses who a run acts as on a server", hint="add --server URL")
    if submit:
        submit_run(spec, text, repo, long_input, queue=queue, json_out=options.json_out)
        return

    async def start(runtime: Runtime) -> list[str]:
        name_interrupted_runs(runtime, options)
        return [(await runtime.submit(spec, text, repo, context=long_input)).id]

    run_to_end(open_store(), start, options, title=f"corral · {spec.name}")


def submit_run(
    spec: AgentSpec, task: str, repo: Path, context: str | None, *, queue: str | None, json_out: bool
) -> None:
    """``corral run --submit``: record the run, queue it for the workers, say how to follow it."""
    from corral.runtime import Runtime, workflow

    runtime = Runtime(open_store())
    record = asyncio.run(runtime.enqueue(spec, task, repo, context=context, queue=queue or workflow.RUN_QUEUE))
    say_submitted(record, json_out=json_out)


def say_submitted(record: RunRecord, *, json_out: bool) -> None:
    from corral.cli.inspection import write_json

    if json_out:
        write_json({"id": record.id, "status": record.status.value, "queue": record.queue})
        return
    console.print(safe(f"run {record.id} queued on {record.queue}"), soft_wrap=True)
    print_hint(f"follow it: {command_hint('trace', record.id, '--follow', home=explicit_home())}")


def run_on_server(
    server: ServerClient,
    spec: AgentSpec,
    task: str,
    repo: Path,
    context: str | None,
    *,
    queue: str | None,
    submit: bool,
    acting_as: str,
    options: RunOptions,
) -> NoReturn:
    """``corral --server URL run``: the spec registered (one version per content), the run submitted to
    the server's workers, then shown as it goes and handed over as a local run is (``--submit``: not followed)."""
    if options.interactive:
        raise UsageError(
            "--interactive answers approvals at this terminal; through a server, use `corral approve`/`deny`"
        )
    record = server.submit(
        spec.model_dump(mode="json"), task, repo.resolve(), queue=queue, context=context, acting_as=acting_as
    )
    if submit:
        say_submitted(record, json_out=options.json_out)
        raise typer.Exit(EXIT_OK)
    follow_on_server(server, record, options, title=f"corral · {spec.name}")


def follow_on_server(server: ServerClient, record: RunRecord, options: RunOptions, *, title: str) -> NoReturn:
    """Show a run the server's workers execute as ``corral run`` shows its own, then hand it over."""
    shown = None if options.quiet else err_console if options.json_out else console
    show_server_runs(server, {record.id: 0}, title=title, shown=shown, stream=JsonLines() if options.json_out else None)
    hand_over(server.get_run(record.id), server, options, home=explicit_home())


def show_server_runs(
    server: ServerClient, runs: dict[str, int], *, title: str, shown: Console | None, stream: JsonLines | None = None
) -> None:
    """Show runs the server's workers execute, each from after the ``seq`` given, until they end: in a
    live view on ``shown`` and as stream lines on ``stream``. Ctrl-C stops following (exit 130), not the runs."""
    from corral.cli.inspection import EXIT_SIGINT, journals_until_end
    from corral.cli.views import LiveRunView

    ids = ", ".join(runs)
    try:
        with contextlib.ExitStack() as stack:
            view = None
            if shown is not None:
                view = stack.enter_context(LiveRunView(console=shown, title=f"{title} · {ids}"))
                view.run_ids.update(runs)
            # The stream has the events of the runs they dispatch too, as a local run's has.
            for entry in journals_until_end(server, runs, children=stream is not None):
                if view is not None:
                    view.on_event(entry.run_id, entry.event)
                if stream is not None:
                    stream.on_event(entry)
    except KeyboardInterrupt:
        gone = f"run {ids}; it goes on" if len(runs) == 1 else f"run(s) {ids}; they go on"
        err_console.print(safe(f"stopped following {gone}"), highlight=False)
        raise typer.Exit(EXIT_SIGINT) from None


@app.command("script")
@option_groups
def script(
    program: Annotated[
        Path, typer.Argument(help="The Python file to run: the language, bridges and limits of a model's programs.")
    ],
    repo: Annotated[Path, typer.Option("--repo", "-r", help="Repository to work on (it is never modified).")] = Path(
        "."
    ),
    agent: Annotated[
        str | None,
        typer.Option(
            "--agent",
            "-a",
            help="Run as this agent of corral.toml: its tools, subagent types, policy and limits "
            "(default: an agent with the built-in tools; then --model is needed).",
        ),
    ] = None,
    *,
    overrides: SpecOverrides,
    options: RunOptions,
) -> None:
    """Run a Python file of orchestration (task(), tools.*) as a run: the same journal, limits and policy."""
    from corral.spec import DEFAULT_TOOLS, AgentSpec, load_config

    if options.task_file is not None:
        raise UsageError("--task-file has no meaning for a script: the file is the task")
    text = read_text_file(program, "FILE")
    if not text.strip():
        raise UsageError(f"{clean(program)} is empty")
    if agent is not None:
        path = config_path()
        assert path is not None
        spec = load_config(path).agent(agent)
    elif overrides.model is None:
        raise UsageError(
            "a script needs a model for the subagents it dispatches",
            hint="give --model (e.g. --model anthropic:claude-sonnet-5-5), or --agent NAME from corral.toml",
        )
    else:
        spec = AgentSpec(name="script", model=overrides.model, tools=(*DEFAULT_TOOLS, "eval"))
    spec = overrides.apply(spec)
    tools = spec.tools if "eval" in spec.tools else (*spec.tools, "eval")
    spec = spec.with_overrides(engine="script", tools=tools)
    options.check(repo)

    async def start(runtime: Runtime) -> list[str]:
        name_interrupted_runs(runtime, options)
        return [(await runtime.submit(spec, text, repo)).id]

    run_to_end(open_store(), start, options, title=f"corral script · {clean(program.name)}")


@app.command("continue")
@option_groups
def continue_(
    run_id: Annotated[str, typer.Argument(help="The finished run to follow up (or a unique prefix of its id).")],
    task: TaskArgument = None,
    *,
    overrides: SpecOverrides,
    options: RunOptions,
) -> None:
    """Follow up a finished run: a new run that continues its conversation and its workspace."""
    from corral.spec import AgentSpec

    text = read_task(task, options.task_file)
    store = open_store()
    parent = store.get_run(run_id)
    if not parent.status.finished:
        resume = command_hint("resume", parent.id, home=explicit_home())
        raise UsageError(
            f"run {parent.id} has not finished ({parent.display_status}); only a finished run can be continued",
            hint=f"resume it first: {resume}" if parent.interrupted else "wait until it ends",
        )
    spec = overrides.apply(AgentSpec.model_validate(parent.spec))
    repo = Path(parent.repo)
    options.check(repo)

    async def start(runtime: Runtime) -> list[str]:
        name_interrupted_runs(runtime, options)
        return [(await runtime.submit(spec, text, repo, continue_from=parent.id)).id]

    run_to_end(store, start, options, title=f"corral · {spec.name} · continues {parent.id}")


@app.command()
def resume(
    run_id: Annotated[str | None, typer.Argument(help="One run; default: every interrupted run.")] = None,
) -> None:
    """Continue interrupted runs from their last completed step."""
    server = remote()
    if server is not None:
        resume_on_server(server, run_id)
    store = open_store()
    home = explicit_home()

    async def start(runtime: Runtime) -> list[str]:
        return await runtime.resume(run_id)

    session = Session(store, "corral · resume", view=console)
    try:
        records = session.execute(start)
    except Interrupted as stop:
        report_interrupted(stop, store, home=home, stream=None)
    if not records:
        console.print("no interrupted runs")
    for record in records:
        print_outcome(record, store, home=home)
    raise typer.Exit(max((exit_for(r) for r in records), default=EXIT_OK))


def resume_on_server(server: ServerClient, run_id: str | None) -> NoReturn:
    """``corral --server URL resume``: ask the workers to take the interrupted runs on now, show them to their end."""
    if run_id is not None:
        chosen = [server.get_run(run_id)]
    else:
        chosen = [r for r in server.list_runs(limit=None, status="interrupted") if r.dispatched_by is None]
    # What each had journaled before: the view shows what the resumed run does, as a local resume does.
    shown_after = {r.id: r.journal_seq for r in chosen}
    ids = [server.resume(r.id).id for r in chosen]
    if not ids:
        console.print("no interrupted runs")
        raise typer.Exit(EXIT_OK)
    show_server_runs(server, {run: shown_after[run] for run in ids}, title="corral · resume", shown=console)
    ended = [server.get_run(r) for r in ids]
    for record in ended:
        print_outcome(record, server, home=explicit_home())
    raise typer.Exit(max(exit_for(r) for r in ended))


@app.command()
def cancel(run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")]) -> None:
    """Cancel a run wherever it executes: its command in flight is killed, its patch kept."""
    from corral.runtime import Runtime

    server = remote()
    record = server.cancel(run_id) if server is not None else asyncio.run(Runtime(open_store()).cancel(run_id))
    if record.status.finished:
        console.print(f"run {record.id} {record.status.value}", markup=False)
    else:
        console.print(f"run {record.id}: cancel requested; it stops at its next step", markup=False)


@app.command()
def demo(
    sandbox: Annotated[
        str, typer.Option("--sandbox", help="Sandbox backend; 'local' (no isolation) only when named.")
    ] = "bubblewrap",
) -> None:
    """Fix a bug in a bundled sample repository, offline, on the scripted model."""
    from corral.demo import prepare_demo_dir
    from corral.models.providers import resolve_target
    from corral.sandbox import available_backends
    from corral.spec import AgentSpec
    from corral.store import Store

    # Everything that can be wrong with the request is checked before anything is written.
    if sandbox not in available_backends():
        raise UsageError(f"unknown sandbox backend {clean(sandbox)!r}; available: {', '.join(available_backends())}")
    spec = AgentSpec.model_validate(
        {
            "name": "demo-fixer",
            "instructions": "Find why the test suite fails, fix the bug with the smallest change, and rerun the tests.",
            "model": "scripted:demo",
            "sandbox": sandbox,
            "retry": {"initial_backoff_s": 0.2},
        }
    )
    resolve_target(spec.model)
    home = state.home or Path.cwd() / ".corral" / "demo"
    repo = prepare_demo_dir(home)
    console.print(
        "[bold]corral demo[/bold]: an agent fixes a failing test in a sample repository.\n"
        "The model is corral's scripted model (scripted:demo), served on 127.0.0.1 by this process "
        "(no network, no API key).\n"
    )
    store = Store.open(home=home)

    async def start(runtime: Runtime) -> list[str]:
        task = "The test suite fails. Find the bug and fix it."
        return [(await runtime.submit(spec, task, repo)).id]

    session = Session(store, "corral demo", view=console)
    try:
        (record,) = session.execute(start)
    except Interrupted as stop:
        report_interrupted(stop, store, home=home, stream=None)
    print_outcome(record, store, home=home, full_patch=True)
    console.print(safe(f"sample repository: {repo} (unchanged; the patch applies to it)"), soft_wrap=True)
    print_hint(f"see the whole session: {command_hint('trace', record.id, home=home)}")
    raise typer.Exit(exit_for(record))
