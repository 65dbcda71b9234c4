"""Running one program in Monty: a warm worker pool, limits that bound it, host calls resolved concurrently.

Monty runs the code in worker processes; the host answers each call the program makes
(``FunctionSnapshot``) with a future, runs the host function as an asyncio task, and resumes the
program with whichever results are ready (``FutureSnapshot``), so ``asyncio.gather`` over host
calls really runs them together. Every blocking call into the pool goes through a worker thread:
a program computing for seconds never stalls the event loop (and the run's other work).

Limits: Monty enforces interpreter time, memory and recursion itself (the program cannot catch
them); this module adds what Monty cannot see — wall-clock time including the time spent in host
calls, the number of host calls, and the size of what the program prints.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import datetime as dt
import json
import re
import textwrap
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

HostFunction = Callable[..., Awaitable[Any]]
"""A function the program may call: ``await f(*args, **kwargs)`` on the host's event loop."""

#: What the program's clock says: a fixed instant, so a program cannot tell time or read a timestamp
#: that would make its replay differ (its random numbers are seeded for the same reason).
FROZEN_CLOCK = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
VALUE_SHOWN_CHARS = 20_000


@dataclass(frozen=True)
class Limits:
    """What one program may use. Monty enforces the first three; the runner the rest."""

    cpu_s: float = 10.0
    """Interpreter time (host calls excluded): an endless loop ends here."""
    memory_mb: int = 256
    recursion_depth: int = 200
    wall_s: float = 600.0
    """Wall-clock time of the whole program, host calls included."""
    host_calls: int = 1_000
    """Calls to the host (tools, log) one program may make; the next one raises inside it."""
    output_chars: int = 20_000
    """Characters of printed output kept; the rest is dropped with a note."""


ErrorKind = Literal["syntax", "type", "runtime", "limit"]


@dataclass(frozen=True)
class Outcome:
    """How a program ended: its last expression's value and what it printed, or why it stopped."""

    ok: bool
    value: str | None = None
    """The last expression's value as text (JSON when it is JSON-like), None when there is none."""
    stdout: str = ""
    error: str | None = None
    error_kind: ErrorKind | None = None
    host_calls: int = 0

    def text(self) -> str:
        """What the model reads."""
        parts = []
        if self.stdout:
            parts.append(f"stdout:\n{self.stdout.rstrip()}")
        if self.ok:
            parts.append(f"value: {self.value}" if self.value is not None else "value: None")
        else:
            parts.append(f"{_ERROR_TITLES[self.error_kind or 'runtime']}:\n{self.error}")
        return "\n".join(parts)


_ERROR_TITLES: dict[str, str] = {
    "syntax": "syntax error (nothing ran)",
    "type": "type errors (nothing ran; fix the program and run it again)",
    "runtime": "the program raised",
    "limit": "the program was stopped",
}


class HostCallError(Exception):
    """Raised by a host function to fail the call inside the program (as ``ToolError``) with this message."""


class Interpreter:
    """A warm pool of Monty workers for the process's programs; created on first use, closed with :meth:`close`."""

    def __init__(self, *, processes: int = 2) -> None:
        self._processes = processes
        self._pool: Any = None
        self._lock = threading.Lock()

    def _ready(self) -> Any:
        with self._lock:
            if self._pool is None:
                import pydantic_monty as pm

                pool = pm.Monty(min_processes=1, max_processes=self._processes)
                pool.__enter__()
                self._pool = pool
            return self._pool

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.__exit__(None, None, None)

    async def run(
        self,
        program: str,
        *,
        functions: Mapping[str, HostFunction],
        prelude: str = "",
        stubs: str | None = None,
        inputs: Mapping[str, Any] | None = None,
        limits: Limits = Limits(),
    ) -> Outcome:
        """Type-check ``program`` against ``stubs``, run it after ``prelude`` in a session of its own, and
        return how it ended."""
        async with self.session(prelude=prelude, stubs=stubs, limits=limits) as session:
            return await session.run(program, functions=functions, inputs=inputs)

    def open_session(
        self, *, prelude: str = "", stubs: str | None = None, limits: Limits = Limits(), persistent: bool = True
    ) -> ProgramSession:
        """A session the caller keeps across programs and must ``close()`` (see :meth:`session`)."""
        return ProgramSession(self, prelude=prelude, stubs=stubs, limits=limits, persistent=persistent)

    @contextlib.asynccontextmanager
    async def session(
        self, *, prelude: str = "", stubs: str | None = None, limits: Limits = Limits(), persistent: bool = False
    ) -> AsyncIterator[ProgramSession]:
        """A session for one program, or (``persistent``) for several in turn, each seeing what the earlier
        ones defined; returned to the pool when the block ends, whatever ends it."""
        session = ProgramSession(self, prelude=prelude, stubs=stubs, limits=limits, persistent=persistent)
        try:
            yield session
        finally:
            await asyncio.shield(session.close())


