"""``corral engines install|list``: the external engines' CLIs in corral's cache, pinned; every failure is
clear and leaves nothing a run could pick up. The error paths run an npm stand-in on PATH (a real
registry does not fail on demand); the real install from the npm registry is marked ``registry``."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from corral.engines.install import CLIS, engines_dir, pinned, require
from corral.errors import EngineInstallError
from tests.e2e.cli_helpers import corral

# Each test runs `corral` in a subprocess (about a second each): the full suite's, not the fast lane's.
pytestmark = pytest.mark.slow

FAKE_NPM = """#!/bin/sh
# An npm stand-in: `npm install --prefix DIR ... PACKAGE@VERSION` makes DIR/node_modules/.bin/COMMAND,
# which prints $FAKE_REPORTS (default: VERSION). $FAKE_NPM_FAIL makes it fail like npm does.
echo "$@" >> "$FAKE_NPM_LOG"
if [ -n "$FAKE_NPM_FAIL" ]; then echo "npm error 404 Not Found - $FAKE_NPM_FAIL" >&2; exit 1; fi
prefix=""; spec=""
while [ $# -gt 0 ]; do
  case "$1" in --prefix) prefix="$2"; shift 2;; --*) shift;; install) shift;; *) spec="$1"; shift;; esac
done
version="${spec##*@}"
mkdir -p "$prefix/node_modules/.bin" "$prefix/node_modules/${spec%@*}"
echo '{}' > "$prefix/node_modules/${spec%@*}/package.json"
printf '#!/bin/sh\\necho "%s (fake)"\\n' "${FAKE_REPORTS:-$version}" > "$prefix/node_modules/.bin/$FAKE_COMMAND"
chmod +x "$prefix/node_modules/.bin/$FAKE_COMMAND"
"""


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "engines"
    monkeypatch.setenv("CORRAL_ENGINES_DIR", str(path))
    return path


@pytest.fixture
def fake_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path) -> Path:
    """npm on PATH is the stand-in; returns its log (one line per call)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text(FAKE_NPM)
    npm.chmod(npm.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "npm.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_NPM_LOG", str(log))
    monkeypatch.setenv("FAKE_COMMAND", "claude")
    return log


def _left(cache: Path) -> list[str]:
    return sorted(str(path.relative_to(cache)) for path in cache.rglob("*")) if cache.exists() else []


def test_install_pins_the_version_and_installing_it_again_changes_nothing(
    fake_npm: Path, cache: Path, tmp_path: Path
) -> None:
    done = corral("engines", "install", "claude-code", cwd=tmp_path, home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    assert "@anthropic-ai/claude-code 2.1.332 (pinned)" in done.stdout
    current = pinned("claude-code")
    assert current is not None and current.version == "2.1.332" and current.root == cache / "claude-code" / "2.1.332"
    assert fake_npm.read_text().count("@anthropic-ai/claude-code@2.1.332") == 1
    again = corral("engines", "install", "claude-code", cwd=tmp_path, home=tmp_path / "home")
    assert again.returncode == 0, again.stderr
    assert len(fake_npm.read_text().splitlines()) == 1  # it still starts and reports its version: kept
    other = corral("engines", "install", "claude-code", "--version", "2.1.300", cwd=tmp_path, home=tmp_path / "home")
    assert other.returncode == 0, other.stderr
    listed = json.loads(corral("engines", "list", "--json", cwd=tmp_path, home=tmp_path / "home").stdout)
    claude = next(row for row in listed if row["engine"] == "claude-code")
    assert claude["pinned"] == "2.1.300" and claude["installed"] == ["2.1.332", "2.1.300"]
    assert all(row["pinned"] is None for row in listed if row["engine"] != "claude-code")
    assert not [name for name in _left(cache) if ".installing" in name]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FAKE_NPM_FAIL": "@anthropic-ai/claude-code@2.1.332"}, "npm error 404 Not Found"),
        ({"FAKE_REPORTS": "9.9.9"}, "does not report 2.1.332"),
        ({"FAKE_COMMAND": "something-else"}, "installed no `claude` command"),
    ],
    ids=["npm-fails", "wrong-version", "no-command"],
)
def test_a_failed_install_says_why_and_leaves_nothing(
    fake_npm: Path, cache: Path, tmp_path: Path, env: dict[str, str], message: str
) -> None:
    done = corral("engines", "install", "claude-code", cwd=tmp_path, home=tmp_path / "home", env=env)
    assert done.returncode == 1
    assert message in done.stderr and "Traceback" not in done.stderr
    assert [name for name in _left(cache) if name != "claude-code"] == []  # no partial install, nothing pinned
    assert pinned("claude-code") is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["claud"], "no external engine named 'claud'"),
        (["codex", "--version", "latest"], "not an exact version: 'latest'"),
        (["codex", "--version", "^0.171"], "not an exact version"),
        (["codex", "--version", "1.0.0 --registry=http://evil"], "not an exact version"),
    ],
)
def test_bad_names_and_versions_are_usage_errors(cache: Path, tmp_path: Path, args: list[str], message: str) -> None:
    done = corral("engines", "install", *args, cwd=tmp_path, home=tmp_path / "home")
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert _left(cache) == []


