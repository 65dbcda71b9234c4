"""Child runs: how a dispatched subagent is named, which kind of child it is, and whose child a run is.

A ``task()`` in a program starts a child run. Two kinds, chosen from what the child may do:

- **light**: its tools only read (``explorer``, ``reviewer``, a tool-less type) and nothing it
  does needs a person or a secret. It runs inside its parent's process, reading the parent's
  workspace through a read-only view: no sandbox, no workflow of its own. Its run row and journal
  are written like any run's (the journal group-commits), and its result in the store is what a
  resumed parent reads instead of running it again.
- **workflow**: anything that writes, runs commands, holds secrets or may wait for a person. It is
  a durable workflow of its own on the children's queue (a global concurrency limit), with its own
  sandbox cloned from its parent's workspace; its patch is merged back when it ends.

A child's id is derived from its parent's id and the dispatching call's id, both stable across
executions of the parent: a resumed parent finds each child it had started instead of starting
another.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping

from corral.policy.rules import READ_ONLY_CAPABILITIES
from corral.spec import AgentSpec
from corral.tools.base import ToolDef


def child_run_id(parent_id: str, call_id: str) -> str:
    """The id of the child that call ``call_id`` of run ``parent_id`` dispatches: the same every time."""
    digest = hashlib.sha256(f"{parent_id}\0{call_id}".encode()).digest()[:12]
    return base64.b32encode(digest).decode().lower().rstrip("=")[:20]


def runs_light(spec: AgentSpec, tools: Mapping[str, ToolDef]) -> bool:
    """Whether a child of ``spec`` can run light (see the module docstring)."""
    if spec.engine != "native" or spec.secrets:
        return False
    if spec.policy.default == "ask" or any(rule.decision == "ask" for rule in spec.policy.rules):
        return False
    for name in spec.tools:
        if name == "eval":
            continue  # its own children are dispatched as their specs say
        tool = tools.get(name)
        if tool is None or not set(tool.capabilities) <= READ_ONLY_CAPABILITIES:
            return False
    return True