class ProgramSession:
    """One Monty checkout: the prelude fed once, then programs fed one after the other.

    Persistent, a program sees the globals of the programs before it (a REPL). Monty's type checker
    does not know those globals, so each program is checked first in a scratch session whose stubs
    declare them (as ``Any``), with the program as the body of a function that is defined and never
    called: checked, not run. Then it runs here unchecked.
    """

    def __init__(
        self, interpreter: Interpreter, *, prelude: str, stubs: str | None, limits: Limits, persistent: bool
    ) -> None:
        self._interpreter = interpreter
        self._prelude = prelude
        self._stubs = stubs
        self._limits = limits
        self._persistent = persistent
        self._checkout: Any = None
        self._session: Any = None
        self._defined: dict[str, None] = {}  # globals the programs so far assign, in order
        self._lock = asyncio.Lock()  # one program at a time in a session

    def _monty_limits(self, host_calls: int) -> dict[str, Any]:
        limits = self._limits
        return {
            "max_feed_duration_secs": limits.cpu_s,
            "max_memory": limits.memory_mb * 1024 * 1024,
            "max_recursion_depth": limits.recursion_depth,
            "max_suspensions": host_calls,
        }

    async def _open(self) -> Any:
        if self._session is None:
            pool = await asyncio.to_thread(self._interpreter._ready)
            # Our host-call limit binds first (see Limits); a persistent session serves many programs.
            suspensions = 10_000_000 if self._persistent else max(10 * self._limits.host_calls, 10_000)
            self._checkout = pool.checkout(
                limits=self._monty_limits(suspensions),
                type_check=self._stubs is not None and not self._persistent,
                type_check_stubs=None if self._persistent else self._stubs,
                type_check_format="concise",
                os_policy=OS_POLICY,
            )
            self._session = await asyncio.to_thread(self._checkout.__enter__)
            if self._prelude:
                await asyncio.to_thread(self._session.feed_run, self._prelude, skip_type_check=True)
        return self._session

    async def close(self) -> None:
        checkout, self._checkout, self._session = self._checkout, None, None
        if checkout is not None:
            await asyncio.to_thread(checkout.__exit__, None, None, None)

    async def run(
        self, program: str, *, functions: Mapping[str, HostFunction], inputs: Mapping[str, Any] | None = None
    ) -> Outcome:
        """Run ``program`` (type-checked first) and return how it ended."""
        import pydantic_monty as pm

        limits = self._limits
        printed = _Printed(limits.output_chars)
        run = _Run(functions, limits)
        async with self._lock:
            try:
                if self._persistent and self._stubs is not None:
                    problem = await self._check(program)
                    if problem is not None:
                        return run.failed(printed, *problem)
                session = await self._open()
                self._defined.update(dict.fromkeys(defined_names(program)))
                async with asyncio.timeout(limits.wall_s):
                    value = await run.drive(
                        session, program, dict(inputs or {}), printed, skip_type_check=self._persistent
                    )
            except TimeoutError:
                return run.failed(
                    printed, "limit", f"wall-clock limit of {limits.wall_s:g} s reached (host calls count)"
                )
            except pm.MontySyntaxError as exc:
                return run.failed(printed, "syntax", str(exc))
            except pm.MontyTypingError as exc:
                return run.failed(printed, "type", exc.display())
            except pm.MontyRuntimeError as exc:
                inner = exc.exception()
                if isinstance(inner, TimeoutError | MemoryError) or "suspension limit" in str(exc):
                    return run.failed(printed, "limit", _limit_message(inner, limits))
                return run.failed(printed, "runtime", exc.display())
            except pm.MontyError as exc:  # a worker that crashed or went away, a value that cannot cross
                await self.close()  # its state is gone: the next program starts a fresh session
                return run.failed(printed, "runtime", f"the interpreter failed: {type(exc).__name__}: {exc}")
            finally:
                await run.cancel_pending()
            return Outcome(ok=True, value=_shown(value), stdout=printed.text(), host_calls=run.calls)

    async def _check(self, program: str) -> tuple[ErrorKind, str] | None:
        """Type-check ``program`` as if the earlier programs' globals were declared: (kind, message) or None."""
        import pydantic_monty as pm

        known = [name for name in self._defined if name.isidentifier()]
        stubs = _with_globals(self._stubs or "", known)
        body = textwrap.indent(program, "    ") if program.strip() else "    pass"
        declared = f"    global {', '.join(known)}\n" if known else ""
        wrapped = f"async def {_CHECK_FUNCTION}():\n{declared}{body}\n"
        pool = await asyncio.to_thread(self._interpreter._ready)

        def check() -> tuple[ErrorKind, str] | None:
            with pool.checkout(
                limits=self._monty_limits(10),
                type_check=True,
                type_check_stubs=stubs,
                type_check_format="concise",
                os_policy=OS_POLICY,
            ) as scratch:
                try:
                    scratch.feed_run(wrapped)
                except pm.MontySyntaxError as exc:
                    return "syntax", _unwrapped(str(exc), 1 + bool(known))
                except pm.MontyTypingError as exc:
                    return "type", _unwrapped(exc.display(), 1 + bool(known))
            return None

        return await asyncio.to_thread(check)


