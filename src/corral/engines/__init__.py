"""Engines: the loops that drive an agent (model → tool calls → results → model)."""
