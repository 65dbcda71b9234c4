"""``corral run --model/--max-turns/...``: validated as a spec is, named by their option, journaled with the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.errors import SpecError
from corral.spec import AgentSpec, load_config
from corral.store import Store
from tests.e2e.cli_helpers import corral

OPTIONS = {"budget.max_turns": "--max-turns", "sandbox.network": "--network"}


def test_an_override_replaces_one_field_of_a_table_and_keeps_the_rest() -> None:
    spec = AgentSpec(name="a", model="openai:gpt-6.1-sol", budget={"max_tokens": 1000, "max_turns": 9})
    changed = spec.with_overrides({"budget.max_turns": 3, "sandbox.backend": "local"})
    assert changed.budget.max_turns == 3
    assert changed.budget.max_tokens == 1000
    assert changed.sandbox.backend == "local"
    assert changed.sandbox.limits == spec.sandbox.limits
    assert changed.content_hash() != spec.content_hash()


def test_none_leaves_a_field_as_it_is() -> None:
    spec = AgentSpec(name="a", model="openai:gpt-6.1-sol")
    assert spec.with_overrides({"model": None, "budget.max_turns": None}) == spec


def test_a_bad_override_names_what_the_caller_calls_it() -> None:
    spec = AgentSpec(name="a", model="openai:gpt-6.1-sol")
    with pytest.raises(SpecError, match=r"--max-turns: Input should be greater than 0"):
        spec.with_overrides({"budget.max_turns": 0}, names=OPTIONS)
    with pytest.raises(SpecError, match=r"--network: Input should be 'none', 'allowlist' or 'host'"):
        spec.with_overrides({"sandbox.network": {"mode": "wide-open"}}, names=OPTIONS)
    with pytest.raises(SpecError, match=r"field 'temperature': Input should be less than or equal to 2"):
        spec.with_overrides(temperature=5)


# -- through the real `corral run` ---------------------------------------------------------------------

SCRIPT = '[[turns]]\ntext = "done"\n'


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "script.toml").write_text(SCRIPT)
    (tmp_path / "corral.toml").write_text(
        '[agents.fixer]\nmodel = "scripted:script.toml"\n'
        '[agents.fixer.sandbox]\nbackend = "local"\nnetwork = "allowlist"\nallow = ["pypi.org"]\n'
    )
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-turns", "0"], "--max-turns: Input should be greater than 0"),
        (["--max-turns", "many"], "Invalid value for '--max-turns'"),
        (["--max-cost", "-1"], "--max-cost: Input should be greater than 0"),
        (["--network", "everything"], "--network: Input should be 'none', 'allowlist' or 'host'"),
        (["--tools", "read_file,teleport"], "--tools: unknown tool(s) teleport"),
        (["--sandbox", "cloud9"], "--sandbox: unknown sandbox backend 'cloud9'"),
        (["--model", "gpt-6.1-sol"], "--model: expected 'provider:model'"),
        (["--instructions", "@missing.md"], "--instructions missing.md: no such file"),
        (["--output-schema", "missing.json"], "--output-schema missing.json: no such file"),
        (["--output-schema", "broken.json"], "--output-schema broken.json: not valid JSON"),
        (["--output-schema", "array.json"], "--output-schema: the output schema must describe an object"),
        (["--output-schema", "invalid.json"], "--output-schema: not a valid JSON schema"),
    ],
)
def test_a_bad_override_is_a_usage_error_naming_the_option(project: Path, args: list[str], message: str) -> None:
    (project / "broken.json").write_text("{not json")
    (project / "array.json").write_text('{"type": "array"}')
    (project / "invalid.json").write_text('{"type": "object", "properties": 3}')
    home = project / "home"
    done = corral("run", "fixer", "task", *args, cwd=project, home=home)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (home / "corral.db").exists()  # nothing was recorded


@pytest.mark.slow
def test_overrides_are_journaled_as_part_of_the_spec_the_run_used(project: Path, repo: Path) -> None:
    (project / "rules.md").write_text("Answer in one word.")
    (project / "schema.json").write_text(
        json.dumps({"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]})
    )
    (project / "typed.toml").write_text('[[turns]]\noutput = { word = "done" }\n')
    home = project / "home"
    args = ["--model", "scripted:typed.toml", "--max-turns", "7", "--max-cost", "0.5"]
    args += ["--instructions", "@rules.md", "--tools", "read_file, glob", "--output-schema", "schema.json"]
    args += ["--network", "allowlist"]
    done = corral("run", "fixer", "task", "--repo", str(repo), *args, "--json", cwd=project, home=home)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["output"] == {"word": "done"}

    store = Store.open(home=home)
    try:
        record = store.get_run(result["run_id"])
    finally:
        store.close()
    used = AgentSpec.model_validate(record.spec)
    assert used.model == f"scripted:{project / 'typed.toml'}"
    assert (used.budget.max_turns, used.budget.max_cost_usd) == (7, 0.5)
    assert used.instructions == "Answer in one word."
    assert used.tools == ("read_file", "glob")
    assert used.output_schema is not None and used.output_schema["required"] == ["word"]
    assert (used.sandbox.network.mode, used.sandbox.network.allow) == ("allowlist", ("pypi.org",))
    assert record.spec_hash == used.content_hash() != load_config(project / "corral.toml").agent("fixer").content_hash()

    shown = json.loads(corral("show", record.id, "--json", cwd=project, home=home).stdout)
    assert shown["spec_hash"] == record.spec_hash
    assert shown["model"] == used.model


@pytest.mark.slow
def test_network_none_drops_the_allowlist_and_sandbox_keeps_the_rest(project: Path, repo: Path) -> None:
    home = project / "home"
    done = corral("run", "fixer", "task", "--repo", str(repo), "--network", "none", "-q", cwd=project, home=home)
    assert done.returncode == 0, done.stdout + done.stderr
    store = Store.open(home=home)
    try:
        (record,) = store.list_runs()
    finally:
        store.close()
    used = AgentSpec.model_validate(record.spec)
    assert (used.sandbox.network.mode, used.sandbox.network.allow) == ("none", ())
    assert used.sandbox.backend == "local"
