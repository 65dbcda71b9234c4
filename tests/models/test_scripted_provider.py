"""The ``scripted:`` model provider: names resolve to scripts, each process serves them itself, and closes them."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic_ai import Agent

from corral.demo import DEMO_SCRIPT
from corral.errors import ModelConfigError, ScriptError, UsageError
from corral.events import Usage
from corral.models.pricing import price_call
from corral.models.providers import (
    NO_KEY,
    api_key_for,
    build_model,
    close_served_models,
    context_window,
    resolve_target,
)
from corral.models.scripted import PROCESS_MODELS
from corral.spec import AgentSpec, load_config

HELLO = """
model = "gpt-6.1-terra"   # a real model's name: a scripted model must still never be priced as one

[[turns]]
text = "hello from the script"
[turns.usage]
input_tokens = 1000
output_tokens = 10
"""


@pytest.fixture(autouse=True)
def no_servers_left() -> Iterator[None]:
    """Every test starts and ends with no scripted servers in this process."""
    close_served_models()
    yield
    close_served_models()


def write_script(path: Path, text: str = HELLO) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def scripted_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "scripted-model"]


def accepts_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


# --- names -------------------------------------------------------------------------------------


def test_a_bundled_name_resolves_to_the_bundled_script_and_needs_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    target = resolve_target("scripted:demo")
    assert target.script == DEMO_SCRIPT
    assert target.ref == "scripted:demo"
    assert api_key_for(target) == NO_KEY
    assert context_window(target) is None
    assert PROCESS_MODELS.running == {}  # resolving checks the script; serving waits for a run


def test_a_relative_script_in_corral_toml_is_read_from_the_spec_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = write_script(tmp_path / "project" / "sessions" / "hello.toml")
    config = tmp_path / "project" / "corral.toml"
    config.write_text('[agents.a]\nmodel = "scripted:sessions/hello.toml"\n[agents.b]\nmodel = "scripted:demo"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    agents = load_config(config).agents
    # The spec (which the run records) holds the absolute path, so a resume from any directory finds it.
    assert agents["a"].model == f"scripted:{script}"
    assert agents["b"].model == "scripted:demo"
    assert resolve_target(agents["a"].model).script == script


def test_a_relative_script_in_a_python_spec_is_read_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = write_script(tmp_path / "hello.toml")
    monkeypatch.chdir(tmp_path)
    spec = AgentSpec(name="a", model="scripted:./hello.toml")
    assert spec.model == f"scripted:{script}"
    assert spec.with_overrides(temperature=0.5).model == spec.model  # validating again changes nothing
    assert AgentSpec(name="a", model=f"scripted:{script}").model == f"scripted:{script}"
    home_relative = AgentSpec(name="a", model="scripted:~/s.json").model
    assert home_relative == f"scripted:{Path('~/s.json').expanduser().resolve()}"


def test_a_missing_script_file_is_a_model_config_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "session.toml"
    with pytest.raises(ModelConfigError, match="does not exist") as caught:
        resolve_target(f"scripted:{missing}")
    assert str(missing) in caught.value.message
    assert caught.value.exit_code == 2
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(ModelConfigError, match="is not a file"):
        resolve_target(f"scripted:{tmp_path / 'dir.toml'}")


def test_an_unknown_bundled_name_lists_the_bundled_scripts() -> None:
    with pytest.raises(ModelConfigError, match=r"no bundled script named 'dmeo'.*\(bundled: demo\)") as caught:
        resolve_target("scripted:dmeo")
    assert caught.value.hint is not None and ".toml or .json" in caught.value.hint


def test_a_broken_script_fails_when_the_target_is_resolved(tmp_path: Path) -> None:
    broken = write_script(tmp_path / "broken.toml", "[[turns]]\ntxt = 'typo'\n")
    with pytest.raises(ScriptError, match=r"turns\[0\]"):
        resolve_target(f"scripted:{broken}")


def test_a_scripted_model_takes_no_base_url(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="takes no base_url"):
        resolve_target("scripted:demo", base_url="http://127.0.0.1:9/v1")


def test_a_scripted_model_is_never_priced_even_when_its_script_names_a_real_model() -> None:
    target = resolve_target("scripted:demo")
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    for model in ("gpt-6.1-terra", "claude-sonnet-5-5", "scripted-demo"):
        cost, _source = price_call(usage, model=model, provider=target.pricing_provider, ref=target.ref)
        assert cost == 0.0


# --- serving -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_model_is_served_in_process_over_real_http(tmp_path: Path) -> None:
    target = resolve_target(f"scripted:{write_script(tmp_path / 'hello.toml')}")
    client = build_model(target, api_key_for(target))
    try:
        result = await Agent(client.model).run("say hello")
    finally:
        await client.aclose()
    assert result.output == "hello from the script"
    assert result.usage.input_tokens == 1000
    (server,) = PROCESS_MODELS.running.values()
    (request,) = server.requests
    assert request.path == "/v1/chat/completions" and request.status == 200
    assert request.headers["authorization"] == f"Bearer {NO_KEY}"


def test_one_server_per_script_per_process_reused_until_closed(tmp_path: Path) -> None:
    first = resolve_target(f"scripted:{write_script(tmp_path / 'a.toml')}")
    second = resolve_target(f"scripted:{write_script(tmp_path / 'b.toml')}")
    urls = [str(build_model(t, NO_KEY).sdk_client.base_url) for t in (first, first, second, first)]
    assert urls[0] == urls[1] == urls[3] != urls[2]
    running = PROCESS_MODELS.running
    assert set(running) == {first.script, second.script}
    ports = [server.port for server in running.values()]
    assert len(scripted_threads()) == 2
    assert all(accepts_connections(port) for port in ports)

    close_served_models()
    assert PROCESS_MODELS.running == {}
    assert scripted_threads() == []  # joined, not left behind
    assert not any(accepts_connections(port) for port in ports)  # sockets closed

    build_model(first, NO_KEY)  # a later run starts a fresh server
    (server,) = PROCESS_MODELS.running.values()
    assert accepts_connections(server.port)
    assert len(scripted_threads()) == 1


@pytest.mark.slow
def test_a_process_stops_its_scripted_servers_when_it_exits(tmp_path: Path) -> None:
    script = write_script(tmp_path / "hello.toml")
    code = (
        "import atexit, sys, threading\n"
        # Registered first, so it runs after corral's own exit handler: what is still serving then?
        "atexit.register(lambda: print('serving at exit:', [t.name for t in threading.enumerate()"
        " if t.name == 'scripted-model'], flush=True))\n"
        "from corral.models.providers import build_model, resolve_target\n"
        f"target = resolve_target('scripted:{script}')\n"
        "client = build_model(target, 'k')\n"
        "print(client.sdk_client.base_url, flush=True)\n"
        "sys.stdin.read()\n"  # until the test closes our stdin; then exit normally, closing nothing itself
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        port = int(proc.stdout.readline().rsplit(":", 1)[1].split("/")[0])
        assert accepts_connections(port)
        proc.stdin.close()
        out = proc.stdout.read()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert "serving at exit: []" in out
