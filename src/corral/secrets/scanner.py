"""The secret scanner: secrets nobody registered, found by shape and entropy before they leave a run.

Registered secrets are redacted by value (:mod:`corral.secrets.redact`). This catches the others —
a key committed in the repository, a token a command printed — with detect-secrets' detectors and
false-positive filters, and replaces each finding by ``[secret:detected:<type>]`` before the text
reaches the model, the journal or the run's result. A finding is reported by type and line, never
by value.

detect-secrets costs about 150 µs a line, mostly plugin dispatch. Almost no line of ordinary text
can hold a secret, so a line is handed to it only when one of its detectors' own patterns could
match: the regular expressions of the pattern detectors, the keywords of the keyword detector, and
a quoted string long enough to pass the entropy threshold. That prefilter is built from the
detectors themselves, so it can only skip lines that none of them would flag.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import math
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

DETECTED_PREFIX = "[secret:detected:"

#: Detectors left out: a hex string is a commit id or a checksum far more often than a secret (a hex
#: secret next to a keyword is still found by the keyword detector), and an IP address is no secret.
EXCLUDED_DETECTORS = frozenset({"HexHighEntropyString", "IPPublicDetector"})

#: How a command's output is read: like source code, where a keyword's value counts only when quoted
#: (``password = "…"``); read as a config file instead, every ``secrets=scoped,`` in code would be
#: flagged. Lines that look like environment variables (``NAME=value``, ``export NAME=value``: what
#: ``env`` and ``cat .env`` print) are read as a config file, where unquoted values count too.
UNKNOWN_FORMAT = "output"
CONFIG_FORMAT = "output.ini"
_ENV_LINE = re.compile(r"^\s*(?:export\s+)?[A-Z][A-Z0-9_]*\s*=\s*\S.*$")
#: Files that detect-secrets does not know by extension but that hold ``key=value`` settings.
_CONFIG_NAMES = re.compile(r"(^|/)(\.env(\.[^/]*)?|[^/]*\.env|credentials|\.netrc|\.npmrc|\.pypirc|\.pgpass)$")

_PRIVATE_KEY_TYPE = "Private Key"
_PRIVATE_KEY_END = re.compile(r"-----END[A-Z0-9 ]*-----|---- END SSH2 ENCRYPTED PRIVATE KEY ----")
_MIN_VALUE_LENGTH = 8
"""A pattern's group shorter than this is a prefix (``ghp``), not the secret; a value shorter than
this is not looked for elsewhere in the text (``hunter2`` may be an ordinary word there)."""


def placeholder(secret_type: str) -> str:
    """What stands in the text for a secret the scanner found."""
    return f"{DETECTED_PREFIX}{secret_type}]"


@dataclass(frozen=True)
class Finding:
    """One secret found: its type and where, never its value."""

    type: str
    line: int
    """1-based line of the scanned text (of the new file, for a patch)."""
    file: str | None = None
    """The file, for a patch; None for a tool's output or a result."""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": self.type, "line": self.line}
        if self.file is not None:
            data["file"] = self.file
        return data


@dataclass(frozen=True)
class Scanned:
    """A text with every secret found replaced, and what was found."""

    text: str
    findings: tuple[Finding, ...] = ()


