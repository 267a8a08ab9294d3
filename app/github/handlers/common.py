"""Lookups the handlers share: which org a delivery is for, by installation id or GitHub login."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.github.router import BadPayload, get, installation_id
from app.models import InstallationRepository, Org, utcnow


def org_by_installation(session: Session, inst_id: int | None) -> Org | None:
    if inst_id is None:
        return None
    return session.scalars(sa.select(Org).where(Org.installation_id == inst_id).order_by(Org.id).limit(1)).first()


def org_by_login(session: Session, login: str | None) -> Org | None:
    """The org of a GitHub account; logins are case-insensitive on GitHub, so the match is too."""
    if not login:
        return None
    return session.scalars(
        sa.select(Org).where(sa.func.lower(Org.github_login) == login.lower()).order_by(Org.id).limit(1)
    ).first()


def org_of_repository_event(session: Session, payload: dict[str, Any]) -> Org | None:
    """The org of an event about a repository: by the payload's installation, else by the repository owner."""
    org = org_by_installation(session, installation_id(payload))
    if org is None:
        login = get(payload, "repository", "owner", "login")
        org = org_by_login(session, login if isinstance(login, str) else None)
    return org


def upsert(session: Session, table: sa.Table) -> Any:
    """An INSERT that can say ON CONFLICT (SQLite and PostgreSQL both can; SQLAlchemy spells it per dialect)."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


_repos = InstallationRepository.__table__


def full_names(value: Any, where: str) -> list[str]:
    """The full names of a payload's list of repositories."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadPayload(f"{where} must be a list of repositories")
    names = []
    for i, repo in enumerate(value):
        name = repo.get("full_name") if isinstance(repo, dict) else None
        if not isinstance(name, str) or "/" not in name or len(name) > 200:
            raise BadPayload(f"{where}[{i}].full_name must be owner/name")
        names.append(name.lower())  # GitHub names are case-insensitive; stored folded
    return names


def add_repositories(session: Session, org_id: int, names: list[str]) -> None:
    if names:
        session.execute(
            upsert(session, _repos).on_conflict_do_nothing(index_elements=["org_id", "repo_full_name"]),
            [{"org_id": org_id, "repo_full_name": n, "added_at": utcnow()} for n in names],
        )


def remove_repositories(session: Session, org_id: int, names: list[str] | None = None) -> None:
    """Forget the given repositories of the org (None: all of them)."""
    stmt = sa.delete(_repos).where(_repos.c.org_id == org_id)
    if names is not None:
        stmt = stmt.where(_repos.c.repo_full_name.in_(names))
    session.execute(stmt)
