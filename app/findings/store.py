"""Bulk insert of finding rows, the hot path of ingest: COPY on PostgreSQL, one executemany on SQLite."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from app.models import FINDING_PAYLOAD_COLUMNS

COLUMNS = ("org_id", "scan_run_id", "seq", "payload_hash", "chain_hash", "created_at", *FINDING_PAYLOAD_COLUMNS)
_QUOTED = ", ".join(f'"{c}"' for c in COLUMNS)
_SQLITE_INSERT = f"INSERT INTO findings ({_QUOTED}) VALUES ({', '.join('?' * len(COLUMNS))})"
_POSTGRES_COPY = f"COPY findings ({_QUOTED}) FROM STDIN"


def sqlite_datetime(value: Any) -> str:
    """The text SQLAlchemy's SQLite DateTime type stores and reads back."""
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


def insert(conn: sa.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert rows given in COLUMNS order (JSON columns as JSON text, created_at as the dialect wants)."""
    if not rows:
        return
    dialect = conn.dialect.name
    if dialect == "postgresql":
        with conn.connection.driver_connection.cursor() as cur, cur.copy(_POSTGRES_COPY) as copy:  # type: ignore[union-attr]
            for row in rows:
                copy.write_row(row)
    elif dialect == "sqlite":
        conn.exec_driver_sql(_SQLITE_INSERT, list(rows))
    else:
        raise NotImplementedError(f"findings are stored on SQLite or PostgreSQL, not {dialect}")