class SecretScanner:
    """detect-secrets behind one lock: its settings are process-global, so each scan sets and restores them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._prefilter: list[re.Pattern[str]] | None = None
        self._patterns: dict[str, list[re.Pattern[str]]] = {}  # secret type -> its detector's patterns

    def scan(self, text: str, filename: str | None = None) -> Scanned:
        """Find secrets in ``text`` and replace them.

        ``filename``: the file the text comes from, whose name tells detect-secrets its format;
        None for a command's output or an answer (see ``UNKNOWN_FORMAT``).
        """
        if not text:
            return Scanned(text)
        candidates = _candidate_lines(text, self._ready())
        if not candidates:
            return Scanned(text)
        lines = text.split("\n")
        groups: dict[str, list[int]] = {}
        if filename is None:
            for n in candidates:
                groups.setdefault(CONFIG_FORMAT if _ENV_LINE.match(lines[n - 1]) else UNKNOWN_FORMAT, []).append(n)
        else:
            groups[f"{filename}.ini" if _CONFIG_NAMES.search(filename) else filename] = candidates
        with self._lock, _settings():
            found = [hit for name, numbers in groups.items() for hit in self._detect(lines, numbers, name)]
        found = _outside_placeholders(lines, found)
        if not found:
            return Scanned(text)
        return _replace(text, lines, found)

    def scan_data(self, value: Any, *, field: str = "") -> tuple[Any, list[dict[str, Any]]]:
        """Every string inside a JSON-like value scanned; findings name the field (``items[2].body``)."""
        if isinstance(value, str):
            scanned = self.scan(value)
            return scanned.text, [{**f.to_json(), "field": field or "(root)"} for f in scanned.findings]
        findings: list[dict[str, Any]] = []
        if isinstance(value, dict):
            out: dict[Any, Any] = {}
            for key, item in value.items():
                out[key], found = self.scan_data(item, field=f"{field}.{key}" if field else str(key))
                findings += found
            return out, findings
        if isinstance(value, list | tuple):
            items = []
            for i, item in enumerate(value):
                scanned_item, found = self.scan_data(item, field=f"{field}[{i}]")
                items.append(scanned_item)
                findings += found
            return items, findings
        return value, findings

    def scan_patch(self, patch: str) -> tuple[Finding, ...]:
        """Secrets on the lines a patch adds, by file and new line number; the patch itself is not changed."""
        added = _added_lines(patch)
        if not added:  # most runs' patches: nothing to scan, and no detector settings to swap in
            return ()
        findings: list[Finding] = []
        prefilter = self._ready()
        with self._lock, _settings():
            for path, numbered in added.items():
                if _is_lock_file(path):  # checksums, by the thousand; detect-secrets skips these files too
                    continue
                lines = [line for _, line in numbered]
                candidates = _candidate_lines("\n".join(lines), prefilter)
                hits = _outside_placeholders(lines, list(self._detect(lines, candidates, path)))
                findings += [Finding(type=t, line=numbered[n - 1][0], file=path) for n, t in _reported(hits)]
        return tuple(findings)

    def _ready(self) -> list[re.Pattern[str]]:
        if self._prefilter is None:
            with self._lock, _settings():
                if self._prefilter is None:
                    self._prefilter, self._patterns = _build_prefilter()
        return self._prefilter

    def _detect(self, lines: list[str], candidates: list[int], filename: str) -> Iterator[_Hit]:
        from detect_secrets.core.scan import _process_line_based_plugins

        # The one detect-secrets function that runs every detector *and* every false-positive
        # filter over lines of text we already hold (the public ones read files or a single line
        # without filters). Its signature is pinned by the version range in pyproject.toml and
        # exercised by tests/secrets/test_scanner.py. Lines go in renumbered, so the context the
        # filters look at is the neighbouring candidates.
        numbered = [(k, lines[n - 1]) for k, n in enumerate(candidates, 1)]
        for secret in _process_line_based_plugins(numbered, filename=filename):
            n = candidates[secret.line_number - 1]
            yield _Hit(type=secret.type, line=n, value=secret.secret_value or "", patterns=self._patterns)


@dataclass(frozen=True)
class _Hit:
    type: str
    line: int
    value: str
    patterns: dict[str, list[re.Pattern[str]]]

    def spans(self, line: str) -> list[tuple[int, int]]:
        """Where the secret is in its line; the whole line when it cannot be told (never nothing)."""
        patterns = self.patterns.get(self.type)
        if patterns is None:  # keyword and entropy detectors report the value itself
            found = [(m.start(), m.end()) for m in re.finditer(re.escape(self.value), line)] if self.value else []
            return found or [(0, len(line))]
        # A pattern detector reports its first group when it has one: the secret (a URL's password)
        # or only a prefix (``ghp``); a prefix is too short to be the secret, so the match is.
        found = []
        for pattern in patterns:
            for match in pattern.finditer(line):
                if pattern.groups and match.group(1) == self.value and len(self.value) >= _MIN_VALUE_LENGTH:
                    found.append(match.span(1))
                    continue
                start, end = match.span()
                while start < end and line[start] in " \t=:\"'":  # delimiters some patterns include
                    start += 1
                if start < end:
                    found.append((start, end))
        return found or [(0, len(line))]


_PLACEHOLDER = re.compile(r"\[secret:[^\[\]\n]{1,200}\]")
"""A placeholder, ours (``[secret:detected:…]``) or a registered secret's (``[secret:NAME]``): never a finding."""