_CHECK_FUNCTION = "__corral_checked_program"
OS_POLICY: dict[str, Any] = {"datetime": FROZEN_CLOCK, "sleep": "zero", "random_start": {"seed": 0}}


def _with_globals(stubs: str, names: list[str]) -> str:
    """``stubs`` with ``names`` declared ``Any`` and exported too."""
    if not names:
        return stubs
    lines = stubs.splitlines()
    exported = [line for line in lines if line.startswith("__all__ = ")]
    kept = [line for line in lines if not line.startswith("__all__ = ")]
    current = ast.literal_eval(exported[-1].removeprefix("__all__ = ")) if exported else []
    new = [name for name in names if name not in current]
    return (
        "\n".join(
            ["from typing import Any", *kept, *(f"{name}: Any" for name in new), f"__all__ = {[*current, *new]!r}"]
        )
        + "\n"
    )


_PLACE = re.compile(r"main\.py:(\d+):(\d+)")


def _unwrapped(message: str, shift: int) -> str:
    """A checker's message about the wrapped program, with its places as they are in the program itself."""

    def place(found: re.Match[str]) -> str:
        return f"main.py:{max(1, int(found[1]) - shift)}:{max(1, int(found[2]) - 4)}"

    return _PLACE.sub(place, message).replace(f"{_CHECK_FUNCTION}", "program")


