"""`Idempotency-Key` on uploads (spec section 11): the same key and body within 24 hours get the first answer again.

Keys are per organisation (a row per org and key): any token of the org that retries with the key gets the answer,
as the scan belongs to the org whichever token sent it. The body's identity is a SHA-256 of the query string and the
decompressed body. A request claims its key with one INSERT ... ON CONFLICT DO UPDATE ... RETURNING, in a
transaction of its own, committed before ingest; what comes back says what to do:

- the row is this request's claim (new, or taken over): go on; the answer is stored when the upload is (by ingest, in
  its transaction: `answer`), and a failure of any kind frees the key (`release`);
- another body's: 422 `idempotency_key_reused`;
- no answer yet: 409 `idempotency_key_in_flight`, with Retry-After;
- an answer: it is sent again (the same status and JSON, `Idempotent-Replayed: true`).

A claim is taken over when its key is older than KEEP (24 hours) or its request left it without an answer past LEASE
(2 minutes: longer than any request lives, gunicorn ending one after 30 seconds), both on the database's clock. The
daily retention run deletes keys older than KEEP (`forget_old`); until then an old key only waits to be taken over.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import FunctionElement

from app.db import rowcount, write_transaction
from app.models import IdempotencyKey
from app.web.errors import ApiError

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
MAX_LENGTH = 255
KEY_FORMAT = re.compile(r"[!-~]+")  # visible ASCII: a UUID, a hash, base64 all fit; no spaces or control characters
KEEP = timedelta(hours=24)  # a key's answer is sent again for this long after it was claimed
LEASE = timedelta(minutes=2)  # a claim without an answer for this long is taken for dead
IN_FLIGHT_RETRY_AFTER = 2  # seconds: an upload is usually answered within a few
REPLAYED = {"Idempotent-Replayed": "true"}
REUSED_DETAIL = {
    "path": HEADER,
    "in": "header",
    "code": "idempotency_key_reused",
    "message": "was sent before with another body or query",
}
_keys = IdempotencyKey.__table__


def key_of(header: str | None) -> str | None:
    """The request's Idempotency-Key (`header`, its value), None when it sent none; a 422 naming the header when it
    is malformed."""
    key = header
    if key is None:
        return None
    if not key:
        code, message = "string_too_short", "is empty"
    elif len(key) > MAX_LENGTH:
        code, message = "string_too_long", f"is longer than {MAX_LENGTH} characters"
    elif not KEY_FORMAT.fullmatch(key):
        code, message = "string_pattern_mismatch", "may hold visible ASCII characters only (no spaces or controls)"
    else:
        return key
    detail: dict[str, Any] = {"path": HEADER, "in": "header", "code": code, "message": message}
    if code == "string_too_long":
        detail["limit"] = MAX_LENGTH
    raise ApiError(
        422,
        "validation_failed",
        f"The {HEADER} header {message}: send 1 to {MAX_LENGTH} visible ASCII characters, such as a UUID.",
        [detail],
    )


def fingerprint(body: bytes, query_string: bytes) -> str:
    """The identity of a request's content: the query string and the decompressed body."""
    digest = hashlib.sha256(query_string)
    digest.update(b"\n")  # a query string holds no line break
    digest.update(body)
    return digest.hexdigest()


class database_time(FunctionElement[Any]):
    """UTC on the database's clock plus a number of seconds (`database_time(sa.literal(-60))`), as a naive datetime
    stored the way the columns store theirs."""

    type = sa.DateTime()
    inherit_cache = True


@compiles(database_time, "postgresql")
def _postgresql(element: Any, compiler: Any, **kw: Any) -> str:
    seconds = compiler.process(element.clauses, **kw)
    return f"((clock_timestamp() AT TIME ZONE 'UTC') + make_interval(secs => {seconds}))"


@compiles(database_time, "sqlite")
def _sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    # SQLAlchemy's text form of a datetime, to the microsecond (SQLite's clock gives milliseconds).
    seconds = compiler.process(element.clauses, **kw)
    return f"(strftime('%Y-%m-%d %H:%M:%f', 'now', ({seconds}) || ' seconds') || '000')"


def _now(seconds: timedelta = timedelta()) -> database_time:
    return database_time(sa.literal_column(str(int(seconds.total_seconds()))))


@dataclass(frozen=True)
class Claim:
    """This request's hold on its key."""

    org_id: int
    key: str
    token: str  # the claim's random id: the answer is stored, and the key freed, only while the row holds it


@dataclass(frozen=True)
class Replay:
    """The first answer of a key, to be sent again."""

    status: int
    body: dict[str, Any]


_TAKEN_OVER = ("fingerprint", "claim", "created_at", "lease_until", "status_code", "response")


