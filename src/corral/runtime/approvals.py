"""Durable approvals: a run asks a person about an action and waits — across restarts — for the answer.

The request is a row in the store (one per action: its id is made from the run and the call, so a
replayed run finds its own request); the wait is DBOS's durable ``recv`` on the run's workflow; a
decision, from any process, settles the row atomically (so it is taken once) and then sends it to
the run. The timeout's default decision is a denial, journaled as ``expired``.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import socket
import time
from collections.abc import Callable

from corral import events as ev
from corral.errors import UsageError
from corral.policy.decide import Action, Decision
from corral.runtime import workflow
from corral.secrets.redact import REDACTOR
from corral.store import RunStatus, Store
from corral.store.records import ApprovalRecord, ApprovalStatus

DEFAULT_TIMEOUT_S = 24 * 3600.0
_OUTCOME = {
    ApprovalStatus.APPROVED: "approved",
    ApprovalStatus.DENIED: "denied",
    ApprovalStatus.EXPIRED: "expired",
    ApprovalStatus.WITHDRAWN: "withdrawn",
}


def who_am_i() -> str:
    """Who decides when the caller does not say: this process's user on this host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def approval_id(run_id: str, call_id: str) -> str:
    """The request's id: the same for the same action of the same run, however often the run replays."""
    return "ap-" + hashlib.sha256(f"{run_id}\0{call_id}".encode()).hexdigest()[:12]


async def ask_person(
    store: Store,
    emit: Callable[[ev.BaseEvent], None],
    *,
    action: Action,
    decision: Decision,
    call_id: str,
    timeout_s: float | None,
) -> Decision:
    """Record the request, wait for its decision (or the timeout) and return the decision that stands."""
    ident = approval_id(action.run_id, call_id)
    now = time.time()
    request = store.request_approval(
        id=ident,
        run_id=action.run_id,
        call_id=call_id,
        agent=action.agent,
        tool=action.tool,
        arguments=REDACTOR.data(dict(action.arguments)),
        rule=decision.rule,
        reason=REDACTOR(decision.reason),
        created_at=now,
        expires_at=now + (timeout_s or DEFAULT_TIMEOUT_S),
    )
    emit(
        ev.ApprovalRequested(
            key=f"approval:{ident}:requested",
            approval_id=ident,
            call_id=call_id,
            tool=action.tool,
            rule=request.rule,
            reason=request.reason,
            expires_at=request.expires_at,
        )
    )
    # Always wait, even when the row is already decided (a decision that came while no process ran the
    # run): the wait is a durable operation of the workflow, so a replay must take it exactly as the
    # first execution did; its message is in the database then, and it returns at once.
    if request.status is ApprovalStatus.PENDING:
        store.update_run(action.run_id, status=RunStatus.WAITING_APPROVAL)
    try:
        await workflow.wait_for_decision(ident, max(request.expires_at - time.time(), 0.0))
    finally:
        store.update_run(action.run_id, status=RunStatus.RUNNING)
    # Whatever arrived, the row is the truth: a decision settled it, or nothing did and the timeout does.
    expired = store.settle_approval(ident, ApprovalStatus.EXPIRED, by="timeout", reason="no decision in time")
    request = expired or store.get_approval(ident)
    emit(
        ev.ApprovalDecided(
            key=f"approval:{ident}:decided",
            approval_id=ident,
            call_id=call_id,
            outcome=_OUTCOME[request.status],  # type: ignore[arg-type]  # a settled request
            by=request.decided_by,
            reason=request.decision_reason,
        )
    )
    return _standing(request, decision)


def _standing(request: ApprovalRecord, asked: Decision) -> Decision:
    who = request.decided_by or "a person"
    if request.status is ApprovalStatus.APPROVED:
        return Decision(verdict="allow", reason=f"approved by {who}", rule=asked.rule)
    if request.status is ApprovalStatus.WITHDRAWN:
        return Decision(verdict="deny", reason="the run was cancelled while it waited for a person", rule=asked.rule)
    if request.status is ApprovalStatus.EXPIRED:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(request.expires_at))
        return Decision(verdict="deny", reason=f"{asked.reason}; nobody approved it before {when}", rule=asked.rule)
    why = f": {request.decision_reason}" if request.decision_reason else ""
    return Decision(verdict="deny", reason=f"denied by {who}{why}", rule=asked.rule)


def decide(store: Store, ident: str, *, approve: bool, reason: str | None, by: str) -> ApprovalRecord:
    """A person's decision on a pending request, from any process on the store; the waiting run gets it.

    Deciding twice, deciding an expired request or a finished run's request changes nothing and
    says why.
    """
    request = store.get_approval(ident)
    if request.status is not ApprovalStatus.PENDING:
        said = f" by {request.decided_by}" if request.decided_by else ""
        raise UsageError(f"approval {ident} is already {request.status.value}{said}; nothing changed")
    if time.time() >= request.expires_at:  # its timeout passed; the run denies it when it wakes
        store.settle_approval(ident, ApprovalStatus.EXPIRED, by="timeout", reason="no decision in time")
        raise UsageError(f"approval {ident} expired; nothing changed (the run was told no)")
    run = store.get_run(request.run_id)
    if run.status.finished:
        raise UsageError(f"approval {ident} belongs to run {run.id}, which is {run.status.value}; nothing changed")
    if not approve and not (reason or "").strip():
        raise UsageError("a denial needs a reason: the agent reads it", hint="corral deny ID --reason TEXT")
    status = ApprovalStatus.APPROVED if approve else ApprovalStatus.DENIED
    settled = store.settle_approval(ident, status, by=by, reason=reason)
    if settled is None:  # another decision, or the timeout, came first
        now = store.get_approval(ident)
        raise UsageError(f"approval {ident} is already {now.status.value}; nothing changed")
    workflow.send_decision(store.dbos_url(), request.run_id, ident, {"status": status.value})
    return settled


def withdraw(store: Store, run_id: str) -> None:
    """A run is being cancelled: settle its pending requests as withdrawn and wake its wait, so it stops."""
    for request in store.approvals(run_id=run_id):
        if store.settle_approval(request.id, ApprovalStatus.WITHDRAWN, by="cancel", reason="the run was cancelled"):
            workflow.send_decision(store.dbos_url(), run_id, request.id, {"status": ApprovalStatus.WITHDRAWN.value})
