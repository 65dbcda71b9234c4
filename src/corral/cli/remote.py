"""The CLI against a ``corral serve``: the same records the store gives, read and changed over its HTTP API.

``corral --server URL`` (or ``CORRAL_SERVER``) makes ``run``, ``runs``, ``show``, ``trace``, ``cancel``,
``resume``, ``approvals``, ``approve`` and ``deny`` talk to the server instead of a local store. Their
views take a :class:`RunReader`, which both :class:`corral.store.Store` and :class:`ServerClient`
are, so what they print is the same either way.

The token comes from ``CORRAL_TOKEN``, else from the credentials file (``corral login`` writes it):
``$XDG_CONFIG_HOME/corral/credentials.toml`` (``~/.config/…``), readable by its owner only::

    [servers."https://corral.example.com"]
    token = "corral_…"
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import httpx2 as httpx

from corral.errors import (
    ApprovalNotFoundError,
    AuthError,
    CorralError,
    ForbiddenError,
    RunNotFoundError,
    StoreError,
    UsageError,
)
from corral.events import parse_event
from corral.store import EventRecord, RunRecord
from corral.store.records import ApprovalRecord

TOKEN_ENV = "CORRAL_TOKEN"
PAGE = 500
"""Runs or events asked for per request (the API's largest page)."""
TIMEOUT_S = 60.0
"""Per request; a cancel answers once the run has ended, which takes seconds."""


class RunReader(Protocol):
    """What the run views read, from a local store or a server."""

    @property
    def url(self) -> str:
        """Where the journal is (a database URL, or the server's address)."""
        ...

    def get_run(self, run_id: str) -> RunRecord: ...

    def list_runs(
        self, *, limit: int | None = 50, status: str | None = None, agent: str | None = None, since: float | None = None
    ) -> list[RunRecord]: ...

    def children(self, run_id: str) -> list[RunRecord]: ...

    def events(self, run_id: str, *, after_seq: int = 0) -> list[EventRecord]: ...

    def iter_events(self, run_id: str, *, after_seq: int = 0) -> Iterator[EventRecord]: ...

    def approvals(self) -> list[ApprovalRecord]: ...


def credentials_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "corral" / "credentials.toml"


def normalize_url(url: str) -> str:
    """``URL`` as a server's address: http(s), no trailing slash, no path, query or credentials."""
    text = url.strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--server {url!r} is not an http(s) address", hint="e.g. --server http://127.0.0.1:8321")
    if parts.username or parts.password or parts.query or parts.fragment or parts.path not in ("", "/"):
        raise UsageError(
            f"--server {url!r}: give the server's address only (scheme, host, port)",
            hint=f"the token goes in ${TOKEN_ENV} or {credentials_path()}",
        )
    return f"{parts.scheme}://{parts.netloc}"


def token_for(server: str) -> str:
    """The token for ``server``: ``$CORRAL_TOKEN``, else its entry in the credentials file."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    path = credentials_path()
    hint = f"set ${TOKEN_ENV}, or store it with `corral login {server}`"
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise AuthError(f"no token for {server}", hint=hint) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AuthError(
            f"{path} is readable by others; it holds tokens, so corral will not use it",
            hint=f"chmod 600 {path}",
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise UsageError(f"cannot read {path}: {err}") from None
    entry = data.get("servers", {}).get(server) if isinstance(data.get("servers"), dict) else None
    found = entry.get("token") if isinstance(entry, dict) else None
    if not isinstance(found, str) or not found.strip():
        raise AuthError(f"no token for {server} in {path}", hint=hint)
    return found.strip()


def save_token(server: str, token: str) -> Path:
    """Store ``token`` for ``server`` in the credentials file (readable by its owner only), replacing the
    file at once: a crash leaves the old one or the new one, never half of either."""
    path = credentials_path()
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise UsageError(f"cannot read {path}: {err}", hint="fix or remove it") from None
    servers = data.get("servers", {})
    kept = isinstance(servers, dict) and all(
        isinstance(entry, dict) and all(isinstance(v, str) for v in entry.values()) for entry in servers.values()
    )
    if set(data) - {"servers"} or not kept:
        # Written by hand with more than corral writes: rewriting it would lose what corral did not make.
        raise UsageError(
            f'{path} holds more than corral\'s [servers."URL"] tables of strings; corral will not rewrite it',
            hint=f"add the token by hand, or set ${TOKEN_ENV}",
        )
    servers[server] = {"token": token}
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".credentials-", suffix=".toml")  # mode 600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(_toml(servers))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return path


def _toml(servers: dict[str, dict[str, str]]) -> str:
    """The credentials file: a ``[servers."URL"]`` table of strings per server (JSON's escapes are TOML's)."""
    lines = []
    for server, entry in servers.items():
        lines.append(f"[servers.{json.dumps(server)}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in entry.items()]
        lines.append("")
    return "\n".join(lines)


class ServerClient:
    """A ``corral serve`` API as the CLI uses it: runs, events and approvals as the store's own records.

    Problem details become corral's errors (401 → AuthError, 403 → ForbiddenError, 404 → not found,
    409/400/422 → UsageError with the server's detail), so a command fails remotely as it does locally.
    """

    def __init__(self, server: str, token: str, *, transport: httpx.BaseTransport | None = None) -> None:
        self.server = server
        headers = {"Authorization": f"Bearer {token}", "User-Agent": "corral-cli"}
        self._http = httpx.Client(base_url=server, headers=headers, timeout=TIMEOUT_S, transport=transport)

    @property
    def url(self) -> str:
        return self.server

    def close(self) -> None:
        self._http.close()

    # -- requests ---------------------------------------------------------------------------------

    def _call(self, method: str, path: str, *, missing: CorralError | None = None, **kwargs: Any) -> Any:
        """One request's JSON answer; ``missing``: the error a 404 means (what was not found)."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as err:
            raise StoreError(
                f"cannot reach the corral server at {self.server}: {err or type(err).__name__}",
                hint="is `corral serve` running there? (--server / CORRAL_SERVER)",
            ) from None
        if response.status_code < 400:
            return response.json() if response.content else None
        raise _error(response, missing)

    def _run(self, data: Any) -> RunRecord:
        return RunRecord.model_validate(data)  # the API's extra ``display_status`` is RunRecord's own property

    # -- runs -------------------------------------------------------------------------------------

    def get_run(self, run_id: str) -> RunRecord:
        return self._run(self._call("GET", f"/v1/runs/{_segment(run_id)}", missing=_no_run(run_id)))

    def list_runs(
        self, *, limit: int | None = 50, status: str | None = None, agent: str | None = None, since: float | None = None
    ) -> list[RunRecord]:
        runs: list[RunRecord] = []
        cursor = None
        while limit is None or len(runs) < limit:
            want = PAGE if limit is None else min(PAGE, limit - len(runs))
            params = {"limit": want, "status": status, "agent": agent, "since": since, "cursor": cursor}
            page = self._call("GET", "/v1/runs", params={k: v for k, v in params.items() if v is not None})
            runs += [self._run(r) for r in page["runs"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        return runs

    def children(self, run_id: str) -> list[RunRecord]:
        found = self._call("GET", f"/v1/runs/{_segment(run_id)}/children", missing=_no_run(run_id))
        return [self._run(r) for r in found]

    def submit(
        self,
        spec: dict[str, Any],
        task: str,
        repo: Path,
        *,
        queue: str | None,
        context: str | None,
        acting_as: str = "user",
    ) -> RunRecord:
        """Register ``spec`` (a version per content: the same spec twice is one version) and submit a run of it."""
        version = self._call("POST", "/v1/specs", json={"spec": spec})
        body = {"agent": version["name"], "version": version["version"], "task": task, "repo": str(repo)}
        body["acting_as"] = acting_as
        body |= {k: v for k, v in (("queue", queue), ("context", context)) if v is not None}
        return self._run(self._call("POST", "/v1/runs", json=body))

    def cancel(self, run_id: str) -> RunRecord:
        return self._run(self._call("POST", f"/v1/runs/{_segment(run_id)}/cancel", missing=_no_run(run_id)))

    def resume(self, run_id: str) -> RunRecord:
        return self._run(self._call("POST", f"/v1/runs/{_segment(run_id)}/resume", missing=_no_run(run_id)))

    # -- events -----------------------------------------------------------------------------------

    def iter_events(self, run_id: str, *, after_seq: int = 0) -> Iterator[EventRecord]:
        after = after_seq
        while True:
            page = self._call(
                "GET",
                f"/v1/runs/{_segment(run_id)}/events",
                params={"after": after, "limit": PAGE},
                missing=_no_run(run_id),
            )
            for item in page["events"]:
                yield _event(item)
            if page["next_after"] == after or len(page["events"]) < PAGE:
                return
            after = page["next_after"]

    def events(self, run_id: str, *, after_seq: int = 0) -> list[EventRecord]:
        return list(self.iter_events(run_id, after_seq=after_seq))

    # -- approvals --------------------------------------------------------------------------------

    def approvals(self) -> list[ApprovalRecord]:
        return [ApprovalRecord.model_validate(a) for a in self._call("GET", "/v1/approvals")]

    def decide(self, approval_id: str, *, approve: bool, reason: str | None) -> ApprovalRecord:
        verb = "approve" if approve else "deny"
        body = {"reason": reason} if reason is not None else None
        found = self._call(
            "POST",
            f"/v1/approvals/{_segment(approval_id)}/{verb}",
            json=body,
            missing=ApprovalNotFoundError(f"no approval request {approval_id!r}"),
        )
        return ApprovalRecord.model_validate(found)

    def check(self) -> None:
        """Fail unless the server answers and takes the token (a token without ``runs:read`` passes)."""
        with contextlib.suppress(ForbiddenError):
            self._call("GET", "/v1/runs", params={"limit": 1})


def _segment(value: str) -> str:
    """An id as one path segment: every reserved character escaped, dot segments too."""
    return quote(value, safe="") if value not in (".", "..") else value.replace(".", "%2E")


def _no_run(run_id: str) -> RunNotFoundError:
    return RunNotFoundError(f"no run {run_id!r}", hint="`corral runs` lists your team's runs")


def _event(item: dict[str, Any]) -> EventRecord:
    event = parse_event(item["type"], item["key"], item["ts"], item["duration_ms"], item["data"])
    return EventRecord(run_id=item["run_id"], seq=item["seq"], event=event)


def _error(response: httpx.Response, missing: CorralError | None) -> CorralError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    detail = str(body.get("detail") or body.get("title") or f"HTTP {response.status_code}")
    hint = body.get("hint") if isinstance(body.get("hint"), str) else None
    status = response.status_code
    if status == 401:
        return AuthError(f"the server refused the token: {detail}", hint=hint or f"check ${TOKEN_ENV}")
    if status == 403:
        return ForbiddenError(detail, hint=hint)
    if status == 404:
        return missing or UsageError(detail, hint=hint)
    if status < 500:
        return UsageError(detail, hint=hint)
    return StoreError(f"the corral server failed: {detail} (HTTP {status})", hint="its log says why")
