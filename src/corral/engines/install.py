"""The external engines' command-line tools: installed from the npm registry into corral's cache.

Each external engine drives a real CLI: Claude Code, Codex or OpenCode. ``corral engines install
NAME`` installs the package at a version (by default the one corral's tests run) into
``engines_dir()/NAME/VERSION`` — outside any repository, so an agent never sees or changes it —
checks that its command starts and reports that version, records what was installed in
``installed.json`` beside it, and pins it: runs use the pinned version until another is installed.

An install is made in a temporary directory next to its final place and renamed there when it
works, so a failed or interrupted install leaves nothing a run could pick up.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from corral.errors import EngineInstallError, SandboxError, UsageError
from corral.sandbox.proc import run_process

NPM_TIMEOUT_S = 900.0
VERSION_TIMEOUT_S = 60.0
INSTALLED_FILE = "installed.json"
COMPANIONS_DIR = "companions"
PINNED_FILE = "pinned"

_VERSION = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+(?:[-+][0-9A-Za-z.-]+)?")


@dataclass(frozen=True)
class Cli:
    """An engine's command-line tool as the npm registry has it."""

    engine: str
    package: str
    command: str
    tested: str
    """The version corral's tests run against: the default for ``install``."""
    needs_node: bool
    """Its command is a node script (its node runtime goes into the sandbox with it)."""
    companions: tuple[str, ...] = ()
    """Packages installed beside it at the same version, in ``COMPANIONS_DIR`` with their lockfile (for
    OpenCode: its plugin SDK, which it would otherwise fetch from the registry at every start)."""


CLIS: dict[str, Cli] = {
    cli.engine: cli
    for cli in (
        Cli("claude-code", "@anthropic-ai/claude-code", "claude", tested="2.1.332", needs_node=False),
        Cli("codex", "@openai/codex", "codex", tested="0.171.0", needs_node=True),
        Cli(
            "opencode",
            "opencode-ai",
            "opencode",
            tested="1.18.33",
            needs_node=False,
            companions=("@opencode-ai/plugin",),
        ),
    )
}


@dataclass(frozen=True)
class Installed:
    """One installed version of an engine's CLI (what ``installed.json`` records)."""

    engine: str
    package: str
    version: str
    root: Path
    command: str
    """The command's path, relative to ``root``."""
    installed_at: float
    node: str | None = None
    """``node --version`` when it was installed, for a CLI that runs on node."""

    @property
    def binary(self) -> Path:
        return self.root / self.command


def engines_dir() -> Path:
    """Where the CLIs are installed: ``$CORRAL_ENGINES_DIR``, else ``$XDG_CACHE_HOME/corral/engines``."""
    configured = os.environ.get("CORRAL_ENGINES_DIR")
    if configured:
        return Path(configured).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base, "corral", "engines").absolute()


def cli_for(engine: str) -> Cli:
    try:
        return CLIS[engine]
    except KeyError:
        raise UsageError(
            f"no external engine named {engine!r}", hint=f"the external engines are: {', '.join(sorted(CLIS))}"
        ) from None


def check_version(version: str) -> str:
    """An exact version (``1.2.3``, ``1.2.3-beta.1``): a tag or a range would not pin anything."""
    if not _VERSION.fullmatch(version):
        raise UsageError(
            f"not an exact version: {version!r}", hint="give one like 2.1.332 (`npm view PACKAGE versions` lists them)"
        )
    return version


def node_version() -> str | None:
    """``node --version`` (``v20.20.2``), or None without node."""
    node = shutil.which("node")
    return _version_output([node, "--version"]) if node else None


async def install(engine: str, version: str | None = None) -> Installed:
    """Install ``engine``'s CLI at ``version`` (default: the tested one) and pin it; an installed version
    that still starts is pinned without being installed again."""
    cli = cli_for(engine)
    version = check_version(version or cli.tested)
    home = engines_dir() / engine
    final = home / version
    existing = read_installed(final)
    if existing is not None and _complete(existing) and await asyncio.to_thread(_reports, existing, version):
        pin(existing)
        return existing
    npm = shutil.which("npm")
    if npm is None:
        raise EngineInstallError(
            f"cannot install {engine}: npm is not installed", hint="install Node.js with npm (scripts/setup does)"
        )
    node = await asyncio.to_thread(node_version) if cli.needs_node else None
    home.mkdir(parents=True, exist_ok=True)
    partial = home / f".installing-{version}-{secrets.token_hex(4)}"
    try:
        partial.mkdir()
        argv = [npm, "install", "--prefix", str(partial), "--no-audit", "--no-fund", "--no-save"]
        argv += ["--no-package-lock", "--loglevel=error", f"{cli.package}@{version}"]
        env = {**os.environ, "npm_config_update_notifier": "false"}
        try:
            await run_process(argv, timeout=NPM_TIMEOUT_S, env=env, what="npm install", purpose=f"of {cli.package}")
        except SandboxError as err:
            raise EngineInstallError(f"cannot install {cli.package}@{version}: {err.message}") from None
        if cli.companions:  # a package.json and lockfile naming them exactly, as the CLI writes its own
            companions = partial / COMPANIONS_DIR
            companions.mkdir()
            argv = [npm, "install", "--prefix", str(companions), "--no-audit", "--no-fund", "--save-exact"]
            argv += ["--loglevel=error", *(f"{package}@{version}" for package in cli.companions)]
            try:
                await run_process(
                    argv, timeout=NPM_TIMEOUT_S, env=env, what="npm install", purpose=f"beside {cli.package}"
                )
            except SandboxError as err:
                raise EngineInstallError(
                    f"cannot install {', '.join(cli.companions)}@{version}: {err.message}"
                ) from None
        command = Path("node_modules", ".bin", cli.command)
        found = Installed(engine, cli.package, version, partial, str(command), time.time(), node)
        if not found.binary.exists():
            raise EngineInstallError(f"{cli.package}@{version} installed no `{cli.command}` command")
        if not await asyncio.to_thread(_reports, found, version):
            raise EngineInstallError(f"{cli.package}@{version}: `{cli.command} --version` does not report {version}")
        _write_installed(found)
        if final.exists():  # what was there did not start: replaced
            shutil.rmtree(final)
        try:
            os.rename(partial, final)
        except OSError:  # another process finished installing this version first: theirs is kept
            if read_installed(final) is None:
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    done = read_installed(final)
    assert done is not None
    pin(done)
    return done


