"""``corral verify``: an intact journal, then a tampered one, as a person runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import text

from corral.events import ToolCalled
from corral.store import Store
from tests.e2e.cli_helpers import corral
from tests.store.runs import add_run, finished_run_events

pytestmark = pytest.mark.slow  # corral in subprocesses


def test_verify_says_intact_then_names_each_tampering_and_fails(tmp_path: Path, home: Path) -> None:
    store = Store.open(home=home)
    add_run(store, "run-parent")
    add_run(store, "run-child", parent_id="run-parent")
    for run_id in ("run-parent", "run-child"):
        for event in finished_run_events():
            store.journal.append(run_id, event)
    # A hostile tool name: printed as text, never as markup or terminal control.
    store.journal.append("run-child", ToolCalled(key="hostile", call_id="h", tool="[red]x\x1b[2J", args={}))
    store.journal.flush()

    ok = corral("verify", "run-par", cwd=tmp_path, home=home)  # a prefix; the sub-run is checked too
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert [line.split()[:3] for line in lines] == [["run-parent", "intact", "6"], ["run-child", "intact", "7"]]
    head = store.verify_journal("run-parent").head_hash
    assert f"head 6 {head}" in lines[0]

    with store.engine.begin() as conn:
        conn.execute(text("UPDATE corral_events SET data = '{}' WHERE run_id = 'run-child' AND seq = 7"))
        conn.execute(text("DELETE FROM corral_events WHERE run_id = 'run-parent' AND seq = 2"))
    store.close()

    bad = corral("verify", "run-parent", cwd=tmp_path, home=home)
    assert bad.returncode == 1
    assert "run-parent  TAMPERED" in bad.stdout and "deleted  event(s) 2 are missing" in bad.stdout
    assert "run-child  TAMPERED" in bad.stdout and "changed  event 7 (tool.call) was changed" in bad.stdout
    assert "\x1b" not in bad.stdout

    as_json = corral("verify", "run-parent", "--json", cwd=tmp_path, home=home)
    assert as_json.returncode == 1
    reports = {r["run_id"]: r for r in json.loads(as_json.stdout)}
    assert reports["run-parent"]["problems"] == [
        {"kind": "deleted", "seq": 2, "message": "event(s) 2 are missing: deleted"}
    ]
    assert reports["run-child"]["intact"] is False

    missing = corral("verify", "no-such-run", cwd=tmp_path, home=home)
    assert missing.returncode == 2 and "no run 'no-such-run'" in missing.stderr
