"""Every matcher of a policy rule, first-match order, defaults, and the errors a bad rule gets."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from corral.policy.decide import Action, decide
from corral.policy.rules import PolicySpec, Rule, normalize_argument

WRITES = frozenset({"writes_workspace"})
RUNS = frozenset({"runs_commands"})


def policy(*rules: dict[str, Any], **settings: Any) -> PolicySpec:
    return PolicySpec.model_validate({"rules": list(rules), **settings})


def call(tool: str = "execute", count: int = 1, capabilities: frozenset[str] = RUNS, **arguments: Any) -> Action:
    return Action(tool=tool, arguments=arguments, capabilities=capabilities, count=count)


def test_tool_names_one_or_many() -> None:
    one = policy({"tool": "execute", "decision": "deny", "reason": "no commands"})
    many = policy({"tool": ["edit_file", "write_file"], "decision": "deny", "reason": "read-only"})
    assert decide(one, call()).verdict == "deny"
    assert decide(one, call("read_file")).verdict == "allow"
    assert decide(many, call("write_file", capabilities=WRITES)).verdict == "deny"
    assert decide(many, call("execute")).verdict == "allow"


def test_capabilities_match_any_of_those_listed() -> None:
    rules = policy({"capability": ["writes_workspace", "external_side_effect"], "decision": "ask", "reason": "r"})
    assert decide(rules, call("edit_file", capabilities=WRITES)).verdict == "ask"
    assert decide(rules, call("read_file", capabilities=frozenset({"reads_workspace"}))).verdict == "allow"


@pytest.mark.parametrize(
    ("command", "verdict"),
    [
        ("git push", "ask"),
        ("git push origin feature/x", "ask"),  # `*` crosses `/`
        ("git pushd", "ask"),
        ("git status", "allow"),
        ("echo git push", "allow"),  # a glob matches the whole argument
    ],
)
def test_glob_on_a_named_argument(command: str, verdict: str) -> None:
    rules = policy({"tool": "execute", "args": {"command": "git push*"}, "decision": "ask", "reason": "a push"})
    assert decide(rules, call(command=command)).verdict == verdict


@pytest.mark.parametrize(
    ("path", "verdict"),
    [
        (".github/workflows/ci.yml", "deny"),
        ("./.github/workflows/ci.yml", "deny"),
        ("src/../.github/workflows/deep/ci.yml", "deny"),
        ("/workspace/.github/workflows/ci.yml", "deny"),
        (".github/dependabot.yml", "allow"),
        ("docs/.github/workflows.md", "allow"),
    ],
)
def test_a_path_argument_is_normalized_before_it_is_matched(path: str, verdict: str) -> None:
    rules = policy({"args": {"path": ".github/workflows/**"}, "decision": "deny", "reason": "workflows are off limits"})
    assert decide(rules, call("edit_file", capabilities=WRITES, path=path)).verdict == verdict


def test_regex_searches_anywhere_unless_anchored() -> None:
    rules = policy(
        {"args_regex": {"command": r"\brm\s+-[a-z]*r[a-z]*f"}, "decision": "deny", "reason": "no recursive deletes"},
        {"args_regex": {"command": r"^curl "}, "decision": "ask", "reason": "a download"},
    )
    assert decide(rules, call(command="cd x && rm -rf /")).verdict == "deny"
    assert decide(rules, call(command="curl https://x")).verdict == "ask"
    assert decide(rules, call(command="echo curl https://x")).verdict == "allow"


def test_an_argument_the_call_lacks_never_matches() -> None:
    rules = policy({"args": {"path": "*"}, "decision": "deny", "reason": "r"})
    assert decide(rules, call(command="ls")).verdict == "allow"


def test_count_over_matches_the_calls_after_the_nth() -> None:
    rules = policy({"tool": "execute", "count_over": 3, "decision": "deny", "reason": "three commands are enough"})
    assert [decide(rules, call(count=n)).verdict for n in range(1, 6)] == ["allow"] * 3 + ["deny"] * 2


def test_every_field_given_must_match() -> None:
    rules = policy({"tool": "execute", "args": {"command": "git *"}, "count_over": 1, "decision": "ask", "reason": "r"})
    assert decide(rules, call(command="git push", count=1)).verdict == "allow"
    assert decide(rules, call(command="ls", count=2)).verdict == "allow"
    assert decide(rules, call(command="git push", count=2)).verdict == "ask"


def test_first_match_wins_and_says_which_rule() -> None:
    rules = policy(
        {"name": "pushes", "args": {"command": "git push*"}, "decision": "ask", "reason": "a push"},
        {"tool": "execute", "decision": "deny", "reason": "no other commands"},
    )
    first = decide(rules, call(command="git push"))
    assert (first.verdict, first.rule, first.reason) == ("ask", "pushes", "a push")
    assert decide(rules, call(command="ls")).verdict == "deny"


@pytest.mark.parametrize(
    ("default", "verdict"), [(None, "allow"), ("allow", "allow"), ("deny", "deny"), ("ask", "ask")]
)
def test_the_default_decides_when_nothing_matches(default: str | None, verdict: str) -> None:
    decision = decide(policy(default=default), call())
    assert (decision.verdict, decision.rule) == (verdict, None)
    assert "no rule matched" in decision.reason


def test_an_agents_rules_come_before_the_projects_and_unnamed_rules_are_named_by_place() -> None:
    project = policy({"tool": "execute", "decision": "deny", "reason": "project"}, default="ask", approval_timeout_s=60)
    agent = policy({"args": {"command": "make*"}, "decision": "allow"})
    combined = agent.combined(project, agent="fixer")
    assert [rule.name for rule in combined.rules] == ["agents.fixer.policy.rules[0]", "policy.rules[0]"]
    assert (combined.default, combined.approval_timeout_s) == ("ask", 60)
    assert decide(combined, call(command="make test")).verdict == "allow"
    assert decide(combined, call(command="ls")).rule == "policy.rules[0]"


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"decision": "maybe"}, "decision"),
        ({"decision": "deny"}, "needs a reason"),
        ({"decision": "allow", "capability": "flies"}, "capability"),
        ({"decision": "allow", "args_regex": {"command": "(unclosed"}}, "args_regex.command: not a regular expression"),
        ({"decision": "allow", "args": {"command": ""}}, "args.command: an empty pattern"),
        ({"decision": "allow", "count_over": -1}, "count_over"),
        ({"decision": "allow", "tools": "execute"}, "tools"),  # a typo of a field is an unknown field
    ],
)
def test_a_bad_rule_is_an_error_naming_the_field(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Rule.model_validate(rule)


@pytest.mark.parametrize(
    ("name", "value", "seen"),
    [
        ("path", "./a/../b.txt", "b.txt"),
        ("path", "/workspace/src/x.py", "src/x.py"),
        ("path", "/etc/passwd", "etc/passwd"),
        ("path", "a\\b", "a/b"),
        ("command", "./run.sh", "./run.sh"),  # only path arguments are normalized
        ("count", 3, "3"),
    ],
)
def test_normalize_argument(name: str, value: Any, seen: str) -> None:
    assert normalize_argument(name, value) == seen
