"""Fixtures for the escape suite: fresh sandboxes, host canaries, host services and processes to target."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from corral.sandbox.base import Limits, NetworkProfile, Sandbox, SandboxBackend, SandboxRequest, get_backend
from corral.sandbox.bubblewrap.backend import BubblewrapSandboxBackend, close_pools
from corral.sandbox.bubblewrap.dirs import POOL_DIRNAME
from corral.sandbox.bubblewrap.identity import runs_as_root
from corral.sandbox.bubblewrap.resident import compiled_init
from tests.security.sandbox.attacks import host_mount_points

BACKEND_NAME = os.environ.get("CORRAL_ESCAPE_BACKEND", "bubblewrap")
"""The backend under attack; the suite exists for bubblewrap, the variable lets a new backend be tried."""

MakeSandbox = Callable[..., Awaitable[Sandbox]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def backend() -> SandboxBackend:
    if not sys.platform.startswith("linux"):
        pytest.skip("the escape suite attacks Linux namespace sandboxes")
    if BACKEND_NAME == "bubblewrap" and shutil.which("bwrap") is None:
        pytest.skip("bubblewrap (bwrap) is not installed on this host")
    # A backend that is registered but fails to load is an error, not a skip: the suite must not go quiet.
    chosen = get_backend(BACKEND_NAME)
    if not chosen.isolated and not os.environ.get("CORRAL_ESCAPE_ALLOW_UNISOLATED"):
        pytest.skip(
            f"backend {BACKEND_NAME!r} claims no isolation; attacking it would attack this host "
            "(set CORRAL_ESCAPE_ALLOW_UNISOLATED=1 to check that the suite detects escapes)"
        )
    return chosen


@pytest.fixture
def token() -> str:
    """A unique marker for this test: file names, contents, process command lines."""
    return f"corral-escape-{secrets.token_hex(8)}"


@pytest.fixture
def numeric_token() -> str:
    """A unique marker usable as a `sleep` argument (sleep accepts only numbers)."""
    return f"{10**11 + secrets.randbelow(10**10)}"


def digest_tree(root: Path) -> str:
    """A hash over every path, mode, owner, symlink target and file content under root (or root itself)."""
    digest = hashlib.sha256()

    def add(path: Path) -> None:
        info = path.lstat()
        digest.update(f"{path}\0{info.st_mode}\0{info.st_uid}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif path.is_file():
            digest.update(path.read_bytes())

    if not root.is_dir() or root.is_symlink():
        add(root)
        return digest.hexdigest()
    add(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted([*dirnames, *filenames]):
            add(Path(dirpath, name))
    return digest.hexdigest()


# -- the repo and the sandboxes made from it --------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path, token: str) -> Path:
    """A small project with a corral store beside its code (`.corral/corral.db`, as `corral` creates it)."""
    path = tmp_path / "repo"
    (path / "src").mkdir(parents=True)
    (path / "README.md").write_text("# target project\n")
    (path / "src" / "app.py").write_text("print('hello')\n")
    store = path / ".corral"
    store.mkdir()
    (store / "corral.db").write_text(f"SQLite format 3\0 store canary {token}\n")
    return path


@dataclass
class SandboxFactory:
    """Creates sandboxes for one test and destroys them all afterwards."""

    backend: SandboxBackend
    repo: Path
    root: Path
    pooled: bool = False
    """Every sandbox comes from a warm pool (prepared before the test's repo was known, then handed out)."""
    created: list[Sandbox] = field(default_factory=list)
    known_mounts: set[str] = field(default_factory=set)
    """Host mounts the backend itself made (e.g. an overlay on the workspace), seen right after create."""

    async def __call__(
        self,
        *,
        name: str = "run",
        repo: Path | None = None,
        env: dict[str, str] | None = None,
        limits: Limits | None = None,
        network: NetworkProfile | None = None,
        routes: dict[str, str] | None = None,
        mounts: tuple[str, ...] = (),
    ) -> Sandbox:
        request = SandboxRequest(
            repo=repo or self.repo,
            run_dir=self.root / f"{name}-{len(self.created)}",
            env=env or {},
            limits=limits or Limits(),
            network=network or NetworkProfile(),
            pool=1 if self.pooled else 0,
            routes=routes or {},
            mounts=mounts,
        )
        if self.pooled:
            assert isinstance(self.backend, BubblewrapSandboxBackend), "pooling is bubblewrap's"
            assert await self.backend.warm(request) == 1, "no sandbox could be prepared for the pool"
        sandbox = await self.backend.create(request)
        assert getattr(sandbox, "pooled", False) == self.pooled
        self.created.append(sandbox)
        self.known_mounts |= {point for point in host_mount_points() if point.startswith(str(self.root))}
        return sandbox

    def new_mounts(self, under: Path | None = None) -> list[str]:
        """Host mount points below ``under`` (default: every run dir) that the backend did not make."""
        prefix = str(under or self.root)
        pool = str(self.root / POOL_DIRNAME) + "/"  # sandboxes being prepared by the pool, not by any test
        return sorted(
            p
            for p in host_mount_points()
            if p.startswith(prefix) and p not in self.known_mounts and not p.startswith(pool)
        )


def _unmount_strays(factory: SandboxFactory) -> list[str]:
    """Lazily unmount host mounts the sandboxes made: an escaped mount must never meet destroy's rm -rf."""
    strays = factory.new_mounts()
    for point in reversed(strays):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True, timeout=10)
    return strays


