"""Migrations: upgrade head on an empty database of each backend, and models and migrations agree."""

from __future__ import annotations

import sqlalchemy as sa

from app import create_app, migrate
from app.db import Base
from tests.conftest import _postgres_schema_url, normalise, postgres_base_url, skip_or_fail


def _check_fresh(url: str) -> None:
    app = create_app({"TESTING": True, "DATABASE_URL": url, "SECRET_KEY": "x"})
    engine = app.extensions["fremforge.db"].engine
    try:
        assert sa.inspect(engine).get_table_names() == []
        migrate.upgrade(app)
        assert migrate.current(app) is not None
        assert set(sa.inspect(engine).get_table_names()) >= {t.name for t in Base.metadata.sorted_tables}
        assert migrate.differences(app) == []
        migrate.upgrade(app)  # idempotent
    finally:
        engine.dispose()


def test_upgrade_head_on_empty_sqlite(tmp_path):
    _check_fresh(f"sqlite:///{tmp_path / 'empty.db'}")


def test_upgrade_head_on_empty_postgresql():
    base = postgres_base_url()
    if base is None:
        skip_or_fail("PostgreSQL tests need FREMFORGE_TEST_DATABASE_URL")
    assert base is not None
    url, schema = _postgres_schema_url(base)
    admin = sa.create_engine(normalise(base))
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        _check_fresh(url)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_db_upgrade_and_check_commands(tmp_path):
    app = create_app({"TESTING": True, "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "SECRET_KEY": "x"})
    runner = app.test_cli_runner()
    up = runner.invoke(args=["db", "upgrade"])
    assert up.exit_code == 0, up.output
    assert "revision" in up.output
    check = runner.invoke(args=["db", "check"])
    assert check.exit_code == 0 and "agree" in check.output
