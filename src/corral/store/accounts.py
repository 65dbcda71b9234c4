"""Teams, users and API tokens: who may do what through the server, and for which team.

A token is ``corral_<id>_<secret>``: ``id`` finds its row, ``secret`` (32 random bytes) is checked
against the argon2id hash that is all the store keeps. A token acts for one user in one team, with
scopes (:data:`SCOPES`), until it expires or is revoked. Every run and spec submitted through the API
belongs to a team, and a token never reaches another team's.

Checking an argon2 hash costs milliseconds on purpose; a process remembers the tokens it checked (by
a SHA-256 of the secret, in memory) so that a client's every request does not pay it again. Expiry
and revocation are read from the store at every request: the memory never outlives a revocation.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from corral.errors import AuthError, ForbiddenError, UsageError
from corral.store.identity import check_grants, intersect
from corral.store.models import AgentRow, MemberRow, TeamRow, TokenRow, UserRow
from corral.store.records import Identity

SCOPES: tuple[str, ...] = ("runs:read", "runs:write", "approvals:decide", "specs:write", "admin")
"""``runs:read`` (runs, events, costs, specs), ``runs:write`` (submit, cancel, resume, delete),
``approvals:decide``, ``specs:write`` (register agent specs), ``admin`` (teams, users, tokens, grants)."""
TOKEN_PREFIX = "corral_"
BOOTSTRAP_TEAM = "default"
BOOTSTRAP_USER = "admin"
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_AGENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # as AgentSpec.name
_TOKEN = re.compile(r"corral_([a-z0-9]{16})_([A-Za-z0-9_-]{43})")
_HASHER = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)  # argon2id, OWASP's minimum
_LAST_USED_EVERY_S = 60.0
_REMEMBERED_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: a token's user, in its team, with its scopes."""

    token_id: str
    user_id: str
    user: str
    team_id: str
    team: str
    scopes: frozenset[str]

    def require(self, scope: str) -> None:
        """Raise ``ForbiddenError`` unless the token has ``scope`` (``admin`` has them all)."""
        if scope not in self.scopes and "admin" not in self.scopes:
            raise ForbiddenError(f"this token lacks the scope {scope!r}", hint=f"make a token with --scope {scope}")


