"""Pooled connections: checked before use only after sitting idle (app.db.ping_when_idle), replaced when dead."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from app import create_app, db
from tests.conftest import TEST_CONFIG, postgres_base_url, skip_or_fail


def count_pings(app: Flask, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record each connection check the engine's dialect makes (the check itself still runs)."""
    dialect = app.extensions["fremforge.db"].engine.dialect
    pings: list[Any] = []
    real = dialect.do_ping

    def do_ping(dbapi_conn: Any) -> bool:
        pings.append(dbapi_conn)
        return real(dbapi_conn)

    monkeypatch.setattr(dialect, "do_ping", do_ping)
    return pings


def test_a_connection_back_from_a_request_moments_ago_is_not_checked(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "PING_AFTER_IDLE", 3600.0)
    pings = count_pings(app, monkeypatch)
    for _ in range(5):
        assert client.get("/readyz").status_code == 200
    assert pings == []  # a round trip saved on each request of a busy server


def test_a_connection_idle_past_the_window_is_checked_at_checkout(
    app: Flask, client: FlaskClient, dialect: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "PING_AFTER_IDLE", 0.0)
    pings = count_pings(app, monkeypatch)
    for _ in range(3):
        assert client.get("/readyz").status_code == 200
    # PostgreSQL: the first request made its connection (new: nothing to check); each later one reused it after
    # a pause. A SQLite file has no server to drop a connection, so nothing is checked there.
    assert len(pings) == (2 if dialect == "postgresql" else 0)


@pytest.fixture
def postgres_app() -> Iterator[Flask]:
    """The app on the test PostgreSQL database itself (this test needs a server, not the schema)."""
    base = postgres_base_url()
    if base is None:
        skip_or_fail("this test needs a PostgreSQL server: set FREMFORGE_TEST_DATABASE_URL")
    app = create_app({**TEST_CONFIG, "DATABASE_URL": base})
    yield app
    app.extensions["fremforge.db"].engine.dispose()


def test_a_connection_the_server_dropped_while_idle_is_replaced_without_an_error(
    postgres_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = postgres_app.extensions["fremforge.db"].engine
    with engine.connect() as conn:  # the pool's only connection, back in the pool afterwards
        dropped = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    killer = sa.create_engine(engine.url)
    try:
        with killer.connect() as conn:  # as a restart, failover or idle timeout would; waits for it to end
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": dropped}).scalar_one()
    finally:
        killer.dispose()
    monkeypatch.setattr(db, "PING_AFTER_IDLE", 0.0)  # it has sat idle "long enough"

    with postgres_app.app_context():
        now_on = db.session().execute(sa.text("SELECT pg_backend_pid()")).scalar_one()

    assert now_on != dropped


def test_a_server_gone_silent_is_noticed_by_tcp_well_within_a_request(postgres_app: Flask) -> None:
    """Review: a database host that stops answering (a partition) left requests and the worker waiting on the
    kernel's retransmissions (minutes; gunicorn killed the workers, the worker ignored SIGTERM). libpq is now asked
    for TCP keepalives and a user timeout well under the request timeout, unless the URL says otherwise."""
    with postgres_app.app_context(), db.database().engine.connect() as conn:
        said = conn.connection.driver_connection.info.get_parameters()  # type: ignore[union-attr]
    expected = {k: str(v) for k, v in db.DATABASE_TCP_OPTIONS.items()}
    assert {k: said.get(k) for k in expected} == expected
    assert int(expected["tcp_user_timeout"]) / 1000 < 30  # gunicorn's request timeout
    url = sa.make_url(postgres_app.config["DATABASE_URL"]).update_query_dict({"tcp_user_timeout": "3000"})
    engine = db.make_engine(url.render_as_string(hide_password=False))
    with engine.connect() as conn:
        assert conn.connection.driver_connection.info.get_parameters()["tcp_user_timeout"] == "3000"  # type: ignore[union-attr]
    engine.dispose()
