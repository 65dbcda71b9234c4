"""Real open-source projects, fetched from the package registries at test time, and how to test each.

Nothing third-party is committed: each project's source comes from its published sdist (PyPI) or
package tarball (npm), pinned here, downloaded once into a cache outside the repository
(``$CORRAL_TEST_CACHE`` or ``~/.cache/corral-tests``) and reused by later runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

CACHE = Path(os.environ.get("CORRAL_TEST_CACHE") or Path.home() / ".cache" / "corral-tests") / "realworld"

GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "upstream",
    "GIT_AUTHOR_EMAIL": "upstream@example.invalid",
    "GIT_COMMITTER_NAME": "upstream",
    "GIT_COMMITTER_EMAIL": "upstream@example.invalid",
}


@dataclass(frozen=True)
class Project:
    """One project: where it comes from, the commands that set it up and test it, and a file to edit."""

    name: str
    registry: str  # "pypi" or "npm"
    package: str
    version: str
    setup: str
    """Shell commands run in the repository root: make a venv or ``npm install``, through the registry."""
    test: str
    """Shell command that runs the whole test suite; its output is parsed by ``counts``."""
    edited: str
    """A source file the agent changes: the only path the patch may hold."""

    def counts(self, output: str) -> dict[str, int]:
        return COUNTERS[self.name](output)


def _pytest_counts(output: str) -> dict[str, int]:
    """``== 5 failed, 1015 passed, 3 skipped in 2.1s ==`` as numbers."""
    summary = [line for line in output.splitlines() if re.search(r"\b(passed|failed|error)\b.* in [\d.]+s", line)]
    assert summary, f"no pytest summary in:\n{output[-2000:]}"
    return {word: int(number) for number, word in re.findall(r"(\d+) (\w+)", summary[-1])}


def _unittest_counts(output: str) -> dict[str, int]:
    """``Ran 1163 tests`` and ``OK (skipped=3)`` / ``FAILED (failures=1, errors=2)`` as numbers."""
    ran = re.search(r"^Ran (\d+) tests?", output, re.MULTILINE)
    assert ran, f"no unittest summary in:\n{output[-2000:]}"
    found = {"ran": int(ran.group(1))}
    verdict = re.search(r"^(OK|FAILED)(?: \((.*)\))?$", output, re.MULTILINE)
    assert verdict, f"no unittest verdict in:\n{output[-2000:]}"
    found["ok"] = int(verdict.group(1) == "OK")
    for key, number in re.findall(r"(\w+)=(\d+)", verdict.group(2) or ""):
        found[key] = int(number)
    return found


def _tap_counts(output: str) -> dict[str, int]:
    """tape's ``# tests 287`` / ``# pass 287`` / ``# fail 0``."""
    found = {key: int(number) for key, number in re.findall(r"^# (tests|pass|fail) +(\d+)$", output, re.MULTILINE)}
    assert "tests" in found and "pass" in found, f"no TAP summary in:\n{output[-2000:]}"
    return found


COUNTERS = {"toolz": _pytest_counts, "more-itertools": _unittest_counts, "minimist": _tap_counts}

PROJECTS = [
    Project(
        name="toolz",
        registry="pypi",
        package="toolz",
        version="1.2.0",
        setup="python3 -m venv .venv && .venv/bin/pip install -q 'pytest>=8,<9'",
        test=".venv/bin/python -m pytest -p no:cacheprovider toolz/tests",
        edited="toolz/utils.py",
    ),
    Project(
        name="more-itertools",
        registry="pypi",
        package="more-itertools",
        version="11.2.1",
        # An editable install builds the project with its own backend (flit_core), fetched from PyPI too.
        setup="python3 -m venv .venv && .venv/bin/pip install -q -e .",
        test=".venv/bin/python -m unittest discover -s tests",
        edited="more_itertools/more.py",
    ),
    Project(
        name="minimist",
        registry="npm",
        package="minimist",
        version="1.2.8",
        # The test runner only (its lint and audit steps need the whole dev toolchain and the network).
        setup="npm install --no-audit --no-fund --no-save --no-package-lock tape@5.6.3",
        test="node_modules/.bin/tape 'test/**/*.js'",
        edited="index.js",
    ),
]


def fetch(project: Project) -> Path:
    """The project's published archive, from the cache or downloaded into it."""
    CACHE.mkdir(parents=True, exist_ok=True)
    found = _cached(project)
    if found is not None:
        return found
    download = CACHE / f".download-{project.name}"
    shutil.rmtree(download, ignore_errors=True)
    download.mkdir()
    if project.registry == "pypi":
        command = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "-q"]
        command += ["-d", str(download), f"{project.package}=={project.version}"]
    else:
        command = ["npm", "pack", "--silent", f"{project.package}@{project.version}", "--pack-destination"]
        command += [str(download)]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    (archive,) = download.iterdir()
    target = CACHE / archive.name
    archive.rename(target)
    download.rmdir()
    return target


def _cached(project: Project) -> Path | None:
    stem = project.package.replace("-", "_") if project.registry == "pypi" else project.package
    for candidate in CACHE.glob(f"{stem}-{project.version}.t*gz"):
        return candidate
    return None


def make_repo(project: Project, root: Path) -> Path:
    """The archive unpacked into ``root`` as a git repository with one commit, as a user's checkout would be."""
    with tarfile.open(fetch(project)) as archive:
        archive.extractall(root / "unpacked", filter="data")
    (top,) = (root / "unpacked").iterdir()
    repo = root / project.name
    top.rename(repo)
    (root / "unpacked").rmdir()
    env = {**os.environ, **GIT_ENV}
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "upstream release"]):
        subprocess.run(command, cwd=repo, env=env, check=True, capture_output=True)
    return repo


def baseline(project: Project, work: Path) -> dict[str, int]:
    """The suite's counts outside any sandbox (cached per project version and Python): the reference."""
    key = CACHE / f"baseline-{project.name}-{project.version}-py{sys.version_info[0]}{sys.version_info[1]}.json"
    if key.exists():
        return json.loads(key.read_text())
    repo = make_repo(project, work)
    # The interpreter and node a sandbox has: the system's, not a version manager's from $HOME.
    env = {**os.environ, **GIT_ENV, "PATH": SYSTEM_PATH}
    done = subprocess.run(
        f"{project.setup} && {project.test}", shell=True, cwd=repo, env=env, capture_output=True, text=True, timeout=900
    )
    counts = project.counts(done.stdout + done.stderr)
    key.write_text(json.dumps(counts))
    return counts