def test_without_npm_the_install_says_how_to_get_it(cache: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = {"PATH": str(empty)}
    done = corral("engines", "install", "opencode", cwd=tmp_path, home=tmp_path / "home", env=env)
    assert done.returncode == 1 and "npm is not installed" in done.stderr


def test_opencode_gets_its_plugin_sdk_beside_it_and_an_install_without_it_is_made_again(
    cache: Path, tmp_path: Path, fake_npm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_COMMAND", "opencode")
    done = corral("engines", "install", "opencode", "--version", "1.2.3", cwd=tmp_path, home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    cli, companion = fake_npm.read_text().splitlines()
    assert cli.endswith("opencode-ai@1.2.3") and companion.endswith("@opencode-ai/plugin@1.2.3")
    assert "--save-exact" in companion and "/companions" in companion
    current = pinned("opencode")
    assert current is not None and (current.root / "companions/node_modules/@opencode-ai/plugin").is_dir()
    # an install that lacks them (made before they were added) is not taken as done
    shutil.rmtree(current.root / "companions")
    with pytest.raises(EngineInstallError, match="reinstall"):
        require("opencode")
    done = corral("engines", "install", "opencode", "--version", "1.2.3", cwd=tmp_path, home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    assert len(fake_npm.read_text().splitlines()) == 4 and require("opencode").version == "1.2.3"


def test_list_shows_every_engine_and_what_is_tested(cache: Path, tmp_path: Path) -> None:
    listed = json.loads(corral("engines", "list", "--json", cwd=tmp_path, home=tmp_path / "home").stdout)
    assert [row["engine"] for row in listed] == list(CLIS)
    assert all(row["pinned"] is None and row["installed"] == [] for row in listed)
    assert engines_dir() == cache


@pytest.mark.registry
@pytest.mark.timeout(900)
@pytest.mark.parametrize("engine", ["claude-code"])  # the test setup installs all three the same way
def test_the_real_cli_installs_from_the_npm_registry_and_starts(cache: Path, tmp_path: Path, engine: str) -> None:
    done = corral("engines", "install", engine, cwd=tmp_path, home=tmp_path / "home", timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    current = pinned(engine)
    assert current is not None and current.version == CLIS[engine].tested
    assert current.binary.is_file() and os.access(current.binary, os.X_OK)
    doctor = json.loads(corral("doctor", "--json", cwd=tmp_path, home=tmp_path / "home").stdout)
    row = next(check for check in doctor["checks"] if check["check"] == f"engine: {engine}")
    assert row["ok"] and CLIS[engine].tested in row["detail"]
