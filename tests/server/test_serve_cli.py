"""``corral serve`` says where it listens only once it listens: a client may connect at once."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.cli_helpers import CORRAL
from tests.postgres import ThrowawayPostgres
from tests.server.conftest import start_server, stop

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_serve_announces_the_bound_address_and_a_taken_port_is_an_error(
    postgres: ThrowawayPostgres, tmp_path: Path
) -> None:
    url = postgres.database(template=postgres.store_template())
    # `--port 0`: the port it got is announced, and it answers at once (start_server asks once, no retry).
    process, address, _ = start_server(url, tmp_path / "home", tmp_path)
    try:
        port = address.rsplit(":", 1)[1]
        assert int(port) > 0
        env = {**os.environ, "CORRAL_DATABASE_URL": url, "CORRAL_HOME": str(tmp_path / "home")}
        taken = subprocess.run(
            [*CORRAL, "serve", "--port", port], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        assert taken.returncode != 0 and "address already in use" in taken.stderr.lower(), taken.stderr
        assert "corral serve on" not in taken.stdout
    finally:
        stop(process)
        postgres.drop(url)
