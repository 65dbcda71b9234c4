"""Tools the model can call: the ``tool`` decorator, ``run_tool`` and the built-in coding tools."""

from corral.tools.base import Capability, ToolContext, ToolDef, ToolOutcome, ToolReply, run_tool, tool
from corral.tools.builtin import BUILTIN_TOOLS

__all__ = [
    "BUILTIN_TOOLS",
    "Capability",
    "ToolContext",
    "ToolDef",
    "ToolOutcome",
    "ToolReply",
    "run_tool",
    "tool",
]
