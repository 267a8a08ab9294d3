"""Exceptions (accepted risks, spec section 10): validated, created, revoked, listed and expired; every change an
audit event in the org's chain, and a re-post of the commits whose verdict it may change (app.reposts).

Matching a finding against the active ones is pure, next to the blocking rule: app.policy.exceptions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import sqlalchemy as sa
from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints, ValidationInfo, field_validator
from sqlalchemy.orm import Session

from app import reposts
from app.chain import audit
from app.clock import now_of
from app.db import write_transaction
from app.findings.schemas import RepoFullName
from app.models import OrgSettings, PolicyException, utcnow
from app.policy.exceptions import RESERVED_PREFIX
from app.web import cursors
from app.web.urls import Urls

MAX_DAYS = 365
REASON_LIMIT = 2000
# An image-name pattern: a repository path as registries name images (host[:port]/path), `*` for any run of
# characters; no tag or digest (exceptions apply to every tag of an image).
IMAGE_PATTERN = re.compile(r"[A-Za-z0-9*](?:[A-Za-z0-9._*-]|/(?!/)|:(?=[0-9*]+/))*")


def _advisory(value: str) -> str:
    if value.lower().startswith(RESERVED_PREFIX):
        raise ValueError("names a synthetic signing finding, which no exception covers (signing has its own allowlist)")
    if any(ch.isspace() for ch in value):
        raise ValueError("must not contain white space")
    if "*" in value:  # an exception names one advisory; the advisory search's * is a prefix, no id has one
        raise ValueError("must be one advisory's id: a * matches nothing here (an exception covers one advisory)")
    return value


def _image(value: str) -> str:
    if not IMAGE_PATTERN.fullmatch(value) or value.endswith("/"):
        raise ValueError(
            "is not an image-name pattern: a registry path such as ghcr.io/acme/api or ghcr.io/acme/*, "
            "without a tag or digest"
        )
    return value


def parse_time(value: str) -> datetime:
    """ISO 8601 (a date, or a date and time; no zone means UTC) as the naive UTC the database keeps."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError("is not an ISO 8601 date or time, such as 2027-01-04 or 2027-01-04T12:00:00Z") from None
    if parsed.tzinfo is not None:
        try:  # 0001-01-01T00:00+01:00 is before the first UTC time there is
            parsed = parsed.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:
            raise ValueError("is out of the range of dates") from None
    return parsed


class ExceptionBody(BaseModel):
    """An exception to create, as the API, the admin form, the CLI and the importers give it. Validated with the
    current time in the context (`{"now": datetime}`) for `expires_at`."""

    model_config = ConfigDict(strict=True, extra="forbid")

    advisory_id: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1024), AfterValidator(_advisory)
    ]
    package_name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1024)] | None = None
    repo_full_name: RepoFullName | None = None
    image: Annotated[str, StringConstraints(strip_whitespace=True, max_length=1024), AfterValidator(_image)] | None = (
        None
    )
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=REASON_LIMIT)]
    ticket_url: Annotated[str, StringConstraints(pattern=r"^https://[^\s/]+\S*$", max_length=2048)] | None = None
    expires_at: str

    @field_validator("repo_full_name")
    @classmethod
    def _in_org(cls, value: str | None, info: ValidationInfo) -> str | None:
        owner = (info.context or {}).get("owner")
        if value is not None and owner is not None and value.split("/", 1)[0].lower() != owner.lower():
            raise ValueError(f"is outside this organisation's GitHub account ({owner}): no scan of it is stored here")
        return value

    @field_validator("expires_at")
    @classmethod
    def _expiry(cls, value: str, info: ValidationInfo) -> str:
        now = (info.context or {}).get("now") or utcnow()
        at = parse_time(value)
        if at <= now:
            raise ValueError("must be in the future")
        if at > now + timedelta(days=MAX_DAYS):
            raise ValueError(f"must be at most {MAX_DAYS} days ahead")
        return at.isoformat()


def validate(doc: Any, now: datetime, owner: str | None = None) -> ExceptionBody:
    """Raises pydantic's ValidationError naming each bad field; `owner`: the org's GitHub login, which a repository
    named must belong to (as an upload's must)."""
    return ExceptionBody.model_validate(doc, context={"now": now, "owner": owner})


def state_of(e: Any, now: datetime) -> str:
    if e.revoked_at is not None:
        return "revoked"
    return "expired" if e.expires_at <= now else "active"


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.replace(microsecond=0).isoformat() + "Z"


def as_dict(e: PolicyException, now: datetime) -> dict[str, Any]:
    return {
        "id": e.id,
        "advisory_id": e.advisory_id,
        "package_name": e.package_name,
        "repo_full_name": e.repo_full_name,
        "image": e.image,
        "reason": e.reason,
        "ticket_url": e.ticket_url,
        "expires_at": _iso(e.expires_at),
        "created_by": e.created_by,
        "created_at": _iso(e.created_at),
        "revoked_by": e.revoked_by,
        "revoked_at": _iso(e.revoked_at),
        "source": e.source,
        "state": state_of(e, now),
    }


def _audit_details(e: PolicyException) -> dict[str, Any]:
    return {
        "exception_id": e.id,
        "advisory_id": e.advisory_id,
        "package_name": e.package_name,
        "repo_full_name": e.repo_full_name,
        "image": e.image,
        "reason": e.reason,
        "ticket_url": e.ticket_url,
        "expires_at": _iso(e.expires_at),
        "source": e.source,
    }


