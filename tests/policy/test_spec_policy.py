"""Policies in corral.toml: the project's [policy] after each agent's own rules, and clear errors for bad ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.errors import SpecError
from corral.policy.decide import Action, decide
from corral.spec import load_config

SPEC = """
[policy]
default = "allow"
approval_timeout_s = 3600

[[policy.rules]]
name = "no workflow edits"
tool = ["edit_file", "write_file"]
args = { path = ".github/workflows/**" }
decision = "deny"
reason = "CI workflows are changed by people, not agents"

[agents.fixer]
model = "scripted:demo"

[[agents.fixer.policy.rules]]
tool = "execute"
args = { command = "git push*" }
decision = "ask"
reason = "a push leaves the sandbox"

[agents.reader]
model = "scripted:demo"
policy = { default = "deny" }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "corral.toml"
    path.write_text(text)
    return path


def test_each_agent_gets_its_rules_then_the_projects(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, SPEC))
    fixer, reader = config.agent("fixer").policy, config.agent("reader").policy
    assert [rule.name for rule in fixer.rules] == ["agents.fixer.policy.rules[0]", "no workflow edits"]
    assert fixer.approval_timeout_s == 3600 and fixer.default == "allow"
    assert [rule.name for rule in reader.rules] == ["no workflow edits"]
    assert reader.default == "deny"

    push = Action(tool="execute", arguments={"command": "git push origin main"})
    edit = Action(tool="edit_file", arguments={"path": "./.github/workflows/ci.yml"})
    assert decide(fixer, push).verdict == "ask"
    assert decide(fixer, edit).verdict == "deny"
    assert decide(reader, Action(tool="read_file", arguments={"path": "README.md"})).verdict == "deny"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            '[[agents.fixer.policy.rules]]\ntool = "exec"\ndecision = "deny"\nreason = "r"\n',
            "field 'agents.fixer.policy.rules[0].tool': unknown tool(s) exec",
        ),
        (
            '[[agents.fixer.policy.rules]]\nargs_regex = { command = "(" }\ndecision = "deny"\nreason = "r"\n',
            "field 'policy.rules.0.args_regex': Value error, args_regex.command: not a regular expression",
        ),
        ('[agents.fixer.policy]\ndefualt = "deny"\n', "field 'policy.defualt': Extra inputs are not permitted"),
        ('[[agents.fixer.policy.rules]]\ndecision = "deny"\n', "needs a reason"),
    ],
)
def test_a_bad_agent_policy_is_a_spec_error_naming_the_field(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_config(write(tmp_path, f'[agents.fixer]\nmodel = "scripted:demo"\n{table}'))
    assert "agent 'fixer'" in caught.value.message
    assert message.replace("Value error, ", "") in caught.value.message


def test_a_bad_project_policy_is_a_spec_error_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"field 'policy.rules.0.decision'"):
        load_config(write(tmp_path, '[[policy.rules]]\ndecision = "perhaps"\n[agents.a]\nmodel = "scripted:demo"\n'))
