"""Migrations: upgrade head on an empty database of each backend, and models and migrations agree."""

from __future__ import annotations

import ast
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory

from app import create_app, logs, migrate
from app.db import Base
from app.worker import Loop, NotMigrated
from tests.conftest import _postgres_schema_url, normalise, postgres_base_url, skip_or_fail
from tests.paths import ROOT


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


@contextmanager
def empty_postgresql_schema() -> Iterator[str]:
    """The URL of a PostgreSQL schema of its own, empty, dropped afterwards (skips without PostgreSQL)."""
    base = postgres_base_url()
    if base is None:
        skip_or_fail("PostgreSQL tests need FREMFORGE_TEST_DATABASE_URL")
    assert base is not None
    url, schema = _postgres_schema_url(base)
    admin = sa.create_engine(normalise(base))
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_upgrade_head_on_empty_postgresql():
    with empty_postgresql_schema() as url:
        _check_fresh(url)


def test_db_upgrade_and_check_commands(tmp_path):
    app = create_app({"TESTING": True, "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "SECRET_KEY": "x"})
    runner = app.test_cli_runner()
    up = runner.invoke(args=["db", "upgrade"])
    assert up.exit_code == 0, up.output
    assert "revision" in up.output
    previous = next(
        r.down_revision
        for r in ScriptDirectory(str(migrate.MIGRATIONS)).walk_revisions()
        if r.revision == migrate.head()
    )
    back = runner.invoke(args=["db", "upgrade", "--revision", str(previous)])
    assert back.exit_code == 0 and back.output.endswith(
        f"is at revision {migrate.head()} (already past {previous}: an upgrade never goes back)\n"
    ), back.output
    check = runner.invoke(args=["db", "check"])
    assert check.exit_code == 0 and "agree" in check.output


@pytest.mark.parametrize("revision", ["bogus", "9999", "0027:0001", ""])
def test_db_upgrade_to_a_revision_that_is_none_says_so_in_one_line(tmp_path, revision):
    """HEAD: alembic's traceback (a bare AssertionError for an empty one)."""
    app = create_app({"TESTING": True, "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "SECRET_KEY": "x"})
    up = app.test_cli_runner().invoke(args=["db", "upgrade", "--revision", revision])
    assert up.exit_code == 1 and up.exception is not None and isinstance(up.exception, SystemExit), up.output
    said = (
        f"there is no revision {revision!r}: give head (now {migrate.head()}) or the id of one in migrations/versions"
    )
    assert up.output == f"Error: {said}\n"


def _check_images_backfill(url: str) -> None:
    """0019 derives each image's latest scan and the org's per-day trend changes from the scans already stored,
    naming scans stored before image names were kept; 0020 marks those latest scans indexed (0019 indexed them)."""
    app = create_app({"TESTING": True, "DATABASE_URL": url, "SECRET_KEY": "x"})
    engine = app.extensions["fremforge.db"].engine
    try:
        migrate.upgrade(app, "0018")
        scans = sa.table(
            "scan_runs",
            *(sa.column(c) for c in ("id", "org_id", "image_ref", "image_name", "commit_sha", "repo_full_name")),
            *(sa.column(c) for c in ("status", "block_action", "created_at", "critical", "high", "medium", "low")),
            *(sa.column(c) for c in ("unknown", "fixable", "accepted", "duplicates", "signature_status")),
        )
        made = [  # id, image ref, image name (None: stored before 0013), day, criticals
            (1, "ghcr.io/acme/api:1", None, datetime(2026, 1, 1, 9), 5),
            (2, "ghcr.io/acme/api:2", "ghcr.io/acme/api", datetime(2026, 1, 1, 10), 3),
            (3, "ghcr.io/acme/web:1", "ghcr.io/acme/web", datetime(2026, 1, 2, 9), 2),
            (4, "ghcr.io/acme/api:3", "ghcr.io/acme/api", datetime(2026, 1, 3, 9), 7),
        ]
        zeros = dict.fromkeys(("high", "medium", "low", "unknown", "fixable", "accepted", "duplicates"), 0)
        with engine.begin() as conn:
            org = "INSERT INTO orgs (id, slug, github_login, created_at) VALUES (1, 'acme', 'acme', :t)"
            conn.execute(sa.text(org), {"t": datetime(2026, 1, 1)})
            for scan_id, ref, name, at, crit in made:
                conn.execute(
                    sa.insert(scans).values(
                        id=scan_id, org_id=1, image_ref=ref, image_name=name, commit_sha="a" * 40,
                        repo_full_name="acme/api", status="success", block_action="warn", created_at=at,
                        critical=crit, signature_status="unknown", **zeros,
                    )
                )  # fmt: skip
        migrate.upgrade(app)
        with engine.connect() as conn:
            images = conn.execute(
                sa.text("SELECT image_name, latest_scan_id, indexed_scan_id FROM images ORDER BY image_name")
            ).all()
            changes = conn.execute(sa.text("SELECT day, critical FROM trend_changes ORDER BY day")).all()
            named = conn.execute(sa.text("SELECT image_name FROM scan_runs WHERE id = 1")).scalar()
        assert [tuple(r) for r in images] == [("ghcr.io/acme/api", 4, 4), ("ghcr.io/acme/web", 3, 3)]
        assert named == "ghcr.io/acme/api"
        # Jan 1: api 5 then 3 (net 3); Jan 2: web 2; Jan 3: api 3 -> 7 (+4). Running: 3, 5, 9 = api 7 + web 2.
        assert [(str(d)[:10], c) for d, c in changes] == [("2026-01-01", 3), ("2026-01-02", 2), ("2026-01-03", 4)]
    finally:
        engine.dispose()


def test_images_backfill_on_sqlite(tmp_path):
    _check_images_backfill(f"sqlite:///{tmp_path / 'backfill.db'}")


def test_images_backfill_on_postgresql():
    with empty_postgresql_schema() as url:
        _check_images_backfill(url)


# ---------------------------------------------------------------- a database this version has not migrated


def _unmigrated_app(tmp_path, revision: str | None = None):  # type: ignore[no-untyped-def]
    """The app on a fresh SQLite file, not migrated (or migrated to an older `revision`)."""
    config = {"TESTING": True, "DATABASE_URL": f"sqlite:///{tmp_path / 'old.db'}", "SECRET_KEY": "x" * 40}
    app = create_app({**config, "GITHUB_WEBHOOK_SECRET": "webhook-secret"})
    if revision is not None:
        migrate.upgrade(app, revision)
    return app


@pytest.mark.parametrize("revision", [None, "0020"], ids=["never-migrated", "older-revision"])
def test_requests_on_a_database_not_migrated_get_a_503_naming_the_fix(tmp_path, revision):
    app = _unmigrated_app(tmp_path, revision)
    client = app.test_client()
    try:
        r = client.get("/api/v1/orgs/acme/image-scans", headers={"Authorization": "Bearer ffis_unknown"})
        assert r.status_code == 503, r.get_data(as_text=True)
        assert r.json["error"] == "database_not_migrated" and "flask --app wsgi db upgrade" in r.json["message"]
        scrape = client.get("/metrics")  # the process's counters; the outbox gauges only where they can be read
        assert scrape.status_code == 200 and b"fremforge_uploads_total" in scrape.data, scrape.get_data(as_text=True)
        if revision is not None:
            return  # an older schema holds what a ping writes and what the sign-in page reads
        page = client.get("/admin/orgs/acme/code-security/image-scanning", follow_redirects=True)
        assert page.status_code == 503 and "flask --app wsgi db upgrade" in page.get_data(as_text=True)
        body = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
        signature = "sha256=" + hmac.new(b"webhook-secret", body, hashlib.sha256).hexdigest()
        headers = {"X-GitHub-Event": "ping", "X-GitHub-Delivery": "d-1", "X-Hub-Signature-256": signature}
        r = client.post("/webhooks/github", data=body, headers={**headers, "Content-Type": "application/json"})
        assert r.status_code == 503 and r.json["error"] == "database_not_migrated", r.get_data(as_text=True)
    finally:
        app.extensions["fremforge.db"].engine.dispose()


def test_a_database_one_revision_behind_is_refused_not_served(tmp_path, capture):
    """One revision behind, every table a request reads may be there: HEAD answered it (a 401 here, an upload
    stored), and the commands ran. Now the web answers 503 database_not_migrated (liveness and readiness aside) and
    the commands refuse in one line, the worker too, until `db upgrade`; then all goes on without asking again."""
    previous = next(
        r.down_revision
        for r in ScriptDirectory(str(migrate.MIGRATIONS)).walk_revisions()
        if r.revision == migrate.head()
    )
    app = _unmigrated_app(tmp_path, str(previous))
    client = app.test_client()
    not_migrated = "Error: the database is not migrated to this version of the app: run `flask --app wsgi db upgrade`."
    try:
        r = client.get("/api/v1/orgs/acme/images", headers={"Authorization": "Bearer ffis_unknown"})
        assert r.status_code == 503 and r.json["error"] == "database_not_migrated", r.get_data(as_text=True)
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").json["expected"] == migrate.head()
        # None of this version's tables needed: a scrape during a rolling upgrade is no alert, a page keeps its style.
        scrape = client.get("/metrics")
        assert scrape.status_code == 200 and b"fremforge_outbox_pending " in scrape.data, scrape.get_data(as_text=True)
        assert client.get("/api/v1/openapi.json").json["openapi"].startswith("3.1")
        with client.get("/admin/static/admin.css") as css:
            assert css.status_code == 200, css.status
        usage = app.test_cli_runner().invoke(args=["orgs", "create", "--help"])  # needs no database
        assert usage.exit_code == 0 and usage.output.startswith("Usage:"), usage.output
        result = app.test_cli_runner().invoke(args=["orgs", "list"])
        assert result.exit_code == 1 and result.output.strip().splitlines()[-1] == not_migrated, result.output
        buffer = capture("text")  # the worker, a service, says it in a log line
        result = app.test_cli_runner().invoke(args=["worker", "--once"])
        assert result.exit_code == 1 and result.output == "", result.output
        *_, line = buffer.getvalue().splitlines()  # (after its worker.no_github_app line), no round's error
        assert "retry_in" not in buffer.getvalue()
        assert line.endswith(f"ERROR app.cli worker.failed reason={not_migrated.removeprefix('Error: ')}"), line
        assert app.test_cli_runner().invoke(args=["db", "upgrade"]).exit_code == 0
        assert (
            client.get("/api/v1/orgs/acme/images", headers={"Authorization": "Bearer ffis_unknown"}).status_code == 401
        )
        assert app.test_cli_runner().invoke(args=["orgs", "list"]).exit_code == 0
    finally:
        app.extensions["fremforge.db"].engine.dispose()


def test_a_database_a_newer_release_migrated_is_served_on(tmp_path):
    """A rolling upgrade migrates first: the processes of the release before keep serving (on migrations that remove
    nothing they read: all but 0027, across which the older release is stopped first)."""
    app = _unmigrated_app(tmp_path, "head")
    try:
        with app.extensions["fremforge.db"].engine.begin() as conn:
            conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_from_a_newer_release'")
        r = app.test_client().get("/api/v1/orgs/acme/images", headers={"Authorization": "Bearer ffis_unknown"})
        assert r.status_code == 401, r.get_data(as_text=True)
        assert app.test_cli_runner().invoke(args=["orgs", "list"]).exit_code == 0
        ready = app.test_client().get("/readyz")  # not taken out of the load balancer for it (HEAD: 503)
        assert "not migrated" not in ready.get_data(as_text=True), ready.get_data(as_text=True)
    finally:
        app.extensions["fremforge.db"].engine.dispose()


def test_commands_on_a_database_not_migrated_or_unreachable_say_so_in_one_line(tmp_path):
    app = _unmigrated_app(tmp_path)
    try:
        for args in (["orgs", "list"], ["policy", "show", "acme"], ["chain", "verify", "acme"]):
            result = app.test_cli_runner().invoke(args=args)
            assert result.exit_code == 1, result.output
            assert result.output.strip().splitlines() == [
                "Error: the database is not migrated to this version of the app: run `flask --app wsgi db upgrade`."
            ], result.output
        assert app.test_cli_runner().invoke(args=["db", "upgrade"]).exit_code == 0  # the fix it names
        assert app.test_cli_runner().invoke(args=["orgs", "list"]).exit_code == 0
    finally:
        app.extensions["fremforge.db"].engine.dispose()
    url = "postgresql://fremforge:hunter2@127.0.0.1:1/none"
    down = create_app({"TESTING": True, "DATABASE_URL": url, "SECRET_KEY": "x"})
    result = down.test_cli_runner().invoke(args=["orgs", "list"])
    (line,) = result.output.strip().splitlines()
    assert result.exit_code == 1 and line.startswith("Error: the database cannot be reached or is busy"), line
    assert "(OperationalError: " in line and "refused" in line and "hunter2" not in line, line  # the driver says why


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://fremforge:hunter@2secret@127.0.0.1:1/none",  # an unencoded @: parsed short, the rest a host
        "postgresql://fremforge@127.0.0.1:1/none?password=hunter2secret",
    ],
)
def test_the_command_lines_database_error_never_shows_the_password(url):
    app = create_app({"TESTING": True, "DATABASE_URL": url, "SECRET_KEY": "x"})
    result = app.test_cli_runner().invoke(args=["orgs", "list"])
    assert result.exit_code == 1 and "cannot be reached" in result.output, result.output
    assert "hunter" not in result.output and "2secret" not in result.output, result.output
    app.extensions["fremforge.db"].engine.dispose()


def test_a_missing_role_or_database_is_named_by_the_command_line():
    """HEAD said only "cannot be reached or is busy (OperationalError); try again", for a role or a database that
    does not exist: the operator waited for something that would never answer."""
    base = postgres_base_url()
    if base is None:
        skip_or_fail("PostgreSQL tests need FREMFORGE_TEST_DATABASE_URL")
    assert base is not None
    parts = sa.engine.make_url(normalise(base))
    for url, says in (
        (parts.set(username="no_such_role_fremforge"), 'role "no_such_role_fremforge" does not exist'),
        (parts.set(database="no_such_db_fremforge"), 'database "no_such_db_fremforge" does not exist'),
    ):
        app = create_app({"TESTING": True, "DATABASE_URL": url.render_as_string(False), "SECRET_KEY": "x"})
        result = app.test_cli_runner().invoke(args=["orgs", "list"])
        assert result.exit_code == 1 and says in result.output, result.output
        app.extensions["fremforge.db"].engine.dispose()


def test_the_worker_on_a_database_not_migrated_says_so_without_a_traceback(tmp_path, caplog):
    app = _unmigrated_app(tmp_path)
    try:
        with app.app_context(), caplog.at_level(logging.WARNING, logger="app.worker"):
            loop = Loop(None)
            loop.stop.set()  # no wait after the error: one round's worth
            with pytest.raises(NotMigrated) as failed:
                loop.step()
            loop.recover(failed.value)  # as the loop does with it
    finally:
        app.extensions["fremforge.db"].engine.dispose()
    [line] = [r for r in caplog.records if r.getMessage().startswith("worker.error")]
    assert "not migrated" in line.getMessage() and "db upgrade" in line.getMessage()
    assert not line.exc_info  # one line, not a traceback, for what one command fixes


def test_a_worker_started_while_the_database_was_away_waits_for_its_schema(tmp_path, caplog):
    """The worker command asks for the schema before its loop; when the database does not answer then, the loop went on
    unasked and, once the database was back one revision behind, ran its rounds on it (retention, expiry, deliveries).
    Now the loop asks before its first round and waits, saying why, until `db upgrade`."""
    previous = next(
        r.down_revision
        for r in ScriptDirectory(str(migrate.MIGRATIONS)).walk_revisions()
        if r.revision == migrate.head()
    )
    app = _unmigrated_app(tmp_path, str(previous))
    try:
        with app.app_context(), caplog.at_level(logging.WARNING, logger="app.worker"):
            loop = Loop(None)  # as the command leaves it when its own check met no database
            loop.stop.set()  # no wait after the error
            with pytest.raises(NotMigrated) as failed:
                loop.step()
            loop.recover(failed.value)
            engine = app.extensions["fremforge.db"].engine
            with engine.connect() as conn:  # not a round's worth: not even a heartbeat
                assert conn.execute(sa.text("SELECT count(*) FROM worker_heartbeats")).scalar() == 0
            [line] = [r for r in caplog.records if r.getMessage().startswith("worker.error")]
            assert "not migrated" in line.getMessage() and "db upgrade" in line.getMessage()
            assert not line.exc_info
            assert app.test_cli_runner().invoke(args=["db", "upgrade"]).exit_code == 0
            loop.once = True  # its round beats
            loop.step()
            assert loop.schema_seen
            with engine.connect() as conn:
                assert conn.execute(sa.text("SELECT count(*) FROM worker_heartbeats")).scalar() == 1
    finally:
        app.extensions["fremforge.db"].engine.dispose()


def test_foreign_keys_are_off_while_sqlite_migrates_and_on_after(tmp_path):
    """SQLite rebuilds a table to alter it in batch mode (copy, drop, rename): with foreign keys on, dropping the old
    copy deletes every row referencing it (ON DELETE CASCADE: a scan's outbox rows, its image). migrations/env.py turns
    them off for the migration. HEAD's pragma ran inside the transaction the app's "begin" event had opened, where
    SQLite ignores it: they stayed on while 0026 ran (seen from its statement's own connection)."""
    app = create_app({"TESTING": True, "DATABASE_URL": f"sqlite:///{tmp_path / 'old.db'}", "SECRET_KEY": "x"})
    engine = app.extensions["fremforge.db"].engine
    migrate.upgrade(app, "0025")
    seen: list[int] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _foreign_keys_then(conn, cursor, statement, *_):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("ALTER TABLE"):
            seen.append(cursor.connection.execute("PRAGMA foreign_keys").fetchone()[0])

    migrate.upgrade(app)
    sa.event.remove(engine, "before_cursor_execute", _foreign_keys_then)
    assert seen and set(seen) == {0}, seen
    with engine.connect() as conn:
        assert conn.execute(sa.text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()


def test_0027_keeps_the_heads_known_before_it(tmp_path):
    """A pull request's current head, a head its scans were linked under (pr_number, stored under its base's ref),
    and 0026's marks all become pull_request_heads; scan_runs.pr_head goes."""
    app = create_app({"TESTING": True, "DATABASE_URL": f"sqlite:///{tmp_path / 'old.db'}", "SECRET_KEY": "x"})
    engine = app.extensions["fremforge.db"].engine
    migrate.upgrade(app, "0026")
    now = "2026-01-01 00:00:00.000000"
    scan = (
        "INSERT INTO scan_runs (id, org_id, image_ref, image_name, ref, commit_sha, repo_full_name, signature_status,"
        " pr_number, status, block_action, critical, high, medium, low, unknown, fixable, accepted, duplicates,"
        " created_at, blocking, pr_head) VALUES (:id, 1, 'i:1', 'i', 'refs/heads/main', :sha, 'acme/api', 'unknown',"
        " :pr, 'success', 'warn', 0, 0, 0, 0, 0, 0, 0, 0, :now, 0, :mark)"
    )
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO orgs (id, slug, github_login, created_at) VALUES (1, 'acme', 'acme', :t)"), {"t": now}
        )
        conn.execute(
            sa.text(
                "INSERT INTO pull_requests (org_id, repo_full_name, number, head_sha, base_ref, base_sha, state,"
                " updated_at) VALUES (1, 'acme/api', 7, :head, 'refs/heads/main', NULL, 'closed', :now)"
            ),
            {"head": "c" * 40, "now": now},
        )
        conn.execute(sa.text(scan), {"id": 1, "sha": "a" * 40, "pr": 7, "now": now, "mark": 0})  # an earlier head of 7
        conn.execute(sa.text(scan), {"id": 2, "sha": "c" * 40, "pr": None, "now": now, "mark": 1})  # marked by 0026
        conn.execute(sa.text(scan), {"id": 3, "sha": "d" * 40, "pr": None, "now": now, "mark": 0})  # main's own
    migrate.upgrade(app)
    with engine.connect() as conn:
        order = "ORDER BY head_sha, number"
        heads = conn.execute(sa.text(f"SELECT head_sha, base_ref, number FROM pull_request_heads {order}"))
        main = "refs/heads/main"
        assert [tuple(r) for r in heads] == [("a" * 40, main, 7), ("c" * 40, main, 0), ("c" * 40, main, 7)]
        assert "pr_head" not in {c["name"] for c in sa.inspect(conn).get_columns("scan_runs")}
    command.downgrade(migrate.alembic_config(app), "0026")  # the marks come back from the heads known, not all false
    with engine.connect() as conn:
        marks = conn.execute(sa.text("SELECT id, pr_head FROM scan_runs ORDER BY id"))
        assert [(i, bool(m)) for i, m in marks] == [(1, True), (2, True), (3, False)]
    engine.dispose()


def test_a_database_password_in_the_urls_query_is_never_printed():
    """Review: `db upgrade` printed `?password=...` (libpq takes it there too); only user:password@ was hidden. The
    log redaction knew only that form as well."""
    url = "postgresql://fremforge@127.0.0.1:1/x?password=QueryPassw0rdSecret&sslmode=disable"
    app = create_app({"TESTING": True, "DATABASE_URL": url, "SECRET_KEY": "x" * 40})
    shown = migrate.describe_url(app)
    assert "QueryPassw0rdSecret" not in shown and "password=***" in shown and "sslmode=disable" in shown, shown
    assert "QueryPassw0rdSecret" in logs.secrets_of(app.config)
    app.extensions["fremforge.db"].engine.dispose()


# ---------------------------------------------------------------- two `db upgrade` at once


def _two_upgrades_at_once(url: str) -> None:
    """Review: two `db upgrade` at once from an older revision both read it, both ran its migrations, and the second
    failed halfway with a 106-line traceback (PostgreSQL: DuplicateColumn in 0013). Now the second waits for the
    first (saying so), then finds the head: nothing to do. The first (here, in a thread) is held inside its migration,
    its locks taken, until the second (the command, in a process of its own: Alembic runs one at a time a process)
    has said it waits, or has ended (as it did before, failing: then the test fails on its exit status)."""
    app = create_app({"TESTING": True, "DATABASE_URL": url, "SECRET_KEY": "x"})
    engine = app.extensions["fremforge.db"].engine
    migrate.upgrade(app, "0012")
    with engine.begin() as conn:
        org = "INSERT INTO orgs (id, slug, github_login, created_at) VALUES (1, 'acme', 'acme', :t)"
        conn.execute(sa.text(org), {"t": datetime(2026, 1, 1)})
    second_waits, first_inside = threading.Event(), threading.Event()

    @sa.event.listens_for(engine, "after_cursor_execute")
    def _hold_inside(_conn, _cursor, statement, *_):  # type: ignore[no-untyped-def]
        if not first_inside.is_set() and statement.lstrip().upper().startswith(("ALTER", "CREATE")):
            first_inside.set()  # its first change made: its locks held
            second_waits.wait(timeout=120)

    failed: list[BaseException] = []

    def _first() -> None:
        try:
            migrate.upgrade(app)
        except BaseException as exc:
            failed.append(exc)

    env = {k: v for k, v in os.environ.items() if not k.startswith("FREMFORGE_")}
    env.update(FREMFORGE_DATABASE_URL=url, FREMFORGE_SECRET_KEY=secrets.token_urlsafe(48))
    thread = threading.Thread(target=_first)
    try:
        thread.start()
        assert first_inside.wait(timeout=120)
        with subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ) as second:  # fmt: skip
            assert second.stderr is not None and second.stdout is not None
            said = []
            for line in second.stderr:  # as it comes
                said.append(line)
                if "db.upgrade.waiting" in line:
                    second_waits.set()
            second_waits.set()  # (had it not waited, the first goes on now)
            out, status = second.stdout.read(), second.wait(timeout=120)
        thread.join(timeout=120)
    finally:
        second_waits.set()
        sa.event.remove(engine, "after_cursor_execute", _hold_inside)
    try:
        assert not thread.is_alive() and failed == []
        assert status == 0, "".join(said) + out
        [waited] = said  # one line, no traceback
        assert "db.upgrade.waiting: another db upgrade is migrating this database" in waited
        assert out.endswith(f"is at revision {migrate.head()}, the head: nothing to do\n"), out
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == [migrate.head()]
            assert conn.execute(sa.text("SELECT slug FROM orgs")).scalars().all() == ["acme"]
        assert migrate.differences(app) == []
    finally:
        engine.dispose()


def test_two_upgrades_at_once_on_sqlite(tmp_path):
    _two_upgrades_at_once(f"sqlite:///{tmp_path / 'two.db'}")


def test_two_upgrades_at_once_on_postgresql():
    with empty_postgresql_schema() as url:
        _two_upgrades_at_once(url)


@contextmanager
def _migrating_elsewhere(url: str) -> Iterator[None]:
    """What another `db upgrade` holds while it migrates: PostgreSQL's advisory lock, SQLite's write lock."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                conn.connection.driver_connection.isolation_level = None
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.execute(sa.select(sa.func.pg_advisory_lock(*migrate.MIGRATION_LOCK_ARGS)))
            yield
            conn.exec_driver_sql("ROLLBACK" if conn.dialect.name == "sqlite" else "SELECT pg_advisory_unlock_all()")
    finally:
        engine.dispose()


def _upgrade_held_too_long(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app({"TESTING": True, "DATABASE_URL": url, "SECRET_KEY": "x"})
    migrate.upgrade(app, "0012")
    monkeypatch.setattr(migrate, "MIGRATION_WAIT_SECONDS", 0.2)
    try:
        with _migrating_elsewhere(url):
            result = app.test_cli_runner().invoke(args=["db", "upgrade"])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
        said = "another db upgrade has been migrating this database for 0.2 s; nothing done: try again once it ends"
        assert result.output == f"Error: {said}\n"
        assert migrate.current(app) == "0012"
    finally:
        app.extensions["fremforge.db"].engine.dispose()


def test_an_upgrade_waits_at_most_so_long_for_another_on_sqlite(tmp_path, monkeypatch):
    _upgrade_held_too_long(f"sqlite:///{tmp_path / 'held.db'}", monkeypatch)


def test_an_upgrade_waits_at_most_so_long_for_another_on_postgresql(monkeypatch):
    with empty_postgresql_schema() as url:
        _upgrade_held_too_long(url, monkeypatch)


# ---------------------------------------------------------------- what a rolling upgrade may cross

REMOVES = re.compile(r"\b(?:drop_column|drop_table|rename_table)\b|\bDROP\s+(?:COLUMN|TABLE)\b|\bRENAME\b", re.I)


def _removing_migrations() -> set[str]:
    """The revisions whose upgrade removes or renames a column or a table (what an older release may read)."""
    found = set()
    for script in ScriptDirectory(str(migrate.MIGRATIONS)).walk_revisions():
        tree = ast.parse(Path(script.path).read_text())
        [upgrade] = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "upgrade"]
        if REMOVES.search(ast.get_source_segment(Path(script.path).read_text(), upgrade) or ""):
            found.add(script.revision)
    return found


def test_the_upgrade_notes_name_every_migration_that_removes_what_an_older_release_reads():
    """Review: the README said a database a newer release migrated is served on during a rolling upgrade, and
    app/migrate.py that migrations only add; but 0027 drops scan_runs.pr_head, so a 0026 process serving on it
    answered 503 database_not_migrated. The README's upgrade notes (and app/migrate.py) now name each migration that
    removes something: an upgrade across it stops the older release first."""
    removing = _removing_migrations()
    assert removing == {"0027"}, removing  # a new one belongs in the notes below, and is not rolling
    readme = (ROOT / "README.md").read_text()
    notes = readme[readme.index("Upgrade notes, by migration") : readme.index("## Metrics and logs")]
    listed = set(re.findall(r"(?m)^- `([0-9]{4})` .*\n?.*\bremoves\b", notes))
    assert listed == removing, notes
    for revision in removing:
        assert f"across `{revision}`" in notes and "stop the older release" in notes and "not rolling" in notes
        assert f"upgrade across {revision}" in (migrate.__doc__ or ""), migrate.__doc__


def test_a_migration_of_another_schema_of_the_database_does_not_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock is the schema's, not the database's (review: one fixed key made every schema's `db upgrade` wait for
    any other's, the tests' workers included, and give up after MIGRATION_WAIT_SECONDS)."""
    monkeypatch.setattr(migrate, "MIGRATION_WAIT_SECONDS", 0.2)
    with empty_postgresql_schema() as held, empty_postgresql_schema() as other, _migrating_elsewhere(held):
        app = create_app({"TESTING": True, "DATABASE_URL": other, "SECRET_KEY": "x"})
        try:
            assert migrate.upgrade(app) is None  # not MigrationBusy
            assert migrate.current(app) == migrate.head()
        finally:
            app.extensions["fremforge.db"].engine.dispose()
