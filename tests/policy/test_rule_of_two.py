"""The Rule of Two: A, B and C inferred from a spec (or declared), whether outbound actions need a person, and
what ``corral check`` and ``Runtime.submit`` say of an agent that has all three."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from corral.policy.rule_of_two import assess
from corral.spec import AgentSpec, load_config
from corral.tools.builtin import BUILTIN_TOOLS

SPECS = Path(__file__).with_name("rule_of_two_specs.toml")
ALL_THREE: dict[str, Any] = {
    "secrets": {"API_TOKEN": {"hosts": ["api.example.com"]}},
    "sandbox": {"network": "allowlist", "allow": ["api.example.com"]},
}


def spec(**fields: Any) -> AgentSpec:
    return AgentSpec.model_validate({"name": "a", "model": "scripted:demo", **fields})


@pytest.mark.parametrize(
    ("fields", "held"),
    [
        ({"tools": ["read_file"]}, (True, False, False)),
        ({"secrets": ["TOKEN"]}, (True, True, False)),
        ({"sandbox": {"network": "allowlist", "allow": ["@python"]}}, (True, False, True)),
        ({"sandbox": {"network": "allowlist", "allow": ["pypi.org"], "allow_private": True}}, (True, True, True)),
        ({"sandbox": {"network": "allowlist", "allow": ["x.corp"], "allow_private": ["x.corp"]}}, (True, True, True)),
        # A registry preset behind a mirror on a private address is not an internal service.
        (
            {"sandbox": {"network": "allowlist", "allow": ["@python"], "allow_private": ["@python"]}},
            (True, False, True),
        ),
        ({"sandbox": {"network": "host"}}, (True, True, True)),
        ({"tools": ["read_file", "execute"], "sandbox": {"mounts": ["/opt/tools"]}}, (True, True, False)),
        ({"tools": ["write_file"], **ALL_THREE}, (False, True, False)),  # nothing reads, nothing leaves
        (ALL_THREE, (True, True, True)),
    ],
)
def test_a_b_c_are_inferred_from_the_spec(fields: dict[str, Any], held: tuple[bool, bool, bool]) -> None:
    found = assess(spec(**fields), BUILTIN_TOOLS)
    assert (found.untrusted_input.held, found.sensitive_data.held, found.outbound.held) == held
    for prop in (found.untrusted_input, found.sensitive_data, found.outbound):
        assert bool(prop.reasons) == prop.held  # every "yes" says why


@pytest.mark.parametrize(
    ("policy", "verdict"),
    [
        ({}, "refused"),
        ({"default": "ask"}, "gated"),
        ({"rules": [{"tool": "execute", "decision": "ask", "reason": "r"}]}, "gated"),
        ({"rules": [{"capability": "runs_commands", "decision": "deny", "reason": "r"}]}, "gated"),
        # Some calls allowed before the rule that asks: not every outbound action needs a person.
        (
            {
                "rules": [
                    {"tool": "execute", "args": {"command": "make*"}, "decision": "allow"},
                    {"tool": "execute", "decision": "ask", "reason": "r"},
                ]
            },
            "refused",
        ),
        # Conditional asks alone leave the other calls to the default.
        (
            {"rules": [{"tool": "execute", "args": {"command": "git push*"}, "decision": "ask", "reason": "r"}]},
            "refused",
        ),
    ],
)
def test_all_three_run_only_when_every_outbound_action_needs_a_person(policy: dict[str, Any], verdict: str) -> None:
    assert assess(spec(**ALL_THREE, policy=policy), BUILTIN_TOOLS).verdict == verdict


def test_acknowledged_and_declared() -> None:
    assert assess(spec(**ALL_THREE, rule_of_two="acknowledged"), BUILTIN_TOOLS).verdict == "acknowledged"
    declared = assess(spec(**ALL_THREE, rule_of_two={"sensitive_data": False}), BUILTIN_TOOLS)
    assert declared.verdict == "fine"
    assert declared.sensitive_data.declared and "declared in the spec" in declared.sensitive_data.reasons[-1]
    with pytest.raises(ValueError, match='"acknowledged" or a table'):
        spec(rule_of_two="yes")


@pytest.mark.slow  # the real entry point
def test_corral_check_for_four_specs(tmp_path: Path) -> None:
    (tmp_path / "corral.toml").write_text(SPECS.read_text())
    done = subprocess.run(
        [sys.executable, "-m", "corral", "check"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stderr  # one agent is refused
    sections = dict(part.split("\n", 1) for part in done.stdout.split("\nagent ")[1:])
    assert "✓ may run: not all three" in sections["none"] and "B sensitive data: no" in sections["none"]
    assert "✓ may run: not all three" in sections["two"] and "- holds secrets (API_TOKEN)" in sections["two"]
    assert "every outbound action needs a person" in sections["gated"]
    assert "✗ refused" in sections["reckless"]
    assert (
        'a rule with decision = "ask"' in sections["reckless"]
        and 'rule_of_two = "acknowledged"' in sections["reckless"]
    )
    one = subprocess.run(
        [sys.executable, "-m", "corral", "check", "gated"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert one.returncode == 0 and "agent reckless" not in one.stdout


def test_the_four_specs_load() -> None:
    assert sorted(load_config(SPECS).agents) == ["gated", "none", "reckless", "two"]
