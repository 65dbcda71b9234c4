"""Escape attempts through the filesystem: host secrets, other runs, writes outside, links, /proc, leaked fds."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from pathlib import Path

import pytest

from corral.errors import PathEscapeError, SandboxError
from tests.security.sandbox.attacks import DENIED_BY_POLICY, run_attack
from tests.security.sandbox.conftest import HostCanaries, SandboxFactory, digest_tree

# Real escape attempts in real sandboxes: the full suite (and CI) runs them, the fast lane does not.
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60), pytest.mark.slow]

HOST_SHADOW = Path("/etc/shadow")


def host_shadow_lines() -> set[str]:
    """The host's shadow entries; a sandbox may have its own shadow file but must never show these."""
    return {line for line in HOST_SHADOW.read_text().splitlines() if line.strip()}


def shadow_leaks(values: list[object]) -> list[str]:
    host = host_shadow_lines()
    return [line for value in values if isinstance(value, str) for line in value.splitlines() if line in host]


async def test_cannot_read_host_shadow(make_sandbox: SandboxFactory) -> None:
    before = digest_tree(HOST_SHADOW)
    sandbox = await make_sandbox()
    attack = await run_attack(
        sandbox,
        """
        for label, path in [
            ("shadow", "/etc/shadow"),
            ("gshadow", "/etc/gshadow"),
            ("via /proc/self/root", "/proc/self/root/etc/shadow"),
            ("via /proc/1/root", "/proc/1/root/etc/shadow"),
            ("via dotdot", "../../../../../../../../etc/shadow"),
        ]:
            attempt(label, read, path)
        """,
    )
    values = [outcome.value for outcome in attack.outcomes.values() if outcome.ok]
    leaked = shadow_leaks(values)
    assert not leaked, f"ESCAPE: host /etc/shadow entries read inside the sandbox: {leaked[:3]}; {attack.describe()}"
    assert digest_tree(HOST_SHADOW) == before, "ESCAPE: host /etc/shadow changed"


async def test_cannot_read_host_home(make_sandbox: SandboxFactory, canaries: HostCanaries) -> None:
    sandbox = await make_sandbox()
    attack = await run_attack(
        sandbox,
        """
        attempt("root home canary", read, P["root_file"])
        attempt("list root home", os.listdir, P["root_home"])
        attempt("planted home key", read, P["home_key"])
        attempt("list planted home", os.listdir, P["home"])
        attempt("host ssh dir of root", os.listdir, os.path.join(P["root_home"], ".ssh"))
        attempt("~/.ssh key relative to sandbox HOME", read, os.path.expanduser("~/.ssh/id_ed25519"))
        attempt("root home via /proc/self/root", read, "/proc/self/root" + P["root_file"])
        attempt("search by name", hunt, [P["token"]])
        """,
        {
            "root_file": str(canaries.root_home_file),
            "root_home": str(canaries.root_home_file.parent),
            "home_key": str(canaries.fake_home_key),
            "home": str(canaries.fake_home),
            "token": canaries.token,
        },
    )
    leaked = attack.leaking(canaries.token)
    assert not leaked, f"ESCAPE: host home content or canary names visible inside: {attack.describe(list(leaked))}"
    for label in ("root home canary", "planted home key"):
        assert not attack[label].ok, f"ESCAPE: read {label} from the host home: {attack[label]}"
    canaries.assert_intact()


async def test_cannot_read_or_corrupt_the_corral_store(make_sandbox: SandboxFactory, canaries: HostCanaries) -> None:
    sandbox = await make_sandbox()
    store = canaries.store_db
    attack = await run_attack(
        sandbox,
        """
        store = P["store"]
        attempt("read store by host path", read, store)
        attempt("read store copied into workspace", read, ".corral/corral.db")
        attempt("read store by relative guess", read, os.path.join(P["relative_guess"], ".corral", "corral.db"))
        attempt("append to store", write, store, "corrupted", "a")
        attempt("replace store", write, store, "corrupted", "w")
        attempt("delete store", os.unlink, store)
        attempt("search by name", lambda: [p for p in hunt(["corral.db"]) if not p.startswith(os.getcwd())])
        """,
        {"store": str(store), "relative_guess": os.path.relpath(store.parent.parent, sandbox.workspace)},
    )
    leaked = attack.leaking(canaries.token)
    assert not leaked, f"ESCAPE: the host corral store was read: {attack.describe(list(leaked))}"
    for label in ("append to store", "replace store", "delete store"):
        assert not attack[label].ok, f"ESCAPE: {label} succeeded inside the sandbox: {attack[label]}"
    found = attack["search by name"]
    assert not (found.ok and found.value), f"ESCAPE: a corral.db is reachable inside the sandbox: {found}"
    canaries.assert_intact()