def _overlaps(span: tuple[int, int], protected: list[tuple[int, int]]) -> bool:
    return any(span[0] < end and start < span[1] for start, end in protected)


def _outside_placeholders(lines: list[str], hits: list[_Hit]) -> list[_Hit]:
    """The hits that are not a placeholder (``token=[secret:DEPLOY_TOKEN]`` reads like a keyword's value)."""
    kept = []
    for hit in hits:
        line = lines[hit.line - 1]
        protected = [m.span() for m in _PLACEHOLDER.finditer(line)]
        if hit.type == _PRIVATE_KEY_TYPE or any(not _overlaps(span, protected) for span in hit.spans(line)):
            kept.append(hit)
    return kept


def _replace(text: str, lines: list[str], hits: list[_Hit]) -> Scanned:
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line) + 1)
    spans: list[tuple[int, int, str]] = []
    values: dict[str, str] = {}
    protected = [m.span() for m in _PLACEHOLDER.finditer(text)]
    for hit in hits:
        base = offsets[hit.line - 1]
        if hit.type == _PRIVATE_KEY_TYPE:  # the whole block, to its END line (or the end of the text)
            start = base + next((s for s, _ in hit.spans(lines[hit.line - 1])), 0)
            end = _PRIVATE_KEY_END.search(text, start)
            spans.append((_block_start(text, start), end.end() if end else len(text), hit.type))
            continue
        for start, end in hit.spans(lines[hit.line - 1]):
            spans.append((base + start, base + end, hit.type))
        if len(hit.value) >= _MIN_VALUE_LENGTH:
            values.setdefault(hit.value, hit.type)
    # The same value elsewhere in the text (a line a filter let through, a repeated token) goes too.
    for value, secret_type in values.items():
        spans += [(m.start(), m.end(), secret_type) for m in re.finditer(re.escape(value), text)]
    spans = [span for span in spans if span[2] == _PRIVATE_KEY_TYPE or not _overlaps(span[:2], protected)]
    merged: list[tuple[int, int, str]] = []
    # At the same start a specific detector's name wins over a generic guess.
    for start, end, secret_type in sorted(spans, key=lambda s: (s[0], s[2] in _GENERIC_TYPES, -s[1])):
        if merged and start < merged[-1][1]:
            last = merged[-1]
            merged[-1] = (last[0], max(last[1], end), last[2])
        else:
            merged.append((start, end, secret_type))
    parts: list[str] = []
    at = 0
    for start, end, secret_type in merged:
        parts += [text[at:start], placeholder(secret_type)]
        at = end
    parts.append(text[at:])
    return Scanned("".join(parts), tuple(Finding(type=t, line=n) for n, t in _reported(hits)))


_GENERIC_TYPES = ("Base64 High Entropy String", "Secret Keyword")


def _reported(hits: list[_Hit]) -> list[tuple[int, str]]:
    """(line, type) once each; a line a specific detector named is not reported again as a generic guess."""
    by_line: dict[int, set[str]] = {}
    for hit in hits:
        by_line.setdefault(hit.line, set()).add(hit.type)
    out = []
    for line, types in sorted(by_line.items()):
        specific = types - set(_GENERIC_TYPES)
        out += [(line, t) for t in sorted(specific or types)]
    return out


