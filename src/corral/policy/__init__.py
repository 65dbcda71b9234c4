"""Policy: what a run may spend (``budgets``) and do (``rules``, ``decide``).

Nothing is imported here: ``corral.policy.rules`` is ground (the spec embeds it), so importing this
package must not pull in ``budgets``, which stands on the spec.
"""
