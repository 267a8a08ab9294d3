"""Admin sessions kept in the database (spec section 6), so that every web process on every host sees the same ones.

Signing in makes a record and gives the browser a random id in its (signed) session cookie; only the id's SHA-256 is
stored. A record lives until `expires_at`, LIFETIME after sign-in, however much it is used; signing out revokes it,
so a copy of the cookie taken before is refused afterwards. Sessions signed in with GitHub have their owner role
checked with GitHub again once ROLE_CHECK_EVERY has passed since the last check, and before every change (see
app.admin.auth); the user's GitHub token for that is kept sealed (AES-GCM) under a key derived from the cookie's id,
which the database never holds. Sessions from a one-time login link have no GitHub user and no role to check: whoever
could run `admin login-url` on the server vouched for them, for at most LIFETIME.

Time is the database's (every host judges a session alike, whatever its own clock): read with the session's record,
or at sign-in and sign-out on its own, and passed through `now()`, which tests replace to move the clock on.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.orm import Session

from app import clock
from app.clock import database_now
from app.db import rowcount
from app.models import AdminSession, Org

LIFETIME = timedelta(hours=12)  # from sign-in; never extended
ROLE_CHECK_EVERY = timedelta(minutes=15)
SWEEP_AFTER = timedelta(days=1)  # records ended this long ago are deleted when the next session starts
MAX_ID_LENGTH = 100  # token_urlsafe(32) is 43 characters
LINK_USER = "login-link"
VIA_OAUTH = "oauth"
VIA_LINK = "link"
_SEAL_INFO = b"fremforge admin session: github token"


def now(database_time: datetime) -> datetime:
    """The sessions' clock: the database's time as read (naive UTC, the columns' convention); tests replace this to
    move time on."""
    return database_time


def _now_of(session: Session) -> datetime:
    return now(clock.now_of(session.connection()))


def hash_id(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


@dataclass
class NewSession:
    record: AdminSession
    raw_id: str  # for the cookie only; never stored


@dataclass
class Found:
    record: AdminSession
    org: Org
    ended: str | None  # None while it lives; else "expired" or the reason it was revoked
    at: datetime  # the sessions' clock when it was read
    database_time: datetime  # the database's time then, as read (what a token's state is judged by)


def start(session: Session, org: Org, login: str, via: str, github_token: str | None = None) -> NewSession:
    """A new session record, in the caller's write transaction; the role counts as checked now (sign-in did)."""
    at = _now_of(session)
    session.execute(
        sa.delete(AdminSession)
        .where(sa.or_(AdminSession.expires_at < at - SWEEP_AFTER, AdminSession.revoked_at < at - SWEEP_AFTER))
        .execution_options(synchronize_session=False)
    )
    raw = secrets.token_urlsafe(32)
    record = AdminSession(
        token_hash=hash_id(raw),
        org_id=org.id,
        login=login,
        via=via,
        created_at=at,
        expires_at=at + LIFETIME,
        role_checked_at=at if via == VIA_OAUTH else None,
        github_token=seal(raw, github_token) if github_token else None,
    )
    session.add(record)
    session.flush()
    return NewSession(record, raw)


def find(session: Session, raw: str) -> Found | None:
    """The record of the cookie's id and its org, live or ended; None when there is none (or no such org)."""
    if not raw or len(raw) > MAX_ID_LENGTH:
        return None
    row = session.execute(
        sa.select(AdminSession, Org, database_now())
        .join(Org, Org.id == AdminSession.org_id)
        .where(AdminSession.token_hash == hash_id(raw))
        .execution_options(populate_existing=True)
    ).first()
    if row is None:
        return None
    record, org, database_time = row
    if not isinstance(database_time, datetime):  # SQLite's text, where the type is not applied to it
        database_time = datetime.fromisoformat(database_time)
    at = now(database_time)
    return Found(record, org, ended(record, at), at, database_time)


def ended(record: AdminSession, at: datetime) -> str | None:
    if record.revoked_at is not None:
        return record.revoked_reason or "revoked"
    if at >= record.expires_at:
        return "expired"
    return None


def role_check_due(record: AdminSession, at: datetime) -> bool:
    """Whether a GitHub session's owner role must be checked again before this request goes on."""
    if record.via != VIA_OAUTH:
        return False
    return record.role_checked_at is None or at - record.role_checked_at >= ROLE_CHECK_EVERY


def revoke(session: Session, record_id: int, reason: str) -> bool:
    """End a session now, in the caller's write transaction; False when it had ended already."""
    done = session.execute(
        sa.update(AdminSession)
        .where(AdminSession.id == record_id, AdminSession.revoked_at.is_(None))
        .values(revoked_at=_now_of(session), revoked_reason=reason[:40], github_token=None)
        .execution_options(synchronize_session=False)
    )
    return rowcount(done) == 1


def role_confirmed(session: Session, record_id: int, at: datetime) -> None:
    """GitHub confirmed the owner role at `at`: the next check is due ROLE_CHECK_EVERY later."""
    session.execute(
        sa.update(AdminSession)
        .where(AdminSession.id == record_id, AdminSession.revoked_at.is_(None))
        .values(role_checked_at=at)
        .execution_options(synchronize_session=False)
    )


# -- the user's GitHub token, sealed with the cookie's id --------------------------------------------------------------


def _key(raw: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SEAL_INFO).derive(raw.encode())


def seal(raw: str, token: str) -> str:
    nonce = secrets.token_bytes(12)
    sealed = AESGCM(_key(raw)).encrypt(nonce, token.encode(), _SEAL_INFO)
    return base64.urlsafe_b64encode(nonce + sealed).decode()


def unseal(raw: str, sealed: str | None) -> str | None:
    """The token sealed with this cookie's id; None when there is none or it cannot be opened."""
    if not sealed:
        return None
    try:
        blob = base64.urlsafe_b64decode(sealed.encode())
        return AESGCM(_key(raw)).decrypt(blob[:12], blob[12:], _SEAL_INFO).decode()
    except (InvalidTag, ValueError, binascii.Error):
        return None
