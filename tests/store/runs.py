"""A run row with nothing but what a store test needs."""

from __future__ import annotations

from corral.store import RunStatus, Store


def add_run(
    store: Store, run_id: str, *, executor_id: str | None = None, status: RunStatus = RunStatus.RUNNING
) -> None:
    store.create_run(
        id=run_id,
        parent_id=None,
        root_id=run_id,
        agent="a",
        spec={},
        spec_hash="h",
        task="t",
        repo="/r",
        run_dir="/d",
        executor_id=executor_id,
    )
    store.update_run(run_id, status=status)
