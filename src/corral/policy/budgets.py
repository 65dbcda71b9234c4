"""Budgets: one checker for turns, tokens, cost and wall time, shared by every engine and the model gateway."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from corral.errors import BudgetExceededError
from corral.events import Usage
from corral.spec import Budget


@dataclass
class ChildrenSpend:
    """What a run's children have spent so far (their subtrees included): part of the run's own budget."""

    usage: Usage = field(default_factory=Usage)

    def add(self, usage: Usage) -> None:
        self.usage = self.usage + usage


@dataclass(frozen=True)
class BudgetClock:
    """A run's budget and the wall-clock moment it started.

    ``started_at`` is wall-clock time (``time.time()``) of the run's first start, so a resumed run
    keeps counting from there: ``max_wall_time_s`` bounds the run, not one process's share of it.
    """

    budget: Budget
    started_at: float
    children: ChildrenSpend = field(default_factory=ChildrenSpend)
    """Spent by the run's children: counted against its tokens and cost like its own model calls."""

    @property
    def deadline(self) -> float | None:
        """Wall-clock time at which the run is out of time, or None without a wall-time limit."""
        limit = self.budget.max_wall_time_s
        return None if limit is None else self.started_at + limit

    def remaining_s(self) -> float | None:
        """Seconds left before the deadline (never negative), or None without one."""
        deadline = self.deadline
        return None if deadline is None else max(0.0, deadline - time.time())

    def clip(self, timeout_s: float) -> float:
        """``timeout_s`` shortened so that a wait ends no later than the deadline."""
        remaining = self.remaining_s()
        return timeout_s if remaining is None else min(timeout_s, remaining)

    def wall_time_exceeded(self) -> BudgetExceededError:
        """The error for a run that reached its deadline (raise it where the deadline was found)."""
        limit = self.budget.max_wall_time_s or 0.0
        return BudgetExceededError("max_wall_time_s", time.time() - self.started_at, limit)

    def check_wall_time(self) -> None:
        if self.remaining_s() == 0.0:
            raise self.wall_time_exceeded()

    def share(self, own: Budget, used: Usage) -> Budget:
        """A child's budget: its own limits, cut to what this run has left (``used`` by its own calls,
        and its children's spending). A child never spends more than its parent has left; children
        running at the same time share what is left, and the parent stops at its next model call once
        they have spent it."""
        spent = used + self.children.usage
        changes: dict[str, float | int] = {}
        if self.budget.max_tokens is not None:
            left = max(1, self.budget.max_tokens - spent.total_tokens)
            changes["max_tokens"] = left if own.max_tokens is None else min(own.max_tokens, left)
        if self.budget.max_cost_usd is not None:
            left_usd = max(1e-9, self.budget.max_cost_usd - spent.cost_usd)
            changes["max_cost_usd"] = left_usd if own.max_cost_usd is None else min(own.max_cost_usd, left_usd)
        remaining = self.remaining_s()
        if remaining is not None:
            left_s = max(1e-3, remaining)
            own_s = own.max_wall_time_s
            changes["max_wall_time_s"] = left_s if own_s is None else min(own_s, left_s)
        return own.model_copy(update=changes) if changes else own

    def check_model_call(self, call: int, used: Usage) -> None:
        """Before model call ``call`` (0-based) with ``used`` spent so far: raise if any limit is reached.

        ``used`` is the run's own spending; its children's is added here.
        """
        budget = self.budget
        used = used + self.children.usage
        checks: list[tuple[str, float, float | None, bool]] = [
            ("max_turns", call + 1, budget.max_turns, False),
            ("max_tokens", used.total_tokens, budget.max_tokens, True),
            ("max_cost_usd", used.cost_usd, budget.max_cost_usd, True),
            ("max_wall_time_s", time.time() - self.started_at, budget.max_wall_time_s, True),
        ]
        for limit, value, maximum, inclusive in checks:
            if maximum is None:
                continue
            if value >= maximum if inclusive else value > maximum:
                raise BudgetExceededError(
                    limit,
                    float(value),
                    float(maximum),
                    message=f"budget exhausted: {limit} = {maximum:g} reached ({value:g}) before model call {call + 1}",
                )
