"""Policy rules as a spec writes them: ``[policy]`` for a project, ``[agents.NAME.policy]`` for one agent.

Plain TOML for the common cases, matched in order, first match wins::

    [[agents.fixer.policy.rules]]
    tool = "execute"
    args = { command = "git push*" }
    decision = "ask"
    reason = "a push leaves the sandbox"

A rule matches on the tool's name, on the capabilities the tool carries, on glob or regular-expression
patterns over named arguments, and on how many times the tool was called in the run. Every field
given must match; a rule with none matches everything (a catch-all). This module is ground, like
``corral.sandbox.types``: the spec embeds these types, so a spec that loads is a policy that runs.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

Verdict = Literal["allow", "deny", "ask"]


class Capability(StrEnum):
    """What a tool can do; policy (approvals, Rule of Two) decides on these, not on tool names."""

    READS_WORKSPACE = "reads_workspace"
    WRITES_WORKSPACE = "writes_workspace"
    RUNS_COMMANDS = "runs_commands"
    EXTERNAL_SIDE_EFFECT = "external_side_effect"
    TOUCHES_SECRETS = "touches_secrets"


READ_ONLY_CAPABILITIES = frozenset({Capability.READS_WORKSPACE})
"""A tool with no capability beyond these only reads: it needs no sandbox of its own (any view of the
workspace serves it), and a subagent whose tools are all like it can run light."""

PATH_ARGUMENTS = frozenset({"path", "file", "file_path", "target", "source", "destination"})
"""Arguments matched as workspace paths: normalized first, so ``./x``, ``a/../x`` and ``/workspace/x`` are ``x``."""

_WORKSPACE_PREFIX = "/workspace/"


def normalize_argument(name: str, value: Any) -> str:
    """The text a pattern sees for argument ``name``: a path normalized, anything else as a string."""
    text = value if isinstance(value, str) else str(value)
    if name not in PATH_ARGUMENTS:
        return text
    path = posixpath.normpath(text.replace("\\", "/"))
    if path.startswith(_WORKSPACE_PREFIX):
        path = path[len(_WORKSPACE_PREFIX) :]
    return path.lstrip("/") if path != "/" else path


def _one_or_many(value: Any) -> Any:
    return (value,) if isinstance(value, str) else value


def _check_regex(patterns: Mapping[str, str]) -> Mapping[str, str]:
    for name, pattern in patterns.items():
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"args_regex.{name}: not a regular expression: {exc}") from None
    return patterns


def _check_globs(patterns: Mapping[str, str]) -> Mapping[str, str]:
    for name, pattern in patterns.items():
        if not pattern:
            raise ValueError(f"args.{name}: an empty pattern matches only an empty argument; remove it instead")
    return patterns


Names = Annotated[tuple[str, ...], BeforeValidator(_one_or_many)]


class Rule(BaseModel):
    """One rule: what it matches, and what it decides when it does."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = None
    """Shown in the journal and in approval requests; defaults to the rule's place in the spec."""
    tool: Names = ()
    """Tool names (one or a list); any tool when empty."""
    capability: Annotated[tuple[Capability, ...], BeforeValidator(_one_or_many)] = ()
    """Matches a tool that carries any of these capabilities."""
    args: Annotated[dict[str, str], AfterValidator(_check_globs)] = {}
    """Argument name to a glob (``*`` matches anything, ``/`` included; ``?`` one character, ``[...]`` a set),
    matched against the whole argument; a path argument is normalized first. An argument the call does
    not have never matches."""
    args_regex: Annotated[dict[str, str], AfterValidator(_check_regex)] = {}
    """Argument name to a regular expression, searched anywhere in the argument (anchor it with ``^``)."""
    count_over: Annotated[int, Field(ge=0)] | None = None
    """Matches once the tool has already been called this many times in the run (its next calls)."""
    decision: Verdict
    reason: str = ""
    """Why: what the model reads with a denial, and a person with an approval request."""

    @model_validator(mode="after")
    def _reason_for_denials(self) -> Rule:
        if self.decision != "allow" and not self.reason.strip():
            raise ValueError(f'a rule that decides "{self.decision}" needs a reason (what the model or a person reads)')
        return self

    def matches(self, tool: str, capabilities: frozenset[str], arguments: Mapping[str, Any], count: int) -> bool:
        """Whether this rule applies to the ``count``-th call (1-based) of ``tool`` with ``arguments``."""
        if self.tool and tool not in self.tool:
            return False
        if self.capability and not capabilities.intersection(self.capability):
            return False
        if self.count_over is not None and count <= self.count_over:
            return False
        for name, pattern in self.args.items():
            if name not in arguments or not fnmatch.fnmatchcase(normalize_argument(name, arguments[name]), pattern):
                return False
        for name, pattern in self.args_regex.items():
            if name not in arguments or re.search(pattern, normalize_argument(name, arguments[name])) is None:
                return False
        return True


class PolicySpec(BaseModel):
    """The rules of one agent (or of the project) and the decision when none matches."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    default: Verdict | None = None
    """When no rule matches; unset: the project's default, else ``allow``."""
    rules: tuple[Rule, ...] = ()
    approval_timeout_s: Annotated[float, Field(gt=0)] | None = None
    """How long an ``ask`` waits for a person before it is denied; unset: the project's, else 24 h."""

    @property
    def decides(self) -> bool:
        """Whether this policy can decide anything but "allow" (so its decisions are worth journaling)."""
        return bool(self.rules) or self.default not in (None, "allow")

    def combined(self, project: PolicySpec, *, agent: str) -> PolicySpec:
        """This agent's policy followed by the project's: its rules first, its settings where it has them.

        Unnamed rules are named by their place (``agents.fixer.policy.rules[0]``, ``policy.rules[2]``),
        so the journal says which rule decided even after the two lists are one.
        """
        own = tuple(_named(rule, f"agents.{agent}.policy.rules[{i}]") for i, rule in enumerate(self.rules))
        shared = tuple(_named(rule, f"policy.rules[{i}]") for i, rule in enumerate(project.rules))
        return PolicySpec(
            default=self.default or project.default,
            rules=own + shared,
            approval_timeout_s=self.approval_timeout_s or project.approval_timeout_s,
        )


def _named(rule: Rule, place: str) -> Rule:
    return rule if rule.name else rule.model_copy(update={"name": place})


def _acknowledged(value: Any) -> Any:
    if value == "acknowledged":
        return {"acknowledged": True}
    if isinstance(value, str):
        raise ValueError('rule_of_two is "acknowledged" or a table (untrusted_input, sensitive_data, outbound)')
    return value


class RuleOfTwoSpec(BaseModel):
    """What the spec says of the Rule of Two itself: its own A, B, C (over what corral infers), or that it
    accepts holding all three (``rule_of_two = "acknowledged"``, journaled on every run)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    untrusted_input: bool | None = None
    sensitive_data: bool | None = None
    outbound: bool | None = None
    acknowledged: bool = False


RuleOfTwoField = Annotated[RuleOfTwoSpec | None, BeforeValidator(_acknowledged)]
