"""The per-token rate limit (`FREMFORGE_RATE_LIMIT`, e.g. 600/minute): one counter row per token in the database, so
every gunicorn worker and host shares it, moved by one atomic UPSERT ... RETURNING per request; 429 past the limit.

A fixed window per token, anchored at the request that opened it (not at the top of the minute, so tokens' windows
do not all reset at once): the window's first request inserts or restarts the row, the others add one, and a request
past the limit is refused until the window ends (`Retry-After`, the seconds left). A fixed window costs one small row
and one comparison; a burst straddling two windows may get up to twice the limit through, which is acceptable for what
this guards against (a runaway CI loop, a script gone wrong). A sliding log would cost a row per request, a sliding
counter a second count and a weighted estimate whose refusals cannot say exactly when to come back.

The statement runs in a transaction of its own, committed at once, after the token is authenticated and before the
request does anything else: it locks one row of `rate_limits` (this token's) for a moment and nothing of ingest's
(`app.locks`), so it neither waits on an upload nor makes another token's request wait on PostgreSQL. (On SQLite,
whose writers always take turns, it is one short write more.) Times are on the database's clock, in milliseconds.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import FunctionElement

from app.db import write_transaction
from app.models import RateLimitWindow
from app.web.errors import ApiError

UNIT_NAMES = {1: "second", 60: "minute", 3600: "hour"}
_windows = RateLimitWindow.__table__


class database_ms(FunctionElement[int]):
    """Unix time in whole milliseconds on the database's clock (PostgreSQL: as the statement runs)."""

    type = sa.BigInteger()
    inherit_cache = True


@compiles(database_ms, "postgresql")
def _postgresql(_element: Any, _compiler: Any, **_kw: Any) -> str:
    return "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"


@compiles(database_ms, "sqlite")
def _sqlite(_element: Any, _compiler: Any, **_kw: Any) -> str:
    return "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"


@functools.cache
def _count(dialect: str) -> sa.Insert:
    """Count this request in its token's window (opening a new window when the last has ended); RETURNING the count
    and the milliseconds left in the window."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(_windows).values(token_id=sa.bindparam("token"), window_start=database_ms(), count=1)
    period = sa.bindparam("period_ms", type_=sa.BigInteger)
    current = _windows.c.window_start > statement.excluded.window_start - period  # the stored window has not ended
    return statement.on_conflict_do_update(
        index_elements=[_windows.c.token_id],
        set_={
            "count": sa.case((current, _windows.c.count + 1), else_=1),
            "window_start": sa.case((current, _windows.c.window_start), else_=statement.excluded.window_start),
        },
    ).returning(_windows.c.count, (_windows.c.window_start + period - database_ms()).label("left_ms"))


def check(session: Session, token_id: int, rule: tuple[int, int]) -> None:
    """Count a request of the token against `rule` (requests, window seconds); 429 `rate_limited` past it.

    One statement in a write transaction of its own, committed before this returns (or raises).
    """
    limit, seconds = rule
    with write_transaction(session):
        conn = session.connection()
        count, left_ms = conn.execute(_count(conn.dialect.name), {"token": token_id, "period_ms": seconds * 1000}).one()
    if count <= limit:
        return
    retry_after = min(max(1, math.ceil(left_ms / 1000)), seconds)
    unit = UNIT_NAMES.get(seconds, f"{seconds} seconds")
    raise ApiError(
        429,
        "rate_limited",
        f"This token made more than {limit} requests this {unit}; try again in {retry_after} seconds.",
        headers={"Retry-After": str(retry_after)},
    )