class TokenInfo(BaseModel):
    """A token as listed (never its secret)."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    user: str
    team: str
    scopes: list[str]
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump()


def check_name(kind: str, name: str) -> str:
    if not NAME.fullmatch(name):
        raise UsageError(
            f"{name!r} cannot name a {kind}", hint="lowercase letters, digits, '.', '_' and '-', up to 64 characters"
        )
    return name


def check_scopes(scopes: Iterable[str]) -> list[str]:
    chosen = list(dict.fromkeys(scopes))
    unknown = [s for s in chosen if s not in SCOPES]
    if unknown or not chosen:
        raise UsageError(
            f"unknown scope(s) {', '.join(map(repr, unknown))}" if unknown else "a token needs at least one scope",
            hint=f"scopes: {', '.join(SCOPES)}",
        )
    return chosen


class Accounts:
    """Teams, users and tokens in one store (see the module docstring)."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._remembered: dict[str, bytes] = {}  # token id -> SHA-256 of a secret that verified
        self._used: dict[str, float] = {}  # token id -> when its last_used_at was last written

    # -- teams and users --------------------------------------------------------------------------

    def create_team(self, name: str) -> str:
        """A new team; its id."""
        row = TeamRow(id=f"team-{uuid.uuid4().hex[:12]}", name=check_name("team", name), created_at=time.time())
        return self._insert(row, "team", name)

    def create_user(self, name: str, teams: Iterable[str] = ()) -> str:
        """A new user, member of ``teams`` (names); its id."""
        row = UserRow(id=f"user-{uuid.uuid4().hex[:12]}", name=check_name("user", name), created_at=time.time())
        user_id = self._insert(row, "user", name)
        for team in teams:
            self.add_member(name, team)
        return user_id

    def add_member(self, user: str, team: str) -> None:
        with Session(self._engine) as session, session.begin():
            user_id, team_id = self._user_id(session, user), self._team_id(session, team)
            if session.get(MemberRow, (user_id, team_id)) is None:
                session.add(MemberRow(user_id=user_id, team_id=team_id))

    def teams(self) -> list[tuple[str, str]]:
        with Session(self._engine) as session:
            return [(r.id, r.name) for r in session.scalars(select(TeamRow).order_by(TeamRow.name))]

    def _insert(self, row: TeamRow | UserRow, kind: str, name: str) -> str:
        table, row_id = type(row), row.id
        taken = UsageError(f"a {kind} named {name!r} exists already")
        exists = select(table.id).where(table.name == name)
        try:
            with Session(self._engine) as session, session.begin():
                if session.scalar(exists) is not None:
                    raise taken
                session.add(row)
        except IntegrityError:
            with Session(self._engine) as session:
                if session.scalar(exists) is not None:
                    raise taken from None  # made by someone else just now
            raise
        return row_id

    @staticmethod
    def _user_id(session: Session, name: str) -> str:
        return _id_by_name(session, UserRow, name, "user", "`corral user create NAME --team TEAM` makes one")

    @staticmethod
    def _team_id(session: Session, name: str) -> str:
        return _id_by_name(session, TeamRow, name, "team", "`corral team create NAME` makes one")

    # -- grants and identities --------------------------------------------------------------------

    def grant_user(self, user: str, team: str, grants: Iterable[str], *, revoke: bool = False) -> list[str]:
        """Add (or with ``revoke`` remove) a member's grants in a team; the grants it holds after."""
        changed = check_grants(grants)
        with Session(self._engine) as session, session.begin():
            user_id, team_id = self._user_id(session, user), self._team_id(session, team)
            member = session.get(MemberRow, (user_id, team_id))
            if member is None:
                raise UsageError(f"user {user!r} is not a member of team {team!r}", hint="grants are per team")
            held = _changed(member.grants or [], changed, revoke=revoke)
            member.grants = held
            return held

    def grant_agent(self, agent: str, team: str, grants: Iterable[str], *, revoke: bool = False) -> list[str]:
        """Give an agent an identity of its own in a team (or change its grants); the grants it holds after."""
        changed = check_grants(grants)
        if not _AGENT.fullmatch(agent):
            raise UsageError(
                f"{agent!r} cannot name an agent", hint="as in corral.toml: letters, digits, '_', '.', '-'"
            )
        with Session(self._engine) as session, session.begin():
            team_id = self._team_id(session, team)
            row = session.get(AgentRow, (team_id, agent))
            if row is None and revoke:
                raise UsageError(f"agent {agent!r} has no identity of its own in team {team!r}: nothing to take back")
            if row is None:
                row = AgentRow(team_id=team_id, name=agent, grants=[], created_at=time.time())
                session.add(row)
            held = _changed(row.grants, changed, revoke=revoke)
            row.grants = held
            return held

    def members(self, team: str) -> list[tuple[str, list[str]]]:
        """The members of ``team`` and their grants in it."""
        with Session(self._engine) as session:
            team_id = self._team_id(session, team)
            rows = session.execute(
                select(UserRow.name, MemberRow.grants)
                .join(MemberRow, MemberRow.user_id == UserRow.id)
                .where(MemberRow.team_id == team_id)
                .order_by(UserRow.name)
            )
            return [(name, list(grants or [])) for name, grants in rows]

    def agents(self, team: str) -> list[tuple[str, list[str]]]:
        """The agents with an identity in ``team``, and their grants."""
        with Session(self._engine) as session:
            team_id = self._team_id(session, team)
            rows = session.scalars(select(AgentRow).where(AgentRow.team_id == team_id).order_by(AgentRow.name))
            return [(r.name, list(r.grants)) for r in rows]

    def identity(self, who: Principal, agent: str, mode: str) -> Identity:
        """Who a run of ``agent`` submitted by ``who`` acts as, and its effective grants.

        ``agent`` mode needs the agent to have an identity in the team (``corral agent grant``).
        """
        with Session(self._engine) as session:
            member = session.get(MemberRow, (who.user_id, who.team_id))
            own = session.get(AgentRow, (who.team_id, agent))
        user_grants = (member.grants if member is not None else None) or []
        if mode == "agent":
            if own is None:
                raise ForbiddenError(
                    f"agent {agent!r} has no identity of its own in team {who.team!r}",
                    hint=f"an admin gives it one: corral agent grant {agent} --team {who.team} secret:NAME",
                )
            grants = list(own.grants)
        elif mode == "user":
            grants = intersect(user_grants, own.grants if own is not None else [])
        else:
            raise UsageError(f"a run acts as 'user' or 'agent', not {mode!r}")
        return Identity(mode=mode, agent=agent, user=who.user, team=who.team, grants=tuple(grants))

    # -- tokens -----------------------------------------------------------------------------------

    def create_token(
        self, *, user: str, team: str, scopes: Iterable[str], name: str = "", expires_at: float | None = None
    ) -> tuple[str, TokenInfo]:
        """A new token for ``user`` in ``team`` (a member of it): the token itself, shown once, and its info."""
        chosen = check_scopes(scopes)
        if expires_at is not None and expires_at <= time.time():
            raise UsageError("the token would be expired already", hint="give an expiry in the future")
        token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        now = time.time()
        with Session(self._engine) as session, session.begin():
            user_id, team_id = self._user_id(session, user), self._team_id(session, team)
            if session.get(MemberRow, (user_id, team_id)) is None:
                raise UsageError(f"user {user!r} is not a member of team {team!r}")
            session.add(
                TokenRow(
                    id=token_id,
                    secret_hash=_HASHER.hash(secret),
                    name=name or f"{user}@{team}",
                    user_id=user_id,
                    team_id=team_id,
                    scopes=chosen,
                    created_at=now,
                    expires_at=expires_at,
                )
            )
        info = TokenInfo(
            id=token_id,
            name=name or f"{user}@{team}",
            user=user,
            team=team,
            scopes=chosen,
            created_at=now,
            expires_at=expires_at,
            revoked_at=None,
            last_used_at=None,
        )
        return f"{TOKEN_PREFIX}{token_id}_{secret}", info

    def tokens(self, team: str | None = None) -> list[TokenInfo]:
        """Tokens, newest first (of one team, or all)."""
        query = (
            select(TokenRow, UserRow.name, TeamRow.name)
            .join(UserRow, UserRow.id == TokenRow.user_id)
            .join(TeamRow, TeamRow.id == TokenRow.team_id)
            .order_by(TokenRow.created_at.desc())
        )
        if team is not None:
            query = query.where(TeamRow.name == team)
        with Session(self._engine) as session:
            return [
                TokenInfo(
                    id=t.id,
                    name=t.name,
                    user=user,
                    team=team_name,
                    scopes=list(t.scopes),
                    created_at=t.created_at,
                    expires_at=t.expires_at,
                    revoked_at=t.revoked_at,
                    last_used_at=t.last_used_at,
                )
                for t, user, team_name in session.execute(query)
            ]

    def revoke(self, token_id: str, *, team_id: str | None = None) -> bool:
        """Revoke a token at once (``team_id``: only one of that team); whether one was revoked now."""
        token_id = token_id.removeprefix(TOKEN_PREFIX).split("_", 1)[0]
        query = update(TokenRow).where(TokenRow.id == token_id, TokenRow.revoked_at.is_(None))
        if team_id is not None:
            query = query.where(TokenRow.team_id == team_id)
        with self._engine.begin() as conn:
            done = conn.execute(query.values(revoked_at=time.time())).rowcount == 1
        with self._lock:
            self._remembered.pop(token_id, None)
        return done

    def bootstrap(self) -> str | None:
        """On a store with no token yet: team ``default``, user ``admin`` and a token with every scope,
        returned to be printed once. None when tokens exist (or another process made them just now)."""
        with Session(self._engine) as session:
            if session.scalar(select(TokenRow.id).limit(1)) is not None:
                return None
        try:
            with Session(self._engine) as session:
                if session.scalar(select(TeamRow.id).where(TeamRow.name == BOOTSTRAP_TEAM)) is None:
                    self.create_team(BOOTSTRAP_TEAM)
                if session.scalar(select(UserRow.id).where(UserRow.name == BOOTSTRAP_USER)) is None:
                    self.create_user(BOOTSTRAP_USER, [BOOTSTRAP_TEAM])
        except UsageError:  # another server made them at the same moment
            return None
        token, _ = self.create_token(user=BOOTSTRAP_USER, team=BOOTSTRAP_TEAM, scopes=SCOPES, name="bootstrap")
        return token

    def authenticate(self, token: str | None) -> Principal:
        """The principal of a valid token; ``AuthError`` (401) for none, a malformed, unknown, expired
        or revoked one: one message for all, so a caller learns nothing about which."""
        denied = AuthError("missing or invalid API token", hint="pass a token as `Authorization: Bearer corral_…`")
        match = _TOKEN.fullmatch(token or "")
        if match is None:
            raise denied
        token_id, secret = match[1], match[2]
        query = (
            select(TokenRow, UserRow.name, TeamRow.name)
            .join(UserRow, UserRow.id == TokenRow.user_id)
            .join(TeamRow, TeamRow.id == TokenRow.team_id)
            .where(TokenRow.id == token_id)
        )
        with Session(self._engine) as session:
            found = session.execute(query).first()
        now = time.time()
        if found is None:  # token ids are not secret: answering sooner for an unknown one tells nothing
            raise denied
        row, user, team = found
        if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
            raise denied
        digest = hashlib.sha256(secret.encode()).digest()
        with self._lock:
            remembered = self._remembered.get(token_id)
        if remembered is None or not hmac.compare_digest(remembered, digest):
            try:
                _HASHER.verify(row.secret_hash, secret)
            except (VerificationError, InvalidHashError):
                raise denied from None
            with self._lock:
                if len(self._remembered) >= _REMEMBERED_MAX:
                    self._remembered.clear()
                self._remembered[token_id] = digest
        if now - self._used.get(token_id, 0.0) > _LAST_USED_EVERY_S:
            self._used[token_id] = now
            with self._engine.begin() as conn:
                conn.execute(update(TokenRow).where(TokenRow.id == token_id).values(last_used_at=now))
        return Principal(token_id, row.user_id, user, row.team_id, team, frozenset(row.scopes))


def _id_by_name(session: Session, table: type[TeamRow] | type[UserRow], name: str, kind: str, hint: str) -> str:
    found = session.scalar(select(table.id).where(table.name == name))
    if found is None:
        raise UsageError(f"no {kind} {name!r}", hint=hint)
    return found


def _changed(held: Iterable[str], grants: list[str], *, revoke: bool) -> list[str]:
    return sorted(set(held) - set(grants)) if revoke else sorted(set(held) | set(grants))
