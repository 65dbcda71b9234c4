"""``corral check [AGENT]``: validate the spec without running anything, and say where each agent stands on
the Rule of Two — what it has of (A) untrusted input, (B) sensitive data, (C) outbound actions, and why."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from corral.cli.app import app, config_path, console
from corral.cli.text import clean

_LABELS = (
    ("untrusted_input", "A untrusted input"),
    ("sensitive_data", "B sensitive data"),
    ("outbound", "C outbound actions"),
)
_VERDICTS = {
    "fine": ("✓ may run: not all three", "green"),
    "gated": ("✓ may run: all three, and every outbound action needs a person", "green"),
    "acknowledged": ("! may run: all three, acknowledged in the spec (journaled on every run)", "yellow"),
    "refused": ("✗ refused: all three, and outbound actions run without a person", "red"),
}


@app.command()
def check(agent: Annotated[str | None, typer.Argument(help="One agent (default: all).")] = None) -> None:
    """Validate corral.toml and show each agent's Rule of Two; exit 1 if an agent would be refused."""
    from corral.policy.rule_of_two import assess
    from corral.spec import load_config
    from corral.tools.builtin import BUILTIN_TOOLS

    path = config_path()
    assert path is not None
    config = load_config(path)  # a broken spec fails here, naming the file, the agent and the field
    names = [agent] if agent is not None else sorted(config.agents)
    refused = False
    console.print(Text(f"{clean(str(path))}: valid", style="green"), soft_wrap=True)
    for name in names:
        result = assess(config.agent(name), BUILTIN_TOOLS)
        console.print(Text(f"\nagent {clean(name)}", style="bold"), soft_wrap=True)
        for field, label in _LABELS:
            prop = getattr(result, field)
            mark = ("yes", "yellow") if prop.held else ("no", "dim")
            console.print(Text.assemble(f"  {label}: ", mark), soft_wrap=True)
            for reason in prop.reasons:
                console.print(Text(f"    - {clean(reason)}", style="dim"), soft_wrap=True)
        text, style = _VERDICTS[result.verdict]
        console.print(Text(f"  {text}", style=style), soft_wrap=True)
        if result.verdict == "refused":
            refused = True
            console.print(Text(f"  to run it: {result.advice()}"), soft_wrap=True)
    if refused:
        raise typer.Exit(1)
