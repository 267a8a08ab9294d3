"""The database unavailable, or locked past its budget: API requests get a JSON 503 with Retry-After, never a 500
or a dropped connection, and the next request works again (spec section 4, "the gate under faults").

First the answer itself (errors injected into a view), then a lock held by another program past the budget
(SQLite: the sqlite3 module holding BEGIN IMMEDIATE; PostgreSQL: a transaction holding the org's chain head),
then a real PostgreSQL server restarted (fast, then immediate) under gunicorn while uploads run.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import re
import secrets
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy import exc as sa_exc

from app import create_app, db, metrics, migrate
from app.chain.verify import verify_org
from app.findings import queries
from app.models import Org, ScanRun
from tests import pgcluster
from tests.conftest import TEST_CONFIG, WEBHOOK_SECRET, MakeApp, admin_login, normalise, skip_or_fail
from tests.factories import census, finding, make_org, make_token, post, seed

ROOT = Path(__file__).resolve().parent.parent
BUDGET = 1.0  # seconds: the database budget (DATABASE_BUSY_SECONDS) of these tests' apps; 10 s in production
SLACK = 4.0  # seconds past the budget that a 503 may take to come back (a loaded CI machine)
WAIT = 30.0  # seconds: a bound for what should finish at once, not a pause


def assert_unavailable(r: Any) -> None:
    """A JSON 503 of the documented shape, with a Retry-After of some seconds."""
    assert r.status_code == 503, (r.status_code, r.get_data()[:2000])
    assert r.mimetype == "application/json", r.headers
    body = r.get_json()
    assert set(body) == {"error", "message", "details"} and body["error"] == "database_unavailable", body
    assert body["details"] == [] and body["message"].strip(), body
    assert re.fullmatch(r"[1-9][0-9]*", r.headers.get("Retry-After", "")), r.headers


# ---------------------------------------------------------------- the answer to a database error


def _dbapi(cls: type[sa_exc.DBAPIError], orig: Exception, **kw: Any) -> sa_exc.DBAPIError:
    return cls("SELECT 1", {}, orig, **kw)


UNAVAILABLE = {
    "postgres_fast_shutdown": lambda: _dbapi(sa_exc.OperationalError, psycopg.errors.AdminShutdown("terminating")),
    "postgres_starting_up": lambda: _dbapi(sa_exc.OperationalError, psycopg.errors.CannotConnectNow("starting up")),
    "postgres_lock_timeout": lambda: _dbapi(sa_exc.OperationalError, psycopg.errors.LockNotAvailable("lock timeout")),
    "postgres_refused": lambda: _dbapi(sa_exc.OperationalError, psycopg.OperationalError("Connection refused")),
    "postgres_connection_closed": lambda: _dbapi(
        sa_exc.InterfaceError, psycopg.InterfaceError("the connection is lost")
    ),
    "connection_invalidated": lambda: _dbapi(
        sa_exc.OperationalError, psycopg.errors.ProtocolViolation("bad message"), connection_invalidated=True
    ),
    "sqlite_locked": lambda: _dbapi(sa_exc.OperationalError, sqlite3.OperationalError("database is locked")),
    "pool_timeout": lambda: sa_exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached"),
    "postgres_deadlock": lambda: _dbapi(sa_exc.OperationalError, psycopg.errors.DeadlockDetected("deadlock")),
    "postgres_serialization": lambda: _dbapi(
        sa_exc.OperationalError, psycopg.errors.SerializationFailure("could not serialize")
    ),
    "postgres_disk_full": lambda: _dbapi(sa_exc.OperationalError, psycopg.errors.DiskFull("could not extend file")),
    "sqlite_disk_full": lambda: _dbapi(sa_exc.OperationalError, sqlite3.OperationalError("database or disk is full")),
    "sqlite_readonly": lambda: _dbapi(
        sa_exc.OperationalError, sqlite3.OperationalError("attempt to write a readonly database")
    ),
}
NOT_UNAVAILABLE = {  # bugs, not outages: they stay a logged 500
    "sqlite_no_such_table": lambda: _dbapi(sa_exc.OperationalError, sqlite3.OperationalError("no such table: x")),
    "postgres_unique_violation": lambda: _dbapi(sa_exc.IntegrityError, psycopg.errors.UniqueViolation("duplicate")),
    "postgres_undefined_table": lambda: _dbapi(sa_exc.ProgrammingError, psycopg.errors.UndefinedTable("no table")),
}


def failing(make: Callable[[], BaseException]) -> Callable[..., Any]:
    def fail(*_args: Any, **_kwargs: Any) -> Any:
        raise make()

    return fail


@pytest.mark.parametrize("case", sorted(UNAVAILABLE))
def test_a_database_outage_is_a_json_503_with_retry_after_and_the_next_request_works(
    app: Flask, client: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    make_org(app)
    auth = {"Authorization": f"Bearer {make_token(app)}"}
    with monkeypatch.context() as m:
        m.setattr(queries, "list_scans", failing(UNAVAILABLE[case]))
        assert_unavailable(client.get("/api/v1/orgs/acme/image-scans", headers=auth))
    lines = [r.getMessage() for r in caplog.records if "request.database_unavailable" in r.getMessage()]
    assert len(lines) == 1 and "path=/api/v1/orgs/acme/image-scans error=" in lines[0], lines
    assert "unhandled_error" not in caplog.text
    assert client.get("/api/v1/orgs/acme/image-scans", headers=auth).status_code == 200


@pytest.mark.parametrize("case", sorted(NOT_UNAVAILABLE))
def test_a_database_error_of_the_query_stays_a_500(
    app: Flask, client: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    make_org(app)
    monkeypatch.setattr(queries, "list_scans", failing(NOT_UNAVAILABLE[case]))
    r = client.get("/api/v1/orgs/acme/image-scans", headers={"Authorization": f"Bearer {make_token(app)}"})
    assert r.status_code == 500 and r.get_json()["error"] == "internal_error"
    assert "Retry-After" not in r.headers
    assert "request.unhandled_error" in caplog.text


def test_a_value_the_database_refuses_stays_a_422(app: Flask, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """DataError is a DBAPIError too: its own, more specific handler still answers."""
    make_org(app)
    monkeypatch.setattr(
        queries, "list_scans", failing(lambda: _dbapi(sa_exc.DataError, psycopg.errors.StringDataRightTruncation()))
    )
    r = client.get("/api/v1/orgs/acme/image-scans", headers={"Authorization": f"Bearer {make_token(app)}"})
    assert r.status_code == 422 and r.get_json()["error"] == "validation_failed"


def test_an_admin_page_during_an_outage_is_a_503_page_with_retry_after(
    app: Flask, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_org(app)
    admin_login(app, client)
    page = "/admin/orgs/acme/code-security/image-scanning"
    with monkeypatch.context() as m:
        m.setattr(queries, "list_scans", failing(UNAVAILABLE["postgres_fast_shutdown"]))
        r = client.get(page)
    assert r.status_code == 503 and r.mimetype == "text/html"
    assert re.fullmatch(r"[1-9][0-9]*", r.headers.get("Retry-After", "")), r.headers
    assert "try again" in r.get_data(as_text=True)
    assert client.get(page).status_code == 200


def test_a_page_outside_the_api_and_admin_during_an_outage_is_a_503_page_sent_as_pages_are(
    app: Flask, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "outbox_families", failing(UNAVAILABLE["postgres_fast_shutdown"]))
    r = client.get("/metrics")
    assert r.status_code == 503 and r.mimetype == "text/html", r.get_data(as_text=True)
    assert re.fullmatch(r"[1-9][0-9]*", r.headers.get("Retry-After", "")), r.headers
    assert r.headers["Cache-Control"] == "no-store" and r.headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"] and r.headers["X-Frame-Options"] == "DENY"


def test_a_webhook_during_an_outage_is_a_json_503(webhook_app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable() -> Any:
        raise UNAVAILABLE["postgres_refused"]()

    monkeypatch.setattr(db, "session", unreachable)
    body = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
    signature = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "ping",
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "X-Hub-Signature-256": signature,
    }
    assert_unavailable(webhook_app.test_client().post("/webhooks/github", data=body, headers=headers))


# ---------------------------------------------------------------- a lock held past the budget


@pytest.fixture
def busy_app(make_app: MakeApp) -> Flask:
    """The app with its database budget lowered to BUDGET seconds (so the tests need not wait 10 s)."""
    return make_app(DATABASE_BUSY_SECONDS=BUDGET)


@contextmanager
def write_lock_held_elsewhere(app: Flask, slug: str) -> Iterator[None]:
    """Another program holds what an upload must lock: SQLite's write lock (the sqlite3 module, as the sqlite3
    shell would, BEGIN IMMEDIATE), or on PostgreSQL the org's chain head row (a transaction left open)."""
    engine = app.extensions["fremforge.db"].engine
    if engine.dialect.name == "sqlite":
        conn = sqlite3.connect(engine.url.database, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield
            conn.execute("ROLLBACK")
        finally:
            conn.close()
        return
    other = sa.create_engine(normalise(app.config["DATABASE_URL"]), poolclass=sa.pool.NullPool)
    try:
        with other.connect() as conn:
            conn.execute(
                sa.text("SELECT h.seq FROM chain_heads h JOIN orgs o ON o.id = h.org_id WHERE o.slug = :s FOR UPDATE"),
                {"s": slug},
            ).one()
            yield
            conn.rollback()
    finally:
        other.dispose()


def test_an_upload_waiting_past_the_budget_for_a_lock_gets_a_503_and_stores_nothing(busy_app: Flask) -> None:
    make_org(busy_app)
    token = make_token(busy_app)
    client = busy_app.test_client()
    before = census(busy_app)
    answers: list[Any] = []

    def upload() -> None:
        answers.append(post(client, token, seed()))

    with write_lock_held_elsewhere(busy_app, "acme"):
        uploader = threading.Thread(target=upload)
        started = time.monotonic()
        uploader.start()
        uploader.join(BUDGET + SLACK)  # past this the lock is released (on the way out), so the test cannot hang
        waited = time.monotonic() - started
        overran = uploader.is_alive()
    uploader.join(WAIT)
    assert not overran, f"the upload still waited for the lock after {BUDGET + SLACK:.0f} s (budget {BUDGET} s)"
    assert_unavailable(answers[0])
    assert waited >= BUDGET * 0.8, f"answered after {waited:.2f} s: a lock is waited for up to the budget first"
    assert census(busy_app) == before

    r = post(client, token, seed())  # the lock is gone: the same upload now goes through
    assert r.status_code == 202, r.get_data()[:2000]
    assert census(busy_app)["scan_runs"] == before["scan_runs"] + 1


@contextmanager
def big_inserts_fail(app: Flask) -> Iterator[None]:
    """The database fails a big upload's rows with a real error of its own, an outage's: on PostgreSQL a trigger
    cancels the COPY as statement_timeout would (57014, query_canceled); on SQLite the file may not grow
    (max_page_count at its size after a VACUUM: SQLITE_FULL, "database or disk is full", as on a full disk)."""
    engine = app.extensions["fremforge.db"].engine
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE FUNCTION cancel_boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.package = 'boom' THEN RAISE EXCEPTION 'canceling statement due to statement timeout' "
                "USING ERRCODE = 'query_canceled'; END IF; RETURN NEW; END $$"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER cancel_boom BEFORE INSERT ON findings FOR EACH ROW EXECUTE FUNCTION cancel_boom()"
            )
        try:
            yield
        finally:
            with engine.begin() as conn:
                conn.exec_driver_sql("DROP TRIGGER cancel_boom ON findings")
                conn.exec_driver_sql("DROP FUNCTION cancel_boom()")
        return

    def capped(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        pages = cursor.execute("PRAGMA page_count").fetchone()[0]
        cursor.execute(f"PRAGMA max_page_count = {int(pages)}")
        cursor.close()

    engine.dispose()
    plain = sqlite3.connect(engine.url.database, isolation_level=None)
    try:
        plain.execute("VACUUM")  # no free page left to fill
    finally:
        plain.close()
    sa.event.listen(engine, "connect", capped)
    try:
        yield
    finally:
        sa.event.remove(engine, "connect", capped)
        engine.dispose()


def test_a_big_upload_the_database_fails_mid_insert_gets_a_503_and_stores_nothing(app: Flask) -> None:
    """A review found the COPY of an upload over 2,000 findings run on the driver's cursor outside SQLAlchemy's
    error handling: a statement_timeout there was a 500 (`internal_error`, logged as a bug), and on SQLite a full
    disk was a 500 on every upload. Both are outages: a JSON 503 with Retry-After, nothing stored, and the same
    upload goes through once the database can take it."""
    make_org(app)
    token = make_token(app)
    client = app.test_client()
    rows = [finding(cve_id=f"CVE-2024-{i:05d}", package_name="boom" if i == 2400 else "pkg") for i in range(2500)]
    before = census(app)
    with big_inserts_fail(app):
        assert_unavailable(post(client, token, seed(rows)))
        assert census(app) == before
    r = post(client, token, seed(rows))
    assert r.status_code == 202 and r.get_json()["accepted"] == 2500, r.get_data()[:2000]


# ---------------------------------------------------------------- PostgreSQL restarted under gunicorn

HOST = "127.0.0.1"
GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"
ORGS = ["acme", "beta"]
UPLOADERS = 4
MAX_UPLOADS = 400  # per uploader: a bound on the load, whatever happens
REQUEST_TIMEOUT = 25.0  # seconds: the client's; under gunicorn's 30 s, above the app's 10 s lock + 5 s connect budget
PHASE_TIMEOUT = 20.0  # seconds for uploads to go through again after a restart
ACCEPTED_PER_PHASE = 8  # uploads that must go through before each restart, and after it
# In gunicorn's log: a worker killed for taking too long, a crash, an unhandled error.
SERVER_TROUBLE = re.compile(r"WORKER TIMEOUT|Traceback|request\.unhandled_error|\bCRITICAL\b|Worker .* (died|exited)")


@dataclass
class Answer:
    uploader: int
    slug: str
    status: int | None  # None: no answer (the connection dropped or timed out)
    retry_after: str | None = None
    body: Any = None
    text: str = ""
    error: str | None = None


@contextmanager
def gunicorn(database_url: str, tmp: Path) -> Iterator[tuple[int, Path]]:
    """`gunicorn --workers 2 wsgi:app` (sync workers, as production runs) on a free port; stopped on the way out."""
    port = pgcluster.free_port()
    log = tmp / "gunicorn.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FREMFORGE_")}
    env.update(
        FREMFORGE_DATABASE_URL=database_url,
        FREMFORGE_SECRET_KEY=secrets.token_urlsafe(48),
        FREMFORGE_CHECKPOINT_KEY_FILE=str(tmp / "checkpoint_ed25519.pem"),
        PYTHONDONTWRITEBYTECODE="1",
    )
    cmd = [str(GUNICORN), "--workers", "2", "--bind", f"{HOST}:{port}", "--no-control-socket", "wsgi:app"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not _answers_healthz(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gunicorn did not come up:\n{log.read_text(errors='replace')}")
            time.sleep(0.05)  # the readiness poll's interval, not a synchronisation point
        yield port, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _answers_healthz(port: int) -> bool:
    conn = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def upload_once(port: int, uploader: int, slug: str, token: str, i: int) -> Answer:
    sha = hashlib.sha1(f"{slug}/{uploader}/{i // 4}".encode()).hexdigest()
    doc = seed([finding(f"CVE-2024-{uploader}{i:04d}")], image_ref=f"ghcr.io/{slug}/api:{uploader}-{i}", sha=sha)
    doc["repo_full_name"] = f"{slug}/api"
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT)
    try:
        conn.request("POST", f"/api/v1/orgs/{slug}/image-scans/findings", body=json.dumps(doc), headers=headers)
        resp = conn.getresponse()
        text = resp.read().decode(errors="replace")
        answer = Answer(uploader, slug, resp.status, resp.getheader("Retry-After"), text=text[:500].strip())
    except (OSError, http.client.HTTPException) as exc:
        return Answer(uploader, slug, None, error=f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()
    with suppress(ValueError):
        answer.body = json.loads(text)
    return answer


def problem(a: Answer) -> str | None:
    """What is wrong with an answer, if anything: only a stored scan (202) or a JSON 503 with Retry-After will do."""
    if a.status is None:
        return f"uploader {a.uploader}: no answer: {a.error}"
    if a.status == 202 and isinstance(a.body, dict) and isinstance(a.body.get("scan_run_id"), int):
        return None
    body = a.body if isinstance(a.body, dict) else {}
    if a.status == 503 and body.get("error") == "database_unavailable" and (a.retry_after or "").isdigit():
        return None
    return f"uploader {a.uploader}: HTTP {a.status} (Retry-After {a.retry_after}): {a.text}"


@pytest.mark.postgres
def test_uploads_while_postgresql_restarts_get_202_or_503_never_a_500_nor_a_dropped_connection(tmp_path: Path) -> None:
    try:
        cluster = pgcluster.Cluster()
    except pgcluster.Unavailable as exc:
        skip_or_fail(f"PostgreSQL fault injection needs a throwaway cluster: {exc}")
    with cluster:
        cluster.start()
        app = create_app({**TEST_CONFIG, "DATABASE_URL": cluster.url})
        engine = app.extensions["fremforge.db"].engine
        try:
            migrate.upgrade(app)
            tokens = {}
            for slug in ORGS:
                make_org(app, slug)
                tokens[slug] = make_token(app, slug)
            engine.dispose()  # its connections die with the restarts; the checks below connect afresh
            answers, accepted_ids = run_uploads_through_restarts(cluster, tokens, tmp_path)
            engine.dispose()
            with app.app_context():
                session = db.session()
                stored = set(session.scalars(sa.select(ScanRun.id).where(ScanRun.id.in_(accepted_ids))))
                ids = {slug: session.scalars(sa.select(Org.id).where(Org.slug == slug)).one() for slug in ORGS}
            verdicts = {slug: verify_org(engine, org_id) for slug, org_id in ids.items()}
        finally:
            engine.dispose()

    assert not set(accepted_ids) - stored, f"uploads answered 202 but not stored: {sorted(set(accepted_ids) - stored)}"
    for slug, verdict in verdicts.items():
        assert verdict.intact, verdict.describe(slug)
    unavailable = [a for a in answers if a.status == 503]
    assert unavailable, "no upload met the restarts: the test did not test them"


def run_uploads_through_restarts(
    cluster: pgcluster.Cluster, tokens: dict[str, str], tmp: Path
) -> tuple[list[Answer], list[int]]:
    """Uploads from UPLOADERS threads to gunicorn while the cluster restarts fast, then immediate; every answer
    is checked here (202 or a JSON 503 with Retry-After); returns them, with the scan ids answered 202."""
    answers: list[Answer] = []
    changed = threading.Condition()
    stop = threading.Event()

    def accepted() -> int:
        return sum(1 for a in answers if a.status == 202)

    with gunicorn(cluster.url, tmp) as (port, log):

        def uploader(n: int) -> None:
            slug = ORGS[n % len(ORGS)]
            for i in range(MAX_UPLOADS):
                if stop.is_set():
                    return
                answer = upload_once(port, n, slug, tokens[slug], i)
                with changed:
                    answers.append(answer)
                    changed.notify_all()
                if answer.status != 202:
                    stop.wait(0.02)  # a client backing off (Retry-After, scaled down), not a synchronisation point

        def wait_for_accepted(count: int, what: str) -> None:
            with changed:
                ok = changed.wait_for(
                    lambda: accepted() >= count or not any(t.is_alive() for t in threads), PHASE_TIMEOUT
                )
                if not ok or accepted() < count:
                    bad = [p for p in map(problem, answers) if p]
                    raise AssertionError(
                        f"{what}: {accepted()} of {count} uploads went through in {PHASE_TIMEOUT:.0f} s; "
                        f"{len(answers)} answers; problems: {bad[:5]}\n{cluster.output()[-3000:]}"
                    )

        threads = [threading.Thread(target=uploader, args=(n,), daemon=True) for n in range(UPLOADERS)]
        for t in threads:
            t.start()
        try:
            wait_for_accepted(ACCEPTED_PER_PHASE, "before the restarts")
            for mode in ("fast", "immediate"):
                cluster.restart(mode)
                with changed:
                    base = accepted()
                wait_for_accepted(base + ACCEPTED_PER_PHASE, f"after the {mode} restart")
        finally:
            stop.set()
            for t in threads:
                t.join(REQUEST_TIMEOUT + 5)
        assert not any(t.is_alive() for t in threads), "an uploader did not finish"
        final = [upload_once(port, 9, slug, tokens[slug], 0) for slug in ORGS]  # and now, one more each: 202
        assert [a.status for a in final] == [202] * len(ORGS), [problem(a) for a in final]
        answers.extend(final)

    trouble = [line for line in log.read_text(errors="replace").splitlines() if SERVER_TROUBLE.search(line)]
    problems = [p for p in map(problem, answers) if p]
    assert not problems, (
        f"{len(problems)} of {len(answers)} answers were neither 202 nor a JSON 503:\n"
        + "\n".join(problems[:10])
        + "\nserver log:\n"
        + "\n".join(trouble[:20])
    )
    assert not trouble, "gunicorn logged trouble:\n" + "\n".join(trouble[:20])
    return answers, [a.body["scan_run_id"] for a in answers if a.status == 202]
