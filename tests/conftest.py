"""Shared fixtures: an isolated store home, a small buggy repository, and anyio on asyncio."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres import ThrowawayPostgres


@pytest.fixture(autouse=True, scope="session")
def interruptible_children() -> Iterator[None]:
    """Children start with Ctrl-C's default even when the runner itself ignores it.

    A shell script's background job (``pytest … &``) starts with SIGINT and SIGQUIT ignored, and
    hands that on: a Python child then never raises KeyboardInterrupt, and the tests that press
    Ctrl-C on a subprocess would wait forever. A handler (unlike SIG_IGN) is reset by exec.
    """
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh store directory; CORRAL_HOME points at it so subprocesses use it too."""
    path = tmp_path / "home"
    monkeypatch.setenv("CORRAL_HOME", str(path))
    monkeypatch.delenv("CORRAL_DATABASE_URL", raising=False)
    return path


@pytest.fixture(scope="session")
def postgres() -> Iterator[ThrowawayPostgres]:
    """A throwaway PostgreSQL server (one per test process), with a migrated template database."""
    with ThrowawayPostgres() as server:
        server.store_template()
        yield server


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.slow])])
def database(request: pytest.FixtureRequest, home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The store's database, once on SQLite (in ``home``) and once on a fresh PostgreSQL database.

    For Postgres, ``CORRAL_DATABASE_URL`` names it, so ``Store.open`` and ``corral`` subprocesses use
    it (and DBOS keeps its workflows there too). Tests that take it run on both.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{home / 'corral.db'}"
        return
    server: ThrowawayPostgres = request.getfixturevalue("postgres")
    url = server.database(template=server.store_template())
    monkeypatch.setenv("CORRAL_DATABASE_URL", url)
    try:
        yield url
    finally:
        server.drop(url)


BUGGY_CALC = '''\
def add(a, b):
    """Return the sum of a and b."""
    return a - b


def mul(a, b):
    return a * b
'''

CALC_TEST = """\
import unittest

from calc import add, mul


class CalcTest(unittest.TestCase):
    def test_add(self):
        self.assertEqual(add(2, 3), 5)

    def test_mul(self):
        self.assertEqual(mul(2, 3), 6)


if __name__ == "__main__":
    unittest.main()
"""

FIX_SCRIPT = """
[[turns]]
text = "Let me look at the repository."
[[turns.tool_calls]]
name = "glob"
args = { pattern = "**/*.py" }
[turns.usage]
input_tokens = 1000
output_tokens = 40
cache_read_tokens = 0

[[turns]]
[[turns.tool_calls]]
name = "execute"
args = { command = "python3 -m unittest -q test_calc 2>&1 | tail -3" }
[turns.usage]
input_tokens = 1400
output_tokens = 30
cache_read_tokens = 1000

[[turns]]
[[turns.tool_calls]]
name = "read_file"
args = { path = "calc.py" }
[turns.usage]
input_tokens = 1800
output_tokens = 30
cache_read_tokens = 1400

[[turns]]
text = "add subtracts; fixing."
[[turns.tool_calls]]
name = "edit_file"
args = { path = "calc.py", old = "return a - b", new = "return a + b" }
[turns.usage]
input_tokens = 2200
output_tokens = 60
cache_read_tokens = 1800

[[turns]]
[[turns.tool_calls]]
name = "execute"
args = { command = "python3 -m unittest -q test_calc" }
[turns.usage]
input_tokens = 2500
output_tokens = 30
cache_read_tokens = 2200

[[turns]]
text = "Fixed add() to return a + b; the tests pass."
[turns.usage]
input_tokens = 2700
output_tokens = 25
cache_read_tokens = 2500
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    (path / "calc.py").write_text(BUGGY_CALC)
    (path / "test_calc.py").write_text(CALC_TEST)
    (path / "AGENTS.md").write_text("Run tests with python3 -m unittest. Keep changes minimal.\n")
    return path


@pytest.fixture
def fix_script(tmp_path: Path) -> Path:
    path = tmp_path / "fix.toml"
    path.write_text(FIX_SCRIPT)
    return path
