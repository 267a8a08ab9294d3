"""Alembic, driven from the app's own configuration: upgrade, current revision, and model/migration drift."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

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


def alembic_config(app: Flask) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = app.extensions["fremforge.db"].engine
    return cfg


def upgrade(app: Flask, revision: str = "head") -> None:
    if app.config["DATABASE_URL"].startswith("sqlite"):
        Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(app), revision)


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
    serving until it is replaced (a rolling upgrade migrates first; migrations only add)."""
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
