"""How the sandbox package is put together: no module reaches into another's private names, and the
types agent specs embed load without the rest of the sandbox."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import corral

SRC = Path(corral.__file__).parent


def private_uses(path: Path) -> list[str]:
    """``from corral.x import _y`` and ``module._y`` where ``module`` is a corral module imported here."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    modules: set[str] = set()  # local names bound to corral modules
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("corral"):
            for alias in node.names:
                if alias.name.startswith("_"):
                    found.append(f"{path.name}:{node.lineno}: from {node.module} import {alias.name}")
                modules.add(alias.asname or alias.name)  # may be a submodule; attribute checks below
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("corral"):
                    modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_sandbox_module_uses_another_modules_private_names() -> None:
    found = [use for path in sorted((SRC / "sandbox").rglob("*.py")) for use in private_uses(path)]
    assert found == []


def test_the_spec_loads_the_sandbox_types_and_nothing_else_of_the_sandbox() -> None:  # nor of policy
    code = "import json, sys, corral.spec; print(json.dumps(sorted(m for m in sys.modules if m.startswith('corral'))))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout)
    assert loaded == [
        "corral",
        "corral.errors",
        "corral.policy",  # its rules are ground too; the package imports nothing
        "corral.policy.rules",
        "corral.sandbox",
        "corral.sandbox.egress",
        "corral.sandbox.egress.policy",
        "corral.sandbox.egress.presets",
        "corral.sandbox.types",
        "corral.spec",
    ]
