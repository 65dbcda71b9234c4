"""Running the real ``corral`` command in a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

CORRAL = [sys.executable, "-m", "corral"]


def corral(
    *args: str, cwd: Path, home: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "CORRAL_HOME": str(home), "COLUMNS": "120", **(env or {})}
    return subprocess.run(
        [*CORRAL, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, check=False
    )


def corral_json(*args: str, cwd: Path, home: Path) -> Any:
    proc = corral(*args, "--json", cwd=cwd, home=home)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def write_config(directory: Path, *, base_url: str, model: str = "openai:gpt-6.1-terra", extra: str = "") -> Path:
    path = directory / "corral.toml"
    path.write_text(
        f"""
[agents.fixer]
model = "{model}"
base_url = "{base_url}"
sandbox = "local"
{extra}
[agents.fixer.retry]
initial_backoff_s = 0.01
max_backoff_s = 0.05
"""
    )
    return path
