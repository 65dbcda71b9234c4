"""One budget checker for every engine: turns, tokens, cost, and wall time as a deadline across resumes."""

from __future__ import annotations

import time

import pytest

from corral.errors import BudgetExceededError
from corral.events import Usage
from corral.policy.budgets import BudgetClock
from corral.spec import Budget


def test_turns_allow_exactly_max_turns_calls() -> None:
    clock = BudgetClock(Budget(max_turns=2), time.time())
    clock.check_model_call(0, Usage())
    clock.check_model_call(1, Usage())
    with pytest.raises(BudgetExceededError) as caught:
        clock.check_model_call(2, Usage())
    assert (caught.value.limit, caught.value.value, caught.value.maximum) == ("max_turns", 3.0, 2.0)


@pytest.mark.parametrize(
    ("budget", "used", "limit"),
    [
        (Budget(max_tokens=100, max_turns=None), Usage(input_tokens=90, output_tokens=10), "max_tokens"),
        (Budget(max_cost_usd=0.5, max_turns=None), Usage(cost_usd=0.5), "max_cost_usd"),
    ],
)
def test_spent_budgets_stop_the_next_call(budget: Budget, used: Usage, limit: str) -> None:
    with pytest.raises(BudgetExceededError) as caught:
        BudgetClock(budget, time.time()).check_model_call(5, used)
    assert caught.value.limit == limit


def test_the_deadline_counts_from_the_first_start_of_the_run() -> None:
    # A run first started 10 s ago with a 4 s limit is out of time in a resuming process too.
    clock = BudgetClock(Budget(max_wall_time_s=4), time.time() - 10)
    assert clock.remaining_s() == 0.0
    assert clock.clip(120) == 0.0
    with pytest.raises(BudgetExceededError) as caught:
        clock.check_wall_time()
    assert caught.value.limit == "max_wall_time_s" and caught.value.value >= 10


def test_timeouts_are_cut_to_the_time_left() -> None:
    clock = BudgetClock(Budget(max_wall_time_s=30), time.time())
    assert 29 < clock.clip(120) <= 30
    assert clock.clip(5) == 5
    assert BudgetClock(Budget(), time.time()).clip(120) == 120
