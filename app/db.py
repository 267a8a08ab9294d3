"""Database plumbing: the declarative base, the engine made in the factory, and one session per request."""

from __future__ import annotations

import functools
import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
import sqlalchemy as sa
from flask import Flask, current_app, g
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from app import prepared, sqlite_writers

log = logging.getLogger(__name__)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    # Every model maps one Table (no joined or polymorphic mappings): Core statements take Model.__table__ as one.
    __table__: ClassVar[sa.Table]


@dataclass
class Database:
    engine: sa.Engine
    sessions: sessionmaker[Session]

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name


# The budget of one wait for a lock another connection holds: SQLite's busy_timeout, PostgreSQL's lock_timeout.
# A request that waits longer is answered 503 with Retry-After (app.web.errors). It must stay well under the server's
# request timeout (gunicorn's worker timeout, 30 s by default): a worker still waiting then is killed and its client
# sees a dropped connection. On SQLite a writer first waits up to sqlite_writers.GIVE_UP_AFTER (5 s) for its turn,
# then up to this for SQLite's lock: 15 s at most.
DATABASE_BUSY_SECONDS = 10.0
# How long opening a PostgreSQL connection may take (libpq connect_timeout, whole seconds, at least 2): a server
# that does not answer (a host down, packets dropped) costs a request this long, not the kernel's minutes.
DATABASE_CONNECT_TIMEOUT = 5
# And once open: a server gone silent (a network partition, a host frozen) is noticed by TCP, not after the
# kernel's 15 minutes of retransmissions: a statement sent and never acknowledged fails after tcp_user_timeout (ms),
# an idle pooled connection after the keepalive probes (idle s, then count probes interval s apart). Each is well
# under gunicorn's 30 s request timeout, so the request answers 503 and the worker backs off, rather than hanging.
# Options given in the URL are kept.
DATABASE_TCP_OPTIONS = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 15_000,
}