def _complete(installed: Installed) -> bool:
    """Whether an install holds its companions (an install made before they were added does not)."""
    packages = installed.root / COMPANIONS_DIR / "node_modules"
    return all((packages / name / "package.json").is_file() for name in cli_for(installed.engine).companions)


def _reports(installed: Installed, version: str) -> bool:
    """Whether the installed command starts and says it is ``version``."""
    said = _version_output([str(installed.binary), "--version"])
    return said is not None and version in said


def _write_installed(installed: Installed) -> None:
    record = {**asdict(installed), "root": None}  # the directory is renamed after this is written
    (installed.root / INSTALLED_FILE).write_text(json.dumps(record, indent=1) + "\n")


def read_installed(root: Path) -> Installed | None:
    """What ``root`` (an engine's version directory) holds, or None if no install finished there."""
    try:
        data = json.loads((root / INSTALLED_FILE).read_text())
        return Installed(**{**data, "root": root})
    except (OSError, ValueError, TypeError):
        return None


def pin(installed: Installed) -> None:
    """Runs of ``installed.engine`` use this version from now on."""
    home = installed.root.parent
    partial = home / f".{PINNED_FILE}-{secrets.token_hex(4)}"
    partial.write_text(installed.version + "\n")
    os.replace(partial, home / PINNED_FILE)


def installed_versions(engine: str) -> list[Installed]:
    """Every finished install of ``engine``, oldest first."""
    home = engines_dir() / cli_for(engine).engine
    try:
        roots = [path for path in home.iterdir() if not path.name.startswith(".") and path.is_dir()]
    except OSError:
        return []
    found = [item for item in map(read_installed, roots) if item is not None]
    return sorted(found, key=lambda item: item.installed_at)


def pinned(engine: str) -> Installed | None:
    """The version runs of ``engine`` use, or None when none is installed."""
    home = engines_dir() / cli_for(engine).engine
    try:
        version = (home / PINNED_FILE).read_text().strip()
    except OSError:
        return None
    return read_installed(home / check_version(version)) if _VERSION.fullmatch(version) else None


def require(engine: str) -> Installed:
    """The pinned install of ``engine``, or an error saying how to install it."""
    found = pinned(engine)
    if found is None:
        raise EngineInstallError(
            f"the {engine} engine's CLI is not installed", hint=f"run `corral engines install {engine}`"
        )
    if not _complete(found):
        raise EngineInstallError(
            f"the {engine} engine's CLI {found.version} lacks the packages corral installs beside it",
            hint=f"reinstall it: `corral engines install {engine} --version {found.version}`",
        )
    return found


NODE_MINIMUM = (16, 0)
"""What Codex's launcher asks for (its package's ``engines``); the other two CLIs are native binaries."""


def doctor_rows() -> list[tuple[str, bool, str]]:
    """``corral doctor``'s rows for the external engines: node, and each CLI (pinned, and does it start)."""
    rows: list[tuple[str, bool, str]] = []
    said = node_version()
    reported = said.splitlines()[0] if said else None
    if reported is None:
        rows.append(("engine: node", False, "not found: the codex engine needs Node.js >= 16"))
    else:
        numbers = tuple(int(part) for part in re.findall(r"\d+", reported)[:2])
        ok = numbers >= NODE_MINIMUM
        rows.append(("engine: node", ok, reported if ok else f"{reported}: the codex engine needs >= 16"))
    for cli in CLIS.values():
        current = pinned(cli.engine)
        if current is None:
            rows.append((f"engine: {cli.engine}", False, f"not installed: corral engines install {cli.engine}"))
            continue
        if not _complete(current):
            rows.append(
                (f"engine: {cli.engine}", False, f"{current.version} lacks its companion packages: reinstall it")
            )
            continue
        if not _reports(current, current.version):
            rows.append((f"engine: {cli.engine}", False, f"{current.binary} does not start: reinstall it"))
            continue
        tested = "" if current.version == cli.tested else f"; corral is tested with {cli.tested}"
        rows.append((f"engine: {cli.engine}", True, f"{current.version} at {current.binary}{tested}"))
    return rows


def _version_output(argv: list[str]) -> str | None:
    """What ``argv`` (a ``--version`` call) prints, or None if it does not start or fails."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=VERSION_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None