def create_many(
    session: Session,
    org_id: int,
    bodies: Sequence[ExceptionBody],
    actor: str,
    source: str,
    repost: Urls | None,
) -> list[PolicyException]:
    """Store validated exceptions in the caller's write transaction, each an audit event; ask for the org's commits
    to be posted again (with links under `repost`; None: nothing is posted, no GitHub App)."""
    now = utcnow()
    rows = []
    for body in bodies:
        row = PolicyException(
            org_id=org_id,
            advisory_id=body.advisory_id,
            package_name=body.package_name,
            repo_full_name=body.repo_full_name.lower() if body.repo_full_name else None,
            image=body.image,
            reason=body.reason,
            ticket_url=body.ticket_url,
            expires_at=datetime.fromisoformat(body.expires_at),
            source=source,
            created_by=actor,
            created_at=now,
        )
        session.add(row)
        rows.append(row)
    session.flush()
    _lock_settings(session, org_id)
    for row in rows:
        audit.record(session, org_id, audit.Action.EXCEPTION_CREATED, actor, _audit_details(row), at=now)
    _repost(session, org_id, repost)
    return rows


def revoke(session: Session, org_id: int, exception_id: int, actor: str, repost: Urls | None) -> PolicyException | None:
    """Revoke one of the org's exceptions (the row stays, revoked); None: no such exception. Revoking a revoked
    one changes nothing."""
    row = session.scalars(
        sa.select(PolicyException)
        .where(PolicyException.org_id == org_id, PolicyException.id == exception_id)
        .with_for_update()
    ).one_or_none()
    if row is None or row.revoked_at is not None:
        return row
    row.revoked_at, row.revoked_by = utcnow(), actor
    session.flush()
    _lock_settings(session, org_id)
    audit.record(session, org_id, audit.Action.EXCEPTION_REVOKED, actor, _audit_details(row))
    _repost(session, org_id, repost)
    return row


def _lock_settings(session: Session, org_id: int) -> None:
    """The org's settings row says until when any exception may be active (uploads skip reading them after it), and
    moves its exceptions' version (an upload that read them before this change reads them again). Updated before
    the chain head is locked (by the audit event): the order of app.locks, policy then head, so an upload holding
    the policy shared and waiting for the head never waits on this in turn."""
    session.connection().execute(UPDATE_UNTIL, {"org": org_id})


def _repost(session: Session, org_id: int, repost: Urls | None) -> None:
    """Ask for the org's open pull request heads and recent commits to be posted again (None: nothing is posted)."""
    if repost is not None:
        reposts.ask_for_org(session.connection(), org_id, repost)


_exceptions = PolicyException.__table__
_UNTIL = (
    sa.select(sa.func.max(_exceptions.c.expires_at))
    .where(_exceptions.c.org_id == sa.bindparam("org"), _exceptions.c.revoked_at.is_(None))
    .scalar_subquery()
)


_settings = OrgSettings.__table__
UPDATE_UNTIL = (
    sa.update(_settings)
    .where(_settings.c.org_id == sa.bindparam("org"))
    .values(exceptions_until=_UNTIL, exceptions_version=_settings.c.exceptions_version + 1)
)


def _state_filter(state: str | None, now: datetime) -> list[sa.ColumnElement[bool]]:
    e = PolicyException
    if state == "active":
        return [e.revoked_at.is_(None), e.expires_at > now]
    if state == "expired":
        return [e.revoked_at.is_(None), e.expires_at <= now]
    if state == "revoked":
        return [e.revoked_at.is_not(None)]
    return []


def page(
    session: Session, org_id: int, state: str | None, before: int | None, limit: int
) -> tuple[list[PolicyException], int | None]:
    """Up to `limit` of the org's exceptions (newest first, of `state` if given) with ids below `before`, and the id
    to go on from when more follow."""
    now = now_of(session.connection())
    q = sa.select(PolicyException).where(PolicyException.org_id == org_id, *_state_filter(state, now))
    if before is not None:
        q = q.where(PolicyException.id < before)
    rows = list(session.scalars(q.order_by(PolicyException.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more and rows else None)


def encode_cursor(exception_id: int) -> str:
    return cursors.encode("x", exception_id)


def decode_cursor(cursor: str) -> int:
    return cursors.decode("x", cursor)


# ---------------------------------------------------------------- expiry (the worker)

_DUE = (
    sa.select(PolicyException)
    .where(
        PolicyException.expiry_recorded_at.is_(None),
        PolicyException.revoked_at.is_(None),
        PolicyException.expires_at <= sa.bindparam("now"),
    )
    .order_by(PolicyException.expires_at)
    .limit(200)
)


def expire_due(session: Session, repost: Urls | None) -> int:
    """Record each exception that expired since the last look: an audit event each, and a re-post of its org's
    commits (once per org). The worker calls it every few seconds, so a commit an exception kept green turns red
    within a minute of its expiry. How many were recorded."""
    with write_transaction(session):
        conn = session.connection()
        now = now_of(conn)
        due = _DUE.with_for_update(skip_locked=True) if conn.dialect.name == "postgresql" else _DUE
        rows = list(session.scalars(due, {"now": now}))
        for row in rows:
            row.expiry_recorded_at = now
        session.flush()
        orgs = sorted({row.org_id for row in rows})
        for org_id in orgs:  # every settings row before any chain head (see _lock_settings)
            _lock_settings(session, org_id)
        for row in rows:
            details = _audit_details(row)
            audit.record(session, row.org_id, audit.Action.EXCEPTION_EXPIRED, "system", details, at=now)
        for org_id in orgs:
            _repost(session, org_id, repost)
    return len(rows)