def json_text(value: Any) -> str:
    """JSON columns as stored: orjson, several times faster than json for the check run bodies of every upload."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def make_engine(url: str, busy_seconds: float = DATABASE_BUSY_SECONDS, **kwargs: Any) -> sa.Engine:
    """An engine for `url` whose connections wait at most `busy_seconds` for a lock (then fail: see unavailable).

    On SQLite, WAL with that busy timeout, and transactions that we begin ourselves; on PostgreSQL, that
    lock_timeout, a connect timeout, and pooled connections checked after sitting idle.
    """
    busy_ms = max(1, round(busy_seconds * 1000))
    kwargs.setdefault("json_serializer", json_text)
    kwargs.setdefault("json_deserializer", orjson.loads)
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, **kwargs)
        sa.event.listen(engine, "connect", functools.partial(_sqlite_connect, busy_ms=busy_ms))
        sa.event.listen(engine, "begin", _sqlite_begin)
        return engine
    kwargs.setdefault("pool_recycle", 1800)
    given = sa.make_url(url).query  # what the URL says is kept
    defaults = {"connect_timeout": DATABASE_CONNECT_TIMEOUT, **DATABASE_TCP_OPTIONS}
    kwargs["connect_args"] = {
        **{k: v for k, v in defaults.items() if k not in given},
        **kwargs.get("connect_args", {}),
    }
    engine = sa.create_engine(url, **kwargs)
    sa.event.listen(engine, "connect", functools.partial(_postgres_connect, lock_timeout_ms=busy_ms))
    ping_when_idle(engine)
    return engine


def _postgres_connect(dbapi_conn: Any, _record: Any, *, lock_timeout_ms: int) -> None:
    # Set outside a transaction (as SQLAlchemy's documentation sets search_path): a SET inside the request's first
    # transaction would be undone with it if that transaction rolled back.
    autocommit = dbapi_conn.autocommit
    dbapi_conn.autocommit = True
    try:
        with dbapi_conn.cursor() as cur:
            cur.execute(f"SET lock_timeout = {int(lock_timeout_ms)}")
            # No JIT: compiling a plan whose estimate passes jit_above_cost took 30 ms, ten times the advisory
            # search itself (its estimate counts the findings of latest scans not indexed yet, most often none).
            # The app's statements are short; JIT pays off for long analytic ones.
            cur.execute("SET jit = off")
    finally:
        dbapi_conn.autocommit = autocommit


# A pooled connection back in the pool for longer than this is checked before use (HikariCP's
# aliveBypassWindowMs, 500 ms, is the same idea). Without a check, the first request on each pooled connection
# after a database restart or failover would fail; SQLAlchemy's pool_pre_ping checks at every checkout, which
# costs a round trip per request, most of them on connections that were in use a millisecond earlier.
PING_AFTER_IDLE = 0.5  # seconds


def ping_when_idle(engine: sa.Engine) -> None:
    """Check a connection at checkout if it sat idle in the pool past PING_AFTER_IDLE; replace it if it is dead."""
    dialect = engine.dialect

    @sa.event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_conn: Any, record: Any) -> None:
        record.info["fremforge_idle_since"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _ping(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("fremforge_idle_since")  # none on a new connection: it was just made
        if since is None or time.monotonic() - since < PING_AFTER_IDLE:
            return
        try:
            dialect.do_ping(dbapi_conn)
        except dialect.loaded_dbapi.Error as exc:
            if dialect.is_disconnect(exc, dbapi_conn, None):
                # The pool drops this connection and every other one made before now, then connects afresh.
                raise sa.exc.InvalidatePoolError() from exc
            raise


def _sqlite_connect(dbapi_conn: Any, _record: Any, *, busy_ms: int) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN, so a writer can ask for BEGIN IMMEDIATE (see write_session).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={busy_ms}")  # how long SQLite waits for a lock another connection holds
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA secure_delete=ON")  # freed space is zeroed: what retention removes leaves the file
    cur.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    # IMMEDIATE takes the write lock up front: a writer waits its turn (busy_timeout) instead of
    # failing with "database is locked" when it upgrades a read snapshot to a write.
    write = conn.get_execution_options().get("fremforge_write")
    prepared.begin(conn, "BEGIN IMMEDIATE" if write else "BEGIN DEFERRED")


def init_app(app: Flask) -> None:
    # DATABASE_BUSY_SECONDS is no FREMFORGE_* setting: tests lower the budget through create_app's test_config.
    engine = make_engine(
        app.config["DATABASE_URL"], busy_seconds=float(app.config.get("DATABASE_BUSY_SECONDS", DATABASE_BUSY_SECONDS))
    )
    app.extensions["fremforge.db"] = Database(engine, sessionmaker(engine, expire_on_commit=False))
    app.teardown_appcontext(_close_session)


def database() -> Database:
    return current_app.extensions["fremforge.db"]


def session() -> Session:
    """The session of this request or CLI command, closed when the app context ends."""
    if "db_session" not in g:
        g.db_session = database().sessions()
    return g.db_session


def discard_session() -> None:
    """End this request's (or command's) session after a failure: rolled back, its connection back to the pool.

    A connection found dead was already invalidated (with every pooled connection made before it), so the next
    request connects afresh; closing must not raise a second error over the first.
    """
    s = g.pop("db_session", None)
    if s is None:
        return
    try:
        s.close()
    except sa.exc.SQLAlchemyError as exc:
        log.warning("db.session_close_failed error=%s", type(exc.__cause__ or exc).__name__)


def _close_session(_exc: BaseException | None) -> None:
    s = g.pop("db_session", None)
    if s is not None:
        s.close()


# PostgreSQL SQLSTATEs of a database that is unreachable, restarting or busy past its budget (not of a bad query).
_UNAVAILABLE_SQLSTATES = {
    "40001",  # serialization_failure: another transaction won; trying again works
    "40P01",  # deadlock_detected: one side of a deadlock was cancelled; trying again works
    "53100",  # disk_full: the server's disk (or its WAL's) is full; freed, the next try works
    "53200",  # out_of_memory
    "53300",  # too_many_connections
    "55P03",  # lock_not_available: lock_timeout passed
    "57014",  # query_canceled: statement_timeout, or cancelled by an operator
    "57P01",  # admin_shutdown: the server stops (a fast or smart shutdown), or an operator ended the backend
    "57P02",  # crash_shutdown: another backend crashed, the server restarts
    "57P03",  # cannot_connect_now: the server is starting up or shutting down
}
# SQLite's primary result codes of an outage, not of the query: SQLITE_BUSY, SQLITE_LOCKED, and the file's state
# (SQLITE_READONLY: made unwritable; SQLITE_IOERR; SQLITE_FULL: the disk is full; SQLITE_CANTOPEN)
_SQLITE_UNAVAILABLE = {5: "busy", 6: "locked", 8: "readonly", 10: "i/o error", 13: "is full", 14: "unable to open"}


def busy(exc: BaseException) -> bool:
    """Whether `exc` is SQLite's busy or locked: another writer holds the database's lock."""
    orig = getattr(exc, "orig", None)
    if not isinstance(exc, sa.exc.DBAPIError) or not isinstance(orig, sqlite3.Error):
        return False
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (5, 6)
    return any(w in str(orig).lower() for w in (_SQLITE_UNAVAILABLE[5], _SQLITE_UNAVAILABLE[6]))


def unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database is unavailable or locked past its budget, so that trying again later may work.

    Not for errors of the query or the data (a constraint, a missing table, a bad value): those are bugs or bad
    input, and must not pass for an outage.
    """
    if isinstance(exc, sa.exc.TimeoutError):  # no pooled connection came free in time
        return True
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    if exc.connection_invalidated:  # SQLAlchemy found the connection dead (server gone, restarted, network)
        return True
    orig = exc.orig
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF in _SQLITE_UNAVAILABLE
        message = str(orig).lower()  # an error made without its code: its words
        return isinstance(orig, sqlite3.OperationalError) and any(w in message for w in _SQLITE_UNAVAILABLE.values())
    if not isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)):
        return False
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate is None:  # psycopg: no answer from a server at all (cannot connect, connection lost or closed)
        return True
    return sqlstate.startswith("08") or sqlstate in _UNAVAILABLE_SQLSTATES  # 08: connection_exception


def rowcount(result: sa.Result[*tuple[Any, ...]]) -> int:
    """The rows an UPDATE or DELETE run by Session.execute matched.

    SQLAlchemy types Session.execute as returning a Result (an ORM execution hook may answer with another kind); for
    DML it returns a CursorResult, which has the row count: checked here, not assumed.
    """
    if not isinstance(result, sa.CursorResult):
        raise TypeError(f"no row count: {type(result).__name__} is not a CursorResult")
    return result.rowcount


@contextmanager
def write_transaction(s: Session) -> Iterator[Session]:
    """A transaction that writes: committed on success, rolled back on error.

    On SQLite it begins IMMEDIATE, which serialises writers, once this writer's turn has come (sqlite_writers);
    any read transaction still open on the session is ended first, so the write never starts from a stale
    snapshot.
    """
    engine = s.get_bind().engine
    if s.in_transaction() and engine.dialect.name == "sqlite":
        s.commit()
    with sqlite_writers.turn(sqlite_writers.lock_path(engine)):
        if not s.in_transaction():
            s.connection(execution_options={"fremforge_write": True})
        try:
            yield s
        except BaseException:
            s.rollback()
            raise
        s.commit()
