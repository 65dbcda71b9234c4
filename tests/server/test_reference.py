"""docs/api.md is what the API's own OpenAPI document says (regenerate it when the API changes)."""

from __future__ import annotations

from pathlib import Path

from corral.server.reference import markdown, openapi

PAGE = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def test_the_api_reference_page_is_generated_from_the_openapi_document() -> None:
    document = openapi()
    assert PAGE.read_text(encoding="utf-8") == markdown(document), (
        "docs/api.md is out of date: python -m corral.server.reference > docs/api.md"
    )
    listed = {(m.upper(), p) for p, item in document["paths"].items() for m in item}
    for method, path in listed:
        assert f"### `{method} {path}`" in PAGE.read_text(encoding="utf-8")
