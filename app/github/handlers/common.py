"""Lookups the handlers share: which org a delivery is for, by installation id or GitHub login."""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app import logs
from app.github.router import BadPayload, get, installation_id
from app.models import InstallationRepository, Org, utcnow

log = logging.getLogger(__name__)


class OrgRef(NamedTuple):
    """What a repository event's handler needs of its org: read with Core, no ORM object per delivery."""

    id: int
    slug: str


_orgs = Org.__table__
# Built once: webhooks answer many small deliveries, and building a statement costs more than running it here.
_HOLDERS = (
    sa.select(Org)
    .where(sa.or_(Org.installation_id == sa.bindparam("inst"), Org.suspended_installation_id == sa.bindparam("inst")))
    .order_by(Org.id)
)
_BY_LOGIN = sa.select(Org).where(sa.func.lower(Org.github_login) == sa.bindparam("login")).order_by(Org.id).limit(1)
_OTHER_WITH_LOGIN = (
    sa.select(Org.slug)
    .where(sa.func.lower(Org.github_login) == sa.bindparam("login"), Org.id != sa.bindparam("org"))
    .order_by(Org.id)
    .limit(1)
)
# Every org holding it, not the first: one is the rule, and two (left by an older version) must not be guessed from.
_REF_BY_INSTALLATION = (
    sa.select(_orgs.c.id, _orgs.c.slug).where(_orgs.c.installation_id == sa.bindparam("inst")).order_by(_orgs.c.id)
)
_REF_BY_LOGIN = (
    sa.select(_orgs.c.id, _orgs.c.slug)
    .where(sa.func.lower(_orgs.c.github_login) == sa.bindparam("login"))
    .order_by(_orgs.c.id)
    .limit(1)
)


def installation_holders(session: Session, inst_id: int) -> list[Org]:
    """The orgs holding installation `inst_id`, linked to it or unlinked by its suspension, first made first.

    One at most, the rule since installation events keep it (`handlers.installation`); more than one only where an
    older version linked a second org, or the worker remembered it for another org of the account.
    """
    return list(session.scalars(_HOLDERS, {"inst": inst_id}))


def org_by_login(session: Session, login: str | None) -> Org | None:
    """The org of a GitHub account; logins are case-insensitive on GitHub, so the match is too."""
    if not login:
        return None
    return _named(session.scalars(_BY_LOGIN, {"login": login.lower()}).first())


def other_org_with_login(session: Session, login: str, org_id: int) -> str | None:
    """The slug of an org other than `org_id` whose GitHub login is `login` (in any letter case), if any."""
    return session.scalars(_OTHER_WITH_LOGIN, {"login": login.lower(), "org": org_id}).first()


def org_ref(session: Session, inst_id: int | None, login: Any) -> OrgRef | None:
    """The org holding installation `inst_id`, else the org of the GitHub account `login`, as an (id, slug) row.

    Read with Core: no ORM object per delivery. Never a guess: where two orgs hold the installation (see
    installation_holders), it names neither, and the org is the account's by `login`, as for an unknown installation.
    """
    conn = session.connection()
    row = None
    if inst_id is not None:
        holders = conn.execute(_REF_BY_INSTALLATION, {"inst": inst_id}).all()
        if len(holders) == 1:
            row = holders[0]
        elif holders:
            log.warning(
                "github.installation.held_twice installation=%s orgs=%s: the org is found by the login %r",
                inst_id,
                ",".join(h.slug for h in holders),
                login,
            )
    if row is None and isinstance(login, str) and login:
        row = conn.execute(_REF_BY_LOGIN, {"login": login.lower()}).first()
    if row is None:
        return None
    logs.name_org(row.slug)
    return OrgRef(row.id, row.slug)


def _named(org: Org | None) -> Org | None:
    """The org found, named in the delivery's log lines."""
    if org is not None:
        logs.name_org(org.slug)
    return org


def org_of_repository_event(session: Session, payload: dict[str, Any]) -> OrgRef | None:
    """The org of an event about a repository: by the payload's installation, else by the repository owner."""
    return org_ref(session, installation_id(payload), get(payload, "repository", "owner", "login"))


def dialect_of(session: Session) -> str:
    return session.get_bind().dialect.name


def upsert(session: Session, table: sa.Table) -> Any:
    """An INSERT that can say ON CONFLICT (SQLite and PostgreSQL both can; SQLAlchemy spells it per dialect)."""
    return upsert_for(dialect_of(session), table)


def upsert_for(dialect: str, table: sa.Table) -> Any:
    return postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)


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
        if not isinstance(name, str) or "/" not in name or len(name) > 200 or "\x00" in name:
            raise BadPayload(f"{where}[{i}].full_name must be owner/name")
        names.append(name.lower())  # GitHub names are case-insensitive; stored folded
    return names


_ADD_REPOSITORIES = {  # built once per dialect
    dialect: upsert_for(dialect, _repos).on_conflict_do_nothing(index_elements=["org_id", "repo_full_name"])
    for dialect in ("postgresql", "sqlite")
}


def add_repositories(session: Session, org_id: int, names: list[str]) -> None:
    if names:
        now = utcnow()
        session.execute(
            _ADD_REPOSITORIES[dialect_of(session)],
            [{"org_id": org_id, "repo_full_name": n, "added_at": now} for n in names],
        )


def remove_repositories(session: Session, org_id: int, names: list[str] | None = None) -> None:
    """Forget the given repositories of the org (None: all of them)."""
    stmt = sa.delete(_repos).where(_repos.c.org_id == org_id)
    if names is not None:
        stmt = stmt.where(_repos.c.repo_full_name.in_(names))
    session.execute(stmt)
