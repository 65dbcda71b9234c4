"""Removing runs (``corral rm``, ``corral prune``): their rows, their journals and their files, nothing else.

A run is removed whole: with the runs started under it (sub-runs, ``parent_id``), its journal and
its run directory. Files are deleted only at ``<store>/runs/<run id>``, the directory corral made
for the run, never through a symbolic link or a mount; a run whose recorded directory is anywhere
else loses its rows, and its files are kept and named. Runs that continue a removed run
(``corral continue``) stay; their link to it is cleared.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from corral.errors import CorralError, UsageError
from corral.store import RunRecord, Store


@dataclass
class Removal:
    """What removing some runs does: checked and measured before anything is deleted."""

    runs: list[RunRecord]
    """Whole trees, each run before the runs started under it."""
    dirs: dict[str, Path] = field(default_factory=dict)
    """Run id to the directory to delete (the store's own, and present)."""
    foreign: list[RunRecord] = field(default_factory=list)
    """Runs whose recorded directory is not the store's own: their files are kept."""
    unlinked: list[RunRecord] = field(default_factory=list)
    """Runs that continue a removed run; their ``continues_id`` is cleared."""
    sizes: dict[str, int] = field(default_factory=dict)
    """Run id to the bytes of the files to delete."""


def whole_trees(store: Store, records: list[RunRecord]) -> list[RunRecord]:
    """``records`` with every run started under them; a sub-run goes only with the run it belongs to."""
    runs = store.run_trees([r.id for r in records])
    ids = {r.id for r in runs}
    for record in records:
        if record.parent_id is not None and record.parent_id not in ids:
            raise UsageError(
                f"run {record.id} is a sub-run of run {record.parent_id}; it is removed with that run",
                hint=f"corral rm {record.root_id}",
            )
    return runs


def unfinished_error(record: RunRecord) -> UsageError:
    """Why an unfinished run is not removed without ``--force``, and what ``--force`` does instead."""
    if record.interrupted:
        return UsageError(
            f"run {record.id} is interrupted (its process is gone) and could still be resumed",
            hint=f"`corral resume {record.id}` continues it; `--force` cancels it, then removes it",
        )
    return UsageError(
        f"run {record.id} is {record.display_status}",
        hint="`--force` cancels it (as `corral cancel` does), then removes it",
    )


def refuse_busy_followers(store: Store, runs: list[RunRecord]) -> None:
    """Refuse to remove a run that a follow-up still in progress continues: it may still need it."""
    waiting = [f for f in store.followers([r.id for r in runs]) if not f.status.finished]
    if waiting:
        follower = waiting[0]
        raise UsageError(
            f"run {follower.id} ({follower.display_status}) continues run {follower.continues_id} "
            "and may still need it",
            hint="remove it too, or wait until it ends; `--force` removes the run all the same",
        )


def cancel_unfinished(store: Store, runs: list[RunRecord]) -> None:
    """End unfinished runs as `corral cancel` does (their sandboxes removed); raise if one does not stop."""
    import asyncio

    from corral.runtime import Runtime

    async def cancel_all() -> None:
        runtime = Runtime(store)
        for run in runs:
            if not store.get_run(run.id).status.finished:  # cancelling its parent may have ended it
                await runtime.cancel(run.id)

    asyncio.run(cancel_all())
    still = [r for r in (store.get_run(run.id) for run in runs) if not r.status.finished]
    if still:
        raise CorralError(
            f"run {still[0].id} did not stop when cancelled; nothing was removed",
            hint="try again once `corral runs` shows it cancelled",
        )


def prunable(store: Store, old: list[RunRecord]) -> tuple[list[RunRecord], list[tuple[RunRecord, str]]]:
    """The whole trees of the finished top-level runs among ``old``; the runs kept, and why.

    A tree is kept whole when one of its runs, or a follow-up of one, has not finished.
    """
    trees: list[RunRecord] = []
    kept: list[tuple[RunRecord, str]] = []
    for root in old:
        if root.parent_id is not None or not root.status.finished:
            continue  # sub-runs go with their run; unfinished runs are never pruned
        tree = store.run_trees([root.id])
        busy = [r for r in tree if not r.status.finished]
        busy += [f for f in store.followers([r.id for r in tree]) if not f.status.finished]
        if busy:
            kept.append((root, f"run {busy[0].id} ({busy[0].display_status}) belongs to it or continues it"))
        else:
            trees += tree
    return trees, kept


def own_run_dir(store: Store, record: RunRecord) -> Path | None:
    """The run's directory if it is the one corral made for it in this store (not a link); else None.

    That is ``<runs dir>/<run id>``, a direct child of the runs directory: an id such as ``..``
    or ``a/b`` (which corral never makes) names nothing to delete.
    """
    if record.id in ("", ".", "..") or "/" in record.id or os.sep in record.id:
        return None
    path = Path(record.run_dir)
    if path.is_symlink() or path.resolve() != store.runs_dir.resolve() / record.id:
        return None
    return path


def plan_removal(store: Store, runs: list[RunRecord]) -> Removal:
    """Measure what removing ``runs`` (whole trees, all finished) deletes; refuse a mounted directory."""
    removal = Removal(runs, unlinked=store.followers([r.id for r in runs]))
    for run in runs:
        path = own_run_dir(store, run)
        if path is None:
            removal.foreign.append(run)
        elif path.exists():
            _refuse_mounted(run, path)
            removal.dirs[run.id] = path
            removal.sizes[run.id] = tree_size(path)
    return removal


def _refuse_mounted(run: RunRecord, path: Path) -> None:
    """Never delete through a mount: a sandbox's workspace can be a view of the user's repository."""
    from corral.sandbox.bubblewrap.overlay import mount_points_under

    mounted = mount_points_under(path.resolve())
    if mounted:
        raise UsageError(
            f"run {run.id}: its directory still has mounts ({', '.join(mounted)}); nothing was removed",
            hint="`corral sandbox prune` removes what sandboxes left behind",
        )


def tree_size(path: Path) -> int:
    """Bytes of the files under ``path`` (links not followed, directories not counted)."""
    total = 0
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            with contextlib.suppress(OSError):  # removed meanwhile: nothing to count
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def execute_removal(store: Store, removal: Removal) -> tuple[list[RunRecord], int, list[str]]:
    """Delete the files, then the rows; the runs removed, the events removed, and what failed.

    A tree whose files could not all be deleted keeps its rows, so that it can be removed again.
    """
    from corral.sandbox.workspace import remove_now

    failed: list[str] = []
    failed_trees: set[str] = set()
    for run in removal.runs:
        path = removal.dirs.get(run.id)
        if path is None:
            continue
        try:
            remove_now(path)
        except (CorralError, OSError) as err:
            failed.append(f"run {run.id}: {err}")
            failed_trees.add(run.root_id)
    removed = [r for r in removal.runs if r.root_id not in failed_trees]
    events = store.remove_runs([r.id for r in removed]) if removed else 0
    return removed, events, failed


def fmt_bytes(size: int) -> str:
    """``512 B``, ``12.3 kB``, ``4.5 MB``: what a removal frees."""
    units = ("B", "kB", "MB", "GB", "TB")
    value, power = float(size), 0
    while value >= 1000 and power < len(units) - 1:
        value, power = value / 1000, power + 1
    return f"{size} B" if power == 0 else f"{value:.1f} {units[power]}"
