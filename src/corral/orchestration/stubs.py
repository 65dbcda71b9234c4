"""What a program sees of the host: type stubs the checker reads, and the prelude that implements them.

The stubs declare ``tools.<name>(...)`` with each tool's real parameters (from its JSON schema), so
a program that passes a wrong argument is rejected with a type error before anything runs. The
prelude is sandbox code: each method hands its keyword arguments to one host function,
``_corral_tool(name, kwargs)``, which the host checks against the program's allowlist again —
the prelude is a convenience, not the boundary.
"""

from __future__ import annotations

import keyword
from collections.abc import Iterable, Mapping
from typing import Any

TOOL_CALL = "_corral_tool"
"""The host function every ``tools.<name>(...)`` becomes."""
LOG_CALL = "_corral_log"
"""The host function ``log(...)`` becomes."""
TASK_CALL = "_corral_task"
"""The host function ``task(...)`` becomes."""

_JSON_TYPES = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "null": "None"}


def python_type(schema: Mapping[str, Any]) -> str:
    """A JSON schema as a Python annotation, as close as it says (``Any`` where it says nothing usable)."""
    if "anyOf" in schema or "oneOf" in schema:
        options = [python_type(option) for option in schema.get("anyOf", schema.get("oneOf", []))]
        return " | ".join(dict.fromkeys(options)) or "Any"
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(dict.fromkeys(python_type({**schema, "type": k}) for k in kind)) or "Any"
    if kind == "array":
        return f"list[{python_type(schema.get('items') or {})}]"
    if kind == "object":
        return "dict[str, Any]"
    return _JSON_TYPES.get(str(kind), "Any")


def tool_signature(name: str, schema: Mapping[str, Any]) -> str:
    """``async def name(self, *, a: str, b: int | None = None) -> str: ...`` for one tool."""
    properties: dict[str, Any] = schema.get("properties") or {}
    required = set(schema.get("required") or ())
    params = []
    for param in sorted(properties, key=lambda p: p not in required):  # required ones first
        if not param.isidentifier() or keyword.iskeyword(param):
            continue  # not expressible as a keyword argument; the tool's own validation still applies
        annotation = python_type(properties[param])
        params.append(f"{param}: {annotation}" if param in required else f"{param}: {annotation} = ...")
    keyword_only = ", *, " + ", ".join(params) if params else ""
    return f"    async def {name}(self{keyword_only}) -> str: ..."


def _literal(names: Iterable[str]) -> str:
    return "Literal[" + ", ".join(repr(name) for name in names) + "]"


def task_stubs(subagents: Mapping[str, bool], default: str) -> list[str]:
    """``task()`` as overloads: the subagent types that return typed output (``True``) give a dict, the
    others their final text, and any type asked for with ``schema=`` a dict. An undeclared type is a
    type error before the program runs."""
    typed = [name for name, has_schema in subagents.items() if has_schema]
    plain = [name for name, has_schema in subagents.items() if not has_schema]
    lines = []
    for names, result in ((typed, "dict[str, Any]"), (plain, "str")):
        if names:
            default_here = f" = {default!r}" if default in names else ""
            lines += [
                "@overload",
                f"async def task(description: str, agent: {_literal(names)}{default_here}, schema: None = None, "
                f"label: str | None = None) -> {result}: ...",
            ]
    lines += [
        "@overload",
        f"async def task(description: str, agent: {_literal(subagents)} = {default!r}, *, schema: dict[str, Any], "
        "label: str | None = None) -> dict[str, Any]: ...",
        "TaskError = RuntimeError",
    ]
    return lines


def stubs(
    tools: Mapping[str, Mapping[str, Any]],
    *,
    inputs: Mapping[str, Any] | None = None,
    subagents: Mapping[str, bool] | None = None,
    default_subagent: str | None = None,
) -> str:
    """The stub module a program is type-checked against: ``tools``, ``log``, ``ToolError``, ``task`` and the inputs.

    ``ToolError`` is ``RuntimeError``: Monty has no class inheritance, so a tool's failure (and a
    host-side limit) reaches the program as the built-in type, under a name that says what it is
    (``TaskError`` too). ``subagents`` maps each type ``task()`` may dispatch to whether it returns
    typed output; without it the program has no ``task``.
    """
    lines = [
        "from typing import Any, Literal, overload",
        "import asyncio",
        "",
        "class Tools:",
        *(tool_signature(name, schema) for name, schema in sorted(tools.items())),
        "    ...",
        "",
        "tools: Tools",
        "ToolError = RuntimeError",
        "def log(*parts: object) -> None: ...",
    ]
    names = ["asyncio", "Tools", "tools", "ToolError", "log"]
    if subagents:
        lines += task_stubs(subagents, default_subagent or next(iter(subagents)))
        names += ["task", "TaskError"]
    for name, value in (inputs or {}).items():  # typed as what they are (``context: str``)
        lines.append(f"{name}: {type(value).__name__ if isinstance(value, str | int | float | bool) else 'Any'}")
        names.append(name)
    lines.append(f"__all__ = {names!r}")
    return "\n".join(lines) + "\n"


def prelude(tools: Iterable[str], *, default_subagent: str | None = None) -> str:
    """Sandbox code giving ``tools``, ``log``, ``ToolError`` (and ``task``, given its default type) their meaning."""
    methods = [
        f"    async def {name}(self, **kwargs):\n        return await {TOOL_CALL}({name!r}, kwargs)"
        for name in sorted(tools)
        if name.isidentifier() and not keyword.iskeyword(name)
    ]
    return "\n".join(
        [
            "import asyncio",
            "ToolError = RuntimeError",
            "class Tools:",
            *(methods or ["    pass"]),
            "tools = Tools()",
            "def log(*parts):",
            f"    {LOG_CALL}(' '.join(str(part) for part in parts))",
            *(
                [
                    "TaskError = RuntimeError",
                    f"async def task(description, agent={default_subagent!r}, schema=None, label=None):",
                    f"    return await {TASK_CALL}(description, agent, schema, label)",
                ]
                if default_subagent is not None
                else []
            ),
        ]
    )
