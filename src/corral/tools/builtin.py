"""The built-in coding tools (read/write/edit files, glob, grep, execute, diff), confined to the sandbox."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from corral.errors import PathEscapeError, SandboxError, ToolError
from corral.sandbox.base import SPILL_LIMIT, ExecResult
from corral.tools.base import Capability, ToolContext, ToolDef, ToolReply, tool

GLOB_LIMIT = 200
GREP_MATCH_LIMIT = 200
GREP_LINE_CHARS = 300
GREP_MAX_FILE_BYTES = 5_000_000
GREP_MAX_NAMED_FILE_BYTES = max(GREP_MAX_FILE_BYTES, SPILL_LIMIT)
"""A file named as grep's path is searched up to this size: a command's saved output may be that large."""
GREP_TIME_LIMIT = 30.0
EDIT_CONTEXT_LINES = 3
_BINARY_SNIFF = 8192


class _Params(BaseModel):
    # Unknown fields are errors, so a misnamed argument ("file_path") is reported instead of ignored.
    model_config = ConfigDict(extra="forbid")


def _is_binary(data: bytes) -> bool:
    return b"\0" in data[:_BINARY_SNIFF]


def _lines(text: str) -> list[str]:
    """Lines as editors number them: split on \\n only, a final newline does not start a new line."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _numbered(lines: Iterable[str], first: int) -> str:
    return "\n".join(f"{number:6}\t{line}" for number, line in enumerate(lines, start=first))


async def _read_text(ctx: ToolContext, path: str) -> str:
    data = await ctx.sandbox.read_file(path)
    if _is_binary(data):
        raise ToolError(f"{path} is a binary file ({len(data)} bytes); it cannot be shown as text")
    # surrogateescape round-trips bytes that are not UTF-8, so an edit never corrupts the rest of a file.
    return data.decode("utf-8", errors="surrogateescape")


def _shown(text: str) -> str:
    return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")


# -- read_file -------------------------------------------------------------------------------------


class ReadFileParams(_Params):
    path: str = Field(description="File path, relative to the workspace root.")
    start_line: int | None = Field(default=None, ge=1, description="First line to show (1-based).")
    end_line: int | None = Field(default=None, ge=1, description="Last line to show (inclusive).")


@tool(name="read_file", capabilities=[Capability.READS_WORKSPACE])
async def read_file(ctx: ToolContext, args: ReadFileParams) -> str | ToolReply:
    """Read a text file in the workspace. Lines are shown numbered, like `cat -n`.

    For large files pass start_line and end_line (1-based, inclusive) to read a part.
    """
    lines = _lines(await _read_text(ctx, args.path))
    total = len(lines)
    if total == 0:
        return f"{args.path} is empty"
    start, end = args.start_line or 1, args.end_line or total
    if start > total:
        raise ToolError(f"start_line {start} is past the end of {args.path}, which has {total} lines")
    if end < start:
        raise ToolError(f"end_line {end} is before start_line {start}")
    end = min(end, total)
    text = _shown(_numbered(lines[start - 1 : end], start))
    if (start, end) != (1, total):
        text += f"\n[lines {start}-{end} of {total}]"
    return ToolReply(text, source=args.path)


# -- write_file ------------------------------------------------------------------------------------


class WriteFileParams(_Params):
    path: str = Field(description="File path, relative to the workspace root; missing parents are created.")
    content: str = Field(description="The complete new content of the file.")


@tool(name="write_file", capabilities=[Capability.WRITES_WORKSPACE])
async def write_file(ctx: ToolContext, args: WriteFileParams) -> str:
    """Create a file, or replace all of an existing file's content. To change part of a file use edit_file."""
    data = args.content.encode("utf-8", errors="surrogateescape")
    await ctx.sandbox.write_file(args.path, data)
    return f"wrote {len(data)} bytes ({len(_lines(args.content))} lines) to {args.path}"


# -- edit_file -------------------------------------------------------------------------------------


class EditFileParams(_Params):
    path: str = Field(description="File path, relative to the workspace root.")
    old: str = Field(description="Exact text to replace, including whitespace; it must occur exactly once.")
    new: str = Field(description="Text to put in its place (empty to delete it).")


def _normalized(text: str) -> str:
    return " ".join(text.split())


def _span(start_line: int, text: str) -> int:
    """The last line a piece of text occupies when it starts on start_line."""
    return start_line + text.removesuffix("\n").count("\n")


