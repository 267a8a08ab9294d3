"""Organisations: creating one with its default policy and an empty chain."""

from __future__ import annotations

import hashlib
import re

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.models import GENESIS_HASH, ChainHead, Org, OrgSettings

SLUG = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,98})")


def create(session: Session, slug: str, github_login: str | None = None, installation_id: int | None = None) -> Org:
    """Add an org in the caller's write transaction; ValueError when the slug is taken or malformed."""
    login = github_login or slug
    for what, value in (("slug", slug), ("GitHub login", login)):
        if not SLUG.fullmatch(value):
            raise ValueError(
                f"{what} {value!r} must be letters, digits and hyphens (as a GitHub login), "
                "starting with a letter or digit"
            )
    taken = slug_like(session, slug)
    if taken is not None:  # no two slugs differ only in letter case: a slug typed either way names one org
        raise ValueError(f"an organisation {taken!r} exists already")
    same_login = session.scalars(sa.select(Org.slug).where(sa.func.lower(Org.github_login) == login.lower())).first()
    if same_login is not None:  # one GitHub account, one org: else two orgs would post to the same commits
        raise ValueError(f"the organisation {same_login!r} has the GitHub login {login!r} already")
    if installation_id is not None:  # one installation, one org: else its webhooks would go to either
        lock_installation(session, installation_id)
        holder = installation_holder(session, installation_id)
        if holder is not None:
            raise ValueError(f"the organisation {holder!r} has the GitHub App installation {installation_id} already")
    org = Org(slug=slug, github_login=login, installation_id=installation_id)
    session.add(org)
    session.flush()
    session.add_all(
        [OrgSettings(org_id=org.id, allowed_issuers=[]), ChainHead(org_id=org.id, seq=0, head_hash=GENESIS_HASH)]
    )
    session.flush()
    return org


def lock_installation(session: Session, installation_id: int) -> None:
    """Hold installation `installation_id` until the write transaction ends: which org holds an installation is
    decided by one writer at a time (its webhooks, `orgs create --installation-id`), so that two never both find it
    free and link it to two orgs. A PostgreSQL advisory lock, taken by transactions that take none of app.locks' (so
    no order between them to keep); on SQLite the one writer at a time holds it already."""
    if session.get_bind().dialect.name == "postgresql":
        digest = hashlib.sha256(f"fremforge/installation\n{installation_id}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        session.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.literal(key, sa.BigInteger))))


def installation_holder(session: Session, installation_id: int) -> str | None:
    """The slug of the org holding the installation: linked to it, or unlinked by its suspension (first made first)."""
    held = sa.or_(Org.installation_id == installation_id, Org.suspended_installation_id == installation_id)
    return session.scalars(sa.select(Org.slug).where(held).order_by(Org.id).limit(1)).first()


def by_slug(session: Session, slug: str) -> Org | None:
    return session.scalars(sa.select(Org).where(Org.slug == slug)).one_or_none()


def slug_like(session: Session, slug: str) -> str | None:
    """The slug of an org whose slug is `slug` in another letter case (the first made), if any."""
    found = sa.select(Org.slug).where(sa.func.lower(Org.slug) == slug.lower()).order_by(Org.id).limit(1)
    return session.scalars(found).first()


def settings_for_update(session: Session, org_id: int) -> OrgSettings:
    """The org's settings re-read and locked for the rest of the write transaction (never a stale copy)."""
    found = session.scalars(
        sa.select(OrgSettings)
        .where(OrgSettings.org_id == org_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    return found if found is not None else settings_of(session, org_id)


def settings_of(session: Session, org_id: int) -> OrgSettings:
    found = session.get(OrgSettings, org_id)
    if found is None:  # an org made by hand: the defaults apply
        found = OrgSettings.defaults(org_id)
        session.add(found)
        session.flush()
    return found