def files_named(root: Path, name: str, *, skip: Path) -> list[Path]:
    """Files called ``name`` under ``root`` (not descending into ``skip``)."""
    hits = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        if name in filenames:
            hits.append(Path(dirpath, name))
    return hits


def tree_state(root: Path, *, skip: list[Path]) -> dict[str, tuple[int, int, int, bytes]]:
    """Mode, owner, size and content of everything under ``root``, leaving out the ``skip`` subtrees."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not any(Path(dirpath, d).is_relative_to(s) for s in skip)]
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            info = path.lstat()
            content = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
            state[str(path)] = (info.st_mode, info.st_uid, info.st_size, content)
    return state


# Written first by attacks that must tell the sandbox's own scratch space (its /tmp and home, which a
# backend keeps in the run dir) from the run dir's private state: where the markers land is scratch.
SCRATCH_MARKERS = """
import pwd
for directory in {"/tmp", "/var/tmp", "/dev/shm", pwd.getpwuid(os.getuid()).pw_dir}:
    try:
        write(os.path.join(directory, P["scratch_marker"]), "scratch")
    except OSError:
        pass
"""


def scratch_roots(run_dir: Path, marker: str, workspace: Path) -> list[Path]:
    """The host directories backing the sandbox's own scratch space, found by its markers."""
    return [hit.parent for hit in files_named(run_dir, marker, skip=workspace)]


async def test_cannot_reach_the_run_dirs_private_state(make_sandbox: SandboxFactory, token: str) -> None:
    sandbox = await make_sandbox()
    run_dir = sandbox.workspace.parent
    # Private state the runtime and backend keep beside the workspace, plus canaries we plant there.
    (run_dir / f"private-{token}.txt").write_text(f"run dir secret {token}\n")
    private = sorted(entry for entry in run_dir.iterdir() if entry != sandbox.workspace)
    baseline = sandbox.snapshot.git_dir
    (baseline / f"canary-{token}").write_text(f"baseline secret {token}\n")
    before = tree_state(run_dir, skip=[sandbox.workspace])
    marker, planted = f"scratch-{secrets.token_hex(6)}", f"evil-{secrets.token_hex(6)}"
    attack = await run_attack(
        sandbox,
        """
        for path in P["private"]:
            name = os.path.basename(path)
            attempt("list " + path, os.listdir, path)
            attempt("list ../" + name, os.listdir, os.path.join("..", name))
            attempt("read " + path, read, path)
            attempt("read ../" + name, read, os.path.join("..", name))
        attempt("read baseline HEAD", read, os.path.join(P["baseline"], "HEAD"))
        attempt("read baseline canary", read, os.path.join(P["baseline"], P["baseline_canary"]))
        attempt("overwrite baseline HEAD", write, os.path.join(P["baseline"], "HEAD"), "ref: refs/heads/evil\\n")
        attempt("overwrite baseline HEAD via ..", write, "../baseline.git/HEAD", "ref: refs/heads/evil\\n")
        attempt("plant in run dir", write, os.path.join(P["run_dir"], P["planted"]), "x")
        attempt("plant in run dir via ..", write, "../" + P["planted"] + "-rel", "x")
        attempt("search by name", hunt, [P["token"]])
        """,
        {
            "private": [str(entry) for entry in private],
            "baseline": str(baseline),
            "baseline_canary": f"canary-{token}",
            "run_dir": str(run_dir),
            "token": token,
            "planted": planted,
            "scratch_marker": marker,
        },
        prelude=SCRATCH_MARKERS,
    )
    leaked = attack.leaking(token, "ref: refs/heads")
    assert not leaked, f"ESCAPE: the run dir's private state is visible inside: {attack.describe(list(leaked))}"
    reached = {
        label: str(outcome) for label, outcome in attack.succeeded().items() if label.startswith(("list ", "read "))
    }
    assert not reached, f"ESCAPE: the run dir's private entries are reachable inside: {reached}"
    for label in ("overwrite baseline HEAD", "overwrite baseline HEAD via .."):
        assert not attack[label].ok, f"ESCAPE: {label} succeeded: {attack[label]}"
    # Writing "the run dir" may only ever reach the sandbox's own scratch space, never the run dir itself.
    scratch = scratch_roots(run_dir, marker, sandbox.workspace)
    assert not (run_dir / planted).exists(), "ESCAPE: the sandbox created a file in its host run dir"
    after = tree_state(run_dir, skip=[sandbox.workspace, *scratch])
    changed = sorted(path for path in set(before) | set(after) if before.get(path) != after.get(path))
    changed = [path for path in changed if not any(Path(path).is_relative_to(s) for s in scratch)]
    assert not changed, f"ESCAPE: the sandbox changed its run dir's private state: {changed[:10]}"
    assert await sandbox.diff() == "", "the baseline no longer matches the untouched workspace"