@tool(name="edit_file", capabilities=[Capability.WRITES_WORKSPACE])
async def edit_file(ctx: ToolContext, args: EditFileParams) -> str:
    """Replace one exact occurrence of `old` with `new` in a file.

    `old` must match the file character for character (indentation included) and occur exactly once;
    include a few surrounding lines to make it unique. Read the file first to copy the text exactly.
    """
    if not args.old:
        raise ToolError("old is empty; to create or overwrite a whole file use write_file")
    if args.old == args.new:
        raise ToolError("old and new are identical; nothing would change")
    text = await _read_text(ctx, args.path)
    count = text.count(args.old)
    if count == 0:
        message = f"old text not found in {args.path}"
        if _normalized(args.old) and _normalized(args.old) in _normalized(text):
            message += (
                "; it does match if whitespace is ignored, so check indentation, tabs versus spaces "
                "and line endings (read_file the region and copy it exactly)"
            )
        raise ToolError(message)
    if count > 1:
        starts = [match.start() for match in re.finditer(re.escape(args.old), text)][:10]
        where = ", ".join(str(text.count("\n", 0, offset) + 1) for offset in starts)
        raise ToolError(
            f"old text found {count} times in {args.path} (at lines {where}); "
            "include more surrounding lines so it matches exactly once"
        )
    offset = text.index(args.old)
    updated = text[:offset] + args.new + text[offset + len(args.old) :]
    await ctx.sandbox.write_file(args.path, updated.encode("utf-8", errors="surrogateescape"))
    first = text.count("\n", 0, offset) + 1
    old_last = _span(first, args.old)
    if not args.new:
        return f"edited {args.path}: removed lines {first}-{old_last}"
    new_last = _span(first, args.new)
    lines = _lines(updated)
    context_start = max(first - EDIT_CONTEXT_LINES, 1)
    context = lines[context_start - 1 : new_last + EDIT_CONTEXT_LINES]
    return f"edited {args.path}: lines {first}-{old_last} are now lines {first}-{new_last}\n" + _shown(
        _numbered(context, context_start)
    )


# -- glob ------------------------------------------------------------------------------------------


class GlobParams(_Params):
    pattern: str = Field(
        description="Glob relative to `path`: `*` and `?` match within a name, `**` any number of "
        "directories. `*.py` matches only at the top; `**/*.py` matches at any depth."
    )
    path: str = Field(default=".", description="Directory to search from, relative to the workspace root.")


@tool(name="glob", capabilities=[Capability.READS_WORKSPACE])
async def glob(ctx: ToolContext, args: GlobParams) -> str:
    """List files in the workspace whose paths match a glob pattern (sorted; .git and .corral skipped)."""
    files = await ctx.sandbox.list_files(args.path, args.pattern)
    if not files:
        return f"no files match {args.pattern!r} under {args.path}"
    shown = "\n".join(files[:GLOB_LIMIT])
    if len(files) > GLOB_LIMIT:
        shown += f"\n[... and {len(files) - GLOB_LIMIT} more files; use a narrower pattern or path]"
    return shown


# -- grep ------------------------------------------------------------------------------------------


class GrepParams(_Params):
    pattern: str = Field(description="Python regular expression, searched for in each line.")
    path: str = Field(default=".", description="File or directory to search, relative to the workspace root.")
    glob: str | None = Field(
        default=None,
        description="Only search files matching this glob, e.g. `*.py` (a pattern without `/` matches "
        "file names at any depth).",
    )


def _search(regex: re.Pattern[str], rel: str, data: bytes, room: int, deadline: float) -> tuple[list[str], int]:
    """Up to ``room`` formatted matching lines of one file, and how many lines matched in all."""
    found: list[str] = []
    count = 0
    for number, line in enumerate(_lines(data.decode("utf-8", errors="replace")), start=1):
        if regex.search(line):
            count += 1
            if len(found) < room:
                shown = line if len(line) <= GREP_LINE_CHARS else line[:GREP_LINE_CHARS] + "…"
                found.append(f"{rel}:{number}: {shown}")
        if number % 1000 == 0 and time.monotonic() > deadline:
            break
    return found, count


def _size(path: Path) -> int:
    return path.stat().st_size