@functools.cache
def _claim(dialect: str) -> sa.Insert:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(_keys).values(
        org_id=sa.bindparam("org"),
        idempotency_key=sa.bindparam("key"),
        fingerprint=sa.bindparam("fingerprint"),
        claim=sa.bindparam("claim"),
        created_at=_now(),
        lease_until=_now(LEASE),
    )
    free = sa.or_(
        _keys.c.created_at <= _now(-KEEP),  # aged out
        sa.and_(_keys.c.status_code.is_(None), _keys.c.lease_until <= _now()),  # its request died without an answer
    )
    # On a conflict the row is always "updated", to itself unless it is free, so that RETURNING gives the row either
    # way: the claim, or what the request needs to answer 409, 422 or the replay, in this one statement.
    return statement.on_conflict_do_update(
        index_elements=[_keys.c.org_id, _keys.c.idempotency_key],
        set_={c: sa.case((free, statement.excluded[c]), else_=_keys.c[c]) for c in _TAKEN_OVER},
    ).returning(_keys.c.claim, _keys.c.fingerprint, _keys.c.status_code, _keys.c.response)


def claim(session: Session, org_id: int, key: str, fingerprint: str) -> Claim | Replay:
    """Claim `key` for a request of this `fingerprint`: the claim, or the first answer to send again; 422 when the
    key was used with another body, 409 while its first request is in flight. One statement, committed."""
    token = secrets.token_hex(16)
    with write_transaction(session):
        conn = session.connection()
        row = conn.execute(
            _claim(conn.dialect.name), {"org": org_id, "key": key, "fingerprint": fingerprint, "claim": token}
        ).one()
    if row.claim == token:
        return Claim(org_id, key, token)
    if row.fingerprint != fingerprint:
        raise ApiError(
            422,
            "idempotency_key_reused",
            f"This {HEADER} was used with another request (body or query) in the last 24 hours; send a new key.",
            [REUSED_DETAIL],
        )
    if row.status_code is None:
        raise ApiError(
            409,
            "idempotency_key_in_flight",
            f"The first request with this {HEADER} is still being processed; try again in a few seconds.",
            headers={"Retry-After": str(IN_FLIGHT_RETRY_AFTER)},
        )
    return Replay(row.status_code, orjson.loads(row.response))


STORE_ANSWER = (
    sa.update(_keys)
    .where(
        _keys.c.org_id == sa.bindparam("ik_org"),
        _keys.c.idempotency_key == sa.bindparam("ik_key"),
        _keys.c.claim == sa.bindparam("ik_claim"),
    )
    .values(
        status_code=sa.bindparam("ik_status", type_=sa.Integer),
        response=sa.bindparam("ik_response", type_=sa.Text),
    )
)


def answer(held: Claim, status: int, body: dict[str, Any]) -> tuple[sa.Update, dict[str, Any]]:
    """The statement storing a claim's answer, and its parameters, to run in the transaction that stores the upload
    (so the answer is there exactly when the scan is). Its parameters are named `ik_*`."""
    params = {
        "ik_org": held.org_id,
        "ik_key": held.key,
        "ik_claim": held.token,
        "ik_status": status,
        "ik_response": orjson.dumps(body).decode(),
    }
    return STORE_ANSWER, params


def finish(session: Session, held: Claim, status: int, body: dict[str, Any]) -> None:
    """Store a claim's answer in a transaction of its own (an upload that stored nothing: its policy disabled)."""
    statement, params = answer(held, status, body)
    with write_transaction(session):
        session.execute(statement, params)


RELEASE = sa.delete(_keys).where(
    _keys.c.org_id == sa.bindparam("org"),
    _keys.c.idempotency_key == sa.bindparam("key"),
    _keys.c.claim == sa.bindparam("claim"),
    _keys.c.status_code.is_(None),
)


def release(session: Session, held: Claim) -> None:
    """Free the key of a request that failed (nothing was stored), so that a retry runs afresh.

    Best effort: when the database is what failed, the claim stays until its lease ends.
    """
    try:
        session.rollback()
        with write_transaction(session):
            session.execute(RELEASE, {"org": held.org_id, "key": held.key, "claim": held.token})
    except sa.exc.SQLAlchemyError as exc:
        log.warning("idempotency.release_failed error=%s; the key is free once its lease ends", type(exc).__name__)
        with contextlib.suppress(sa.exc.SQLAlchemyError):  # the failure is logged: the request's own error goes on
            session.rollback()


FORGET_OLD = sa.delete(_keys).where(_keys.c.created_at <= _now(-KEEP))


def forget_old(session: Session) -> int:
    """Delete the keys older than KEEP (by the index on created_at); how many. For the daily retention run."""
    with write_transaction(session):
        return rowcount(session.execute(FORGET_OLD))
