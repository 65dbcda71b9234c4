"""The tree shows the architecture: packages where they belong, layers importing downwards only."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import corral

SRC = Path(__file__).resolve().parents[1] / "src" / "corral"

#: Higher layers may import lower ones; a layer may import itself; nobody imports upwards.
#: ARCHITECTURE.md: server → runtime → engines/orchestration → sandbox/models/tools/secrets/policy
#: → store; events, errors and spec are the ground everyone stands on.
LAYERS: dict[str, int] = {
    "__main__": 7,
    "cli": 6,
    "server": 6,
    "deploy": 6,
    "runtime": 5,
    "engines": 4,
    "orchestration": 4,
    "sandbox": 3,
    "models": 3,
    "tools": 3,
    "secrets": 3,
    "policy": 3,
    "store": 2,
    "events": 1,
    "errors": 1,
    "spec": 1,
    "templates": 1,
    "demo": 1,  # bundled assets (the sample repository, the demo's script) and their marker files
}


#: Modules of a higher package that are ground themselves: the spec embeds the sandbox's own types
#: (validated once, by the proxy's own parser), so those modules may import nothing but the ground.
GROUND_MODULES = {
    "corral.sandbox.types",
    "corral.sandbox.egress.policy",
    "corral.sandbox.egress.presets",
    "corral.policy.rules",
}


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if "sample_repo" in path.parts:
            continue  # the demo's data: a repository for the agent to fix, not corral's code
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.append((name, path))
    return found


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) for every import statement, at any depth (lazy imports count too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, a.name, []) for a in node.names)
    return found


def layer_of(module: str) -> str | None:
    if module in GROUND_MODULES:
        return "events"  # any ground layer: they share its rank
    parts = module.split(".")
    return parts[1] if parts[0] == "corral" and len(parts) > 1 else None


def test_the_tree_has_a_folder_per_concept() -> None:
    folders = {str(p.relative_to(SRC)) for p in SRC.rglob("*") if p.is_dir() and p.name != "__pycache__"}
    for expected in (
        "runtime",
        "engines",
        "sandbox/bubblewrap",
        "sandbox/egress",
        "policy",
        "secrets",
        "store",
        "models/scripted",
        "cli",
    ):
        assert expected in folders, f"src/corral/{expected}/ is missing"


def test_no_module_imports_another_modules_private_name() -> None:
    offences = []
    for _name, path in modules():
        for line, module, names in imports(path):
            if not module.startswith("corral"):
                continue
            private_module = any(part.startswith("_") and not part.startswith("__") for part in module.split("."))
            private_names = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private_module or private_names:
                offences.append(f"{path.relative_to(SRC.parent)}:{line}: from {module} import {', '.join(names)}")
    assert offences == []


def test_layers_import_downwards_only() -> None:
    offences = []
    for name, path in modules():
        own = layer_of(name)
        if own is None:
            continue
        for line, module, _ in imports(path):
            target = layer_of(module)
            if target is None or target == own:
                continue
            assert own in LAYERS and target in LAYERS, f"{name} or {module}: add the package to LAYERS"
            if LAYERS[target] > LAYERS[own]:
                offences.append(f"{path.relative_to(SRC.parent)}:{line}: {own} imports {module} (a higher layer)")
    assert offences == []


def test_only_the_workflow_module_imports_dbos() -> None:
    importers = sorted(
        name for name, path in modules() for _, module, _ in imports(path) if module.split(".")[0] == "dbos"
    )
    assert set(importers) == {"corral.runtime.workflow"}


@pytest.mark.parametrize("name", corral.__all__)
def test_every_public_name_imports(name: str) -> None:
    assert getattr(corral, name) is not None


def test_every_module_imports() -> None:
    for name, _ in modules():
        if name.endswith("__main__") or name.endswith("egress.relay") or ".migrations" in name:
            continue  # an entry point; the relay runs inside sandboxes; migrations run under alembic
        importlib.import_module(name)


@pytest.mark.slow  # a fresh interpreter
def test_the_cli_and_the_runtime_import_no_model_client_or_server() -> None:
    """Every `corral` command imports the CLI and most import the runtime: the model SDK layer (pydantic-ai,
    about a second to import) and the gateway's HTTP stack load only when a run needs them."""
    import subprocess
    import sys

    heavy = ("pydantic_ai", "openai", "anthropic", "httpx2", "uvicorn")
    probe = f"import sys, corral.cli, corral.runtime; print([m for m in {heavy!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]", done.stdout
