"""The Rule of Two: an agent should not at once (A) process untrusted input, (B) hold sensitive data or
credentials, and (C) change state outside or communicate — unless a person approves the risky actions.

``assess(spec)`` infers A, B and C from the spec (each with its reasons), takes the spec's own
declarations over the inference, and says whether the agent may run: not all three; or all three
with every outbound action sent to a person (``ask``, or ``deny``); or all three acknowledged in
the spec (``rule_of_two = "acknowledged"``, journaled on every run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from corral.policy.rules import Capability, PolicySpec
from corral.spec import AgentSpec
from corral.tools.base import ToolDef

Verdict = Literal["fine", "gated", "acknowledged", "refused"]


@dataclass(frozen=True)
class Property:
    """One of A, B, C: whether the agent has it, why, and whether the spec said so itself."""

    held: bool
    reasons: tuple[str, ...]
    declared: bool = False


@dataclass(frozen=True)
class Assessment:
    untrusted_input: Property
    sensitive_data: Property
    outbound: Property
    ungated: tuple[str, ...]
    """Outbound actions policy lets through without a person (tool names)."""
    acknowledged: bool

    @property
    def verdict(self) -> Verdict:
        if not (self.untrusted_input.held and self.sensitive_data.held and self.outbound.held):
            return "fine"
        if not self.ungated:
            return "gated"
        return "acknowledged" if self.acknowledged else "refused"

    def advice(self) -> str:
        """What to change, for an agent that is refused."""
        tools = ", ".join(self.ungated)
        return (
            f'send its outbound actions ({tools}) to a person: a rule with decision = "ask" for each '
            '(or a policy default of "ask"); or drop one of the three (no secrets, no network, ...); or '
            'accept the risk with rule_of_two = "acknowledged" (journaled on every run)'
        )


def assess(spec: AgentSpec, tools: dict[str, ToolDef]) -> Assessment:
    """A, B and C for ``spec`` (its tools looked up in ``tools``), and the outbound actions left ungated."""
    declared = spec.rule_of_two
    network = spec.sandbox.network
    own = [tools[name] for name in spec.tools if name in tools]

    reads = [t.name for t in own if {Capability.READS_WORKSPACE, Capability.RUNS_COMMANDS} & t.capabilities]
    untrusted = [f"reads the repository, whose content anyone who can commit controls ({', '.join(reads)})"] * bool(
        reads
    )
    commands = [t.name for t in own if Capability.RUNS_COMMANDS in t.capabilities]
    if network.mode != "none" and commands:  # only commands reach the network
        untrusted.append(f"fetches from the network ({_where(spec)})")

    sensitive = [f"holds secrets ({', '.join(sorted(spec.secrets))})"] * bool(spec.secrets)
    private = network.allow_private
    # A preset's hosts on a private address are a mirror of a public registry, not an internal service.
    if private is True or (private and any(not entry.startswith("@") for entry in private)):
        sensitive.append("may reach private addresses (allow_private)")
    if network.mode == "host":
        sensitive.append("has the host's network, internal services included")
    if spec.sandbox.mounts:
        sensitive.append(f"sees host directories ({', '.join(spec.sandbox.mounts)})")

    outbound_tools = [t for t in own if Capability.EXTERNAL_SIDE_EFFECT in t.capabilities]
    if network.mode != "none":
        outbound_tools += [t for t in own if Capability.RUNS_COMMANDS in t.capabilities]
    outbound = [f"{t.name} can change things outside or send data ({_where(spec)})" for t in outbound_tools]

    ungated = tuple(t.name for t in outbound_tools if not _gated(spec.policy, t))
    return Assessment(
        untrusted_input=_property(untrusted, declared.untrusted_input if declared else None),
        sensitive_data=_property(sensitive, declared.sensitive_data if declared else None),
        outbound=_property(outbound, declared.outbound if declared else None),
        ungated=ungated,
        acknowledged=bool(declared and declared.acknowledged),
    )


def _where(spec: AgentSpec) -> str:
    network = spec.sandbox.network
    if network.mode == "host":
        return "network: host"
    return f"network: allowlist {', '.join(network.allow) or '(empty)'}"


def _property(reasons: list[str], declared: bool | None) -> Property:
    if declared is None:
        return Property(held=bool(reasons), reasons=tuple(reasons))
    said = "declared in the spec" + ("" if reasons else "; nothing in the spec implies it")
    return Property(held=declared, reasons=(*reasons, said) if declared else (said,), declared=True)


def _gated(policy: PolicySpec, tool: ToolDef) -> bool:
    """Whether no call of ``tool`` can run without a person: the first rule that takes all its calls asks or
    denies, and no rule before it allows some of them."""
    for rule in policy.rules:
        if rule.tool and tool.name not in rule.tool:
            continue
        if rule.capability and not tool.capabilities.intersection(rule.capability):
            continue
        conditional = bool(rule.args or rule.args_regex or rule.count_over is not None)
        if conditional:
            if rule.decision == "allow":
                return False
            continue
        return rule.decision != "allow"
    return (policy.default or "allow") != "allow"
