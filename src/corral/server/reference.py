"""docs/api.md, written from the API's own OpenAPI document: ``python -m corral.server.reference > docs/api.md``.

A test checks that the page in the repository is what this prints, so the reference never drifts
from the code.
"""

from __future__ import annotations

import json
import sys
from typing import Any

HEADER = """\
# HTTP API reference

Generated from the OpenAPI document `corral serve` publishes at `/openapi.json`
(`python -m corral.server.reference > docs/api.md`; a test keeps this page in step). How to deploy
and use the API: [server.md](server.md). Every path but `/v1/health` takes
`Authorization: Bearer corral_…` and needs the scope listed; every error is an RFC 9457 problem
details object (`application/problem+json`).
"""

#: The scope each operation needs, by its handler's name (the API's own checks are the authority).
SCOPES = {
    "register_spec": "specs:write",
    "submit_run": "runs:write",
    "cancel_run": "runs:write",
    "resume_run": "runs:write",
    "delete_run": "runs:write",
    "approve": "approvals:decide",
    "deny": "approvals:decide",
    "create_team": "admin",
    "create_user": "admin",
    "create_token": "admin",
    "list_tokens": "admin",
    "revoke_token": "admin",
    "health": "none",
}


def openapi() -> dict[str, Any]:
    """The API's OpenAPI document (made on an in-memory store: it depends on no data)."""
    from corral.server.app import create_app
    from corral.store import Store

    store = Store("sqlite://")
    try:
        return create_app(store).openapi()
    finally:
        store.close()


def _type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[1]
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"list[{_type(schema.get('items', {}))}]"
    if "enum" in schema:
        return " or ".join(json.dumps(v) for v in schema["enum"])
    return str(schema.get("type", "any"))


def markdown(document: dict[str, Any]) -> str:
    out = [HEADER]
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            by_tag.setdefault((operation.get("tags") or ["other"])[0], []).append((method, path, operation))
    for tag, operations in by_tag.items():
        out.append(f"\n## {tag}\n")
        for method, path, operation in operations:
            handler = operation["operationId"].split("_v1_", 1)[0]
            out.append(f"\n### `{method.upper()} {path}`\n")
            out.append(f"\n{operation.get('summary', '')}. Scope: `{SCOPES.get(handler, 'runs:read')}`.\n")
            description = (operation.get("description") or "").strip()
            if description:
                out.append(f"\n{description}\n")
            parameters = operation.get("parameters", [])
            if parameters:
                out.append("\n| parameter | in | type | |\n|---|---|---|---|\n")
                for p in parameters:
                    note = (p.get("description") or p.get("schema", {}).get("description") or "").replace("|", "\\|")
                    required = "required" if p.get("required") else ""
                    out.append(f"| `{p['name']}` | {p['in']} | {_type(p.get('schema', {}))} | {required} {note} |\n")
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                out.append(f"\nBody: `{_type(body)}`.\n")
            answers = ", ".join(f"`{code}`" for code in operation.get("responses", {}))
            out.append(f"\nAnswers: {answers}.\n")
    out.append("\n## Schemas\n")
    for name, schema in document.get("components", {}).get("schemas", {}).items():
        properties = schema.get("properties")
        if not properties:
            continue
        out.append(f"\n### `{name}`\n\n| field | type | |\n|---|---|---|\n")
        required = set(schema.get("required", []))
        for field, spec in properties.items():
            note = (spec.get("description") or "").replace("|", "\\|").replace("\n", " ")
            out.append(f"| `{field}` | {_type(spec)} | {'required ' if field in required else ''}{note} |\n")
    return "".join(out)


if __name__ == "__main__":
    sys.stdout.write(markdown(openapi()))
