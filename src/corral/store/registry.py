"""Agent specs registered with the server: per team and name, numbered versions, content-addressed.

Registering a spec whose content a version already has returns that version: pushing the same
``corral.toml`` twice makes no new version. A run submitted through the API names an agent (and
optionally a version; the newest by default) and records the version's spec and hash.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from corral.errors import UnknownAgentError
from corral.store.models import SpecRow


@dataclass(frozen=True, slots=True)
class SpecVersion:
    name: str
    version: int
    spec: dict[str, Any]
    spec_hash: str
    created_at: float
    created_by: str

    def to_json(self, *, with_spec: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "spec_hash": self.spec_hash,
            "created_at": self.created_at,
            "created_by": self.created_by,
        }
        if with_spec:
            data["spec"] = self.spec
        return data


def _version(row: SpecRow) -> SpecVersion:
    return SpecVersion(row.name, row.version, row.spec, row.spec_hash, row.created_at, row.created_by)


class SpecRegistry:
    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def register(
        self, team_id: str, name: str, spec: dict[str, Any], spec_hash: str, *, by: str
    ) -> tuple[SpecVersion, bool]:
        """The version holding this spec, made if new; whether it was made now."""
        same = select(SpecRow).where(SpecRow.team_id == team_id, SpecRow.name == name, SpecRow.spec_hash == spec_hash)
        newest = select(func.max(SpecRow.version)).where(SpecRow.team_id == team_id, SpecRow.name == name)
        for _ in range(5):  # two registrations at once may pick the same number: the loser takes the next
            try:
                with Session(self._engine, expire_on_commit=False) as session, session.begin():
                    found = session.scalar(same)
                    if found is not None:
                        return _version(found), False
                    row = SpecRow(
                        team_id=team_id,
                        name=name,
                        version=(session.scalar(newest) or 0) + 1,
                        spec=spec,
                        spec_hash=spec_hash,
                        created_at=time.time(),
                        created_by=by,
                    )
                    session.add(row)
            except IntegrityError:
                continue
            return _version(row), True
        raise RuntimeError(f"could not register a version of {name!r}: too many registrations at once")

    def get(self, team_id: str, name: str, version: int | None = None) -> SpecVersion:
        """A version (the newest by default); ``UnknownAgentError`` if there is none."""
        query = select(SpecRow).where(SpecRow.team_id == team_id, SpecRow.name == name)
        query = (
            query.where(SpecRow.version == version) if version is not None else query.order_by(SpecRow.version.desc())
        )
        with Session(self._engine) as session:
            row = session.scalars(query.limit(1)).first()
        if row is None:
            which = f"agent {name!r}" + (f" version {version}" if version is not None else "")
            raise UnknownAgentError(f"no {which} registered for this team", hint="register it with POST /v1/specs")
        return _version(row)

    def versions(self, team_id: str, name: str | None = None) -> list[SpecVersion]:
        """A team's versions (of one agent, or all), by name then newest first."""
        query = select(SpecRow).where(SpecRow.team_id == team_id)
        if name is not None:
            query = query.where(SpecRow.name == name)
        with Session(self._engine) as session:
            return [_version(r) for r in session.scalars(query.order_by(SpecRow.name, SpecRow.version.desc()))]
