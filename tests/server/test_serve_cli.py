"""``corral serve`` says where it listens only once it listens: a client may connect at once."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.e2e.cli_helpers import CORRAL
from tests.postgres import ThrowawayPostgres
from tests.server.conftest import stop

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_serve_announces_the_bound_address_and_answers_at_once(postgres: ThrowawayPostgres, tmp_path: Path) -> None:
    url = postgres.database(template=postgres.store_template())
    env = {**os.environ, "CORRAL_DATABASE_URL": url, "CORRAL_HOME": str(tmp_path / "home")}
    env.pop("CORRAL_SERVER", None)
    process = subprocess.Popen(
        [*CORRAL, "serve", "--port", "0"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert "admin token (shown once" in process.stdout.readline()
        announced = process.stdout.readline()
        found = re.search(r"corral serve on (http://127\.0\.0\.1:(\d+)) ", announced)
        assert found and int(found[2]) > 0, announced  # port 0: the port it was given
        assert httpx.get(found[1] + "/v1/health", timeout=5).json()["status"] == "ok"  # no retry needed

        taken = subprocess.run(
            [*CORRAL, "serve", "--port", found[2]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        assert taken.returncode != 0 and "address already in use" in taken.stderr.lower(), taken.stderr
        assert "corral serve on" not in taken.stdout
    finally:
        stop(process)
        postgres.drop(url)
