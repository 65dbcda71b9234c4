"""Untrusted text made safe to print: tasks, model answers, tool output, file names, error messages.

Everything the CLI shows that it did not write itself goes through :func:`clean` (or
:func:`safe`, which also makes it a rich ``Text``, so square brackets are never read as markup).
Control characters become visible instead of reaching the terminal: an escape sequence in a
model's answer cannot clear the screen, move the cursor, set the window title or hide the text
around it, and a carriage return cannot overwrite what was printed before it on the line.
Bidirectional overrides (the "Trojan Source" characters) are shown as their code points.
"""

from __future__ import annotations

import re

from rich.text import Text

# C0 controls but tab and newline, DEL, C1 controls, and Unicode's bidirectional embeddings,
# overrides and isolates.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f\x80-\x9f\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if code < 0x20:
        return chr(0x2400 + code)  # the Control Pictures block: ESC shows as ␛, CR as ␍
    if code == 0x7F:
        return "\u2421"  # ␡
    return f"\\u{code:04x}" if code > 0xFF else f"\\x{code:02x}"


def clean(text: object) -> str:
    """``text`` as a string with every terminal control character made visible (tab and newline kept)."""
    return _UNSAFE.sub(_visible, str(text))


def safe(text: object, style: str = "") -> Text:
    """A rich ``Text`` of untrusted ``text``: never markup, never terminal control."""
    return Text(clean(text), style=style)
