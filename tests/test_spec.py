"""Agent specs: valid files load, broken ones name the file, the agent and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.errors import SpecError, UnknownAgentError
from corral.spec import AgentSpec, load_config
from corral.templates import STARTER_SPEC


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "corral.toml"
    path.write_text(text)
    return path


def test_starter_spec_is_valid(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, STARTER_SPEC))
    spec = config.agent("fixer")
    assert spec.model == "anthropic:claude-sonnet-4-5"
    assert spec.sandbox.backend == "bubblewrap"
    assert spec.sandbox.network.mode == "none"
    assert spec.budget.max_cost_usd == 5.0


def test_broken_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[agents.fixer\nmodel = 'x'")
    with pytest.raises(SpecError, match=r"corral.toml: not valid TOML"):
        load_config(path)


def test_invalid_field_names_file_agent_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, '[agents.fixer]\nmodel = "openai:gpt-5"\n[agents.fixer.budget]\nmax_turns = "many"\n')
    with pytest.raises(SpecError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "agent 'fixer'" in message
    assert "field 'budget.max_turns'" in message


def test_unknown_field_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, '[agents.a]\nmodel = "openai:gpt-5"\nmodle = "typo"\n')
    with pytest.raises(SpecError, match=r"field 'modle'"):
        load_config(path)


def test_model_without_provider_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, '[agents.a]\nmodel = "gpt-5"\n')
    with pytest.raises(SpecError, match=r"field 'model'.*provider:model"):
        load_config(path)


def test_unknown_tool_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, '[agents.a]\nmodel = "openai:gpt-5"\ntools = ["read_file", "rm_rf"]\n')
    with pytest.raises(SpecError, match=r"field 'tools': unknown tool\(s\) rm_rf"):
        load_config(path)


def test_invalid_output_schema_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, '[agents.a]\nmodel = "openai:gpt-5"\n[agents.a.output_schema]\ntype = "nonsense"\n')
    with pytest.raises(SpecError, match=r"field 'output_schema'"):
        load_config(path)


def test_unknown_agent_lists_the_defined_ones(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[agents.a]\nmodel = "openai:gpt-5"\n[agents.b]\nmodel = "openai:gpt-5"\n'))
    with pytest.raises(UnknownAgentError, match=r"no agent named 'c'.*defined: a, b"):
        config.agent("c")


def test_project_prices_reach_every_agent(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[agents.a]\nmodel = "openai-chat:m"\n[prices."openai-chat:m"]\ninput_mtok = 1\noutput_mtok = 2\n',
        )
    )
    assert config.agent("a").prices["openai-chat:m"].output_mtok == 2


def test_spec_from_python_and_hash_is_stable() -> None:
    a = AgentSpec(name="x", model="openai:gpt-5-mini", sandbox="local")
    b = AgentSpec(name="x", model="openai:gpt-5-mini", sandbox={"backend": "local"})
    assert a.content_hash() == b.content_hash()
    assert a.with_overrides(model="anthropic:claude-sonnet-4-5").content_hash() != a.content_hash()


def test_secrets_as_a_list_or_scoped_to_hosts(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[agents.a]\nmodel = "openai:gpt-5"\nsecrets = ["NPM_TOKEN"]\n'
            '[agents.b]\nmodel = "openai:gpt-5"\n[agents.b.secrets.GITHUB_TOKEN]\nhosts = ["api.github.com"]\n',
        )
    )
    assert config.agent("a").secrets["NPM_TOKEN"].hosts == ()
    assert config.agent("b").secrets["GITHUB_TOKEN"].hosts == ("api.github.com",)


@pytest.mark.parametrize(
    ("network", "message"),
    [
        ('network = { mode = "none", allow = ["pypi.org"] }', "only used with mode"),
        ('network = { mode = "allowlist", allow = ["http://pypi.org/"] }', "not host, host:port"),
        ('network = "everywhere"', "field 'sandbox.network.mode'"),
    ],
)
def test_bad_network_policies_are_rejected(tmp_path: Path, network: str, message: str) -> None:
    path = write(tmp_path, f'[agents.a]\nmodel = "openai:gpt-5"\n[agents.a.sandbox]\n{network}\n')
    with pytest.raises(SpecError, match=message):
        load_config(path)


def test_network_allowlist_is_accepted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[agents.a]\nmodel = "openai:gpt-5"\n[agents.a.sandbox]\n'
        'network = { mode = "allowlist", allow = ["pypi.org", "*.github.com:443"] }\n',
    )
    assert load_config(path).agent("a").sandbox.network.allow == ("pypi.org", "*.github.com:443")
