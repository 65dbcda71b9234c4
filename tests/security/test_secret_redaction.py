"""A secret given to a run appears nowhere: not in the store, the journal, nor any model request."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from corral.errors import SpecError
from corral.events import ToolReturned
from corral.models.scripted import ScriptedServer, load_script
from corral.runtime import Runtime
from corral.secrets import secret
from corral.spec import AgentSpec
from corral.store import RunStatus, Store

pytestmark = pytest.mark.anyio

ENV_SECRET = "sk-live-4f9a8b7c6d5e4f3a2b1c"
FILE_SECRET = "db-password-Zq81xWv0pLm"

SCRIPT = """
[[turns]]
[[turns.tool_calls]]
name = "execute"
args = { command = "echo token=$DEPLOY_TOKEN; printf %s \\"$DEPLOY_TOKEN\\" | base64; env | grep DEPLOY" }
[[turns.tool_calls]]
name = "read_file"
args = { path = "config/.env" }
[[turns]]
[[turns.tool_calls]]
name = "execute"
args = { command = "echo \\"$DEPLOY_TOKEN\\" > leaked.txt; cat leaked.txt" }
[[turns.tool_calls]]
name = "grep"
args = { pattern = "password" }
[[turns]]
text = "done"
"""


def all_bytes_under(path: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}


async def test_secret_never_reaches_the_store_the_journal_or_a_model_request(
    tmp_path: Path, home: Path, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEPLOY_TOKEN", ENV_SECRET)
    (repo / "config").mkdir()
    (repo / "config" / ".env").write_text(f"DB_PASSWORD={FILE_SECRET}\n")
    secret("DB_PASSWORD", FILE_SECRET)
    script_path = tmp_path / "s.toml"
    script_path.write_text(SCRIPT)
    store = Store.open(home=home)
    with ScriptedServer(load_script(script_path), record_path=tmp_path / "requests.jsonl") as server:
        spec = AgentSpec(
            name="deployer",
            model="openai:gpt-6.1-terra",
            base_url=server.openai_base_url,
            sandbox="local",
            secrets=("DEPLOY_TOKEN",),
        )
        async with Runtime(store) as runtime:
            record = await runtime.run(spec, f"deploy; the token ends in {ENV_SECRET[-6:]}", repo)
        requests = server.requests
    events = store.events(record.id)
    store.close()

    assert record.status is RunStatus.SUCCEEDED, record.error
    by_call = {int(e.key.split(":")[1]): e.event.text for e in events if isinstance(e.event, ToolReturned)}
    results = [by_call[n] for n in sorted(by_call)]
    # The commands really had the value (the placeholder shows where it was), the model saw only that.
    assert "token=[secret:DEPLOY_TOKEN]" in results[0]
    assert "DB_PASSWORD=[secret:DB_PASSWORD]" in results[1]
    assert "[secret:DEPLOY_TOKEN]" in results[2]

    forms = [
        ENV_SECRET,
        base64.b64encode(ENV_SECRET.encode()).decode().rstrip("="),
        FILE_SECRET,
    ]
    sent = json.dumps([r.body for r in requests]) + (tmp_path / "requests.jsonl").read_text()
    journal = json.dumps([e.to_json() for e in events])
    stored = all_bytes_under(home)
    assert stored, "expected store files"
    for form in forms:
        assert form not in sent, "secret reached a model request"
        assert form not in journal, "secret reached the journal"
        for path, data in stored.items():
            assert form.encode() not in data, f"secret stored in {path}"
    assert record.result is not None and "[secret:DEPLOY_TOKEN]" in record.result["patch"]


async def test_a_missing_secret_is_a_usage_error_and_nothing_is_recorded(
    home: Path, repo: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("NOT_SET_TOKEN", raising=False)
    script_path = tmp_path / "s.toml"
    script_path.write_text('[[turns]]\ntext = "x"\n')
    store = Store.open(home=home)
    with ScriptedServer(load_script(script_path)) as server:
        spec = AgentSpec(
            name="a",
            model="openai:gpt-6.1-terra",
            base_url=server.openai_base_url,
            sandbox="local",
            secrets=("NOT_SET_TOKEN",),
        )
        async with Runtime(store) as runtime:
            with pytest.raises(SpecError) as caught:
                await runtime.run(spec, "task", repo)
        assert server.requests == []
    assert caught.value.exit_code == 2 and "NOT_SET_TOKEN" in caught.value.message
    assert store.list_runs() == []
    store.close()
