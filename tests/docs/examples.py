"""The fenced code blocks of README.md and docs/*.md, with the markers that say how to check each one.

A marker is an HTML comment on the line (or lines) right before a fence; readers of the rendered
page do not see it. Unknown markers are errors, so a typo never silently skips a check.

- ``<!-- fragment -->``: a deliberately partial block. TOML is parsed but not loaded as an agent
  spec or a script; Python (an API listing) is not compiled.
- ``<!-- file: NAME -->``: later ``run`` blocks of the same page find this block's text in the
  file NAME ("save this as fix-session.toml").
- ``<!-- run [server] [needs=bubblewrap] [needs=registry] [after=COMMAND] -->``: execute the block, offline, in an
  empty directory that stands for a clone of corral (``corral`` and ``.venv/bin/corral`` are the
  corral under test). ``after`` is a shell command run there first (what the prose before the
  block has the reader do); ``server`` is a block that serves until stopped: it passes when it is
  still running after printing its ``http://127.0.0.1:PORT`` address; ``needs=bubblewrap`` skips
  the block where bubblewrap sandboxes cannot start; ``needs=registry`` is a block that reaches the
  package registries (PyPI, npm), the one way a run block may leave the machine: its test is marked
  ``registry``.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<lang>[\w+-]*)")
_MARKER = re.compile(r"^\s*<!--\s*(?P<text>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Run:
    """How a ``run`` block is executed."""

    server: bool = False
    needs_bubblewrap: bool = False
    needs_registry: bool = False
    after: str | None = None


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its language, its text and its markers."""

    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    fragment: bool = False
    saved_as: str | None = None
    run: Run | None = None
    files: dict[str, str] = field(default_factory=dict)  # the page's ``file:`` blocks before this one

    @property
    def id(self) -> str:
        return f"{shown(self.page)}:{self.line}"


def shown(page: Path) -> str:
    """``page`` relative to the checkout, the way a failing example is named."""
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else str(page)


def read_blocks(page: Path) -> list[Block]:
    """Every fenced block of ``page``, in order, with its markers applied."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    files: dict[str, str] = {}
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        block = Block(
            page,
            index + 1,
            opening["lang"].lower(),
            "\n".join(line[indent:] for line in lines[index + 1 : end]) + "\n",
            files=dict(files),
            **_markers(lines, index, where=f"{shown(page)}:{index + 1}"),
        )
        if block.saved_as:
            files[block.saved_as] = block.text
        blocks.append(block)
        index = end + 1
    return blocks


def _markers(lines: list[str], fence_index: int, *, where: str) -> dict[str, Any]:
    """The ``fragment``, ``saved_as`` and ``run`` fields the comments right above a fence give."""
    found: dict[str, Any] = {}
    above = fence_index - 1
    while above >= 0 and (comment := _MARKER.match(lines[above])):
        marker = comment["text"]
        if marker == "fragment":
            found["fragment"] = True
        elif marker.startswith("file:"):
            found["saved_as"] = marker.removeprefix("file:").strip()
        elif marker.split(maxsplit=1)[:1] == ["run"]:
            found["run"] = _parse_run(marker, where=where)
        else:
            raise ValueError(f"{where}: unknown marker <!-- {marker} --> (see tests/docs/examples.py)")
        above -= 1
    return found


def _parse_run(marker: str, *, where: str) -> Run:
    server, needs_bubblewrap, needs_registry, after = False, False, False, None
    for word in shlex.split(marker)[1:]:
        if word == "server":
            server = True
        elif word == "needs=bubblewrap":
            needs_bubblewrap = True
        elif word == "needs=registry":
            needs_registry = True
        elif word.startswith("after="):
            after = word.removeprefix("after=")
        else:
            raise ValueError(f"{where}: unknown run option {word!r} (see tests/docs/examples.py)")
    return Run(server=server, needs_bubblewrap=needs_bubblewrap, needs_registry=needs_registry, after=after)


def console_commands(text: str) -> str:
    """The commands of a ``console`` block: its ``$ `` lines without the prompt (output lines dropped)."""
    commands: list[str] = []
    continued = False
    for line in text.splitlines():
        if line.startswith("$ ") or continued:
            command = line.removeprefix("$ ") if not continued else line
            commands.append(command)
            continued = command.endswith("\\")
    return "\n".join(commands) + "\n"


def all_blocks() -> list[Block]:
    return [block for page in PAGES for block in read_blocks(page)]
