"""The exceptions corral raises: each one says what went wrong and what to do about it."""

from __future__ import annotations


class CorralError(Exception):
    """Base class for every error corral reports to a user.

    ``hint`` is an optional next step shown under the message by the CLI.
    """

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class UsageError(CorralError):
    """The user asked for something that cannot be done as asked (bad flag, unknown name)."""

    exit_code = 2


class SpecError(UsageError):
    """An agent spec is broken: names the file, the agent and the field."""


class UnknownAgentError(UsageError):
    """The requested agent is not defined in any loaded spec file."""


class ModelConfigError(UsageError):
    """A model string or provider setting cannot be turned into a model client."""


class StoreError(CorralError):
    """The run store cannot be opened, migrated or written."""


class RunNotFoundError(UsageError):
    """No run with that id (or id prefix) exists in the store."""


class SandboxError(CorralError):
    """A sandbox could not be created, used or destroyed."""


class PathEscapeError(SandboxError):
    """A path given to a tool resolves outside the run's workspace."""


class ToolError(CorralError):
    """A tool failed in a way the model should be told about (bad arguments, missing match, ...).

    The engine feeds the message back to the model instead of failing the run.
    """


class ModelCallError(CorralError):
    """A model call failed for good: retries ran out or the response could not be understood."""


class BudgetExceededError(CorralError):
    """A run hit one of its budget limits (tokens, cost, wall time or turns)."""


class RunFailedError(CorralError):
    """A run ended in the failed state."""


class ScriptError(UsageError):
    """A scripted-model script is malformed, or a request arrived that the script cannot answer."""
