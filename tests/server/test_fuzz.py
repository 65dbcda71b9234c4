"""schemathesis fuzzes the live server from its own OpenAPI document: no input makes it fail (no 5xx)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server.conftest import Server

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_schemathesis_finds_no_server_error(served: Server, tmp_path: Path) -> None:
    report = tmp_path / "junit.xml"
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{served.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--header",
            f"Authorization: Bearer {served.tokens['admin']}",
            "--max-examples",
            "30",
            "--phases",
            "examples,coverage,fuzzing",
            "--request-timeout",
            "20",
            "--seed",
            "13",
            "--report",
            "junit",
            "--report-junit-path",
            str(report),
        ],
        cwd=tmp_path,  # its example database (.schemathesis/) stays out of the checkout
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    counted = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
    assert counted and counted[1] == counted[2] and int(counted[1]) > 500, done.stdout[-3000:]
    assert served.process.poll() is None  # still serving
