"""The app's own API tokens: made once, kept as a SHA-256, scoped to one org, expiring and revocable."""

from __future__ import annotations

import secrets
import string
import unicodedata
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app import clock, invisible
from app.chain import audit
from app.models import ApiToken, Org, utcnow
from app.web.auth import PREFIX, SCOPES, hash_token

_ALPHABET = string.ascii_letters + string.digits
_BODY_LENGTH = 40


@dataclass
class NewToken:
    record: ApiToken
    secret: str  # shown once, never stored


_NOT_IN_A_NAME = ("Cc", "Zl", "Zp")  # controls, line separators; and invisible format characters (app.invisible)


def create(
    session: Session,
    org: Org,
    scopes: list[str],
    name: str | None = None,
    expires_days: int | None = None,
    actor: str = "cli",
) -> NewToken:
    """Make a token in the caller's write transaction; its creation is recorded in the org's audit chain."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ValueError(f"scopes must be among {', '.join(SCOPES)}; got {', '.join(unknown) or 'none'}")
    if name is not None and not 1 <= len(name) <= 100:
        raise ValueError("a token name is 1 to 100 characters")
    if name is not None and any(
        unicodedata.category(ch) in _NOT_IN_A_NAME or invisible.is_invisible(name, at) for at, ch in enumerate(name)
    ):
        # shown on one line in pages, logs and the audit trail, and read as it looks (no bidi override)
        raise ValueError("a token name is one line: no line break, tab, control or invisible formatting character")
    if expires_days is not None and not 1 <= expires_days <= 3650:
        raise ValueError("expiry must be between 1 and 3650 days")
    secret = PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(_BODY_LENGTH))
    now = clock.now_of(session.connection())  # expiry on the database's clock: every host judges it alike
    record = ApiToken(
        org_id=org.id,
        name=name or "token",
        prefix=secret[: len(PREFIX) + 6],
        token_hash=hash_token(secret),
        scopes=" ".join(dict.fromkeys(scopes)),
        created_by=actor,
        created_at=now,
        expires_at=now + timedelta(days=expires_days) if expires_days else None,
    )
    session.add(record)
    session.flush()
    audit.record(
        session,
        org.id,
        audit.Action.TOKEN_CREATED,
        actor,
        {
            "token_id": record.id,
            "name": record.name,
            "prefix": record.prefix,
            "scopes": record.scope_list,
            "expires_at": record.expires_at.isoformat() if record.expires_at else None,
        },
    )
    return NewToken(record, secret)


def revoke(session: Session, token_id: int, actor: str = "cli") -> ApiToken:
    record = session.get(ApiToken, token_id)
    if record is None:
        raise LookupError(f"no token with id {token_id}")
    if record.revoked_at is None:
        record.revoked_at = utcnow()
        audit.record(
            session,
            record.org_id,
            audit.Action.TOKEN_REVOKED,
            actor,
            {"token_id": record.id, "name": record.name, "prefix": record.prefix},
        )
    return record


def list_for(session: Session, org_id: int) -> list[ApiToken]:
    return list(session.scalars(sa.select(ApiToken).where(ApiToken.org_id == org_id).order_by(ApiToken.id)))
