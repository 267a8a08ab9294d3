"""Bulk insert of finding rows, the hot path of ingest: COPY on PostgreSQL, one executemany on SQLite."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from typing import Any

import sqlalchemy as sa

from app.models import FINDING_PAYLOAD_COLUMNS

COLUMNS = ("org_id", "scan_run_id", "seq", "payload_hash", "chain_hash", "created_at", *FINDING_PAYLOAD_COLUMNS)
_QUOTED = ", ".join(f'"{c}"' for c in COLUMNS)
_SQLITE_INSERT = f"INSERT INTO findings ({_QUOTED}) VALUES ({', '.join('?' * len(COLUMNS))})"
_POSTGRES_COPY = f"COPY findings ({_QUOTED}) FROM STDIN"
SQLITE_CHUNK = 10_000  # rows per executemany: the rows of a big upload are made a chunk at a time


def sqlite_datetime(value: Any) -> str:
    """The text SQLAlchemy's SQLite DateTime type stores and reads back."""
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


def insert(conn: sa.Connection, rows: Iterable[tuple[Any, ...]]) -> None:
    """Insert rows given in COLUMNS order (JSON columns as JSON text, created_at as the dialect wants).

    `rows` may be a generator: rows are made as they are written (COPY) or a chunk at a time (SQLite), so a
    100,000-finding upload never holds all of its rows at once.
    """
    it = iter(rows)
    first = next(it, None)
    if first is None:
        return
    dialect = conn.dialect.name
    if dialect == "postgresql":
        with conn.connection.driver_connection.cursor() as cur, cur.copy(_POSTGRES_COPY) as copy:  # type: ignore[union-attr]
            copy.write_row(first)
            for row in it:
                copy.write_row(row)
    elif dialect == "sqlite":
        chunk = [first, *islice(it, SQLITE_CHUNK - 1)]
        while chunk:
            conn.exec_driver_sql(_SQLITE_INSERT, chunk)
            chunk = list(islice(it, SQLITE_CHUNK))
    else:
        raise NotImplementedError(f"findings are stored on SQLite or PostgreSQL, not {dialect}")
