"""Grants and the identity a run acts with.

A grant names something a run may use: ``secret:NAME`` (the host secret ``NAME`` of an agent spec's
``secrets``) or ``secret:*`` (any). Users hold grants per team (what they may let a run use), agents
hold grants of their own per team (their identity: agent-as-employee). A run submitted through the
API acts either

- as its agent (``agent`` mode): the agent's grants, whoever submitted it; or
- on behalf of the submitting user (``user`` mode, the default): only what both hold.

The run records the mode and the effective grants (``RunRecord.identity``, ``run.started`` in its
journal); a run may read a secret only when a grant covers it, checked when it is submitted and
again by the worker before the secret is read from its environment.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from corral.errors import ForbiddenError, UsageError
from corral.store.records import Identity

WILDCARD = "secret:*"
_GRANT = re.compile(r"secret:(\*|[A-Za-z_][A-Za-z0-9_]{0,127})")


def check_grants(grants: Iterable[str]) -> list[str]:
    """The grants, checked and sorted without repeats; a malformed one is a UsageError naming it."""
    checked = set()
    for grant in grants:
        if not isinstance(grant, str) or not _GRANT.fullmatch(grant):
            raise UsageError(
                f"{grant!r} is not a grant",
                hint="a grant is secret:NAME (an environment variable's name) or secret:* (any secret)",
            )
        checked.add(grant)
    return sorted(checked)


def allows(grants: Iterable[str], secret: str) -> bool:
    """Whether ``grants`` cover the secret ``secret``."""
    held = set(grants)
    return WILDCARD in held or f"secret:{secret}" in held


def intersect(first: Iterable[str], second: Iterable[str]) -> list[str]:
    """What both hold: ``secret:*`` on one side is the other side's grants."""
    a, b = set(first), set(second)
    if WILDCARD in a:
        return sorted(b)
    if WILDCARD in b:
        return sorted(a)
    return sorted(a & b)


def missing(grants: Iterable[str], secrets: Iterable[str]) -> list[str]:
    """The secrets among ``secrets`` that ``grants`` do not cover."""
    held = list(grants)
    return sorted(name for name in set(secrets) if not allows(held, name))


def check_identity(identity: Identity, secrets: Iterable[str], agent: str) -> None:
    """Raise ForbiddenError unless the identity's grants cover every secret in ``secrets``."""
    lacking = missing(identity.grants, secrets)
    if not lacking:
        return
    held = ", ".join(identity.grants) or "none"
    names = " ".join(f"secret:{name}" for name in lacking)
    if identity.mode == "agent":
        hint = f"an admin grants them to the agent: corral agent grant {agent} --team {identity.team} {names}"
    else:
        hint = (
            f"on behalf of a user, a run may use what both hold: corral user grant {identity.user} "
            f"--team {identity.team} {names}, and corral agent grant {agent} --team {identity.team} {names}"
        )
    raise ForbiddenError(
        f"a run of agent '{agent}' acting {identity.describe()} may not use secret(s) {', '.join(lacking)} "
        f"(its grants: {held})",
        hint=hint,
    )
