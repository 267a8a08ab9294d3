"""Organisations: creating one with its default policy and an empty chain."""

from __future__ import annotations

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
    org = Org(slug=slug, github_login=login, installation_id=installation_id)
    session.add(org)
    session.flush()
    session.add_all(
        [OrgSettings(org_id=org.id, allowed_issuers=[]), ChainHead(org_id=org.id, seq=0, head_hash=GENESIS_HASH)]
    )
    session.flush()
    return org


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
