"""The exceptions corral raises: each one says what went wrong and what to do about it.

Every error a user can see derives from :class:`CorralError`; its ``exit_code`` is what the CLI
exits with, and ``hint`` is an optional next step printed under the message. Errors carry their
context as typed constructor arguments, never as attributes patched on later::

    CorralError                      exit 1
    ├── UsageError                   exit 2: the request cannot be done as asked
    │   ├── SpecError                a broken agent spec (names file, agent, field)
    │   ├── UnknownAgentError
    │   ├── UnknownEngineError       spec.engine names no installed engine
    │   ├── ModelConfigError         a model string or provider setting is unusable
    │   ├── RunNotFoundError
    │   ├── ApprovalNotFoundError    no approval request with that id
    │   ├── AuthError                no valid token (unknown, expired, revoked): HTTP 401
    │   │   └── ForbiddenError       a valid token that may not do this: HTTP 403
    │   └── ScriptError              a scripted-model script is malformed or exhausted
    ├── StoreError                   the store cannot be opened, migrated or written
    │   └── JournalError             journal events could not be committed (never silent)
    │       ├── JournalClosedError   an event was appended after the journal was closed
    │       └── JournalTimeoutError  a flush did not finish in time (events still pending)
    ├── SandboxError
    │   └── PathEscapeError          a tool path resolves outside the workspace
    ├── EngineInstallError           an external engine's CLI cannot be installed or is not installed
    ├── ToolError                    fed back to the model; the run goes on
    ├── ModelCallError               a model call failed for good (attempts, cause_type)
    ├── BudgetExceededError          a budget limit was reached (limit, value, maximum)
    ├── RunFailedError
    ├── ProgramFailedError           a script run's program raised, or broke a limit (error_kind)
    ├── RunTimeoutError              waiting for a run gave up (the run itself goes on)
    └── RuntimeStateError            corral's own invariants (a workflow with no Runtime, ...)
"""

from __future__ import annotations

from typing import Any


def _rebuild(cls: type[CorralError], args: tuple[Any, ...], state: dict[str, Any]) -> CorralError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class CorralError(Exception):
    """Base class for every error corral reports to a user."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"

    def __reduce__(self) -> tuple[Any, ...]:
        # Durable steps record the errors they raise (pickled) and raise them again on replay; the
        # default reduction would call ``cls(message)`` and lose or reject the typed arguments.
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


class UsageError(CorralError):
    """The user asked for something that cannot be done as asked (bad flag, unknown name)."""

    exit_code = 2


class SpecError(UsageError):
    """An agent spec is broken: names the file, the agent and the field."""


class UnknownAgentError(UsageError):
    """The requested agent is not defined in any loaded spec file."""


class UnknownEngineError(UsageError):
    """``spec.engine`` names no engine installed in the ``corral.engines`` entry point group."""

    def __init__(self, engine: str, available: tuple[str, ...]) -> None:
        super().__init__(
            f"unknown engine {engine!r} (installed: {', '.join(available) or 'none'})",
            hint="engines are registered in the 'corral.engines' entry point group",
        )
        self.engine = engine
        self.available = available


class ModelConfigError(UsageError):
    """A model string or provider setting cannot be turned into a model client."""


class StoreError(CorralError):
    """The run store cannot be opened, migrated or written."""


class JournalError(StoreError):
    """Journal events could not be committed after retries; the run must not go on as if they were."""

    def __init__(
        self,
        message: str,
        *,
        events: int,
        cause: BaseException | None = None,
        hint: str | None = "check the store's database (disk space, permissions, schema)",
    ) -> None:
        super().__init__(message, hint=hint)
        self.events = events
        self.cause = cause


class JournalClosedError(JournalError):
    """An event was appended to a journal that was already closed; it was not written."""

    def __init__(self, run_id: str, key: str) -> None:
        super().__init__(
            f"the journal is closed: event {key!r} of run {run_id} was not written",
            events=1,
            hint="append events only while the store is open",
        )
        self.run_id = run_id
        self.key = key


class JournalTimeoutError(JournalError):
    """A journal flush did not finish in time; the events stay queued and may still be committed."""

    def __init__(self, timeout_s: float, events: int) -> None:
        super().__init__(
            f"the journal did not commit {events} queued event(s) within {timeout_s:g}s",
            events=events,
            hint="the database is slow or locked by another process",
        )
        self.timeout_s = timeout_s


class RunNotFoundError(UsageError):
    """No run with that id (or id prefix) exists in the store."""


class ApprovalNotFoundError(UsageError):
    """No approval request with that id in the store."""


class AuthError(UsageError):
    """No valid API token: none given, unknown, expired or revoked (the server answers 401)."""


class ForbiddenError(AuthError):
    """A valid token without the scope, or of another team (the server answers 403)."""


class SandboxError(CorralError):
    """A sandbox could not be created, used or destroyed."""


class PathEscapeError(SandboxError):
    """A path given to a tool resolves outside the run's workspace."""


class EngineInstallError(CorralError):
    """An external engine's CLI (Claude Code, Codex, OpenCode) cannot be installed, or is not installed."""


class ToolError(CorralError):
    """A tool failed in a way the model should be told about (bad arguments, missing match, ...).

    The engine feeds the message back to the model instead of failing the run.
    """


class ModelCallError(CorralError):
    """A model call failed for good: retries ran out or the response could not be understood."""

    def __init__(self, message: str, *, attempts: int, cause_type: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.attempts = attempts
        self.cause_type = cause_type


class BudgetExceededError(CorralError):
    """A run hit one of its budget limits (tokens, cost, wall time or turns)."""

    def __init__(self, limit: str, value: float, maximum: float, *, message: str | None = None) -> None:
        super().__init__(
            message or f"budget exhausted: {limit} = {maximum:g} reached ({value:g})",
            hint=f"raise budget.{limit} in the agent spec",
        )
        self.limit = limit
        self.value = value
        self.maximum = maximum


class RunFailedError(CorralError):
    """A run ended in the failed state."""


class ProgramFailedError(CorralError):
    """The program of a script run (``corral script``) did not end well: a syntax or type error, an
    exception it raised, or a limit it reached (``error_kind``: syntax, type, runtime, limit)."""

    def __init__(self, message: str, *, error_kind: str) -> None:
        super().__init__(message, hint="`corral trace RUN` shows each call the program made")
        self.error_kind = error_kind


class RunTimeoutError(CorralError):
    """Waiting for a run gave up; the run itself goes on wherever it executes."""

    def __init__(self, run_id: str, timeout_s: float) -> None:
        super().__init__(f"run {run_id} did not finish within {timeout_s:g}s")
        self.run_id = run_id
        self.timeout_s = timeout_s


class RuntimeStateError(CorralError):
    """corral's own invariants do not hold (a run workflow with no Runtime in the process, ...)."""


class ScriptError(UsageError):
    """A scripted-model script is malformed, or a request arrived that the script cannot answer."""