async def _run_beside(holder, attack_coro):
    """Keep a long command running in sandbox ``holder`` while ``attack_coro`` runs; stop it afterwards."""
    async with asyncio.TaskGroup() as group:
        holding = group.create_task(holder.exec("sleep 20", timeout=30))
        await asyncio.sleep(0.3)
        try:
            return await attack_coro
        finally:
            holding.cancel()


async def test_cannot_read_another_sandboxs_workspace(make_sandbox: SandboxFactory, token: str) -> None:
    victim = await make_sandbox(name="victim")
    attacker = await make_sandbox(name="attacker")
    await victim.write_file(f"victim-{token}.txt", f"victim secret {token}\n".encode())
    victim_file = victim.workspace / f"victim-{token}.txt"
    attack = await _run_beside(
        victim,
        run_attack(
            attacker,
            """
            attempt("read by host path", read, P["victim_file"])
            attempt("list victim workspace", os.listdir, P["victim_ws"])
            attempt("list victim run dir", os.listdir, os.path.dirname(P["victim_ws"]))
            attempt("read by relative guess", read, P["relative_guess"])
            for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
                attempt(f"read via /proc/{pid}/cwd", read, f"/proc/{pid}/cwd/" + P["name"])
                attempt(f"read via /proc/{pid}/root", read, f"/proc/{pid}/root" + P["victim_file"])
            attempt("search by name", hunt, [P["token"]])
            """,
            {
                "victim_file": str(victim_file),
                "victim_ws": str(victim.workspace),
                "relative_guess": os.path.relpath(victim_file, attacker.workspace),
                "name": victim_file.name,
                "token": token,
            },
        ),
    )
    leaked = attack.leaking(token)
    assert not leaked, f"ESCAPE: sandbox B read sandbox A's workspace: {attack.describe(list(leaked))}"
    assert not attack["read by host path"].ok, f"ESCAPE: {attack['read by host path']}"
    assert victim_file.read_text() == f"victim secret {token}\n"


async def test_cannot_write_another_sandboxs_workspace(make_sandbox: SandboxFactory, token: str) -> None:
    victim = await make_sandbox(name="victim")
    attacker = await make_sandbox(name="attacker")
    before = digest_tree(victim.workspace)
    try:
        attack = await _write_into_victim(victim, attacker, token)
    finally:
        _remove_planted_in_host_cwds(f"planted-{token}")
    for label in ("create by host path", "overwrite README by host path", "delete by host path"):
        assert not attack[label].ok, f"ESCAPE: sandbox B could {label} in sandbox A: {attack[label]}"
    assert digest_tree(victim.workspace) == before, "ESCAPE: sandbox B changed sandbox A's workspace"
    # Planting into its own workspace through its own /proc/<pid>/cwd is fine; nothing may land in A's.
    assert not (victim.workspace / f"planted-{token}").exists()


