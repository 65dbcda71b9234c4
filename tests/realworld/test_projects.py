"""Real projects in the bubblewrap sandbox, as an agent works on them: install dependencies through the
allowlist preset, run the whole test suite, commit, and hand back a patch that holds only the change.

The only tests that reach a package registry (marked ``registry``); the projects are fetched at test time
and cached (see projects.py). On this machine the registries resolve to a reserved address behind a
TLS-intercepting mirror, so the profile allows private addresses for the preset's hosts and intercepts TLS
(the egress proxy verifies the mirror against the system trust store; clients trust the sandbox's CA).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from corral.sandbox import NetworkProfile, SandboxRequest
from corral.sandbox.bubblewrap.backend import BubblewrapSandboxBackend
from tests.realworld.projects import PROJECTS, Project, baseline, make_repo
from tests.sandbox.conftest import skip_unless_bubblewrap_runs

pytestmark = [pytest.mark.slow, pytest.mark.registry, pytest.mark.anyio]

INSTALL_TIMEOUT_S = 600.0


def profile(project: Project) -> NetworkProfile:
    preset = "@python" if project.registry == "pypi" else "@node"
    return NetworkProfile(mode="allowlist", allow=(preset,), allow_private=(preset,), intercept_tls=True)


@pytest.mark.parametrize("project", PROJECTS, ids=[project.name for project in PROJECTS])
async def test_a_real_project_installs_tests_and_commits_inside_the_sandbox(tmp_path: Path, project: Project) -> None:
    skip_unless_bubblewrap_runs()
    expected = baseline(project, tmp_path / "outside")
    repo = make_repo(project, tmp_path / "inside")
    denied: list[str] = []
    request = SandboxRequest(
        repo=repo,
        run_dir=tmp_path / "run",
        network=profile(project),
        on_egress=lambda event: denied.append(f"{event.host}:{event.port}") if not event.allowed else None,
    )
    sandbox = await BubblewrapSandboxBackend().create(request)
    try:
        installed = await sandbox.exec(project.setup, timeout=INSTALL_TIMEOUT_S)
        assert installed.exit_code == 0, installed.stdout[-3000:] + installed.stderr[-3000:]

        tested = await sandbox.exec(project.test, timeout=INSTALL_TIMEOUT_S)
        assert project.counts(tested.stdout + tested.stderr) == expected

        edit = f"printf '\\n# touched by the agent\\n' >> {project.edited}"
        if project.edited.endswith(".js"):
            edit = f"printf '\\n// touched by the agent\\n' >> {project.edited}"
        committed = await sandbox.exec(
            f"{edit} && git commit -qam 'agent: touch {project.edited}' && git log -1 --format=%an", timeout=60
        )
        assert committed.exit_code == 0, committed.stderr
        assert committed.stdout.strip()  # the sandbox's git identity

        patch = await sandbox.diff()
    finally:
        await sandbox.destroy()
    changed = re.findall(r"^diff --git a/(\S+) b/", patch, re.MULTILINE)
    assert changed == [project.edited]
    assert "touched by the agent" in patch
    assert denied == []
