"""Policy: what a run may spend and do (budgets now; approvals and rules next)."""

from corral.policy.budgets import BudgetClock

__all__ = ["BudgetClock"]
