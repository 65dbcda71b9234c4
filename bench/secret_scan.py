"""Secret scanner benchmark: false positives on ordinary code, and what a scan costs.

    .venv/bin/python bench/secret_scan.py [--root PATH ...] [--peer-files N] [--json]

Scans every text file of the given trees (default: this project's git-tracked files and the
site-packages of the running interpreter) the way corral scans a tool's output (format unknown,
read as a config file) and the way it scans a patch (by the file's own name), and counts what it
flags. Neither tree holds a real secret, so every finding is a false positive — except in files
that hold fake secrets on purpose (test fixtures, detect-secrets' own code), which are counted
apart. The peer figure, from the same run on the first ``--peer-files`` files: detect-secrets as
its CLI scans (every detector, every line, no prefilter). Findings are reported by file, line and
type, never by value. docs/BENCHMARKS.md records a run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import sysconfig
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.support import machine_facts, progress
from corral.secrets.scanner import SCANNER

ROOT = Path(__file__).resolve().parent.parent
MAX_FILE_BYTES = 1_000_000
#: Directories that hold fake secrets on purpose: findings there are true positives, counted apart.
FIXTURE_DIRS = {"tests", "test", "testing", "detect_secrets"}


def project_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [ROOT / name for name in out.decode().split("\0") if name]


def tree_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def read_text(path: Path) -> str | None:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def is_fixture(name: str) -> bool:
    path = Path(name)
    return bool(FIXTURE_DIRS & set(path.parts[:-1])) or path.name.startswith("test_") or path.stem.endswith("_test")


def scan_tree(label: str, files: list[Path], base: Path) -> dict[str, Any]:
    stats: dict[str, Any] = {"tree": label, "files": 0, "lines": 0, "bytes": 0}
    modes = {"output": (Counter(), Counter(), 0.0), "file": (Counter(), Counter(), 0.0)}
    flagged: dict[str, dict[str, int]] = {"output": {}, "file": {}}
    for path in files:
        text = read_text(path)
        if text is None:
            continue
        name = str(path.relative_to(base)) if path.is_relative_to(base) else str(path)
        stats["files"] += 1
        stats["lines"] += text.count("\n") + 1
        stats["bytes"] += len(text.encode())
        for mode, filename in (("output", None), ("file", name)):
            types, kinds, spent = modes[mode]
            started = time.perf_counter()
            findings = SCANNER.scan(text, filename=filename).findings
            spent += time.perf_counter() - started
            for finding in findings:
                types[finding.type] += 1
                kinds["fixture" if is_fixture(name) else "ordinary"] += 1
            if findings:
                flagged[mode][name] = len(findings)
            modes[mode] = (types, kinds, spent)
    for mode, (types, kinds, spent) in modes.items():
        ordinary = {n: c for n, c in flagged[mode].items() if not is_fixture(n)}
        stats[mode] = {
            "seconds": round(spent, 3),
            "us_per_kb": round(spent * 1e6 / max(stats["bytes"] / 1024, 1), 1),
            "findings": sum(types.values()),
            "findings_in_fixtures": kinds["fixture"],
            "false_positives": kinds["ordinary"],
            "false_positives_per_1000_lines": round(kinds["ordinary"] * 1000 / max(stats["lines"], 1), 3),
            "files_flagged": len(ordinary),
            "files_flagged_pct": round(100 * len(ordinary) / max(stats["files"], 1), 2),
            "by_type": dict(types.most_common()),
            "top_files": dict(sorted(ordinary.items(), key=lambda item: -item[1])[:15]),
        }
    return stats


def peer(files: list[Path]) -> dict[str, Any]:
    """detect-secrets as its own CLI scans: every detector, every line, no prefilter."""
    from detect_secrets.core.scan import scan_file
    from detect_secrets.settings import default_settings

    count, lines, found, started = 0, 0, Counter(), time.perf_counter()
    spent = 0.0
    with default_settings():
        for path in files:
            text = read_text(path)
            if text is None:
                continue
            count += 1
            lines += text.count("\n") + 1
            started = time.perf_counter()
            for secret in scan_file(str(path)):
                found[secret.type] += 1
            spent += time.perf_counter() - started
    total = sum(found.values())
    return {"files": count, "lines": lines, "seconds": round(spent, 3), "findings": total, "by_type": dict(found)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", action="append", type=Path, help="a tree to scan (repeatable)")
    parser.add_argument("--peer-files", type=int, default=400, help="files the peer scan covers (0: none)")
    parser.add_argument("--json", action="store_true", help="print JSON (the table goes to stderr)")
    args = parser.parse_args()

    trees: list[tuple[str, list[Path], Path]] = []
    if args.root:
        trees += [(str(root), tree_files(root), root) for root in args.root]
    else:
        site = Path(sysconfig.get_paths()["purelib"])
        trees += [("corral (git ls-files)", project_files(), ROOT), (f"site-packages ({site})", tree_files(site), site)]
    results = []
    for label, files, base in trees:
        progress(f"scanning {label}: {len(files)} files")
        results.append(scan_tree(label, files, base))
    all_files = [p for _, files, _ in trees for p in files]
    peer_result = peer(all_files[: args.peer_files]) if args.peer_files else None
    ours_on_peer = scan_tree("peer sample", all_files[: args.peer_files], Path("/")) if args.peer_files else None
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_facts(Path("/tmp")),
        "trees": results,
        "peer_sample": {"detect_secrets_cli": peer_result, "corral": ours_on_peer},
    }
    table = render(report)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(report, indent=1))
    else:
        print(table)


def render(report: dict[str, Any]) -> str:
    lines = []
    for tree in report["trees"]:
        lines.append(f"{tree['tree']}: {tree['files']} files, {tree['lines']} lines, {tree['bytes'] / 1e6:.1f} MB")
        for mode in ("output", "file"):
            m = tree[mode]
            lines.append(
                f"  as {mode:6}: {m['false_positives']} false positives ({m['false_positives_per_1000_lines']} per "
                f"1000 lines, {m['files_flagged']} files = {m['files_flagged_pct']}%), {m['findings_in_fixtures']} in "
                f"fixtures; {m['seconds']} s ({m['us_per_kb']} µs/KB); {m['by_type']}"
            )
            for name, n in list(m["top_files"].items())[:8]:
                lines.append(f"      {n:4}  {name}")
    sample = report["peer_sample"]
    if sample["detect_secrets_cli"]:
        p, c = sample["detect_secrets_cli"], sample["corral"]
        lines.append(
            f"peer sample ({p['files']} files, {p['lines']} lines): detect-secrets CLI-style {p['seconds']} s, "
            f"{p['findings']} findings {p['by_type']}; corral as output {c['output']['seconds']} s, "
            f"{c['output']['findings']} findings; as file {c['file']['seconds']} s, {c['file']['findings']} findings"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