def defined_names(program: str) -> list[str]:
    """The global names a program binds at its top level (assignments, loops, defs, imports), in order."""
    try:
        tree = compile(program, "<program>", "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    except (SyntaxError, ValueError):
        return []
    names: list[str] = []

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.append(node.name)
                continue
            if isinstance(node, ast.Import | ast.ImportFrom):
                names.extend((alias.asname or alias.name).split(".")[0] for alias in node.names)
                continue
            for child in ast.walk(node):
                if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
                    names.append(child.id)
                elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
                    break  # a nested scope: its names are its own (approximate: stop looking in this statement)

    visit(list(tree.body))
    return list(dict.fromkeys(names))


def _limit_message(inner: BaseException | None, limits: Limits) -> str:
    if isinstance(inner, MemoryError):
        return f"memory limit of {limits.memory_mb} MB reached ({inner})"
    if isinstance(inner, TimeoutError):
        return f"interpreter time limit of {limits.cpu_s:g} s reached ({inner})"
    return str(inner)


@dataclass
class _Printed:
    """What the program printed, up to a limit (past it, a note says how much was dropped)."""

    limit: int
    parts: list[str] = field(default_factory=list)
    size: int = 0
    dropped: int = 0

    def __call__(self, stream: str, text: str) -> None:
        room = self.limit - self.size
        kept = text[: max(room, 0)]
        if kept:
            self.parts.append(kept)
            self.size += len(kept)
        self.dropped += len(text) - len(kept)

    def text(self) -> str:
        text = "".join(self.parts)
        if self.dropped:
            text += f"\n[... {self.dropped:,} more characters of output dropped (limit {self.limit:,})]"
        return text


class _Run:
    """One program's host calls: started as tasks as the program makes them, handed back as they finish."""

    def __init__(self, functions: Mapping[str, HostFunction], limits: Limits) -> None:
        self._functions = functions
        self._limits = limits
        self._tasks: dict[int, asyncio.Task[Any]] = {}
        self.calls = 0

    async def drive(
        self, session: Any, program: str, inputs: dict[str, Any], printed: _Printed, *, skip_type_check: bool = False
    ) -> Any:
        import pydantic_monty as pm

        made: list[tuple[int, HostFunction, tuple[Any, ...], dict[str, Any]]] = []

        def start() -> Any:
            snap = session.feed_start(program, inputs=inputs, print_callback=printed, skip_type_check=skip_type_check)
            return self._through_calls(snap, made)

        def resume(snap: Any, *answer: Any) -> Any:
            return self._through_calls(snap.resume(*answer), made)

        snap = await asyncio.to_thread(start)
        while True:
            for call_id, function, args, kwargs in made:  # the calls the program made, started as tasks
                self._tasks[call_id] = asyncio.ensure_future(function(*args, **kwargs))
            if isinstance(snap, pm.MontyComplete):
                if made:  # let what it started last without waiting (a log line) run before the end
                    await asyncio.sleep(0)
                return snap.output
            made.clear()
            if isinstance(snap, pm.FutureSnapshot):
                snap = await asyncio.to_thread(resume, snap, await self._settled(list(snap.pending_call_ids)))
            else:  # a name the program reads that nobody defined: a NameError inside it
                snap = await asyncio.to_thread(resume, snap)

    def _through_calls(self, snap: Any, made: list[tuple[int, HostFunction, tuple[Any, ...], dict[str, Any]]]) -> Any:
        """In a worker thread: answer each call the program makes with a future at once, noting it in
        ``made`` (its task starts on the event loop), until the program ends, waits, or reads an unknown
        name. A fan-out of N calls costs one thread hand-off, not N."""
        import pydantic_monty as pm

        while isinstance(snap, pm.FunctionSnapshot):
            snap = snap.resume(self._call(snap.function_name, tuple(snap.args), dict(snap.kwargs), snap.call_id, made))
        return snap

    def _call(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        call_id: int,
        made: list[tuple[int, HostFunction, tuple[Any, ...], dict[str, Any]]],
    ) -> Any:
        """How to answer a call: a future (the call is noted in ``made``), or an error raised in the program."""
        function = self._functions.get(name)
        if function is None:
            return {"exc_type": "NameError", "message": f"name {name!r} is not defined"}
        self.calls += 1
        if self.calls > self._limits.host_calls:
            message = f"limit: this program may make {self._limits.host_calls} host calls (tools, log); it made more"
            return {"exc_type": "RuntimeError", "message": message}
        made.append((call_id, function, args, kwargs))
        return {"future": ...}

    async def _settled(self, pending: list[int]) -> Any:
        """The results of the pending calls that have finished (at least one: this waits for it)."""
        waiting = [self._tasks[c] for c in pending if c in self._tasks]
        if waiting:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        settled: dict[int, Any] = {}
        for call_id in pending:
            task = self._tasks.get(call_id)
            if task is None or not task.done():
                continue
            del self._tasks[call_id]
            error = task.exception()
            if error is None:
                settled[call_id] = {"return_value": task.result()}
            else:
                settled[call_id] = {"exc_type": "RuntimeError", "message": _message(error)}
        return settled

    async def cancel_pending(self) -> None:
        """Host calls still running when the program ended (it raised, or ran out of time) are cancelled."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def failed(self, printed: _Printed, kind: ErrorKind, message: str) -> Outcome:
        return Outcome(ok=False, stdout=printed.text(), error=message, error_kind=kind, host_calls=self.calls)


def _message(error: BaseException) -> str:
    if isinstance(error, HostCallError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _shown(value: Any) -> str | None:
    if value is None:
        return None
    try:
        text = json.dumps(value, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > VALUE_SHOWN_CHARS:
        text = text[:VALUE_SHOWN_CHARS] + f"… ({len(text):,} characters; print less, or return a summary)"
    return text


#: The process's interpreter pool (its workers start on the first program); the runtime closes it.
INTERPRETER = Interpreter()
