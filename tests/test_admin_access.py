"""Who may see the admin pages: sessions, CSRF, one-time login links, and GitHub OAuth against the fake GitHub."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from app import create_app, db
from app.admin.signin import safe_next, web_base_url
from app.models import AdminLoginLink, AuditEvent, utcnow
from tests.conftest import admin_login, empty_database
from tests.factories import make_org
from tests.fakes import FakeGitHub, github_app_config

PAGE = "/admin/orgs/acme/code-security/image-scanning"
SETTINGS = PAGE + "/settings"
CALLBACK = "http://fremforge.test/admin/oauth/callback"


@pytest.fixture
def acme(app: Flask) -> None:
    make_org(app, "acme", "acme-gh")
    make_org(app, "other", "other-gh")


@pytest.fixture
def oauth_app(database_url: str, tmp_path: Path, fake_github: FakeGitHub) -> Iterator[Flask]:
    """The app with the GitHub App (and its OAuth client id and secret) pointing at the fake GitHub."""
    app = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": database_url,
            "SECRET_KEY": "test-secret",
            "PUBLIC_URL": "http://fremforge.test",
            **github_app_config(fake_github),
        }
    )
    app.instance_path = str(tmp_path / "instance")
    make_org(app, "acme", "acme-gh")
    make_org(app, "other", "other-gh")
    yield app
    assert fake_github.invalid_requests == [] and fake_github.invalid_responses == []
    empty_database(app)
    app.extensions["fremforge.db"].engine.dispose()


@pytest.fixture
def oauth_client(oauth_app: Flask) -> FlaskClient:
    return oauth_app.test_client()


def location(response: TestResponse) -> str:
    assert response.status_code in (301, 302, 303, 307, 308), (response.status_code, response.get_data(as_text=True))
    return response.headers["Location"]


def text(response: TestResponse) -> str:
    return response.get_data(as_text=True)


def csrf_of(client: FlaskClient) -> str:
    with client.session_transaction() as session:
        return session["csrf"]


def audit_events(app: Flask, action: str) -> list[AuditEvent]:
    with app.app_context():
        return list(db.session().scalars(sa.select(AuditEvent).where(AuditEvent.action == action)))


def login_url(runner: Any, *args: str) -> str:
    result = runner.invoke(args=["admin", "login-url", *args])
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()[-1]


# -- sessions: no session, another org's, this org's ------------------------------------------------------------------


@pytest.mark.parametrize("path", [PAGE, SETTINGS, PAGE + "/tokens", "/admin/orgs/acme"])
def test_without_a_session_the_pages_redirect_to_sign_in(client: FlaskClient, acme: None, path: str) -> None:
    target = urlsplit(location(client.get(path)))
    assert target.path == "/admin/login"
    assert parse_qs(target.query) == {"next": [path]}  # and no bare "?" from an empty query string


def test_without_a_session_a_post_redirects_too_and_changes_nothing(client: FlaskClient, acme: None) -> None:
    assert urlsplit(location(client.post(SETTINGS, data={"block_action": "none"}))).path == "/admin/login"


@pytest.mark.parametrize(("signed_in_for", "expected"), [(None, 302), ("other", 403), ("acme", 200)])
def test_access_matrix(app: Flask, client: FlaskClient, acme: None, signed_in_for: str | None, expected: int) -> None:
    if signed_in_for:
        admin_login(app, client, signed_in_for)
    response = client.get(PAGE)
    assert response.status_code == expected, text(response)
    if expected == 403:
        assert response.mimetype == "text/html" and "another organisation" in text(response)


def test_without_oauth_the_sign_in_page_explains_the_login_link(client: FlaskClient, acme: None) -> None:
    page = text(client.get("/admin/login", query_string={"next": SETTINGS}))
    assert "flask --app wsgi admin login-url acme" in page  # no GitHub OAuth configured: the link explained
    assert "Sign in with GitHub" not in page


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (PAGE, PAGE),
        (PAGE + "?repo=a&status=failure", PAGE + "?repo=a&status=failure"),
        (PAGE + "?", PAGE),
        ("https://evil.example/admin/x", None),
        ("//evil.example/admin/x", None),
        ("/\\evil.example/admin/x", None),
        ("/admin/\\\\evil.example", None),
        ("/admin/x\r\nLocation: https://evil.example", None),
        ("javascript:alert(1)", None),
        ("/healthz", None),
        ("/admin/../healthz", None),
        ("/admin/login?next=/admin/x", None),
        ("/admin/oauth/start?org=acme", None),
        ("", None),
        (None, None),
    ],
)
def test_next_is_only_a_path_of_the_admin_pages(value: str | None, expected: str | None) -> None:
    assert safe_next(value) == expected


@pytest.mark.parametrize(
    ("api", "web"),
    [
        ("https://api.github.com", "https://github.com"),
        ("https://api.github.com/", "https://github.com"),
        ("https://ghe.example.com/api/v3", "https://ghe.example.com"),
        ("https://ghe.example.com/api/v3/", "https://ghe.example.com"),
        ("http://127.0.0.1:8765", "http://127.0.0.1:8765"),
    ],
)
def test_web_base_url_from_the_api_url(api: str, web: str) -> None:
    assert web_base_url(api) == web


# -- CSRF and signing out ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "", "wrong", "x" * 43])
def test_logout_without_the_right_csrf_token_is_refused(
    app: Flask, client: FlaskClient, acme: None, token: str | None
) -> None:
    admin_login(app, client)
    data = {} if token is None else {"csrf_token": token}
    response = client.post("/admin/logout", data=data)
    assert response.status_code == 400 and response.mimetype == "text/html"
    assert client.get(PAGE).status_code == 200  # still signed in


def test_logout_with_the_token_signs_out(app: Flask, client: FlaskClient, acme: None) -> None:
    admin_login(app, client)
    assert client.get("/admin/logout").status_code == 405  # a state change is a POST
    assert location(client.post("/admin/logout", data={"csrf_token": csrf_of(client)})) == "/admin/login"
    assert urlsplit(location(client.get(PAGE))).path == "/admin/login"
    assert "You are signed out." in text(client.get("/admin/login"))


def test_a_post_to_a_page_needs_the_csrf_token(app: Flask, client: FlaskClient, acme: None) -> None:
    admin_login(app, client)
    assert client.post(SETTINGS, data={"block_action": "none"}).status_code == 400
    assert client.post(SETTINGS, data={"block_action": "none", "csrf_token": "wrong"}).status_code == 400
    other = app.test_client()
    admin_login(app, other)
    stolen = csrf_of(other)  # another session's token is no good either
    assert client.post(SETTINGS, data={"block_action": "none", "csrf_token": stolen}).status_code == 400


def test_each_sign_in_gets_a_fresh_csrf_token(app: Flask, client: FlaskClient, acme: None) -> None:
    admin_login(app, client)
    first = csrf_of(client)
    admin_login(app, client)
    assert csrf_of(client) != first


# -- the session cookie -----------------------------------------------------------------------------------------------


def session_cookie(response: TestResponse) -> str:
    [cookie] = [c for c in response.headers.getlist("Set-Cookie") if c.startswith("session=")]
    return cookie


def test_the_session_cookie_is_httponly_lax_and_expires(
    app: Flask, client: FlaskClient, runner: Any, acme: None
) -> None:
    cookie = session_cookie(client.get(urlsplit(login_url(runner, "acme")).path))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Expires=" in cookie
    assert "Secure" not in cookie  # PUBLIC_URL is http://


def test_the_session_cookie_is_secure_behind_https(database_url: str, tmp_path: Path) -> None:
    app = create_app(
        {"TESTING": True, "DATABASE_URL": database_url, "SECRET_KEY": "s", "PUBLIC_URL": "https://fremforge.example"}
    )
    app.instance_path = str(tmp_path / "instance")
    try:
        make_org(app, "acme")
        url = login_url(app.test_cli_runner(), "acme")
        assert url.startswith("https://fremforge.example/admin/login/link/")
        cookie = session_cookie(app.test_client().get(urlsplit(url).path, base_url="https://fremforge.example"))
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
        assert app.permanent_session_lifetime == timedelta(hours=12)
    finally:
        empty_database(app)
        app.extensions["fremforge.db"].engine.dispose()


# -- one-time login links ---------------------------------------------------------------------------------------------


def test_a_login_link_works_once(app: Flask, client: FlaskClient, runner: Any, acme: None) -> None:
    result = runner.invoke(args=["admin", "login-url", "acme"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) >= 2 and "once" in result.output
    url = lines[-1]
    assert re.fullmatch(r"http://fremforge\.test/admin/login/link/[A-Za-z0-9_-]{43}", url)
    path = urlsplit(url).path
    first = client.get(path)
    assert location(first) == PAGE
    assert first.headers["Cache-Control"] == "no-store" and first.headers["Referrer-Policy"] == "no-referrer"
    assert client.get(PAGE).status_code == 200
    with client.session_transaction() as session:
        assert session["admin"]["org"] == "acme" and session["admin"]["via"] == "link"
        assert session["admin"]["user"] == "login-link" and re.fullmatch(r"\d{4}-.*Z", session["admin"]["at"])
    again = app.test_client().get(path)
    assert again.status_code == 403 and "used or has expired" in text(again) and again.mimetype == "text/html"
    [event] = audit_events(app, "admin.signed_in")
    assert event.actor == "link:login-link" and event.details is not None and event.details["via"] == "link"
    assert len(audit_events(app, "admin.login_link_created")) == 1


def test_only_the_hash_of_a_link_is_stored(app: Flask, runner: Any, acme: None) -> None:
    token = login_url(runner, "acme").rsplit("/", 1)[1]
    with app.app_context():
        [link] = db.session().scalars(sa.select(AdminLoginLink))
        assert link.token_hash == hashlib.sha256(token.encode()).hexdigest()
        assert timedelta(minutes=9) < link.expires_at - link.created_at <= timedelta(minutes=10)
        assert link.used_at is None


def test_an_expired_link_is_refused(app: Flask, client: FlaskClient, runner: Any, acme: None) -> None:
    path = urlsplit(login_url(runner, "acme", "--minutes", "60")).path
    with app.app_context():
        session = db.session()
        with db.write_transaction(session):
            session.execute(sa.update(AdminLoginLink).values(expires_at=utcnow() - timedelta(seconds=1)))
    response = client.get(path)
    assert response.status_code == 403 and "used or has expired" in text(response)
    assert urlsplit(location(client.get(PAGE))).path == "/admin/login"
    assert audit_events(app, "admin.signed_in") == []


@pytest.mark.parametrize("token", ["nope", "A" * 43, "x" * 500])
def test_an_unknown_link_is_refused(client: FlaskClient, acme: None, token: str) -> None:
    assert client.get(f"/admin/login/link/{token}").status_code == 403


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["login-url", "nobody"], "there is no organisation"),
        (["login-url", "acme", "--minutes", "61"], "61"),
        (["login-url", "acme", "--minutes", "0"], "0"),
    ],
)
def test_login_url_refuses(runner: Any, acme: None, args: list[str], message: str) -> None:
    result = runner.invoke(args=["admin", *args])
    assert result.exit_code != 0 and message in result.output


def test_login_url_without_public_url_points_at_the_local_server(database_url: str, tmp_path: Path) -> None:
    app = create_app({"TESTING": True, "DATABASE_URL": database_url, "SECRET_KEY": "s"})
    app.instance_path = str(tmp_path / "instance")
    try:
        make_org(app, "acme")
        result = app.test_cli_runner().invoke(args=["admin", "login-url", "acme"])
        assert "FREMFORGE_PUBLIC_URL is not set" in result.output
        assert result.output.strip().splitlines()[-1].startswith("http://127.0.0.1:8000/admin/login/link/")
    finally:
        empty_database(app)
        app.extensions["fremforge.db"].engine.dispose()


def test_a_link_opened_twice_at_once_signs_in_once(app: Flask, runner: Any, acme: None) -> None:
    path = urlsplit(login_url(runner, "acme")).path
    barrier = threading.Barrier(6)
    statuses: list[int] = []

    def open_link() -> None:
        browser = app.test_client()
        barrier.wait()
        statuses.append(browser.get(path).status_code)

    threads = [threading.Thread(target=open_link) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [302] + [403] * 5
    assert len(audit_events(app, "admin.signed_in")) == 1


# -- GitHub OAuth against the fake GitHub -----------------------------------------------------------------------------


def start(client: FlaskClient, org: str = "acme", next_path: str | None = None) -> str:
    """/admin/oauth/start: the authorize URL on "github.com" it redirects to."""
    query = {"org": org} | ({"next": next_path} if next_path else {})
    return location(client.get("/admin/oauth/start", query_string=query))


def approve(authorize_url: str) -> str:
    """What the browser does on GitHub: the authorize page redirects back to the callback; its path and query."""
    answer = httpx.get(authorize_url, follow_redirects=False)
    assert answer.status_code == 302, answer.text
    back = urlsplit(answer.headers["location"])
    assert f"{back.scheme}://{back.netloc}{back.path}" == CALLBACK
    return f"{back.path}?{back.query}"


def sign_in_with_github(client: FlaskClient, org: str = "acme", next_path: str | None = None) -> TestResponse:
    return client.get(approve(start(client, org, next_path)))


def test_oauth_start_redirects_to_github_with_the_app_client_and_a_state(
    oauth_client: FlaskClient, fake_github: FakeGitHub
) -> None:
    url = urlsplit(start(oauth_client))
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{fake_github.url}/login/oauth/authorize"
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert query["client_id"] == fake_github.client_id and query["redirect_uri"] == CALLBACK
    assert query["scope"] == "read:org" and len(query["state"]) >= 32
    with oauth_client.session_transaction() as session:
        assert session["oauth"]["state"] == query["state"] and session["oauth"]["org"] == "acme"
    second = {k: v[0] for k, v in parse_qs(urlsplit(start(oauth_client)).query).items()}
    assert second["state"] != query["state"]


def test_an_owner_signs_in_with_github(oauth_app: Flask, oauth_client: FlaskClient, fake_github: FakeGitHub) -> None:
    fake_github.add_user("octo", {"acme-gh": "admin"})
    fake_github.oauth_login_as("octo")
    assert location(sign_in_with_github(oauth_client)) == PAGE
    assert oauth_client.get(PAGE).status_code == 200
    with oauth_client.session_transaction() as session:
        assert session["admin"]["org"] == "acme" and session["admin"]["user"] == "octo"
        assert session["admin"]["via"] == "oauth" and "oauth" not in session
    [exchange] = fake_github.calls_to("POST", "^/login/oauth/access_token$")
    assert exchange.json["client_id"] == fake_github.client_id and exchange.json["redirect_uri"] == CALLBACK
    [membership] = fake_github.calls_to("GET", "^/user/memberships/orgs/")
    assert membership.path == "/user/memberships/orgs/acme-gh"  # the org's GitHub login, not its slug
    [event] = audit_events(oauth_app, "admin.signed_in")
    assert event.actor == "oauth:octo" and event.details == {"via": "oauth", "user": "octo"}
    assert oauth_client.get("/admin/orgs/other/code-security/image-scanning").status_code == 403


def test_after_signing_in_github_sends_you_back_to_next(oauth_client: FlaskClient, fake_github: FakeGitHub) -> None:
    fake_github.add_user("octo", {"acme-gh": "admin"})
    fake_github.oauth_login_as("octo")
    assert location(sign_in_with_github(oauth_client, next_path=SETTINGS + "?x=1")) == SETTINGS + "?x=1"
    other_org_page = "/admin/orgs/other/code-security/image-scanning"
    assert location(sign_in_with_github(oauth_client, next_path=other_org_page)) == PAGE
    assert location(sign_in_with_github(oauth_client, next_path="https://evil.example/admin/")) == PAGE


@pytest.mark.parametrize(
    ("memberships", "pending", "says"),
    [
        ({"acme-gh": "member"}, [], "is a member of acme-gh on GitHub, not an owner"),
        ({"acme-gh": "billing_manager"}, [], "is a billing_manager of acme-gh"),
        ({"acme-gh": "admin"}, ["acme-gh"], "invitation to acme-gh is pending"),
        ({"other-gh": "admin"}, [], "is not a member of acme-gh"),
        ({}, [], "is not a member of acme-gh"),
    ],
    ids=["member", "billing-manager", "pending-admin", "another-orgs-admin", "no-org"],
)
def test_only_an_active_owner_of_the_org_signs_in(
    oauth_app: Flask,
    oauth_client: FlaskClient,
    fake_github: FakeGitHub,
    memberships: dict[str, str],
    pending: list[str],
    says: str,
) -> None:
    fake_github.add_user("octo", memberships, pending=pending)
    fake_github.oauth_login_as("octo")
    response = sign_in_with_github(oauth_client)
    assert response.status_code == 403 and response.mimetype == "text/html"
    assert says in text(response)
    assert urlsplit(location(oauth_client.get(PAGE))).path == "/admin/login"  # no session
    assert audit_events(oauth_app, "admin.signed_in") == []


def test_a_state_that_does_not_match_is_refused(oauth_client: FlaskClient, fake_github: FakeGitHub) -> None:
    fake_github.add_user("octo", {"acme-gh": "admin"})
    fake_github.oauth_login_as("octo")
    callback = approve(start(oauth_client))
    forged = re.sub(r"state=[^&]+", "state=forged", callback)
    response = oauth_client.get(forged)
    assert response.status_code == 400 and "does not belong" in text(response)
    assert oauth_client.get(callback).status_code == 400  # the attempt was spent by the forged answer
    assert fake_github.calls_to("POST", "/login/oauth/access_token") == []  # no code exchanged


def test_a_callback_without_a_started_sign_in_or_twice_is_refused(
    oauth_app: Flask, oauth_client: FlaskClient, fake_github: FakeGitHub
) -> None:
    fake_github.add_user("octo", {"acme-gh": "admin"})
    fake_github.oauth_login_as("octo")
    callback = approve(start(oauth_client))
    assert oauth_app.test_client().get(callback).status_code == 400  # another browser: no state in its session
    assert location(oauth_client.get(callback)) == PAGE
    assert oauth_client.get(callback).status_code == 400  # replayed
    assert oauth_client.get("/admin/oauth/callback?code=x").status_code == 400


def test_cancelling_on_github_is_a_403(oauth_client: FlaskClient, fake_github: FakeGitHub) -> None:
    fake_github.add_user("octo", {"acme-gh": "admin"})
    fake_github.oauth_login_as("octo", approve=False)
    response = sign_in_with_github(oauth_client)
    assert response.status_code == 403 and "denied" in text(response)
    assert fake_github.calls_to("POST", "/login/oauth/access_token") == []


@pytest.mark.parametrize(
    ("fault", "status", "says"),
    [
        (("POST", "^/login/oauth/access_token$", 500), 502, "GitHub answered 500"),
        (("GET", "^/user$", 503), 502, "GitHub answered 503"),
        (("GET", "^/user/memberships/", 502), 502, "GitHub answered 502"),
        (("GET", "^/user/memberships/", 403), 403, "refused to show your membership"),
    ],
    ids=["exchange-500", "user-503", "membership-502", "membership-403"],
)
def test_github_errors_are_explained(
    oauth_client: FlaskClient, fake_github: FakeGitHub, fault: tuple[str, str, int], status: int, says: str
) -> None:
    fake_github.add_user("octo", {"acme-gh": "admin"})
    fake_github.oauth_login_as("octo")
    callback = approve(start(oauth_client))
    method, path, code = fault
    fake_github.fail(method, path, code)
    response = oauth_client.get(callback)
    assert response.status_code == status and says in text(response), text(response)
    assert urlsplit(location(oauth_client.get(PAGE))).path == "/admin/login"


def test_an_answer_not_shaped_as_documented_is_a_502(oauth_client: FlaskClient, fake_github: FakeGitHub) -> None:
    fake_github.add_user("octo", {"acme-gh": "admin"})
    fake_github.oauth_login_as("octo")
    callback = approve(start(oauth_client))
    fake_github.fail("GET", "^/user$", 200, json={"login": ["not", "a", "login"]})
    response = oauth_client.get(callback)
    assert response.status_code == 502 and "not understood" in text(response)


def test_a_code_github_does_not_accept_is_a_502(
    oauth_app: Flask, oauth_client: FlaskClient, fake_github: FakeGitHub
) -> None:
    fake_github.add_user("octo", {"acme-gh": "admin"})
    fake_github.oauth_login_as("octo")
    callback = approve(start(oauth_client))
    fake_github.oauth_codes.clear()  # e.g. it expired
    response = oauth_client.get(callback)
    assert response.status_code == 502 and "The code passed is incorrect or expired." in text(response)


def test_a_wrong_client_secret_is_a_502(oauth_app: Flask, fake_github: FakeGitHub) -> None:
    oauth_app.config["GITHUB_CLIENT_SECRET"] = "not-the-secret"
    fake_github.add_user("octo", {"acme-gh": "admin"})
    fake_github.oauth_login_as("octo")
    response = sign_in_with_github(oauth_app.test_client())
    assert response.status_code == 502 and "client_id and/or client_secret" in text(response)


def test_github_not_answering_is_a_502(oauth_app: Flask, fake_github: FakeGitHub) -> None:
    oauth_app.config["GITHUB_TIMEOUT_SECONDS"] = 0.2
    fake_github.add_user("octo", {"acme-gh": "admin"})
    fake_github.oauth_login_as("octo")
    client = oauth_app.test_client()
    callback = approve(start(client))
    fake_github.timeout("GET", "^/user$", seconds=1.0)
    response = client.get(callback)
    assert response.status_code == 502 and "did not answer in time" in text(response)


def test_oauth_start_needs_a_known_org(oauth_client: FlaskClient) -> None:
    missing = oauth_client.get("/admin/oauth/start")
    assert missing.status_code == 400 and "Enter the organisation" in text(missing)
    unknown = oauth_client.get("/admin/oauth/start", query_string={"org": "nobody", "next": PAGE})
    assert unknown.status_code == 404 and "no organisation &#39;nobody&#39;" in text(unknown)
    assert f'name="next" value="{PAGE}"' in text(unknown)


def test_the_sign_in_page_offers_github_when_configured(oauth_client: FlaskClient) -> None:
    page = text(oauth_client.get("/admin/login", query_string={"next": SETTINGS}))
    assert "Sign in with GitHub" in page and 'action="/admin/oauth/start"' in page
    assert 'name="org" value="acme"' in page  # taken from next
    assert f'name="next" value="{SETTINGS}"' in page
    evil = text(oauth_client.get("/admin/login", query_string={"next": "https://evil.example/admin/"}))
    assert "evil.example" not in evil and 'name="next"' not in evil


def test_without_oauth_credentials_start_explains_the_login_link(client: FlaskClient, acme: None) -> None:
    response = client.get("/admin/oauth/start", query_string={"org": "acme"})
    assert response.status_code == 404 and "flask --app wsgi admin login-url acme" in text(response)


def test_github_com_is_the_authorize_host_for_the_public_api(database_url: str, tmp_path: Path) -> None:
    app = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": database_url,
            "SECRET_KEY": "s",
            "PUBLIC_URL": "https://fremforge.example",
            "GITHUB_CLIENT_ID": "Iv1.abc",
            "GITHUB_CLIENT_SECRET": "shh",
        }
    )
    app.instance_path = str(tmp_path / "instance")
    try:
        make_org(app, "acme")
        url = location(app.test_client().get("/admin/oauth/start?org=acme"))
        assert url.startswith("https://github.com/login/oauth/authorize?client_id=Iv1.abc&")
        assert "redirect_uri=https%3A%2F%2Ffremforge.example%2Fadmin%2Foauth%2Fcallback" in url
    finally:
        empty_database(app)
        app.extensions["fremforge.db"].engine.dispose()