def _block_start(text: str, start: int) -> int:
    """Back from ``BEGIN …`` to the dashes that open the armour line."""
    while start > 0 and text[start - 1] == "-":
        start -= 1
    return start


def _added_lines(patch: str) -> dict[str, list[tuple[int, str]]]:
    """The lines a unified diff adds, per new file path, with their line numbers in the new file."""
    added: dict[str, list[tuple[int, str]]] = {}
    path: str | None = None
    new_line = 0
    for line in patch.split("\n"):
        if line.startswith("+++ "):
            target = line[4:].rstrip("\t")
            path = None if target == "/dev/null" else target.removeprefix("b/")
            continue
        if line.startswith("diff --git ") or line.startswith("--- "):
            continue
        if line.startswith("@@"):
            match = re.match(r"@@ -\d+(?:,\d+)? \+(\d+)", line)
            new_line = int(match.group(1)) if match else 0
            continue
        if path is None or not new_line:
            continue
        if line.startswith("+"):
            added.setdefault(path, []).append((new_line, line[1:]))
            new_line += 1
        elif line.startswith(" "):
            new_line += 1
    return added


def _is_lock_file(path: str) -> bool:
    from detect_secrets.filters.heuristic import is_lock_file

    return bool(is_lock_file(path))


@contextlib.contextmanager
def _settings() -> Iterator[None]:
    """detect-secrets' global settings set to corral's detectors for one scan, then put back."""
    from detect_secrets.settings import transient_settings

    with transient_settings({"plugins_used": [{"name": name} for name in _detector_names()]}):
        yield


@functools.cache
def _detector_names() -> tuple[str, ...]:
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class

    names = [cls.__name__ for cls in get_mapping_from_secret_type_to_class().values()]
    return tuple(name for name in names if name not in EXCLUDED_DETECTORS)


def _build_prefilter() -> tuple[list[re.Pattern[str]], dict[str, list[re.Pattern[str]]]]:
    """Expressions that together match every line any configured detector could flag (see the module's doc)."""
    from detect_secrets.plugins.base import RegexBasedDetector
    from detect_secrets.plugins.high_entropy_strings import HighEntropyStringsPlugin
    from detect_secrets.plugins.keyword import DENYLIST
    from detect_secrets.settings import get_plugins

    prefilter: list[re.Pattern[str]] = []
    patterns: dict[str, list[re.Pattern[str]]] = {}
    for plugin in get_plugins():
        if isinstance(plugin, RegexBasedDetector):
            patterns[plugin.secret_type] = list(plugin.denylist)
            prefilter += patterns[plugin.secret_type]
        elif isinstance(plugin, HighEntropyStringsPlugin):
            # The detector reads quoted strings only, and n characters hold at most log2(n) bits of
            # entropy a character: shorter strings can never pass its threshold.
            run = f"[{re.escape(plugin.charset)}]{{{math.floor(2**plugin.entropy_limit) + 1},}}"
            prefilter.append(re.compile(f"'{run}'|\"{run}\""))
        elif plugin.secret_type == "Secret Keyword":
            prefilter.append(re.compile("|".join(DENYLIST), re.IGNORECASE))
        else:  # a detector this prefilter does not know: let every line through rather than miss one
            prefilter.append(re.compile("^", re.MULTILINE))
    return prefilter, patterns


def _candidate_lines(text: str, prefilter: list[re.Pattern[str]]) -> list[int]:
    """1-based numbers of the lines some prefilter expression matches (a match may span lines)."""
    starts = [0]
    at = text.find("\n")
    while at >= 0:
        starts.append(at + 1)
        at = text.find("\n", at + 1)
    lines: set[int] = set()
    for pattern in prefilter:
        for match in pattern.finditer(text):
            first = bisect.bisect_right(starts, match.start())
            last = bisect.bisect_right(starts, max(match.start(), match.end() - 1))
            lines.update(range(first, last + 1))
    return sorted(lines)


#: The process-wide scanner.
SCANNER = SecretScanner()
