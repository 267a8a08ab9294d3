"""The upload's statements on the driver's cursor (app.prepared): the same values, rows and errors as SQLAlchemy's."""

from __future__ import annotations

import datetime as dt
import signal
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from app import db, prepared
from app.models import ChainHead, Finding, Image, OutboxItem, ScanRun, TrendChange
from tests.conftest import empty_database, normalise, postgres_base_url, skip_or_fail
from tests.factories import FIXTURES, finding, make_org, make_token, post, seed

_md = sa.MetaData()
probe = sa.Table(
    "prepared_probe",
    _md,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(50), unique=True, nullable=False),
    sa.Column("kind", sa.String(20), nullable=False, default="plain"),  # a scalar default SQLAlchemy fills in
    sa.Column("at", sa.DateTime, nullable=False),
    sa.Column("data", sa.JSON),
    sa.Column("flag", sa.Boolean, nullable=False, default=False),
    sa.Column("score", sa.Numeric(5, 2)),  # psycopg's type for it decides how SQLAlchemy reads it
)
made = sa.Table(
    "prepared_made",
    _md,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("at", sa.DateTime, default=dt.datetime.now),  # a default SQLAlchemy computes at each execution
)
AT = dt.datetime(2027, 1, 4, 12, 0, 0)  # no microseconds: SQLite's text of it is SQLAlchemy's own format, not isoformat
READ = sa.select(probe.c.name, probe.c.kind, probe.c.at, probe.c.data, probe.c.flag, probe.c.score).where(
    probe.c.name != sa.bindparam("not_name"),
    probe.c.kind == "plain",  # a literal value the statement binds itself
)
ADD = sa.insert(probe).values(
    name=sa.bindparam("name"), at=sa.bindparam("at"), data=sa.bindparam("data"), score=sa.bindparam("score")
)
RENAME = sa.update(probe).where(probe.c.name == sa.bindparam("old")).values(name=sa.bindparam("new"))


@pytest.fixture
def conn(app: Flask) -> Iterator[sa.Connection]:
    """The request session's connection, in a write transaction, with the probe tables made (and dropped after)."""
    engine = app.extensions["fremforge.db"].engine
    _md.create_all(engine)
    try:
        with app.app_context():
            s = db.session()
            with db.write_transaction(s):
                yield s.connection()
    finally:
        _md.drop_all(engine)


def test_values_are_stored_as_sqlalchemy_stores_them_and_read_back_as_it_reads_them(conn: sa.Connection) -> None:
    prepared.run(
        conn, ADD, {"name": "one", "at": AT, "data": {"issuers": ["https://a.example"]}, "score": Decimal("1.5")}
    )
    conn.execute(ADD, {"name": "two", "at": AT.replace(microsecond=5), "data": None, "score": None})

    got = prepared.run(conn, READ, {"not_name": "nobody"})

    assert [tuple(r) for r in got] == [tuple(r) for r in conn.execute(READ, {"not_name": "nobody"})]
    assert [tuple(r) for r in got] == [
        ("one", "plain", AT, {"issuers": ["https://a.example"]}, False, Decimal("1.50")),  # scalar defaults filled in
        ("two", "plain", AT.replace(microsecond=5), None, False, None),
    ]
    assert got[0].data == {"issuers": ["https://a.example"]} and got[0].at == AT  # by name, typed
    assert prepared.run(conn, READ, {"not_name": "one"})[0].name == "two"  # the parameter bound each time


def test_an_update_changes_what_it_matches(conn: sa.Connection) -> None:
    prepared.run(conn, ADD, {"name": "one", "at": AT, "data": None, "score": None})
    assert prepared.run(conn, RENAME, {"old": "one", "new": "uno"}) == []
    assert conn.execute(sa.select(probe.c.name)).scalars().all() == ["uno"]


def test_rows_given_as_the_driver_takes_them_are_written_many_at_once(conn: sa.Connection) -> None:
    marker = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    at: Any = AT.strftime("%Y-%m-%d %H:%M:%S.%f") if conn.dialect.name == "sqlite" else AT
    sql = f"INSERT INTO prepared_probe (name, kind, at, flag) VALUES ({marker}, 'plain', {marker}, {marker})"
    prepared.run_many(conn, sql, [("a", at, False), ("b", at, True)])
    assert [tuple(r) for r in prepared.run(conn, READ, {"not_name": ""})] == [
        ("a", "plain", AT, None, False, None),
        ("b", "plain", AT, None, True, None),
    ]


def test_a_constraint_broken_is_sqlalchemys_integrity_error(conn: sa.Connection) -> None:
    prepared.run(conn, ADD, {"name": "one", "at": AT, "data": None, "score": None})
    with pytest.raises(sa.exc.IntegrityError) as raised:
        prepared.run(conn, ADD, {"name": "one", "at": AT, "data": None, "score": None})
    assert not db.unavailable(raised.value)  # bad data, not an outage: no 503 that invites a retry


