"""Database plumbing: the declarative base, the engine made in the factory, and one session per request."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from flask import Flask, current_app, g
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from app import sqlite_writers

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


@dataclass
class Database:
    engine: sa.Engine
    sessions: sessionmaker[Session]

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name


def make_engine(url: str, **kwargs: Any) -> sa.Engine:
    """An engine for `url`; on SQLite, WAL with a busy timeout, and transactions that we begin ourselves."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, **kwargs)
        sa.event.listen(engine, "connect", _sqlite_connect)
        sa.event.listen(engine, "begin", _sqlite_begin)
        return engine
    kwargs.setdefault("pool_recycle", 1800)
    engine = sa.create_engine(url, **kwargs)
    ping_when_idle(engine)
    return engine


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


SQLITE_BUSY_TIMEOUT_MS = 30_000  # how long SQLite waits for a lock another connection holds


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN, so a writer can ask for BEGIN IMMEDIATE (see write_session).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA secure_delete=ON")  # freed space is zeroed: what retention removes leaves the file
    cur.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    # IMMEDIATE takes the write lock up front: a writer waits its turn (busy_timeout) instead of
    # failing with "database is locked" when it upgrades a read snapshot to a write.
    mode = "IMMEDIATE" if conn.get_execution_options().get("fremforge_write") else "DEFERRED"
    conn.exec_driver_sql(f"BEGIN {mode}")


def init_app(app: Flask) -> None:
    engine = make_engine(app.config["DATABASE_URL"])
    app.extensions["fremforge.db"] = Database(engine, sessionmaker(engine, expire_on_commit=False))
    app.teardown_appcontext(_close_session)


def database() -> Database:
    return current_app.extensions["fremforge.db"]


def session() -> Session:
    """The session of this request or CLI command, closed when the app context ends."""
    if "db_session" not in g:
        g.db_session = database().sessions()
    return g.db_session


def _close_session(_exc: BaseException | None) -> None:
    s = g.pop("db_session", None)
    if s is not None:
        s.close()


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