@pytest.fixture(
    params=["fresh", pytest.param("pooled", marks=pytest.mark.slow)] if BACKEND_NAME == "bubblewrap" else ["fresh"]
)
async def make_sandbox(
    request: pytest.FixtureRequest, anyio_backend: str, backend: SandboxBackend, repo: Path, tmp_path: Path
) -> AsyncIterator[SandboxFactory]:
    """Every attack runs twice on bubblewrap: on a sandbox made for it, and on one from a warm pool."""
    pooled = request.param == "pooled"
    if pooled and not runs_as_root():
        pytest.skip("sandboxes are pooled only when corral runs as root")
    factory = SandboxFactory(backend=backend, repo=repo, root=tmp_path / "runs", pooled=pooled)
    factory.root.mkdir()
    yield factory
    strays = _unmount_strays(factory)
    errors = []
    for sandbox in factory.created:
        try:
            await sandbox.destroy()
        except Exception as exc:
            errors.append(f"{sandbox.workspace}: {exc}")
    if pooled:
        try:
            await close_pools()
        except Exception as exc:
            errors.append(f"closing the pool: {exc}")
    assert not strays, f"ESCAPE: sandbox mounts appeared in the host mount namespace: {strays}"
    assert not errors, f"destroy failed: {errors}"


@pytest.fixture
async def sandbox(make_sandbox: SandboxFactory) -> Sandbox:
    return await make_sandbox()


# -- host canaries --------------------------------------------------------------------------------


@dataclass
class HostCanaries:
    """Files on the host that no sandbox may read or change, each holding the test's token."""

    token: str
    outside_dir: Path
    outside_file: Path
    root_home_file: Path
    fake_home: Path
    fake_home_key: Path
    store_db: Path
    digests: dict[Path, str] = field(default_factory=dict)

    def paths(self) -> list[Path]:
        return [self.outside_file, self.root_home_file, self.fake_home_key, self.store_db]

    def snapshot(self) -> None:
        self.digests = {path: digest_tree(path) for path in (self.outside_dir, self.fake_home, self.store_db)}
        self.digests[self.root_home_file] = digest_tree(self.root_home_file)

    def assert_intact(self) -> None:
        for path, before in self.digests.items():
            assert path.exists(), f"ESCAPE: host canary {path} was deleted from inside the sandbox"
            assert digest_tree(path) == before, f"ESCAPE: host canary {path} was modified from inside the sandbox"


@pytest.fixture
def canaries(tmp_path: Path, token: str, repo: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HostCanaries]:
    outside = tmp_path / "outside"
    outside.mkdir()
    outside_file = outside / "secret.txt"
    outside_file.write_text(f"outside secret {token}\n")
    # The real host home, and a planted one that HOME points at while the sandbox is created.
    root_home_file = Path.home() / f".{token}-canary"
    root_home_file.write_text(f"host home secret {token}\n")
    root_home_file.chmod(0o600)
    fake_home = tmp_path / "host-home"
    (fake_home / ".ssh").mkdir(parents=True)
    key = fake_home / ".ssh" / "id_ed25519"
    key.write_text(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{token}\n-----END OPENSSH PRIVATE KEY-----\n")
    key.chmod(0o600)
    compiled_init()  # built (once per process) under the real HOME's cache, not into the planted one
    monkeypatch.setenv("HOME", str(fake_home))
    found = HostCanaries(
        token=token,
        outside_dir=outside,
        outside_file=outside_file,
        root_home_file=root_home_file,
        fake_home=fake_home,
        fake_home_key=key,
        store_db=repo / ".corral" / "corral.db",
    )
    found.snapshot()
    try:
        yield found
    finally:
        root_home_file.unlink(missing_ok=True)


# -- host services and processes to target -------------------------------------------------------


@dataclass
class ListeningSocket:
    """A host socket that nobody accepts on: any connection that got through waits in its backlog."""

    sock: socket.socket
    address: Any

    def connections_received(self) -> int:
        count = 0
        self.sock.setblocking(False)
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return count
            conn.close()
            count += 1


@pytest.fixture
def host_tcp_server() -> Iterator[ListeningSocket]:
    """A TCP service on the host's 127.0.0.1 (like the model gateway or the scripted model server)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield ListeningSocket(sock=sock, address=sock.getsockname())
    finally:
        sock.close()


@pytest.fixture
def host_unix_server(tmp_path: Path) -> Iterator[ListeningSocket]:
    """A Unix socket imitating the corral server's (and the egress proxy's) control socket."""
    directory = tmp_path / "corral-server"
    directory.mkdir()
    path = directory / "corral.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(16)
    try:
        yield ListeningSocket(sock=sock, address=str(path))
    finally:
        sock.close()


@pytest.fixture
def host_abstract_server(token: str) -> Iterator[ListeningSocket]:
    """A Unix socket in the abstract namespace, which is scoped by network namespace, not by path."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    name = f"\0{token}"
    sock.bind(name)
    sock.listen(16)
    try:
        yield ListeningSocket(sock=sock, address=name)
    finally:
        sock.close()


@dataclass
class HostProcess:
    """A long-running host process the sandbox will try to see, trace, signal and read."""

    proc: subprocess.Popen[bytes]
    marker: str
    env_secret: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def status(self) -> dict[str, str]:
        fields = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        return fields


@pytest.fixture
def host_process(numeric_token: str, token: str) -> Iterator[HostProcess]:
    env_secret = f"host-env-secret-{token}"
    proc = subprocess.Popen(
        ["sleep", numeric_token],
        env={"PATH": "/usr/bin:/bin", "CORRAL_HOST_PROCESS_SECRET": env_secret},
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield HostProcess(proc=proc, marker=numeric_token, env_secret=env_secret)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=10)