@tool(name="grep", capabilities=[Capability.READS_WORKSPACE])
async def grep(ctx: ToolContext, args: GrepParams) -> str:
    """Search text files in the workspace for a regular expression; prints `file:line: text` per match.

    Binary files, .git and .corral are skipped. The pattern is matched against one line at a time.
    """
    try:
        regex = re.compile(args.pattern)
    except re.error as exc:
        raise ToolError(f"invalid regular expression {args.pattern!r}: {exc}") from None
    file_glob = args.glob or "**/*"
    if "/" not in file_glob:
        file_glob = f"**/{file_glob}"
    target = ctx.sandbox.resolve(args.path, must_exist=True)
    if target.is_dir():
        files = await ctx.sandbox.list_files(args.path, file_glob)
        max_bytes = GREP_MAX_FILE_BYTES
    else:
        files = [target.relative_to(ctx.sandbox.workspace).as_posix()]
        max_bytes = GREP_MAX_NAMED_FILE_BYTES
    deadline = time.monotonic() + GREP_TIME_LIMIT
    matches: list[str] = []
    total = skipped_large = 0
    for rel in files:
        await asyncio.sleep(0)  # searching is inline; let other runs on the loop make progress between files
        if time.monotonic() > deadline:
            raise ToolError(f"grep took longer than {GREP_TIME_LIMIT:.0f}s; narrow the path, glob or pattern")
        try:
            if _size(ctx.sandbox.resolve(rel)) > max_bytes:
                skipped_large += 1
                continue
            data = await ctx.sandbox.read_file(rel)
        except (PathEscapeError, SandboxError, OSError):
            continue  # symlinks leading out, special files, files deleted meanwhile: not searchable
        if not _is_binary(data):
            room = GREP_MATCH_LIMIT - len(matches)
            found, count = _search(regex, rel, data, room, deadline)
            matches += found
            total += count
    notes = f"\n[skipped {skipped_large} files over {max_bytes} bytes]" if skipped_large else ""
    if not matches:
        return f"no matches for {args.pattern!r} in {args.path}{notes}"
    shown = "\n".join(matches)
    if total > len(matches):
        shown += f"\n[... and {total - len(matches)} more matches; narrow the pattern, path or glob]"
    return shown + notes


# -- execute ---------------------------------------------------------------------------------------


class ExecuteParams(_Params):
    command: str = Field(description="Shell command, run with `sh -c` in the workspace root.")
    timeout: float | None = Field(
        default=None, gt=0, description="Seconds before the command is killed (capped by the run's limit)."
    )


# Room a reply needs beside the two streams' text: its header lines, the two marker lines, the
# saved-output line and the notes a backend appends to stderr (limits hit).
_EXECUTE_OVERHEAD = 1_000


@tool(name="execute", capabilities=[Capability.RUNS_COMMANDS])
async def execute(ctx: ToolContext, args: ExecuteParams) -> ToolReply:
    """Run a shell command in the workspace and return its exit code, stdout and stderr.

    A non-zero exit code is reported, not treated as a failure. A command that runs too long is
    killed, with everything it started. Long output is shown as its beginning and its end; the
    whole output is then saved to a file under .corral/output/ that read_file (with line ranges)
    and grep can read.
    """
    timeout = ctx.exec_timeout if args.timeout is None else min(args.timeout, ctx.exec_timeout)
    # Each stream gets half of what the model may see, so the reply is never spilled again by run_tool.
    per_stream = max(ctx.output_limit - _EXECUTE_OVERHEAD, ctx.output_limit // 2) // 2
    output_limit = max(1, min(ctx.exec_output_limit, per_stream))
    result = await ctx.sandbox.exec(args.command, timeout=timeout, output_limit=output_limit)
    parts = [f"exit code: {'none (killed)' if result.exit_code is None else result.exit_code}"]
    if result.timed_out:
        parts.append(f"[timed out after {timeout:g}s: the command and its child processes were killed]")
    parts.append("--- stdout ---\n" + (result.stdout.rstrip("\n") or "(empty)"))
    parts.append("--- stderr ---\n" + (result.stderr.rstrip("\n") or "(empty)"))
    if result.output_path is not None:
        parts.append(_saved_output_note(result, result.output_path))
    return ToolReply("\n".join(parts), exit_code=result.exit_code, spilled_to=result.output_path)


def _saved_output_note(result: ExecResult, path: str) -> str:
    total = result.stdout_bytes + result.stderr_bytes
    how = "read it with read_file (line ranges) or grep"
    if result.saved_bytes < total:
        return f"[output was {total:,} bytes; its first {result.saved_bytes:,} bytes are saved to {path}; {how}]"
    return f"[whole output ({total:,} bytes, stdout and stderr as they came) saved to {path}; {how}]"


# -- diff ------------------------------------------------------------------------------------------


class DiffParams(_Params):
    pass


@tool(name="diff", capabilities=[Capability.READS_WORKSPACE])
async def diff(ctx: ToolContext, args: DiffParams) -> str:
    """Show every change made in the workspace so far, as a git-style unified patch."""
    return await ctx.sandbox.diff() or "no changes"


BUILTIN_TOOLS: dict[str, ToolDef] = {
    definition.name: definition for definition in (read_file, write_file, edit_file, glob, grep, execute, diff)
}
