"""Fixtures: every app test runs on SQLite, and on PostgreSQL when FREMFORGE_TEST_DATABASE_URL is set.

With FREMFORGE_TEST_STRICT=1 (as .ci/run sets it) a backend or tool that is missing fails the run
instead of skipping it.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

from app import create_app, logs, migrate
from app.db import Base
from tests import paths

ROOT = Path(__file__).resolve().parent.parent
SHARED = paths.SHARED
STRICT = os.environ.get("FREMFORGE_TEST_STRICT") == "1"
TEST_CONFIG: dict[str, Any] = {"TESTING": True, "SECRET_KEY": "test-secret", "PUBLIC_URL": "http://fremforge.test"}
MakeApp = Callable[..., Flask]  # the `make_app` fixture: make_app(**overrides) -> Flask


def skip_or_fail(reason: str) -> None:
    """Skip with a clear reason; where the run is strict (CI), fail instead."""
    if STRICT:
        pytest.fail(f"required in strict mode (FREMFORGE_TEST_STRICT=1): {reason}", pytrace=False)
    pytest.skip(reason)


def postgres_base_url() -> str | None:
    return os.environ.get("FREMFORGE_TEST_DATABASE_URL") or None


def _postgres_schema_url(base: str) -> tuple[str, str]:
    """A URL whose connections live in a fresh schema of their own (one per test worker)."""
    from app.config import normalise_database_url

    schema = f"fremforge_test_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_{secrets.token_hex(3)}"
    base = normalise_database_url(base)
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options={quote(f'-csearch_path={schema}')}", schema


@pytest.fixture(scope="session", autouse=True)
def subprocess_metrics_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The apps the tests start in other processes (gunicorn, `flask --app wsgi ...`) count in a folder of this
    session's, not in the checkout's instance/metrics (their default, app.metrics_folder); a test may name another.
    This process goes on counting in memory: prometheus_client chose so when first imported, before the variable."""
    from prometheus_client import values  # noqa: F401  (imported first: it reads the variable once, now)

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield
        return
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path_factory.mktemp("prometheus"))
    try:
        yield
    finally:
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated, empty database of each backend, shared by the session and emptied after each test."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'fremforge.db'}"
        schema = None
    else:
        base = postgres_base_url()
        if base is None:
            skip_or_fail(
                "PostgreSQL tests need FREMFORGE_TEST_DATABASE_URL (e.g. postgresql://postgres@127.0.0.1:5432/test)"
            )
        assert base is not None
        url, schema = _postgres_schema_url(base)
        engine = sa.create_engine(normalise(base))
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        except sa.exc.OperationalError as exc:
            skip_or_fail(f"PostgreSQL at FREMFORGE_TEST_DATABASE_URL is not reachable: {exc.orig}")
        finally:
            engine.dispose()
    app = create_app({**TEST_CONFIG, "DATABASE_URL": url})
    migrate.upgrade(app)
    app.extensions["fremforge.db"].engine.dispose()
    yield url
    if schema is not None:
        engine = sa.create_engine(normalise(url))
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


def normalise(url: str) -> str:
    from app.config import normalise_database_url

    return normalise_database_url(url)


@pytest.fixture
def make_app(database_url: str, tmp_path: Path) -> Iterator[MakeApp]:
    """`make_app(**overrides)`: the app on the test's database (migrated already, see `database_url`), configured
    with TEST_CONFIG and `overrides` (PUBLIC_URL=None: as if not set); its instance folder is the test's
    tmp_path/instance. At teardown the database is emptied and every app made is disposed of."""
    made: list[Flask] = []

    def make(**overrides: Any) -> Flask:
        app = create_app({**TEST_CONFIG, "DATABASE_URL": database_url, **overrides})
        app.instance_path = str(tmp_path / "instance")
        made.append(app)
        return app

    yield make
    try:
        for app in {a.config["DATABASE_URL"]: a for a in made}.values():  # each database once
            empty_database(app)
    finally:
        for app in made:
            app.extensions["fremforge.db"].engine.dispose()


@pytest.fixture
def app(make_app: MakeApp) -> Flask:
    return make_app()


def empty_database(app: Flask) -> None:
    engine = app.extensions["fremforge.db"].engine
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for name in tables:
                conn.execute(sa.text(f"DELETE FROM {name}"))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