def _remove_planted_in_host_cwds(name: str) -> None:
    """Were /proc/<pid>/cwd writes ever to reach host processes' directories, take the files back."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(os.readlink(f"/proc/{entry}/cwd"), name))


async def _write_into_victim(victim, attacker, token: str):
    return await _run_beside(
        victim,
        run_attack(
            attacker,
            """
            attempt("create by host path", write, os.path.join(P["victim_ws"], "planted-" + P["token"]), "x")
            attempt("overwrite README by host path", write, os.path.join(P["victim_ws"], "README.md"), "pwned")
            attempt("delete by host path", os.unlink, os.path.join(P["victim_ws"], "README.md"))
            attempt("create by relative guess", write, os.path.join(P["relative_ws"], "planted-" + P["token"]), "x")
            for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
                attempt(f"write via /proc/{pid}/cwd", write, f"/proc/{pid}/cwd/planted-" + P["token"], "x")
            """,
            {
                "victim_ws": str(victim.workspace),
                "relative_ws": os.path.relpath(victim.workspace, attacker.workspace),
                "token": token,
            },
        ),
    )


def _host_leftovers(paths: list[Path]) -> list[Path]:
    return [path for path in paths if os.path.lexists(path)]


async def test_cannot_write_outside_the_workspace_by_absolute_path(
    make_sandbox: SandboxFactory, canaries: HostCanaries, token: str, tmp_path: Path
) -> None:
    sandbox = await make_sandbox()
    run_dir = sandbox.workspace.parent
    directories = [
        Path("/etc"),
        Path("/usr"),
        Path("/usr/local/bin"),
        Path("/root"),
        Path("/"),
        Path("/var"),
        Path("/opt"),
        canaries.outside_dir,
        canaries.fake_home / ".ssh",
        canaries.store_db.parent,
        run_dir,
        tmp_path,
        Path("/tmp"),
        Path("/var/tmp"),
        Path("/dev/shm"),
    ]
    targets = [directory / f"{token}-{index}" for index, directory in enumerate(directories)]
    try:
        attack = await run_attack(
            sandbox,
            """
            import pwd
            scratch = {}
            for directory in ("/tmp", "/var/tmp", "/dev/shm", pwd.getpwuid(os.getuid()).pw_dir):
                try:
                    scratch[directory] = os.stat(directory).st_dev
                except OSError:
                    pass
            RESULTS["scratch devices"] = {"ok": True, "value": scratch}
            def plant(path):
                write(path, "planted")
                return os.stat(path).st_dev  # which filesystem it landed on, as the sandbox sees it
            for path in P["targets"]:
                attempt(path, plant, path)
            """,
            {"targets": [str(p) for p in targets]},
        )
        leftovers = _host_leftovers(targets)
        assert not leftovers, f"ESCAPE: files written in the sandbox appeared on the host: {leftovers}"
        # A host path may also name a place inside the sandbox's private /tmp (the run dir lives under the
        # host's /tmp here): such a write is contained when it landed on the sandbox's own scratch filesystem.
        scratch = attack["scratch devices"].value
        escaped = {
            str(path): str(attack[str(path)])
            for path in targets
            if attack[str(path)].ok and attack[str(path)].value not in scratch.values()
        }
        assert not escaped, (
            f"ESCAPE: writes outside the workspace succeeded inside the sandbox, not on its scratch "
            f"filesystems {scratch}: {escaped}"
        )
        canaries.assert_intact()
    finally:
        for path in _host_leftovers(targets):
            with contextlib.suppress(OSError):
                path.unlink()


async def test_cannot_write_outside_the_workspace_with_dotdot(
    make_sandbox: SandboxFactory, token: str, tmp_path: Path
) -> None:
    sandbox = await make_sandbox()
    relative = [
        f"../{token}",
        f"../../{token}",
        f"../../../{token}",
        f"src/../../{token}",
        "../" * 12 + token,
    ]
    host_targets = {rel: Path(os.path.normpath(sandbox.workspace / rel)) for rel in relative}
    try:
        attack = await run_attack(
            sandbox,
            """
            def plant(rel):
                write(rel, "planted " + P["token"])
                return os.path.realpath(rel)  # where it landed, as the sandbox sees it
            for rel in P["relative"]:
                attempt(rel, plant, rel)
            """,
            {"relative": relative, "token": token},
        )
        # Landing in the sandbox's own scratch (/tmp, /dev/shm) is not an escape; anywhere else is.
        scratch = ("/tmp/", "/var/tmp/", "/dev/shm/")
        escaped = {}
        for rel in relative:
            outcome = attack[rel]
            landed = str(outcome.value) if outcome.ok else ""
            if outcome.ok and not landed.startswith(scratch):
                escaped[rel] = outcome
        assert not escaped, f"ESCAPE: '..' writes left the workspace inside the sandbox: {escaped}"
        leftovers = _host_leftovers(list(host_targets.values()))
        assert not leftovers, f"ESCAPE: '..' writes from the sandbox landed on the host: {leftovers}"
    finally:
        for path in _host_leftovers(list(host_targets.values())):
            with contextlib.suppress(OSError):
                path.unlink()


async def test_cannot_read_host_files_by_absolute_or_relative_path(
    make_sandbox: SandboxFactory, canaries: HostCanaries
) -> None:
    sandbox = await make_sandbox()
    targets = {
        "outside by host path": str(canaries.outside_file),
        "outside by relative path": os.path.relpath(canaries.outside_file, sandbox.workspace),
        "outside dir listing": str(canaries.outside_dir),
        "test tmp dir listing": str(canaries.outside_dir.parent),
        "repo original": str(canaries.store_db.parent.parent / "README.md"),
    }
    attack = await run_attack(
        sandbox,
        """
        for label, path in P["targets"].items():
            attempt(label, os.listdir if label.endswith("listing") else read, path)
        attempt("search by name", lambda: [p for p in hunt(["secret.txt", "host-home"]) if "/proc/" not in p])
        """,
        {"targets": targets},
    )
    leaked = attack.leaking(canaries.token, "host-home", "secret.txt", "outside")
    assert not leaked, f"ESCAPE: host files outside the workspace are readable: {attack.describe(list(leaked))}"
    found = attack["search by name"]
    assert not (found.ok and found.value), f"ESCAPE: host canaries are reachable inside the sandbox: {found}"
    canaries.assert_intact()


async def test_symlinks_in_the_repo_to_host_paths_lead_nowhere(
    make_sandbox: SandboxFactory, canaries: HostCanaries, repo: Path, token: str
) -> None:
    (repo / "etc-link").symlink_to("/etc")
    (repo / "shadow-link").symlink_to("/etc/shadow")
    (repo / "home-link").symlink_to(canaries.root_home_file.parent)
    (repo / "outside-link").symlink_to(canaries.outside_dir)
    (repo / "outside-file-link").symlink_to(canaries.outside_file)
    (repo / "fake-home-link").symlink_to(canaries.fake_home)
    sandbox = await make_sandbox()
    attack = await run_attack(
        sandbox,
        """
        attempt("read shadow via etc-link", read, "etc-link/shadow")
        attempt("read shadow-link", read, "shadow-link")
        attempt("read root home canary via home-link", read, "home-link/" + P["root_name"])
        attempt("list home-link", os.listdir, "home-link")
        attempt("read outside via outside-link", read, "outside-link/secret.txt")
        attempt("read outside-file-link", read, "outside-file-link")
        attempt("read planted key via fake-home-link", read, "fake-home-link/.ssh/id_ed25519")
        attempt("write through outside-link", write, "outside-link/pwned-" + P["token"], "x")
        attempt("append through outside-file-link", write, "outside-file-link", "pwned", "a")
        attempt("plant key through fake-home-link", write, "fake-home-link/.ssh/authorized_keys", "ssh-ed25519 AAAA")
        """,
        {"root_name": canaries.root_home_file.name, "token": token},
    )
    leaked = attack.leaking(token)
    shadow = shadow_leaks([o.value for o in attack.outcomes.values() if o.ok])
    assert not leaked, f"ESCAPE: repo symlinks gave access to host files: {attack.describe(list(leaked))}"
    assert not shadow, f"ESCAPE: host shadow read through a repo symlink: {shadow[:2]}"
    for label in ("write through outside-link", "append through outside-file-link", "plant key through fake-home-link"):
        assert not attack[label].ok, f"ESCAPE: {label} succeeded: {attack[label]}"
    # The host-side file API must refuse the links too.
    for path in ("outside-link/secret.txt", "outside-file-link", "home-link/" + canaries.root_home_file.name):
        with pytest.raises(PathEscapeError):
            await sandbox.read_file(path)
    for path in ("outside-link/pwned.txt", "outside-file-link", "fake-home-link/.ssh/authorized_keys"):
        with pytest.raises(PathEscapeError):
            await sandbox.write_file(path, b"pwned")
    await sandbox.destroy()
    canaries.assert_intact()


async def test_symlinks_made_during_the_run_lead_nowhere(
    make_sandbox: SandboxFactory, canaries: HostCanaries, token: str
) -> None:
    sandbox = await make_sandbox()
    attack = await run_attack(
        sandbox,
        """
        for name, target in P["links"].items():
            attempt("symlink " + name, os.symlink, target, name)
        attempt("read via root-home link", read, "r/" + P["root_name"])
        attempt("read via outside link", read, "o/secret.txt")
        attempt("read via outside-file link", read, "of")
        attempt("read via proc-root link", read, "pr" + P["outside_file"])
        attempt("write via outside link", write, "o/pwned-" + P["token"], "x")
        attempt("append via outside-file link", write, "of", "pwned", "a")
        """,
        {
            "links": {
                "r": str(canaries.root_home_file.parent),
                "o": str(canaries.outside_dir),
                "of": str(canaries.outside_file),
                "pr": "/proc/1/root",
                "s": "/etc/shadow",
            },
            "root_name": canaries.root_home_file.name,
            "outside_file": str(canaries.outside_file),
            "token": token,
        },
    )
    leaked = attack.leaking(token)
    assert not leaked, f"ESCAPE: symlinks made inside reached host files: {attack.describe(list(leaked))}"
    for label in ("write via outside link", "append via outside-file link"):
        assert not attack[label].ok, f"ESCAPE: {label} succeeded: {attack[label]}"
    # The links now sit in the host workspace: the host must not follow them for the runtime either.
    for path in ("o/secret.txt", "of", "r/" + canaries.root_home_file.name, "s"):
        with pytest.raises(PathEscapeError):
            await sandbox.read_file(path)
    for path in ("o/pwned.txt", "of"):
        with pytest.raises(PathEscapeError):
            await sandbox.write_file(path, b"pwned")
    patch = await sandbox.diff()
    assert token not in patch, "ESCAPE: the workspace diff followed a symlink and exported a host file"
    await sandbox.destroy()
    canaries.assert_intact()
    assert sorted(p.name for p in canaries.outside_dir.iterdir()) == ["secret.txt"]


@pytest.mark.slow  # seconds of real work: the full suite runs it, the fast lane does not
async def test_symlink_swap_race_cannot_redirect_host_file_operations(
    make_sandbox: SandboxFactory, canaries: HostCanaries, token: str
) -> None:
    sandbox = await make_sandbox()
    flipper = run_attack(
        sandbox,
        """
        os.mkdir("d")
        write("d/secret.txt", "workspace copy\\n")
        os.symlink(P["outside"], "e")
        AT_FDCWD, RENAME_EXCHANGE = -100, 2
        flips, deadline = 0, time.monotonic() + P["seconds"]
        def exchange():
            sys_call("renameat2", AT_FDCWD, b"d", AT_FDCWD, b"e", RENAME_EXCHANGE)
        atomic = attempt("renameat2 exchange", exchange)["ok"]
        while time.monotonic() < deadline:
            try:
                if atomic:
                    exchange()
                else:  # without renameat2: move the directory away and put a symlink in its place
                    os.rename("d", "d.real"); os.symlink(P["outside"], "d"); os.unlink("d"); os.rename("d.real", "d")
                flips += 1
            except OSError:
                pass
        RESULTS["flips"] = {"ok": True, "value": flips}
        """,
        {"outside": str(canaries.outside_dir), "seconds": 2.0},
        timeout=10,
    )
    reads_leaked, writes, refused = 0, 0, 0
    raw_errors: list[str] = []  # not SandboxError: not an escape, but the file API broke its contract
    async with asyncio.TaskGroup() as group:
        task = group.create_task(flipper)
        await asyncio.sleep(0.4)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and not task.done():
            try:
                data = await sandbox.read_file("d/secret.txt")
                reads_leaked += token in data.decode(errors="replace")
            except SandboxError:
                refused += 1
            except OSError as exc:
                raw_errors.append(f"read_file: {exc!r}")
            try:
                await sandbox.write_file(f"d/pwned-{token}.txt", b"pwned")
                writes += 1
            except SandboxError:
                refused += 1
            except OSError as exc:
                raw_errors.append(f"write_file: {exc!r}")
            await asyncio.sleep(0)
    attack = task.result()
    assert attack["flips"].value > 50, f"the race did not run (flips={attack['flips'].value}); {attack.evidence()}"
    assert reads_leaked == 0, f"ESCAPE: read_file followed a swapped-in symlink to a host file {reads_leaked} times"
    planted = [p.name for p in canaries.outside_dir.iterdir() if p.name != "secret.txt"]
    assert not planted, f"ESCAPE: write_file followed a swapped-in symlink and wrote on the host: {planted}"
    canaries.assert_intact()
    assert not raw_errors, (
        f"contained, but the host file API raised {len(raw_errors)} raw OSError(s) instead of SandboxError "
        f"during the race (an agent can crash the tool call): {sorted(set(raw_errors))[:3]}"
    )


async def test_a_merged_patch_never_hands_a_host_file_to_the_sandbox(
    make_sandbox: SandboxFactory, canaries: HostCanaries
) -> None:
    """A child's patch merged into this workspace is handed to the sandbox's uid afterwards, path by path.
    The sandbox plants symlinks to host files where the patch's paths lead: git refuses to write beyond
    them, and the hand-over (tried here directly, as if the swap came after git wrote) follows none."""
    sandbox = await make_sandbox()
    planted = await sandbox.exec(f"ln -s {canaries.outside_dir} d && ln -s {canaries.outside_file} f && mkdir e")
    assert planted.exit_code == 0, planted.stderr
    owners = {path: os.lstat(path)[4:6] for path in (canaries.outside_dir, canaries.outside_file)}
    patch = "".join(
        f"diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n+++ b/{path}\n@@ -0,0 +1 @@\n+x\n"
        for path in ("d/secret.txt", "e/f")
    )
    report = await sandbox.apply_patch(patch)
    assert not report.applies and any("symbolic link" in line for line in report.problems), report.problems
    await sandbox._patched(patch)  # d/secret.txt through a symlinked directory; f, the link itself
    await sandbox._patched("diff --git a/f b/f\n--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n")
    after = {path: os.lstat(path)[4:6] for path in owners}
    assert after == owners, f"ESCAPE: a host file was handed to the sandbox's uid: {owners} -> {after}"
    canaries.assert_intact()


async def test_cannot_hardlink_host_files_into_the_workspace(
    make_sandbox: SandboxFactory, canaries: HostCanaries
) -> None:
    sandbox = await make_sandbox()
    targets = {
        "shadow": "/etc/shadow",
        "passwd": "/etc/passwd",
        "setuid su": "/usr/bin/su",
        "outside canary": str(canaries.outside_file),
        "root home canary": str(canaries.root_home_file),
        "store": str(canaries.store_db),
    }
    attack = await run_attack(
        sandbox,
        """
        for label, target in P["targets"].items():
            attempt(label, os.link, target, "hl-" + label.replace(" ", "-"))
        """,
        {"targets": targets},
    )
    for label in ("outside canary", "root home canary", "store"):
        assert not attack[label].ok, f"ESCAPE: hard-linked host file {targets[label]} into the workspace"
    host_inodes = {}
    for target in targets.values():
        with contextlib.suppress(OSError):
            info = os.stat(target)
            host_inodes[(info.st_dev, info.st_ino)] = target
    aliased = []
    for dirpath, _dirnames, filenames in os.walk(sandbox.workspace):
        for name in filenames:
            info = os.lstat(os.path.join(dirpath, name))
            if (info.st_dev, info.st_ino) in host_inodes:
                aliased.append(f"{name} -> {host_inodes[(info.st_dev, info.st_ino)]}")
    assert not aliased, f"ESCAPE: workspace files are hard links to host files: {aliased}"
    canaries.assert_intact()


async def test_hardlink_in_the_repo_does_not_alias_the_host_file(
    make_sandbox: SandboxFactory, canaries: HostCanaries, repo: Path
) -> None:
    os.link(canaries.outside_file, repo / "hl.txt")
    canaries.snapshot()  # the link count of the canary changed; its content must not
    sandbox = await make_sandbox()
    result = await sandbox.exec("echo pwned-from-exec >> hl.txt; chmod 777 hl.txt", timeout=10)
    assert result.exit_code == 0, result.stderr
    await sandbox.write_file("hl.txt", b"pwned-from-write_file\n")
    assert "pwned" not in canaries.outside_file.read_text(), "ESCAPE: writing the workspace copy changed a host file"
    assert os.stat(sandbox.workspace / "hl.txt").st_ino != os.stat(canaries.outside_file).st_ino, (
        "ESCAPE: the workspace shares an inode with a host file outside the repo"
    )
    canaries.assert_intact()


async def test_proc_1_root_gives_no_host_access(make_sandbox: SandboxFactory, canaries: HostCanaries) -> None:
    sandbox = await make_sandbox()
    attack = await run_attack(
        sandbox,
        """
        attempt("list /proc/1/root", os.listdir, "/proc/1/root")
        attempt("list /proc/1/cwd", os.listdir, "/proc/1/cwd")
        for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
            for path in P["targets"]:
                attempt(f"/proc/{pid}/root{path}", read, f"/proc/{pid}/root{path}")
        """,
        {"targets": [str(canaries.outside_file), str(canaries.root_home_file), "/etc/shadow"]},
    )
    leaked = attack.leaking(canaries.token)
    shadow = shadow_leaks([o.value for o in attack.outcomes.values() if o.ok])
    assert not leaked, f"ESCAPE: /proc/<pid>/root reached host files: {attack.describe(list(leaked))}"
    assert not shadow, f"ESCAPE: host shadow read through /proc/<pid>/root: {shadow[:2]}"


async def test_host_paths_in_mountinfo_give_no_access(make_sandbox: SandboxFactory, canaries: HostCanaries) -> None:
    sandbox = await make_sandbox()
    attack = await run_attack(
        sandbox,
        """
        info = attempt("read mountinfo", read, "/proc/self/mountinfo")
        roots = set()
        if info["ok"]:
            for line in info["value"].splitlines():
                fields = line.split()
                if len(fields) > 4:
                    roots.add(fields[3])
        RESULTS["mount roots"] = {"ok": True, "value": sorted(roots)}
        for root in sorted(roots):
            if root == "/":
                continue
            parent = os.path.dirname(root.rstrip("/"))
            attempt("list " + root, os.listdir, root)
            attempt("list parent " + parent, os.listdir, parent)
            attempt("read outside next to " + root, read, os.path.join(parent, "..", "..", "outside", "secret.txt"))
        attempt("read outside by host path", read, P["outside_file"])
        """,
        {"outside_file": str(canaries.outside_file)},
    )
    # Reading mountinfo (and learning host path names from it) is allowed; using them is not.
    leaked = {k: v for k, v in attack.leaking(canaries.token, "secret.txt").items() if k != "read mountinfo"}
    assert not leaked, f"ESCAPE: host paths learned from mountinfo were usable: {attack.describe(list(leaked))}"
    canaries.assert_intact()


async def test_no_host_file_descriptors_leak_into_the_sandbox(
    make_sandbox: SandboxFactory, canaries: HostCanaries
) -> None:
    # Inheritable descriptors in the host process are the classic way a sandbox gets a handle outside.
    dir_fd = os.open(canaries.outside_dir, os.O_RDONLY | os.O_DIRECTORY)
    file_fd = os.open(canaries.outside_file, os.O_RDONLY)
    os.set_inheritable(dir_fd, True)
    os.set_inheritable(file_fd, True)
    try:
        sandbox = await make_sandbox()
        attack = await run_attack(
            sandbox,
            """
            import stat as stat_module
            fds = {}
            listing = os.listdir("/proc/self/fd")
            for name in listing:
                fd = int(name)
                if fd <= 2:
                    continue
                try:
                    mode = os.fstat(fd).st_mode
                    target = os.readlink(f"/proc/self/fd/{fd}")
                except OSError:
                    continue  # the descriptor os.listdir used, closed by now
                fds[fd] = {"target": target, "fifo": stat_module.S_ISFIFO(mode)}
                attempt(f"read fd {fd}", lambda fd=fd: os.pread(fd, 4096, 0))
                attempt(f"openat {fd}/secret.txt", lambda fd=fd: read(f"/proc/self/fd/{fd}/secret.txt"))
                attempt(f"list {fd}/..", lambda fd=fd: os.listdir(f"/proc/self/fd/{fd}/.."))
            RESULTS["fds"] = {"ok": True, "value": fds}
            """,
        )
    finally:
        os.close(dir_fd)
        os.close(file_fd)
    leaked = attack.leaking(canaries.token)
    assert not leaked, f"ESCAPE: a leaked host descriptor reached a host file: {attack.describe(list(leaked))}"
    extra = {fd: info for fd, info in attack["fds"].value.items() if not info["fifo"]}
    assert not extra, f"ESCAPE: host file descriptors beyond stdio are open inside the sandbox: {extra}"


async def test_cannot_modify_host_usr(make_sandbox: SandboxFactory, token: str) -> None:
    canary = Path("/usr/local/share") / f"{token}.txt"
    canary.write_text(f"host /usr canary {token}\n")
    created = [Path("/usr/bin") / token, Path("/usr/local/bin") / token, Path("/usr/lib") / token]
    try:
        before = digest_tree(canary)
        sandbox = await make_sandbox()
        attack = await run_attack(
            sandbox,
            """
            canary = P["canary"]
            attempt("append to canary", write, canary, "pwned", "a")
            attempt("truncate canary", write, canary, "pwned", "w")
            attempt("chmod canary", os.chmod, canary, 0o777)
            attempt("rename canary", os.rename, canary, canary + ".moved")
            attempt("delete canary", os.unlink, canary)
            for path in P["created"]:
                attempt("create " + path, write, path, "#!/bin/sh\\necho pwned\\n")
            """,
            {"canary": str(canary), "created": [str(p) for p in created]},
        )
        succeeded = {label: str(outcome) for label, outcome in attack.succeeded().items()}
        assert not succeeded, f"ESCAPE: the sandbox changed host /usr: {succeeded}"
        for label in ("append to canary", "truncate canary", "delete canary"):
            errno_name = attack[label].errno
            assert errno_name in DENIED_BY_POLICY | {"ENOENT"}, f"{label}: unexpected failure {attack[label]}"
        assert canary.exists() and digest_tree(canary) == before, "ESCAPE: the host /usr canary was changed"
        leftovers = _host_leftovers(created)
        assert not leftovers, f"ESCAPE: files created in host /usr: {leftovers}"
    finally:
        canary.unlink(missing_ok=True)
        Path(str(canary) + ".moved").unlink(missing_ok=True)
        for path in _host_leftovers(created):
            path.unlink()
