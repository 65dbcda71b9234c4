"""Approval requests in the store: one per action however often a run replays, decided once, atomically."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from corral.errors import ApprovalNotFoundError
from corral.store import Store
from corral.store.records import ApprovalStatus, RunStatus
from tests.store.runs import add_run


def request(store: Store, run_id: str, approval_id: str = "ap-1", **extra: object) -> None:
    now = time.time()
    fields = {
        "id": approval_id,
        "run_id": run_id,
        "call_id": "call-1",
        "agent": "fixer",
        "tool": "execute",
        "arguments": {"command": "git push"},
        "rule": "pushes",
        "reason": "a push leaves the sandbox",
        "created_at": now,
        "expires_at": now + 60,
    }
    store.request_approval(**(fields | extra))


@pytest.fixture
def store(tmp_path: Path, database: str) -> Store:
    opened = Store.open(home=tmp_path / "home")
    yield opened
    opened.close()


def test_asking_again_with_the_same_id_returns_the_first_request(store: Store) -> None:
    add_run(store, "run-1")
    request(store, "run-1")
    request(store, "run-1", reason="a different reason: a replay must not change the request")
    (pending,) = store.approvals()
    assert (pending.id, pending.status, pending.reason) == ("ap-1", ApprovalStatus.PENDING, "a push leaves the sandbox")
    assert pending.arguments == {"command": "git push"}


def test_a_request_is_decided_once(store: Store) -> None:
    add_run(store, "run-1")
    request(store, "run-1")
    decided = store.settle_approval("ap-1", ApprovalStatus.APPROVED, by="ana", reason="fine")
    assert decided is not None and (decided.status, decided.decided_by, decided.decision_reason) == (
        ApprovalStatus.APPROVED,
        "ana",
        "fine",
    )
    assert store.settle_approval("ap-1", ApprovalStatus.DENIED, by="bob", reason="no") is None
    assert store.get_approval("ap-1").status is ApprovalStatus.APPROVED  # the second decision changed nothing
    assert store.approvals() == []
    assert [a.id for a in store.approvals(status=None)] == ["ap-1"]


def test_two_deciders_at_once_one_wins(store: Store) -> None:
    add_run(store, "run-1")
    request(store, "run-1")
    results: list[object] = []

    def decide(status: ApprovalStatus) -> None:
        results.append(store.settle_approval("ap-1", status, by=status.value, reason=None))

    threads = [threading.Thread(target=decide, args=(s,)) for s in (ApprovalStatus.APPROVED, ApprovalStatus.DENIED)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(result is not None for result in results) == 1


def test_an_unknown_id_is_a_clear_error(store: Store) -> None:
    with pytest.raises(ApprovalNotFoundError, match="no approval request 'ap-nope'"):
        store.get_approval("ap-nope")
    assert store.settle_approval("ap-nope", ApprovalStatus.APPROVED, by="x", reason=None) is None


def test_removing_a_run_removes_its_approval_requests(store: Store) -> None:
    add_run(store, "run-1", status=RunStatus.SUCCEEDED)
    request(store, "run-1")
    store.remove_runs(["run-1"])  # PostgreSQL enforces the foreign key: the requests go with the run
    assert store.approvals(status=None) == []