def test_statement_listeners_still_see_each_statement(app: Flask, conn: sa.Connection) -> None:
    seen: list[str] = []

    def listen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement.split()[0])

    engine = app.extensions["fremforge.db"].engine
    sa.event.listen(engine, "before_cursor_execute", listen)
    try:
        prepared.run(conn, ADD, {"name": "one", "at": AT, "data": None, "score": None})
        rows = prepared.run(conn, READ, {"not_name": ""})
    finally:
        sa.event.remove(engine, "before_cursor_execute", listen)
    assert seen == ["INSERT", "SELECT"]
    assert [r.name for r in rows] == ["one"]


@pytest.mark.parametrize(
    "statement, why",
    [
        (sa.select(probe.c.id).where(probe.c.name.in_(sa.bindparam("names", expanding=True))), "expanded"),
        (sa.insert(made).values(id=sa.bindparam("names")), "default computed at execution"),
        (sa.insert(probe), "named after columns"),
        (sa.insert(probe).values(name="x", at=AT).returning(probe.c.id), "RETURNING"),
    ],
)
def test_statements_it_cannot_run_as_sqlalchemy_would_are_refused(
    conn: sa.Connection, statement: Any, why: str
) -> None:
    with pytest.raises(ValueError, match=why):
        prepared.run(conn, statement, {"names": ["x"], "name": "x", "at": AT})


@pytest.fixture
def postgres_engine() -> Iterator[sa.Engine]:
    """An engine made as the app makes its own, on the test PostgreSQL server (this test needs a server to end a
    connection on; no tables)."""
    base = postgres_base_url()
    if base is None:
        skip_or_fail("this test needs a PostgreSQL server: set FREMFORGE_TEST_DATABASE_URL")
    engine = db.make_engine(normalise(base))
    yield engine
    engine.dispose()


def test_a_connection_lost_mid_transaction_counts_as_unavailable_and_is_replaced(postgres_engine: sa.Engine) -> None:
    one = sa.select(sa.literal(1, sa.Integer).label("one"))
    with postgres_engine.connect() as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()  # the transaction begins
        with postgres_engine.connect() as other:  # as a restart, a failover or an operator would
            assert other.execute(sa.text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid}).scalar_one()
        with pytest.raises(sa.exc.DBAPIError) as raised:
            prepared.run(conn, one, {})
        assert raised.value.connection_invalidated
        assert db.unavailable(raised.value)  # a 503 the client may retry, not a 500
    with postgres_engine.connect() as conn:  # the dead connection is not handed out again
        assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() != pid
        assert [r.one for r in prepared.run(conn, one, {})] == [1]


def test_a_parameter_named_after_a_column_the_statement_does_not_write_is_refused(conn: sa.Connection) -> None:
    prepared.run(conn, ADD, {"name": "one", "at": AT, "data": None, "score": None})  # compiled now, without it
    with pytest.raises(ValueError, match="named after columns"):  # SQLAlchemy would write the id it names
        prepared.run(conn, ADD, {"name": "two", "at": AT, "data": None, "score": None, "id": 99})
    assert conn.execute(sa.select(probe.c.name)).scalars().all() == ["one"]


def test_a_statement_outside_a_transaction_is_refused(app: Flask) -> None:
    engine = app.extensions["fremforge.db"].engine
    one = sa.select(sa.literal(1, sa.Integer).label("one"))
    with engine.connect() as conn, pytest.raises(RuntimeError, match="in a transaction"):
        prepared.run(conn, one, {})  # where SQLAlchemy would begin one of its own (on SQLite, not IMMEDIATE)


