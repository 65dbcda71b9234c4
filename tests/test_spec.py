"""Agent specs: valid files load, broken ones name the file, the agent and the field."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from corral.errors import SandboxError, SpecError, UnknownAgentError
from corral.sandbox import Limits, NetworkProfile, SandboxRequest
from corral.sandbox.egress.policy import parse_patterns
from corral.sandbox.egress.proxy import EgressProxy
from corral.spec import AgentSpec, load_config
from corral.templates import STARTER_SPEC


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "corral.toml"
    path.write_text(text)
    return path


def test_starter_spec_is_valid(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, STARTER_SPEC))
    spec = config.agent("fixer")
    assert spec.model == "anthropic:claude-sonnet-5-5"
    assert spec.sandbox.backend == "bubblewrap"
    assert spec.sandbox.network.mode == "none"
    assert spec.budget.max_cost_usd == 5.0


def test_broken_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[agents.fixer\nmodel = 'x'")
    with pytest.raises(SpecError, match=r"corral.toml: not valid TOML"):
        load_config(path)


def test_invalid_field_names_file_agent_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, '[agents.fixer]\nmodel = "openai:gpt-6.1"\n[agents.fixer.budget]\nmax_turns = "many"\n')
    with pytest.raises(SpecError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "agent 'fixer'" in message
    assert "field 'budget.max_turns'" in message


def test_unknown_field_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, '[agents.a]\nmodel = "openai:gpt-6.1"\nmodle = "typo"\n')
    with pytest.raises(SpecError, match=r"field 'modle'"):
        load_config(path)


def test_model_without_provider_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, '[agents.a]\nmodel = "gpt-6.1-sol"\n')
    with pytest.raises(SpecError, match=r"field 'model'.*provider:model"):
        load_config(path)


def test_unknown_tool_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, '[agents.a]\nmodel = "openai:gpt-6.1"\ntools = ["read_file", "rm_rf"]\n')
    with pytest.raises(SpecError, match=r"field 'tools': unknown tool\(s\) rm_rf"):
        load_config(path)


def test_invalid_output_schema_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, '[agents.a]\nmodel = "openai:gpt-6.1"\n[agents.a.output_schema]\ntype = "nonsense"\n')
    with pytest.raises(SpecError, match=r"field 'output_schema'"):
        load_config(path)


def test_unknown_agent_lists_the_defined_ones(tmp_path: Path) -> None:
    two = '[agents.a]\nmodel = "openai:gpt-6.1"\n[agents.b]\nmodel = "openai:gpt-6.1"\n'
    config = load_config(write(tmp_path, two))
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
    a = AgentSpec(name="x", model="openai:gpt-6.1-terra", sandbox="local")
    b = AgentSpec(name="x", model="openai:gpt-6.1-terra", sandbox={"backend": "local"})
    assert a.content_hash() == b.content_hash()
    assert a.with_overrides(model="anthropic:claude-sonnet-5-5").content_hash() != a.content_hash()


def test_secrets_as_a_list_or_scoped_to_hosts(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[agents.a]\nmodel = "openai:gpt-6.1"\nsecrets = ["NPM_TOKEN"]\n'
            '[agents.b]\nmodel = "openai:gpt-6.1"\n[agents.b.secrets.GITHUB_TOKEN]\nhosts = ["api.github.com"]\n',
        )
    )
    assert config.agent("a").secrets["NPM_TOKEN"].hosts == ()
    assert config.agent("b").secrets["GITHUB_TOKEN"].hosts == ("api.github.com",)


@pytest.mark.parametrize(
    ("network", "message"),
    [
        ('network = { mode = "none", allow = ["pypi.org"] }', "only used with mode"),
        ('network = "host"\nallow = ["pypi.org"]', "only used with mode"),
        ('allow = ["pypi.org"]', "only used with mode"),
        ('network = { mode = "allowlist", allow = ["a.org"] }\nallow = ["b.org"]', "allow is given twice"),
        ('network = "everywhere"', "field 'sandbox.network.mode'"),
    ],
)
def test_bad_network_policies_are_rejected(tmp_path: Path, network: str, message: str) -> None:
    path = write(tmp_path, f'[agents.a]\nmodel = "openai:gpt-6.1"\n[agents.a.sandbox]\n{network}\n')
    with pytest.raises(SpecError, match=message):
        load_config(path)


BAD_HOST_PATTERNS = [
    "user@host",
    "*.10.0.0.1",
    "host:99999",
    "host:0",
    "host:http",
    "host/path",
    "http://pypi.org/",
    "",
    " ",
    "two words",
    "tab\there",
    "*",
    "*.",
    "pypi.*.org",
    "[::1",
]


@pytest.mark.parametrize("entry", BAD_HOST_PATTERNS)
def test_an_allow_entry_the_egress_proxy_would_refuse_fails_at_spec_load(tmp_path: Path, entry: str) -> None:
    with pytest.raises(SandboxError):  # the proxy's own parser refuses it...
        parse_patterns([entry])
    allow = json.dumps(["pypi.org", entry])
    path = write(
        tmp_path,
        f'[agents.fixer]\nmodel = "openai:gpt-6.1"\n[agents.fixer.sandbox]\nnetwork = "allowlist"\nallow = {allow}\n',
    )
    with pytest.raises(SpecError) as info:  # ...so the spec refuses it too, naming file, agent, field and entry
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "agent 'fixer'" in message
    assert "field 'sandbox.network.allow.1'" in message
    assert f"not a host pattern: {entry!r}" in message


@pytest.mark.parametrize("entry", BAD_HOST_PATTERNS)
def test_a_secret_scope_the_egress_proxy_would_refuse_fails_at_spec_load(tmp_path: Path, entry: str) -> None:
    hosts = json.dumps([entry])
    path = write(tmp_path, f'[agents.a]\nmodel = "openai:gpt-6.1"\n[agents.a.secrets.TOKEN]\nhosts = {hosts}\n')
    with pytest.raises(SpecError, match=r"field 'secrets\.TOKEN\.hosts\.0': not a host pattern"):
        load_config(path)


@pytest.mark.anyio
async def test_an_allowlist_that_loads_is_one_the_egress_proxy_accepts(tmp_path: Path) -> None:
    allow = ["pypi.org", "*.github.com:443", "127.0.0.1:8000", "[::1]:8443", " padded.example ", "BÜCHER.example"]
    path = write(
        tmp_path,
        f'[agents.a]\nmodel = "openai:gpt-6.1"\n[agents.a.sandbox]\nnetwork = "allowlist"\n'
        f"allow = {json.dumps(allow)}\n",
    )
    network = load_config(path).agent("a").sandbox.network
    assert network.allow == tuple(allow)
    proxy = EgressProxy(allow=network.allow, secrets=(), on_event=None, state_dir=tmp_path / "egress")
    await proxy.start()
    await proxy.stop()


def test_network_allowlist_is_accepted_in_both_shapes(tmp_path: Path) -> None:
    inline = write(
        tmp_path,
        '[agents.a]\nmodel = "openai:gpt-6.1"\n[agents.a.sandbox]\n'
        'network = { mode = "allowlist", allow = ["pypi.org", "*.github.com:443"] }\n',
    )
    inline_spec = load_config(inline).agent("a")
    beside = write(
        tmp_path,
        '[agents.a]\nmodel = "openai:gpt-6.1"\n[agents.a.sandbox]\n'
        'network = "allowlist"\nallow = ["pypi.org", "*.github.com:443"]\n',
    )
    beside_spec = load_config(beside).agent("a")
    assert inline_spec.sandbox.network.allow == ("pypi.org", "*.github.com:443")
    assert inline_spec.sandbox.network.mode == "allowlist"
    assert beside_spec == inline_spec


def test_the_sandbox_table_is_the_sandboxs_own_types(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[agents.a]\nmodel = "openai:gpt-6.1"\n[agents.a.sandbox]\nnetwork = "host"\nmemory_mb = 2048\ncpu_s = 30\n',
    )
    sandbox = load_config(path).agent("a").sandbox
    assert sandbox.network == NetworkProfile(mode="host")
    assert sandbox.limits == Limits(memory_mb=2048, cpu_s=30)
    request = SandboxRequest(repo=tmp_path, run_dir=tmp_path / "run", network=sandbox.network, limits=sandbox.limits)
    assert request.network is sandbox.network and request.limits is sandbox.limits


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("memory_mb = 0", "sandbox.limits.memory_mb"),
        ("pids = -1", "sandbox.limits.pids"),
        ('disk_mb = "lots"', "sandbox.limits.disk_mb"),
        ("cpu_s = 0", "sandbox.limits.cpu_s"),
    ],
)
def test_bad_limits_name_the_field(tmp_path: Path, line: str, field: str) -> None:
    path = write(tmp_path, f'[agents.a]\nmodel = "openai:gpt-6.1"\n[agents.a.sandbox]\n{line}\n')
    with pytest.raises(SpecError, match=f"field '{field}'"):
        load_config(path)


def test_limits_given_twice_are_rejected(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[agents.a]\nmodel = "openai:gpt-6.1"\n[agents.a.sandbox]\nmemory_mb = 512\n'
        "[agents.a.sandbox.limits]\npids = 9\n",
    )
    with pytest.raises(SpecError, match="limits are given twice"):
        load_config(path)


def test_with_overrides_keeps_the_sandbox(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[agents.a]\nmodel = "openai:gpt-6.1"\n[agents.a.sandbox]\nnetwork = "allowlist"\nallow = ["pypi.org"]\n'
        "memory_mb = 512\n",
    )
    spec = load_config(path).agent("a")
    assert spec.with_overrides(model="openai:gpt-6.1-terra").sandbox == spec.sandbox


DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("doc", ["specs.md", "sandbox.md", "sandbox-network.md", "getting-started.md"])
def test_the_agent_specs_in_the_docs_load(tmp_path: Path, doc: str) -> None:
    blocks = re.findall(r"```toml\n(.*?)```", (DOCS / doc).read_text(), flags=re.DOTALL)
    specs = [block for block in blocks if "[agents." in block]
    for block in specs:
        config = load_config(write(tmp_path, block))
        assert config.agents


def test_a_spec_stored_with_flat_sandbox_limits_still_validates() -> None:
    """Run records keep ``model_dump()`` of the spec they started with; earlier ones had flat limits."""
    stored = AgentSpec(name="x", model="openai:gpt-6.1").model_dump(mode="json")
    stored["sandbox"] = {
        "backend": "bubblewrap",
        "exec_timeout_s": 120.0,
        "output_limit": 20000,
        "network": {"mode": "allowlist", "allow": ["pypi.org"]},
        "memory_mb": 1024,
        "pids": 512,
        "cpu_s": None,
        "disk_mb": 10240,
    }
    sandbox = AgentSpec.model_validate(stored).sandbox
    assert sandbox.limits == Limits(memory_mb=1024, pids=512)  # as recorded, not the current default
    assert sandbox.network == NetworkProfile(mode="allowlist", allow=("pypi.org",))


def test_the_spec_knows_every_built_in_tool() -> None:
    from corral.spec import BUILTIN_TOOL_NAMES
    from corral.tools.builtin import BUILTIN_TOOLS

    assert set(BUILTIN_TOOLS) == BUILTIN_TOOL_NAMES


def test_an_unknown_engine_is_an_error_naming_the_installed_ones(tmp_path: Path) -> None:
    path = tmp_path / "corral.toml"
    path.write_text('[agents.a]\nmodel = "openai:gpt-6.1"\nengine = "claude-cod"\n')
    with pytest.raises(SpecError) as caught:
        load_config(path)
    installed = "claude-code, codex, native, opencode, script"
    assert f"field 'engine': unknown engine 'claude-cod' (installed: {installed})" in str(caught.value)