@pytest.fixture
def dialect(app: Flask) -> str:
    return app.extensions["fremforge.db"].engine.dialect.name


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In strict mode (CI) a skipped test is a failed one: nothing skipped may count as passing."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, which strict mode (FREMFORGE_TEST_STRICT=1) counts as failed: {reason}"


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """One line per skip reason (and how many), instead of one line per skipped test."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    reasons = Counter(r.longrepr[2] if isinstance(r.longrepr, tuple) else str(r.longrepr) for r in skipped)
    terminalreporter.section("skipped tests, by reason")
    for reason, n in reasons.most_common():
        terminalreporter.line(f"{n:>5} skipped: {reason}")


WEBHOOK_SECRET = "test-webhook-secret"


@pytest.fixture
def webhook_app(make_app: MakeApp) -> Flask:
    """The app with a GitHub webhook secret configured, as FREMFORGE_GITHUB_WEBHOOK_SECRET would set it."""
    return make_app(GITHUB_WEBHOOK_SECRET=WEBHOOK_SECRET)


# -- GitHub: one fake GitHub (real HTTP on 127.0.0.1) per test session, emptied for each test --------------------------

from tests.fakes import FakeGitHub, github_app_config  # noqa: E402

INSTALLATION = 4711  # the fake GitHub installation of org `acme` in the delivery tests


def app_with_github(make_app: MakeApp, fake: FakeGitHub, repos: list[str], **config: Any) -> Flask:
    """`make_app(**config)` with a GitHub App configured against `fake`, installed on `repos` of acme."""
    app = make_app(**{**config, **github_app_config(fake)})
    fake.add_installation(INSTALLATION, "acme", repos)
    return app


def org_with_installation(app: Flask) -> str:
    """The org `acme` blocking pull requests, its installation known; a token with every scope."""
    from app import db
    from app.models import Org
    from tests.factories import make_org, make_token

    make_org(app, block_action="block_pull")
    with app.app_context():
        session = db.session()
        session.execute(sa.update(Org).values(installation_id=INSTALLATION))
        session.commit()
    return make_token(app)


@pytest.fixture(scope="session")
def github_server() -> Iterator[FakeGitHub]:
    """The session's fake GitHub, serving on 127.0.0.1 until the session ends."""
    fake = FakeGitHub().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_github(github_server: FakeGitHub) -> Iterator[FakeGitHub]:
    """The session's fake GitHub, emptied of state and faults for this test."""
    github_server.reset()
    yield github_server


@pytest.fixture
def fake_github_config(fake_github: FakeGitHub) -> dict[str, str]:
    """create_app config overrides pointing the app's GitHub client at the fake (see tests.fakes.github_app_config)."""
    return github_app_config(fake_github)


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by playwright; skipped (failed in strict mode) when either is missing."""
    if not Path(CHROMIUM).exists():
        skip_or_fail(f"browser tests need Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("browser tests need the playwright package (pip install -r requirements-dev.txt)")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def live_server(app: Flask) -> Iterator[str]:
    """The app served over real HTTP on loopback (for the browser); its base URL, also its PUBLIC_URL."""
    import threading

    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    base = f"http://127.0.0.1:{server.server_port}"
    app.config["PUBLIC_URL"] = base
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield base
    server.shutdown()
    thread.join()


# -- the admin pages: signing a test client in ----------------------------------------------------------------------


def csrf_of(client: FlaskClient) -> str:
    """The CSRF token of `client`'s session (what the admin pages put in their forms)."""
    with client.session_transaction() as cookie:
        return cookie["csrf"]


def admin_login(app: Flask, client: FlaskClient, slug: str = "acme") -> str:
    """Sign `client` in to `slug`'s admin pages as a browser would, through a one-time login link; the session's
    CSRF token. The one way tests sign an admin in: only the tests of a sign-in path itself go their own way."""
    from app import db, orgs
    from app.admin import login_links
    from app.db import write_transaction

    with app.app_context():
        session = db.session()
        org = orgs.by_slug(session, slug)
        assert org is not None, f"make the org {slug!r} first (tests.factories.make_org)"
        with write_transaction(session):
            token = login_links.create(session, org, actor="test").token
    # The link's GET shows a button (and spends nothing); its POST, with the page's CSRF token, signs in.
    page = client.get(f"/admin/login/link/{token}")
    assert page.status_code == 200, page.get_data(as_text=True)
    response = client.post(f"/admin/login/link/{token}", data={"csrf_token": csrf_of(client)})
    assert response.status_code == 303, response.get_data(as_text=True)
    return csrf_of(client)


def pytest_configure(config: pytest.Config) -> None:
    if not paths.FIXTURES.is_dir():
        pytest.exit(
            f"the tests need the shared fixtures at {paths.FIXTURES}: keep shared/ beside this repository "
            "(as CI does), or set FREMFORGE_SHARED_DIR to it",
            returncode=4,
        )


# ---------------------------------------------------------------- logs

Capture = Callable[[str], io.StringIO]


@pytest.fixture
def capture() -> Iterator[Capture]:
    """`capture(format)`: the app's log handler (app.logs.install), writing to a buffer at INFO, as a process with no
    logging of its own (gunicorn, the flask CLI) gets it; removed afterwards. (pytest's own handlers keep
    create_app from installing it in tests.)"""
    root = logging.getLogger()
    level = root.level
    installed: list[logging.Handler] = []

    def install(log_format: str) -> io.StringIO:
        buffer = io.StringIO()
        installed.append(logs.install(log_format, buffer))
        return buffer

    yield install
    for handler in installed:
        root.removeHandler(handler)
    root.setLevel(level)
