"""Acceptance: a repository holding fake AWS, GitHub and private-key secrets. The agent reads them with
read_file and execute; the model never receives one, the journal holds the findings without values, and
a secret the agent writes into its patch is flagged there (and in `corral show`), never silently changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from corral.events import SecretsDetected, ToolReturned
from corral.models.scripted import ScriptedServer
from corral.store import RunStatus, Store
from tests.e2e.test_runs import events_of, run_once, script, spec_for
from tests.secrets.fakes import AWS_KEY_ID, AWS_SECRET, GITHUB_TOKEN, INVENTED_TOKEN, private_key_pem, values

pytestmark = pytest.mark.anyio

SCRIPT = f"""
[[turns]]
[[turns.tool_calls]]
name = "read_file"
args = {{ path = "app/settings.py" }}

[[turns]]
[[turns.tool_calls]]
name = "execute"
args = {{ command = "cat deploy/.env; cat deploy/id_rsa" }}

[[turns]]
[[turns.tool_calls]]
name = "write_file"
args = {{ path = "app/ci.py", content = "TOKEN = '{INVENTED_TOKEN}'\\n" }}

[[turns]]
text = "Done. For the record, the CI token is {INVENTED_TOKEN}."
"""


def secret_repo(repo: Path) -> Path:
    (repo / "app").mkdir()
    (repo / "app" / "settings.py").write_text(
        f'DEBUG = False\nAWS_ACCESS_KEY_ID = "{AWS_KEY_ID}"\nAWS_SECRET_ACCESS_KEY = "{AWS_SECRET}"\n'
    )
    (repo / "deploy").mkdir()
    (repo / "deploy" / ".env").write_text(f"REGION=eu-west-1\nGITHUB_TOKEN={GITHUB_TOKEN}\n")
    (repo / "deploy" / "id_rsa").write_text(private_key_pem())
    return repo


async def test_the_model_never_receives_a_secret_and_the_journal_has_no_value(
    home: Path, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_repo(repo)
    with ScriptedServer(script(tmp_path, SCRIPT)) as server:
        record = await run_once(home, spec_for(server), repo)
        sent = [json.dumps(request.body) for request in server.requests]
    assert record.status is RunStatus.SUCCEEDED, record.error
    for body in sent:
        for value in values():
            assert value not in body  # not in any request the model server received
    assert "[secret:detected:AWS Access Key]" in sent[1] and "[secret:detected:Base64 High Entropy String]" in sent[1]
    assert "[secret:detected:GitHub Token]" in sent[2] and "[secret:detected:Private Key]" in sent[2]

    events = events_of(home, record.id)
    journal = "\n".join(json.dumps(e.to_json()) for e in events)
    for value in values():
        assert value not in journal
    detected = [e.event for e in events if isinstance(e.event, SecretsDetected)]
    by_where = {(d.where, d.tool): d.findings for d in detected}
    assert {"type": "AWS Access Key", "line": 2} in by_where[("tool", "read_file")]
    assert {f["type"] for f in by_where[("tool", "execute")]} == {"GitHub Token", "Private Key"}
    assert by_where[("result", None)] == [{"type": "GitHub Token", "line": 1}]
    assert by_where[("patch", None)] == [{"type": "GitHub Token", "line": 1, "file": "app/ci.py"}]
    returned = [e.event for e in events if isinstance(e.event, ToolReturned)]
    assert "[secret:detected:GitHub Token]" in returned[1].text  # the journal's copy is the model's copy

    result = record.result or {}
    assert result["text"] == "Done. For the record, the CI token is [secret:detected:GitHub Token]."
    assert INVENTED_TOKEN in result["patch"]  # the agent's work is kept as it is: flagged, not changed
    assert result["patch_secrets"] == [{"type": "GitHub Token", "line": 1, "file": "app/ci.py"}]

    # `corral show` and the summary `corral run` prints at the end say so.
    import corral.cli.run as cli_run
    from corral.cli.views import print_show

    warning = "⚠ the patch holds 1 likely secret(s): app/ci.py:1 (GitHub Token) — review it before applying it"
    console = Console(record=True, width=200, force_terminal=False)
    print_show(console, record)
    assert warning in console.export_text()
    monkeypatch.setattr(cli_run, "console", console)
    store = Store.open(home=home)
    try:
        cli_run.print_outcome(record, store, home=home)
    finally:
        store.close()
    summary = console.export_text()
    assert warning in summary and "patch: 1 file(s)" in summary

    from corral.cli.views import print_trace

    console = Console(record=True, width=300, force_terminal=False)
    print_trace(console, record, events)
    trace = console.export_text()
    assert "3 likely secret(s) replaced in read_file's result: AWS Access Key (line 2)" in trace
    assert "likely secret(s) found in the patch (kept as is): GitHub Token (app/ci.py:1)" in trace


async def test_scan_secrets_false_leaves_tool_output_alone(home: Path, repo: Path, tmp_path: Path) -> None:
    secret_repo(repo)
    with ScriptedServer(script(tmp_path, SCRIPT)) as server:
        record = await run_once(home, spec_for(server, scan_secrets=False), repo)
        sent = [json.dumps(request.body) for request in server.requests]
    assert record.status is RunStatus.SUCCEEDED, record.error
    assert AWS_KEY_ID in sent[1]
    assert not [e for e in events_of(home, record.id) if isinstance(e.event, SecretsDetected)]
    assert "patch_secrets" not in (record.result or {})


def test_the_warning_is_text_not_markup() -> None:
    from corral.cli.views import patch_secrets_warning

    found = [{"type": "GitHub Token", "line": 1, "file": "app/[red]ci.py"}] * 7
    warning = patch_secrets_warning({"patch_secrets": found})
    assert warning is not None
    assert warning.plain.startswith("⚠ the patch holds 7 likely secret(s): app/[red]ci.py:1 (GitHub Token), ")
    assert warning.plain.endswith(" and 2 more — review it before applying it")
    assert patch_secrets_warning({"patch_secrets": []}) is None and patch_secrets_warning({}) is None


async def test_a_failing_scan_withholds_the_answer_and_keeps_the_patch(
    home: Path, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import corral.runtime.runtime as runtime_module

    class Broken:
        def scan(self, text: str, filename: str | None = None) -> object:
            raise RuntimeError("detector crashed")

    monkeypatch.setattr(runtime_module, "SCANNER", Broken())
    secret_repo(repo)
    with ScriptedServer(script(tmp_path, SCRIPT)) as server:
        record = await run_once(home, spec_for(server), repo)
    assert record.status is RunStatus.SUCCEEDED, record.error
    result = record.result or {}
    assert result["text"] is None and INVENTED_TOKEN in result["patch"]
    assert result["patch_secrets"][0]["type"] == "not scanned (the scan failed)"
    assert any("the secret scan failed (RuntimeError)" in note for note in result["notes"])
