"""Spec overrides (``AgentSpec.with_overrides``): validated as a spec is, named as the caller calls them."""

from __future__ import annotations

import pytest

from corral.errors import SpecError
from corral.spec import AgentSpec

OPTIONS = {"budget.max_turns": "--max-turns", "sandbox.network": "--network"}


def test_an_override_replaces_one_field_of_a_table_and_keeps_the_rest() -> None:
    spec = AgentSpec(name="a", model="openai:gpt-5", budget={"max_tokens": 1000, "max_turns": 9})
    changed = spec.with_overrides({"budget.max_turns": 3, "sandbox.backend": "local"})
    assert changed.budget.max_turns == 3
    assert changed.budget.max_tokens == 1000
    assert changed.sandbox.backend == "local"
    assert changed.sandbox.limits == spec.sandbox.limits
    assert changed.content_hash() != spec.content_hash()


def test_none_leaves_a_field_as_it_is() -> None:
    spec = AgentSpec(name="a", model="openai:gpt-5")
    assert spec.with_overrides({"model": None, "budget.max_turns": None}) == spec


def test_a_bad_override_names_what_the_caller_calls_it() -> None:
    spec = AgentSpec(name="a", model="openai:gpt-5")
    with pytest.raises(SpecError, match=r"--max-turns: Input should be greater than 0"):
        spec.with_overrides({"budget.max_turns": 0}, names=OPTIONS)
    with pytest.raises(SpecError, match=r"--network: Input should be 'none', 'allowlist' or 'host'"):
        spec.with_overrides({"sandbox.network": {"mode": "wide-open"}}, names=OPTIONS)
    with pytest.raises(SpecError, match=r"field 'temperature': Input should be less than or equal to 2"):
        spec.with_overrides(temperature=5)
