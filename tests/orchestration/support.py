"""Scripts for the scripted model in which each turn runs a program with ``eval``."""

from __future__ import annotations


def eval_script(*programs: str, answer: str = "done") -> str:
    """A script: one ``eval`` call per program (a turn each), then ``answer``."""
    turns = [
        f"[[turns]]\n[[turns.tool_calls]]\nname = \"eval\"\nargs = {{ program = '''{program}''' }}\n"
        for program in programs
    ]
    return "\n".join([*turns, f"[[turns]]\ntext = {answer!r}\n"])
