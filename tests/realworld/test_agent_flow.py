"""A real agent session under bubblewrap, as the issue describes it: install a dependency through the
``@python`` preset, run a verbose test suite whose output is larger than the command output cap, find the
failure in the spilled output file, fix it, and run the suite again.

Real pieces only: the scripted model server (OpenAI wire format), the runtime, DBOS, the bubblewrap sandbox,
the egress proxy, pip and PyPI (hence ``registry``), pytest.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from corral.events import ToolReturned
from corral.models.scripted import ScriptedServer, load_script
from corral.runtime import Runtime
from corral.spec import AgentSpec
from corral.store import RunStatus, Store
from tests.sandbox.conftest import skip_unless_bubblewrap_runs

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.registry]

CASES = 6000  # ``pytest -v`` prints one ~200-byte line a case: over 1 MB, more than the output cap
MIDDLE = f"case-{CASES // 2:05d}"

CALC = "def add(a, b):\n    return a - b\n"
TESTS = f"""\
import pytest

from calc import add


@pytest.mark.parametrize("n", range({CASES}), ids=lambda n: f"case-{{n:05d}}-" + "x" * 160)
def test_identity(n):
    assert n == n


def test_add():
    assert add(2, 3) == 5
"""


def turn(name: str, **args: str) -> str:
    """One model turn calling one tool (a JSON string is a valid TOML basic string)."""
    fields = ", ".join(f"{key} = {json.dumps(value)}" for key, value in args.items())
    return f"\n[[turns]]\n[[turns.tool_calls]]\nname = {json.dumps(name)}\nargs = {{ {fields} }}\n"


SCRIPT = (
    turn("execute", command="python3 -m venv .venv && .venv/bin/pip install -q 'pytest>=8,<9'")
    + turn("execute", command=".venv/bin/python -m pytest -v -p no:cacheprovider tests")
    + turn("grep", pattern=MIDDLE, path=".corral/output")
    + turn("edit_file", path="calc.py", old="return a - b", new="return a + b")
    + turn("execute", command=".venv/bin/python -m pytest -q -p no:cacheprovider tests")
    + '\n[[turns]]\ntext = "Fixed add(); the whole suite passes."\n'
)


async def test_install_run_a_huge_suite_read_the_spill_fix_and_rerun(tmp_path: Path, home: Path) -> None:
    skip_unless_bubblewrap_runs()
    repo = tmp_path / "repo"
    (repo / "tests").mkdir(parents=True)
    (repo / "calc.py").write_text(CALC)
    (repo / "tests" / "test_calc.py").write_text(TESTS)
    (repo / "tests" / "conftest.py").write_text("import sys, os\nsys.path.insert(0, os.getcwd())\n")
    script = tmp_path / "script.toml"
    script.write_text(SCRIPT)

    store = Store.open(home=home)
    try:
        with ScriptedServer(load_script(script)) as server:
            spec = AgentSpec.model_validate(
                {
                    "name": "fixer",
                    "model": "openai:gpt-6.1-terra",
                    "base_url": server.openai_base_url,
                    "sandbox": {
                        "exec_timeout_s": 600,
                        "network": {
                            "mode": "allowlist",
                            "allow": ["@python"],
                            "allow_private": ["@python"],
                            "intercept_tls": True,
                        },
                    },
                }
            )
            async with Runtime(store) as runtime:
                record = await runtime.run(spec, "make the tests pass", repo)
        events = store.events(record.id)
    finally:
        store.close()

    assert record.status is RunStatus.SUCCEEDED, record.error
    installed, huge, found, _edited, rerun = [e.event for e in events if isinstance(e.event, ToolReturned)]
    assert installed.exit_code == 0, installed.text
    assert huge.exit_code == 1  # test_add fails; the command was not killed for its output
    assert "1 failed" in huge.text and f"{CASES} passed" in huge.text  # the tail, with pytest's summary
    assert ".corral/output/" in huge.text and MIDDLE not in huge.text  # the middle went to the file
    assert MIDDLE in found.text and "PASSED" in found.text
    assert rerun.exit_code == 0 and f"{CASES + 1} passed" in rerun.text
    assert record.result is not None
    changed = re.findall(r"^diff --git a/(\S+) b/", record.result["patch"], re.MULTILINE)
    assert changed == ["calc.py"]  # not .venv, not .corral, not __pycache__
    assert any(note.startswith("left out of the patch: .venv/") for note in record.result["notes"])
