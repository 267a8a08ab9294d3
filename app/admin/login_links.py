"""One-time sign-in links to an org's admin pages: made by `admin login-url`; opening one shows a button, and the
first browser to press it (a POST) spends it."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app import clock
from app.chain import audit
from app.clock import database_now
from app.db import rowcount
from app.models import AdminLoginLink, Org
from app.tokens import hash_token

DEFAULT_MINUTES = 10
MAX_MINUTES = 60
MAX_TOKEN_LENGTH = 100  # token_urlsafe(32) is 43 characters; anything much longer is not one of ours
SWEEP_AFTER = timedelta(days=1)  # links expired this long ago are deleted when the next one is made


@dataclass
class NewLink:
    record: AdminLoginLink
    token: str  # shown once, never stored


def create(session: Session, org: Org, minutes: int = DEFAULT_MINUTES, actor: str = "cli") -> NewLink:
    """Make a link in the caller's write transaction, valid for `minutes`; recorded in the org's audit chain."""
    if not 1 <= minutes <= MAX_MINUTES:
        raise ValueError(f"a login link is valid for 1 to {MAX_MINUTES} minutes")
    now = clock.now_of(session.connection())  # the database's clock: every host judges the link alike
    session.execute(
        sa.delete(AdminLoginLink)
        .where(AdminLoginLink.expires_at < now - SWEEP_AFTER)
        .execution_options(synchronize_session=False)
    )
    token = secrets.token_urlsafe(32)
    record = AdminLoginLink(
        org_id=org.id, token_hash=hash_token(token), created_at=now, expires_at=now + timedelta(minutes=minutes)
    )
    session.add(record)
    session.flush()
    audit.record(
        session,
        org.id,
        audit.Action.LOGIN_LINK_CREATED,
        actor,
        {"link_id": record.id, "expires_at": record.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")},
    )
    return NewLink(record, token)


def spend(session: Session, token: str) -> tuple[Org, AdminLoginLink] | None:
    """In the caller's write transaction: mark a valid, unused, unexpired link used and return its org; else None.

    The UPDATE's `used_at IS NULL` condition decides: of two browsers opening the same link at once, one row
    count is 1 and the other 0, so the link signs in once.
    """
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    spent = session.execute(
        sa.update(AdminLoginLink)
        .where(
            AdminLoginLink.token_hash == hash_token(token),
            AdminLoginLink.used_at.is_(None),
            AdminLoginLink.expires_at > database_now(),
        )
        .values(used_at=database_now())
        .execution_options(synchronize_session=False)
    )
    if rowcount(spent) != 1:
        return None
    link = session.scalars(
        sa.select(AdminLoginLink)
        .where(AdminLoginLink.token_hash == hash_token(token))
        .execution_options(populate_existing=True)
    ).one()
    org = session.get(Org, link.org_id)
    return None if org is None else (org, link)


def find(session: Session, token: str) -> tuple[Org, AdminLoginLink] | None:
    """A valid, unused, unexpired link and its org, looked at without spending it (the GET of a link); else None."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    row = session.execute(
        sa.select(Org, AdminLoginLink)
        .join(AdminLoginLink, AdminLoginLink.org_id == Org.id)
        .where(
            AdminLoginLink.token_hash == hash_token(token),
            AdminLoginLink.used_at.is_(None),
            AdminLoginLink.expires_at > database_now(),
        )
    ).first()
    return None if row is None else (row[0], row[1])
