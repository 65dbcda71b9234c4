"""Loading and validating scripted-model scripts (TOML and JSON)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from corral.errors import ScriptError, UsageError
from corral.models.scripted import Failure, Script, Turn, load_script

DOCS = Path(__file__).parents[2] / "docs" / "scripted-model.md"

FULL = """
model = "scripted-demo"
[[turns]]
text = "I'll look at the repository first."
[[turns.tool_calls]]
name = "glob"
args = { pattern = "**/*.py" }
[turns.usage]
input_tokens = 1200
output_tokens = 80
cache_read_tokens = 1000
cache_write_tokens = 0
reasoning_tokens = 0
[[turns]]
delay = 0.2
output = { summary = "fixed", files_changed = 1 }
[[turns]]
fail = [ { status = 429, retry_after = 0 }, { status = 500 } ]
text = "done"
[[turns]]
fail = [ { status = 500, times = 1000 } ]
[[turns]]
malformed = true
[[routes]]
match = "You review code"
[[routes.turns]]
text = "Looks good."
"""


def write(tmp_path: Path, text: str, name: str = "script.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_toml_script_with_every_turn_kind_loads(tmp_path: Path) -> None:
    script = load_script(write(tmp_path, FULL))
    assert script.model == "scripted-demo"
    assert script.name.endswith("script.toml")
    first, structured, flaky, failing, garbage = script.turns
    assert first.tool_calls[0].name == "glob"
    assert first.tool_calls[0].args == {"pattern": "**/*.py"}
    assert first.usage is not None
    assert first.usage.cache_read_tokens == 1000
    assert structured.output == {"summary": "fixed", "files_changed": 1}
    assert structured.delay == 0.2
    assert [f.status for f in flaky.fail] == [429, 500]
    assert failing.fail[0].times == 1000
    assert garbage.malformed
    assert script.routes[0].turns[0].text == "Looks good."


def test_json_script_loads_the_same_way(tmp_path: Path) -> None:
    data = {"turns": [{"text": "hi", "tool_calls": [{"name": "diff", "id": "call_x"}]}]}
    script = load_script(write(tmp_path, json.dumps(data), "script.json"))
    assert script.model == "scripted"
    assert script.turns[0].tool_calls[0].id == "call_x"


def test_failures_are_used_up_in_order_then_the_turn_answers() -> None:
    turn = Turn(text="ok", fail=[Failure(status=429, times=2), Failure(status=500)])
    assert [f.status if (f := turn.failure_at(i)) else None for i in range(5)] == [429, 429, 500, None, None]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[turns]]\ntext = "a"\n[[turns]]\ntool_callz = []\n', r"turns\[1\]\.tool_callz: Extra inputs"),
        (
            "[[turns]]\n[[turns.tool_calls]]\nargs = {}\n",
            r"turns\[0\]\.tool_calls\[0\]\.name: Field required",
        ),
        ("[[turns]]\nfail = [{ status = 200 }]\n", r"turns\[0\]\.fail\[0\]\.status: Input should be greater"),
        ("[[turns]]\ndelay = 1\n", r"turns\[0\]: Value error, a turn needs at least one of text"),
        ('model = "x"\n', r"script: Value error, a script needs at least one turn"),
        (
            '[[turns]]\ntext = "a"\nusage = { input_tokens = 10, cache_read_tokens = 20 }\n',
            r"turns\[0\]\.usage: Value error, cache_read_tokens \+ cache_write_tokens cannot exceed",
        ),
        ('[[routes]]\nmatch = "x"\nturns = []\n', r"routes\[0\]\.turns: List should have at least 1 item"),
        ('[[turns]]\ntext = "unterminated\n', r"is not valid TOML"),
    ],
)
def test_malformed_scripts_name_the_file_and_the_field(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ScriptError, match=expected) as info:
        load_script(path)
    assert str(path) in info.value.message
    assert isinstance(info.value, UsageError)


def test_unreadable_or_unknown_kind_of_file_is_a_script_error(tmp_path: Path) -> None:
    with pytest.raises(ScriptError, match="cannot read script"):
        load_script(tmp_path / "missing.toml")
    with pytest.raises(ScriptError, match=r"must end in \.toml or \.json"):
        load_script(write(tmp_path, "turns: []", "script.yaml"))
    with pytest.raises(ScriptError, match="is not valid JSON"):
        load_script(write(tmp_path, "{", "script.json"))


def test_inline_scripts_validate_too() -> None:
    assert Script(turns=[Turn(text="x")]).name == "<inline script>"
    with pytest.raises(ValueError, match="a turn needs"):
        Turn()


def test_the_documented_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = DOCS.read_text()
    toml_block = re.search(r"```toml\n(.*?)```", text, re.S)
    python_block = re.search(r"```python\n(.*?)```", text, re.S)
    assert toml_block is not None
    assert python_block is not None
    write(tmp_path, toml_block.group(1), "fix-session.toml")
    monkeypatch.chdir(tmp_path)
    exec(compile(python_block.group(1), str(DOCS), "exec"), {"__name__": "docs_example"})
