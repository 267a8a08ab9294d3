"""API tokens as bearer credentials: the principal a request acts as (org, token, settings), or 401/403/404.

Tokens are made and revoked by `app.tokens`; this reads them, with Core (every API request pays for it).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import sqlalchemy as sa
from flask import current_app, request
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import manager_of_class

from app import db, orgs, prepared
from app.clock import database_now
from app.db import write_transaction
from app.models import ApiToken, Org, OrgSettings
from app.web import ratelimit
from app.web.errors import forbidden, not_found, unauthorized

PREFIX = "ffis_"  # fremforge image scanning: recognisable to secret scanners and to people
SCOPES = ("findings:write", "findings:read", "settings:write")
LAST_USED_RESOLUTION = timedelta(seconds=60)  # write last-use at most this often per token


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def state(record: ApiToken, now: datetime) -> str:
    """`active`, `expired` or `revoked` at `now`: the database's time, as every request judges a token."""
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
    OrgSettings: (
        "org_id",
        "enabled",
        "block_action",
        "require_signed",
        "allowed_issuers",
        "retention_days",
        "block_threshold",
        "ignore_unfixed",
        "block_on",
        "exceptions_until",
        "exceptions_version",
    ),
}
_MANAGERS = {model: manager_of_class(model) for model in _PRINCIPAL_COLUMNS}
_AUTH = (
    sa.select(
        *(model.__table__.c[c] for model, cs in _PRINCIPAL_COLUMNS.items() for c in cs),
        database_now().label("database_now"),  # expiry and last use on the database's clock, whichever host asks
    )
    .select_from(
        _token_t.join(_org_t, _org_t.c.id == _token_t.c.org_id).outerjoin(
            _settings_t, _settings_t.c.org_id == _org_t.c.id
        )
    )
    .where(_token_t.c.token_hash == sa.bindparam("token_hash"))
    .set_label_style(sa.LABEL_STYLE_TABLENAME_PLUS_COL)
)


def _detached(model: Any, row: Any) -> Any:
    """A `model` instance holding the principal's columns of its table, outside any session (read, never written).

    Made as the ORM makes a loaded instance, its values put in place without the constructor's per-attribute events
    (a sixth of the cost: every API request makes three)."""
    table = model.__table__.name
    instance = _MANAGERS[model].new_instance()
    instance.__dict__.update({c: getattr(row, f"{table}_{c}") for c in _PRINCIPAL_COLUMNS[model]})
    return instance


def authenticate(
    session: Session,
    header: str | None,
    slug: str,
    scopes: tuple[str, ...],
    rate_limit: tuple[int, int] | None = None,
) -> Principal:
    """The principal of a request allowed to act on org `slug` with one of `scopes`; else 401/403/404, or 429 when
    the token is past its `rate_limit` (requests, seconds; `app.web.ratelimit`).

    One query on the happy path, and with a rate limit one statement more, committed at once. The token's last use
    is written at most once a minute, in a write transaction of its own.
    """
    secret = bearer(header)
    row = next(iter(prepared.run(session.connection(), _AUTH, {"token_hash": hash_token(secret)})), None)
    if row is None:
        raise unauthorized("The token is not known.")
    record, org = _detached(ApiToken, row), _detached(Org, row)
    settings = _detached(OrgSettings, row) if row.org_settings_org_id is not None else None
    now = row.database_now
    current = state(record, now)
    if current != "active":
        raise unauthorized(f"The token is {current}.")
    if rate_limit is not None:  # every request a live token makes counts, whatever it asks
        ratelimit.check(session, record.id, rate_limit)
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


def for_request(slug: str, *scopes: str) -> Principal:
    """The principal of this request (its Authorization header) on org `slug` with one of `scopes`."""
    rate_limit = current_app.config.get("RATE_LIMIT_RULE")
    return authenticate(db.session(), request.headers.get("Authorization"), slug, scopes, rate_limit)


def actor(token: ApiToken) -> str:
    """How the audit log names what a token did."""
    return f"token:{token.id} ({token.name})"
