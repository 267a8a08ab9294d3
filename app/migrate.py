"""Alembic, driven from the app's own configuration: upgrade, current revision, and model/migration drift.

A database a newer release migrated is served on (`older`): a rolling upgrade migrates first, and the processes of
the release before keep serving until they are replaced. That holds while the migrations in between remove nothing
the older code reads (they add tables, columns and indexes, widen a column, drop a foreign key), which is so of every
migration but 0027 (pull_request_heads): it removes scan_runs.pr_head, which a 0026 release reads, so an
upgrade across 0027 from 0026 or older stops the older release's web app and workers before `db upgrade` (not
rolling; README, Upgrading). Migrations after 0027 only add; one that removed anything would be listed there, in
its upgrade notes (tests/test_migrations.py checks the list against what migrations/versions removes).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Flask
from sqlalchemy.engine import make_url

from app import db, models  # noqa: F401  (models registers the tables)
from app.db import Base

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"

# One `db upgrade` at a time per database (per schema on PostgreSQL): on PostgreSQL each takes an advisory lock (a
# transaction's, released when it commits or rolls back) keyed by this class and the schema the app's tables are in
# (apps on other schemas of one database, such as the tests' workers, migrate side by side), before reading the
# revision; on SQLite each begins IMMEDIATE (SQLite's write lock) before reading it. A second waits, then finds the
# revision the first left.
MIGRATION_LOCK_CLASS = 0x666D6967  # "fmig"
MIGRATION_LOCK_ARGS = (MIGRATION_LOCK_CLASS, sa.func.hashtext(sa.func.current_schema()))
# How long a `db upgrade` waits for another migrating the same database before it gives up, in one line.
MIGRATION_WAIT_SECONDS: float = 600

log = logging.getLogger(__name__)


class MigrationBusy(Exception):
    """Another `db upgrade` held the database past MIGRATION_WAIT_SECONDS: nothing was done."""


def alembic_config(app: Flask) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = app.extensions["fremforge.db"].engine
    return cfg


def upgrade(app: Flask, revision: str = "head") -> str | None:
    """Migrate the database to `revision`, once no other `db upgrade` is migrating it (`one_at_a_time`); the
    revision it was at before (read under that lock: another's migration done first counts as before)."""
    if app.config["DATABASE_URL"].startswith("sqlite"):
        Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    cfg = alembic_config(app)
    command.upgrade(cfg, revision)
    before: str | None = cfg.attributes.get("revision_before")
    return before


@contextmanager
def one_at_a_time(connection: sa.Connection) -> Iterator[None]:
    """The migration's one transaction (migrations/env.py), begun once no other `db upgrade` is migrating this
    database: before it, two at once both read the same old revision and both ran its migrations, and the second
    failed halfway with a traceback (PostgreSQL: DuplicateColumn). The second now logs `db.upgrade.waiting` and waits
    up to MIGRATION_WAIT_SECONDS (then MigrationBusy); inside, the revision it reads is the first's."""
    if connection.dialect.name == "sqlite":
        with _sqlite_write_lock(connection):
            yield
        return
    with connection.begin():
        lock = sa.select(sa.func.pg_try_advisory_xact_lock(*MIGRATION_LOCK_ARGS))
        if not connection.execute(lock).scalar():
            _waiting()
            timeout = connection.execute(sa.text("SHOW lock_timeout")).scalar()
            _set_lock_timeout(connection, f"{MIGRATION_WAIT_SECONDS}s")
            try:
                connection.execute(sa.select(sa.func.pg_advisory_xact_lock(*MIGRATION_LOCK_ARGS)))
            except sa.exc.OperationalError as exc:
                if getattr(exc.orig, "sqlstate", None) == "55P03":  # lock_timeout passed
                    raise MigrationBusy() from None
                raise
            _set_lock_timeout(connection, str(timeout))  # the migration's own statements wait as any other's
        yield


def _set_lock_timeout(connection: sa.Connection, value: str) -> None:
    connection.execute(sa.text("SELECT set_config('lock_timeout', :value, true)"), {"value": value})


@contextmanager
def _sqlite_write_lock(connection: sa.Connection) -> Iterator[None]:
    """A transaction begun IMMEDIATE (app.db's `fremforge_write`), holding SQLite's write lock from before the
    revision is read: tried at once, then (saying so) with a busy timeout of MIGRATION_WAIT_SECONDS."""
    driver = connection.connection.driver_connection
    assert driver is not None  # a live connection has one (for mypy)
    busy_ms = driver.execute("PRAGMA busy_timeout").fetchone()[0]
    connection.execution_options(fremforge_write=True)
    try:
        driver.execute("PRAGMA busy_timeout=0")
        try:
            transaction = connection.begin()
        except sa.exc.OperationalError as exc:
            if not db.busy(exc):  # another writer holds the lock (not a file made read-only or a full disk)
                raise
            _waiting()
            driver.execute(f"PRAGMA busy_timeout={round(MIGRATION_WAIT_SECONDS * 1000)}")
            try:
                transaction = connection.begin()
            except sa.exc.OperationalError as again:
                if db.busy(again):
                    raise MigrationBusy() from None
                raise
    finally:
        driver.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
    with transaction:
        yield


def _waiting() -> None:
    log.warning(
        "db.upgrade.waiting: another db upgrade is migrating this database; waiting for it to end (at most %g s)",
        MIGRATION_WAIT_SECONDS,
    )


def unknown_revision(revision: str) -> str | None:
    """Why `db upgrade` cannot reach `revision` (None: it can): `head` (`heads`), or a revision id of
    migrations/versions (not alembic's relative or partial ones: an upgrade is to a named revision)."""
    if revision in ("head", "heads"):
        return None
    if revision in _known():
        return None
    return f"there is no revision {revision!r}: give head (now {head()}) or the id of one in migrations/versions"


_HEAD: list[str] = []


def head() -> str:
    """The newest revision in migrations/ (read once per process)."""
    if not _HEAD:
        _HEAD.append(ScriptDirectory(str(MIGRATIONS)).get_current_head() or "")
    return _HEAD[0]


def revision_of(conn: Any) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def current(app: Flask) -> str | None:
    with app.extensions["fremforge.db"].engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


NOT_MIGRATED = "The database is not migrated to this version of the app: run `flask --app wsgi db upgrade`."


def behind(app: Flask) -> bool:
    """Whether the database is at an older revision than this app's (never migrated, or migrated by an older version):
    asked after a database error that is not an outage, so the answer names the fix rather than a bug. False when
    it cannot be asked."""
    try:
        return older(app)
    except Exception:  # asked while answering another error: no new one from it
        return False


def older(app: Flask) -> bool:
    """Whether the database is at an older revision of this app's migrations, or at none (never migrated): what the
    app refuses to run on. Not at a revision this app does not know: a newer release migrated it, and this one keeps
    serving until it is replaced (a rolling upgrade migrates first; every migration but 0027 only adds, see the
    module's docstring: across 0027 the older release is stopped first)."""
    return is_older(current(app))


def is_older(revision: str | None) -> bool:
    """Whether `revision` (the database's) is none or one of this app's before its head."""
    return revision is None or (revision != head() and revision in _known())


@functools.cache
def _known() -> frozenset[str]:
    return frozenset(r.revision for r in ScriptDirectory(str(MIGRATIONS)).walk_revisions())


def differences(app: Flask) -> list[Any]:
    """What autogenerate would change to make the database (at head) match the models; [] when they agree."""
    with app.extensions["fremforge.db"].engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, Base.metadata))


# libpq options a URL's query may carry that are secrets, or say where one is (shown as *** like the password)
SECRET_URL_OPTIONS = ("password", "passfile", "sslpassword", "sslkey")


def describe_url(app: Flask) -> str:
    """The database URL as commands print it: no password, whether before the host or in the query."""
    url = make_url(app.config["DATABASE_URL"])
    hidden = {k: "***" for k in url.query if k.lower() in SECRET_URL_OPTIONS}
    return url.update_query_dict(hidden).render_as_string(hide_password=True).replace("=%2A%2A%2A", "=***")


__all__ = ["current", "db", "differences", "upgrade"]