def test_sqlite_locked_past_the_budget_counts_as_unavailable(make_app: Any, dialect: str, tmp_path: Any) -> None:
    if dialect != "sqlite":
        return  # PostgreSQL's lock timeout: tests/test_database_faults.py
    app = make_app(DATABASE_BUSY_SECONDS=0.2)
    engine = app.extensions["fremforge.db"].engine
    _md.create_all(engine)
    holder = sqlite3.connect(engine.url.database, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process's write in progress
        with app.app_context():
            conn = db.session().connection()  # a read transaction, as a request's first
            with pytest.raises(sa.exc.OperationalError) as raised:
                prepared.run(conn, ADD, {"name": "one", "at": AT, "data": None, "score": None})
        assert db.unavailable(raised.value)  # a 503 that asks the client to retry, not a 500
    finally:
        holder.close()
        _md.drop_all(engine)


def test_sqlites_begin_immediate_locked_past_the_budget_counts_as_unavailable(
    make_app: Any, dialect: str, tmp_path: Any
) -> None:
    """The write transaction's BEGIN IMMEDIATE (prepared.begin, on the driver's cursor) waits for another process's
    write as SQLAlchemy's own execution would, then fails as it would: a 503, and the connection still good."""
    if dialect != "sqlite":
        return  # PostgreSQL begins its transactions itself
    app = make_app(DATABASE_BUSY_SECONDS=0.2)
    engine = app.extensions["fremforge.db"].engine
    holder = sqlite3.connect(engine.url.database, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process's write in progress
        with app.app_context():
            with pytest.raises(sa.exc.OperationalError) as raised, db.write_transaction(db.session()):
                pass
            assert db.unavailable(raised.value)  # a 503 that asks the client to retry, not a 500
            db.discard_session()
        holder.execute("ROLLBACK")
        with app.app_context(), db.write_transaction(db.session()) as s:
            assert s.connection().exec_driver_sql("SELECT 1").scalar_one() == 1
    finally:
        holder.close()


def test_a_statement_interrupted_leaves_its_connection_invalidated(postgres_engine: sa.Engine) -> None:
    """A worker's timeout (SIGABRT) or an operator's ^C mid-statement: the server may still be running it, so the
    connection must not go back to the pool as if nothing happened."""
    sleep = sa.select(sa.func.pg_sleep(sa.bindparam("seconds", type_=sa.Float)).label("slept"))

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with postgres_engine.connect() as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            with pytest.raises(KeyboardInterrupt):
                prepared.run(conn, sleep, {"seconds": 10})
            assert conn.invalidated
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    with postgres_engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() != pid


# ---------------------------------------------------------------- the upload's own statements, both ways

WRITTEN = (ScanRun, Finding, OutboxItem, Image, TrendChange, ChainHead)  # what an upload writes
# Not compared: the one value from the database's clock, and the chain's links, which differ from the first entry on
# (the token made for each run is audited, with its own prefix): each run's payloads and sequence are compared.
NOT_COMPARED = {"next_attempt_at", "chain_hash", "head_hash"}
FROZEN = dt.datetime(2026, 3, 4, 5, 6, 7, 890123)


def _sqlalchemy_run(conn: sa.Connection, statement: Any, params: Any) -> list[Any]:
    result = conn.execute(statement, params)
    return list(result.all()) if result.returns_rows else []


def _sqlalchemy_run_many(conn: sa.Connection, sql: str, rows: Any) -> None:
    conn.exec_driver_sql(sql, rows)


def _uploads(app: Flask) -> list[dict[str, Any]]:
    """A few uploads that take every statement prepared runs: a duplicate kept at its worst severity, references,
    vendor ids, a title cut, a second image of the commit (judged again with the first), a raw Trivy report."""
    make_org(app, block_action="block_pull", block_threshold="high")
    token = make_token(app)
    client = app.test_client()
    refs = {"references": ["https://example.test/a", "https://example.test/b"], "vendor_ids": ["DSA-1"]}
    first = [
        finding("CVE-2024-1", "medium", fixed="", title="t" * 2000, **refs),
        finding("CVE-2024-1", "critical", fixed="1.2"),
        finding(
            "GHSA-xxxx-yyyy-zzzz", "low", package="zlib", installed="1.2", fixed=None, primary_url="https://x.test"
        ),
    ]
    answers = [
        post(client, token, seed(first, ref="refs/heads/main")),
        post(client, token, seed([finding("CVE-2024-2", "high")], image_ref="ghcr.io/acme/worker:1")),
        post(
            client,
            token,
            raw=(FIXTURES / "trivy" / "alpine-310.json").read_bytes(),
            query={"commit_sha": "b" * 40, "repo_full_name": "acme/api", "image_ref": "ghcr.io/acme/alpine:3.10"},
        ),
    ]
    assert [a.status_code for a in answers] == [202, 202, 202], [a.get_json() for a in answers]
    return [a.get_json() for a in answers]


def _written(app: Flask) -> dict[str, list[dict[str, Any]]]:
    with app.app_context():
        conn = db.session().connection()
        return {
            model.__tablename__: [
                {k: v for k, v in row._mapping.items() if k not in NOT_COMPARED}
                for row in conn.execute(sa.select(model.__table__).order_by(*model.__table__.primary_key.columns))
            ]
            for model in WRITTEN
        }


def test_an_upload_stores_and_answers_what_sqlalchemys_own_execution_would(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same uploads on the same clock, once with the statements on the driver's cursor and once through
    Connection.execute (as before app.prepared): every row written and every answer the same."""
    for module in ("app.findings.service", "app.github.outbox", "app.chain.audit", "app.models"):
        monkeypatch.setattr(f"{module}.utcnow", lambda: FROZEN)
    prepared_answers, prepared_rows = _uploads(app), _written(app)
    empty_database(app)
    with monkeypatch.context() as m:
        m.setattr(prepared, "run", _sqlalchemy_run)
        m.setattr(prepared, "run_many", _sqlalchemy_run_many)
        answers, rows = _uploads(app), _written(app)
    assert prepared_answers == answers
    sizes = {table: len(found) for table, found in prepared_rows.items()}
    assert sizes == {table: len(found) for table, found in rows.items()}
    assert (sizes["scan_runs"], sizes["outbox"], sizes["images"]) == (3, 3, 3) and sizes["findings"] > 3
    differing = [
        (table, i, column, value, rows[table][i][column])
        for table, found in prepared_rows.items()
        for i, row in enumerate(found)
        for column, value in row.items()
        if value != rows[table][i][column]
    ]
    assert differing == []  # (table, row, column, through the driver's cursor, through SQLAlchemy)
