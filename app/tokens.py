"""The app's own API tokens: made once, kept as a SHA-256, scoped to one org, expiring and revocable."""

from __future__ import annotations

import hashlib
import secrets
import string
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app import audit, orgs
from app.db import write_transaction
from app.errors import forbidden, not_found, unauthorized
from app.models import ApiToken, Org, OrgSettings, utcnow

PREFIX = "ffis_"  # fremforge image scanning: recognisable to secret scanners and to people
SCOPES = ("findings:write", "findings:read", "settings:write")
_ALPHABET = string.ascii_letters + string.digits
_BODY_LENGTH = 40
LAST_USED_RESOLUTION = timedelta(seconds=60)  # write last-use at most this often per token


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class NewToken:
    record: ApiToken
    secret: str  # shown once, never stored


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
    if expires_days is not None and not 1 <= expires_days <= 3650:
        raise ValueError("expiry must be between 1 and 3650 days")
    secret = PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(_BODY_LENGTH))
    now = utcnow()
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
        "token.created",
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
            "token.revoked",
            actor,
            {"token_id": record.id, "name": record.name, "prefix": record.prefix},
        )
    return record


def list_for(session: Session, org_id: int) -> list[ApiToken]:
    return list(session.scalars(sa.select(ApiToken).where(ApiToken.org_id == org_id).order_by(ApiToken.id)))


def state(record: ApiToken, now: datetime | None = None) -> str:
    now = now or utcnow()
    if record.revoked_at is not None:
        return "revoked"
    if record.expires_at is not None and record.expires_at <= now:
        return "expired"
    return "active"


def bearer(header: str | None) -> str:
    """The token of an `Authorization: Bearer ...` header, or 401."""
    if not header:
        raise unauthorized("Authentication required: send Authorization: Bearer <token>.")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise unauthorized("The Authorization header must be: Bearer <token>.")
    return value.strip()


class Principal(NamedTuple):
    """Who a request acts as: the org, the token, and the org's settings (loaded in the same query)."""

    org: Org
    token: ApiToken
    settings: OrgSettings


_token_t, _org_t, _settings_t = ApiToken.__table__, Org.__table__, OrgSettings.__table__
# What a request's principal holds: the columns read on every API request (not the tokens' hashes or the rows'
# times of creation), with Core, not the ORM: loading three mapped instances costs more than the query.
_PRINCIPAL_COLUMNS = {
    ApiToken: ("id", "org_id", "name", "prefix", "scopes", "expires_at", "revoked_at", "last_used_at"),
    Org: ("id", "slug", "github_login", "installation_id"),
    OrgSettings: ("org_id", "enabled", "block_action", "require_signed", "allowed_issuers", "retention_days"),
}
_AUTH = (
    sa.select(*(model.__table__.c[c] for model, cs in _PRINCIPAL_COLUMNS.items() for c in cs))
    .select_from(
        _token_t.join(_org_t, _org_t.c.id == _token_t.c.org_id).outerjoin(
            _settings_t, _settings_t.c.org_id == _org_t.c.id
        )
    )
    .where(_token_t.c.token_hash == sa.bindparam("token_hash"))
    .set_label_style(sa.LABEL_STYLE_TABLENAME_PLUS_COL)
)


def _detached(model: Any, row: Any) -> Any:
    """A `model` instance holding the principal's columns of its table, outside any session (read, never written)."""
    table = model.__table__.name
    return model(**{c: row[f"{table}_{c}"] for c in _PRINCIPAL_COLUMNS[model]})


def authenticate(session: Session, header: str | None, slug: str, scopes: tuple[str, ...]) -> Principal:
    """The principal of a request allowed to act on org `slug` with one of `scopes`; else 401/403/404.

    One query on the happy path. The token's last use is written at most once a minute, in a write
    transaction of its own.
    """
    secret = bearer(header)
    row = session.connection().execute(_AUTH, {"token_hash": hash_token(secret)}).mappings().one_or_none()
    if row is None:
        raise unauthorized("The token is not known.")
    record, org = _detached(ApiToken, row), _detached(Org, row)
    settings = _detached(OrgSettings, row) if row["org_settings_org_id"] is not None else None
    now = utcnow()
    current = state(record, now)
    if current != "active":
        raise unauthorized(f"The token is {current}.")
    if org.slug != slug:
        if session.scalars(sa.select(Org.id).where(Org.slug == slug)).one_or_none() is None:
            raise not_found(f"There is no organisation {slug!r}.")
        raise forbidden(f"This token belongs to another organisation, not {slug!r}.")
    if not set(scopes) & set(record.scope_list):
        raise forbidden(f"This token lacks the scope {' or '.join(scopes)}.")
    if settings is None:
        settings = orgs.settings_of(session, org.id)
    if record.last_used_at is None or now - record.last_used_at >= LAST_USED_RESOLUTION:
        with write_transaction(session):
            session.execute(sa.update(ApiToken).where(ApiToken.id == record.id).values(last_used_at=now))
    return Principal(org, record, settings)
