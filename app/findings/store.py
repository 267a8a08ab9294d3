"""Bulk insert of finding rows, the hot path of ingest, with the move of the org's chain head.

PostgreSQL: up to ONE_STATEMENT_ROWS rows in one statement (the rows as one JSON parameter, the head moved in the
same statement), more by COPY; SQLite: executemany a chunk at a time.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from itertools import islice
from typing import Any, NamedTuple

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from app import prepared
from app.models import FINDING_PAYLOAD_COLUMNS, ChainHead, Finding

COLUMNS = (
    "org_id",
    "scan_run_id",
    "seq",
    "payload_hash",
    "chain_hash",
    "created_at",
    *FINDING_PAYLOAD_COLUMNS,
    "blocking",
    "new",
    "exception_id",
)
_QUOTED = ", ".join(f'"{c}"' for c in COLUMNS)
_SQLITE_INSERT = f"INSERT INTO findings ({_QUOTED}) VALUES ({', '.join('?' * len(COLUMNS))})"
_POSTGRES_COPY = f"COPY findings ({_QUOTED}) FROM STDIN"
SQLITE_CHUNK = 10_000  # rows per executemany: the rows of a big upload are made a chunk at a time
ONE_STATEMENT_ROWS = 2_000  # up to this many rows, one statement; beyond, COPY streams them (memory stays flat)
_heads = ChainHead.__table__
MOVE_HEAD = (
    sa.update(_heads)
    .where(_heads.c.org_id == sa.bindparam("head_org"))
    .values(seq=sa.bindparam("new_seq"), head_hash=sa.bindparam("new_hash"))
)
# PostgreSQL: the rows as one JSON parameter, typed by the table's own row type.
_json_rows_t = sa.func.json_populate_recordset(
    sa.literal_column("NULL::findings"), sa.cast(sa.bindparam("rows", type_=sa.Text), postgresql.JSON)
).table_valued(*COLUMNS)
INSERT_FROM_JSON = sa.insert(Finding.__table__).from_select(COLUMNS, sa.select(*(_json_rows_t.c[c] for c in COLUMNS)))


class Head(NamedTuple):
    """Where the org's chain head moves to once the rows are in."""

    org_id: int
    seq: int
    hash: str


def sqlite_datetime(value: Any) -> str:
    """The text SQLAlchemy's SQLite DateTime type stores and reads back."""
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


def insert(
    conn: sa.Connection,
    rows: Iterable[tuple[Any, ...]],
    count: int,
    head: Head | None,
    also: tuple[sa.Executable, ...] = (),
    params: Mapping[str, Any] | None = None,
    json_rows: str | None = None,
) -> None:
    """Insert `count` rows given in COLUMNS order (JSON columns as JSON text, created_at as the dialect wants), move
    the org's chain head to `head` (None: it stays), and run the statements `also` with `params`.

    On PostgreSQL up to ONE_STATEMENT_ROWS rows, all of it is one statement (its rows as `json_rows`, when given:
    linked_json's, made mostly before the chain head was locked; `rows` is then not read). `rows` may be a
    generator: beyond that rows are made as they are written (COPY) or a chunk at a time (SQLite), so a
    100,000-finding upload never holds all of its rows at once.
    """
    dml, params = also, dict(params or {})
    if head is not None:
        dml = (MOVE_HEAD, *also)
        params |= {"head_org": head.org_id, "new_seq": head.seq, "new_hash": head.hash}
    dialect = conn.dialect.name
    if dialect == "postgresql" and count <= ONE_STATEMENT_ROWS:
        prepared.run(conn, _with(dml), {**params, "rows": json_rows if json_rows is not None else _json_rows(rows)})
        return
    it = iter(rows)
    if dialect == "postgresql":
        prepared.copy_rows(conn, _POSTGRES_COPY, it)
    elif dialect == "sqlite":
        chunk = list(islice(it, SQLITE_CHUNK))
        while chunk:
            prepared.run_many(conn, _SQLITE_INSERT, chunk)
            chunk = list(islice(it, SQLITE_CHUNK))
    else:
        raise NotImplementedError(f"findings are stored on SQLite or PostgreSQL, not {dialect}")
    for statement in dml:
        prepared.run(conn, statement, params)


@functools.cache
def _with(dml: tuple[sa.Executable, ...]) -> sa.Insert:
    """INSERT_FROM_JSON with `dml` run in the same statement (PostgreSQL's data-modifying WITH queries)."""
    return INSERT_FROM_JSON.add_cte(*(statement.cte(f"w{i}") for i, statement in enumerate(dml)))  # type: ignore[attr-defined]


def _json_rows(rows: Iterable[tuple[Any, ...]]) -> str:
    """Rows as a JSON array of objects keyed by column (the JSON columns' text embedded as JSON)."""
    objects = []
    for row in rows:
        obj = dict(zip(COLUMNS, row, strict=True))
        obj["references"] = orjson.Fragment(obj["references"])
        obj["vendor_ids"] = orjson.Fragment(obj["vendor_ids"])
        objects.append(obj)
    return orjson.dumps(objects).decode()


_JSON = {True: b"true", False: b"false", None: b"null"}


def unlinked_json(payloads: Iterable[bytes], flags: Iterable[tuple[bool, bool | None, int | None]]) -> list[bytes]:
    """The rows of insert's one statement but for their chain links, made before the org's chain head is locked:
    each finding's canonical payload (app.chain.finding_payload, whose keys are the row's column names) with its
    (blocking, new, exception_id) added, left open (no closing brace) for linked_json. The payload's created_at ends
    in "Z", which PostgreSQL's timestamp input ignores; an absent `truncated` is NULL, as for findings not cut."""
    return [
        b'%s,"blocking":%s,"new":%s,"exception_id":%s'
        % (p[:-1], _JSON[blocking], _JSON[new], b"null" if exception_id is None else b"%d" % exception_id)
        for p, (blocking, new, exception_id) in zip(payloads, flags, strict=True)
    ]


def linked_json(unlinked: Sequence[bytes], links: Sequence[tuple[int, str, str]]) -> str:
    """The rows of insert's one statement: unlinked_json's objects closed with each row's (seq, payload_hash,
    chain_hash), as chain.link gives them (hex digests: nothing to escape)."""
    closed = (
        b'%s,"seq":%d,"payload_hash":"%s","chain_hash":"%s"}' % (obj, seq, ph.encode(), ch.encode())
        for obj, (seq, ph, ch) in zip(unlinked, links, strict=True)
    )
    return (b"[" + b",".join(closed) + b"]").decode()
