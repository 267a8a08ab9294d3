"""The database's clock: leases and due times are taken and compared on it, never on a worker's own clock."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement


class database_now(FunctionElement[datetime]):
    """UTC now as the database sees it, as a naive datetime (the columns' convention).

    PostgreSQL: the server's clock at the moment the statement runs (clock_timestamp, not the transaction's start).
    SQLite: the clock of the host holding the file, which is the only host that can write it.
    """

    type = sa.DateTime()
    inherit_cache = True


@compiles(database_now)
def _default(_element: Any, _compiler: Any, **_kw: Any) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(database_now, "postgresql")
def _postgresql(_element: Any, _compiler: Any, **_kw: Any) -> str:
    return "(clock_timestamp() AT TIME ZONE 'UTC')"


@compiles(database_now, "sqlite")
def _sqlite(_element: Any, _compiler: Any, **_kw: Any) -> str:
    # Milliseconds, in the text form SQLAlchemy stores datetimes in (so comparisons with stored values hold).
    return "strftime('%Y-%m-%d %H:%M:%f', 'now')"


NOW = sa.select(database_now())


def now_of(conn: sa.Connection) -> datetime:
    """The database's clock, read in the caller's transaction."""
    value = conn.execute(NOW).scalar_one()
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)
