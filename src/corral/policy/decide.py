"""The one entry point of policy: ``decide(policy, action)`` says allow, deny or ask, and why.

Every action an agent takes passes here before it runs: a native tool call today; a ``task()``
dispatch and an external engine's permission request use the same ``Action``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from corral.policy.rules import PolicySpec, Verdict

ActionKind = Literal["tool", "dispatch", "permission"]


@dataclass(frozen=True)
class Action:
    """What an agent is about to do, as policy sees it."""

    tool: str
    """The tool's name (``execute``, ``edit_file``; ``task`` for a dispatch; an engine's own tool name)."""
    arguments: Mapping[str, Any]
    capabilities: frozenset[str] = frozenset()
    run_id: str = ""
    agent: str = ""
    depth: int = 0
    """0 for a root run, 1 for its children, ..."""
    count: int = 1
    """This is the ``count``-th call of ``tool`` in the run (1-based), this one included."""
    kind: ActionKind = "tool"


@dataclass(frozen=True)
class Decision:
    """What policy decided, which rule decided it (None: the default), and why."""

    verdict: Verdict
    reason: str
    rule: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def allowed(self) -> bool:
        return self.verdict == "allow"


DEFAULT_REASON = {
    "allow": "no rule matched; the default is allow",
    "deny": "no rule matched; this agent's policy denies by default",
    "ask": "no rule matched; this agent's policy asks a person by default",
}


def decide(policy: PolicySpec, action: Action) -> Decision:
    """The first rule that matches ``action`` decides; when none does, the policy's default (allow)."""
    for index, rule in enumerate(policy.rules):
        if rule.matches(action.tool, action.capabilities, action.arguments, action.count):
            name = rule.name or f"rules[{index}]"
            return Decision(verdict=rule.decision, reason=rule.reason or f"allowed by rule {name}", rule=name)
    verdict = policy.default or "allow"
    return Decision(verdict=verdict, reason=DEFAULT_REASON[verdict])
