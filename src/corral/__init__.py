"""corral: a self-hosted runtime for coding agents — sandboxed, durable, journaled."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "AgentSpec",
    "Budget",
    "RunRecord",
    "RunStatus",
    "Runtime",
    "Store",
    "ToolContext",
    "__version__",
    "secret",
    "tool",
]

if TYPE_CHECKING:
    from corral.runtime import Runtime
    from corral.secrets.redact import secret
    from corral.spec import AgentSpec, Budget
    from corral.store import RunRecord, RunStatus, Store
    from corral.tools.base import ToolContext, tool

_LAZY = {
    "Runtime": "corral.runtime",
    "secret": "corral.secrets.redact",
    "AgentSpec": "corral.spec",
    "Budget": "corral.spec",
    "RunRecord": "corral.store",
    "RunStatus": "corral.store",
    "Store": "corral.store",
    "ToolContext": "corral.tools.base",
    "tool": "corral.tools.base",
}


def __getattr__(name: str) -> Any:
    # Imports are lazy so `corral --help` does not pay for pydantic-ai and DBOS.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'corral' has no attribute {name!r}")
