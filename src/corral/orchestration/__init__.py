"""Orchestration: programs, written by a model or a person, that call tools and dispatch subagents.

A program runs in Monty (pydantic-monty), an interpreter of a Python subset with no filesystem,
network, environment or clock of its own: its only powers are the host functions the runtime
hands it (``tools.<name>(...)``, ``log(...)``), each of which passes the same policy, journal and
durable steps as a tool call the model makes directly.
"""
