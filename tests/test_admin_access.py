"""Who may see the admin pages: sessions, CSRF, one-time login links, and GitHub OAuth against the fake GitHub."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from app import db
from app.admin import login_links
from app.admin.sessions import hash_id
from app.admin.signin import safe_next, web_base_url
from app.models import AdminLoginLink, AdminSession, AuditEvent, utcnow
from tests.conftest import MakeApp, admin_login, csrf_of
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
def oauth_app(make_app: MakeApp, fake_github: FakeGitHub) -> Iterator[Flask]:
    """The app with the GitHub App (and its OAuth client id and secret) pointing at the fake GitHub."""
    app = make_app(**github_app_config(fake_github))
    make_org(app, "acme", "acme-gh")
    make_org(app, "other", "other-gh")
    yield app
    assert fake_github.invalid_requests == [] and fake_github.invalid_responses == []


@pytest.fixture
def oauth_client(oauth_app: Flask) -> FlaskClient:
    return oauth_app.test_client()


def location(response: TestResponse) -> str:
    assert response.status_code in (301, 302, 303, 307, 308), (response.status_code, response.get_data(as_text=True))
    return response.headers["Location"]


def text(response: TestResponse) -> str:
    return response.get_data(as_text=True)


def audit_events(app: Flask, action: str) -> list[AuditEvent]:
    with app.app_context():
        return list(db.session().scalars(sa.select(AuditEvent).where(AuditEvent.action == action)))


def login_url(runner: Any, *args: str) -> str:
    result = runner.invoke(args=["admin", "login-url", *args])
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()[-1]


def form_csrf(response: TestResponse) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', text(response))
    assert found, text(response)
    return found.group(1)


def open_link(client: FlaskClient, path: str, **kw: Any) -> TestResponse:
    """What a browser does with a one-time link: its GET shows a button; pressing it POSTs the page's CSRF token."""
    page = client.get(path, **kw)
    assert page.status_code == 200, text(page)
    return client.post(path, data={"csrf_token": form_csrf(page)}, **kw)


def session_record(app: Flask, client: FlaskClient) -> AdminSession:
    """The server-side record of the client's session cookie."""
    with client.session_transaction() as cookie:
        raw = cookie["sid"]
    with app.app_context():
        return db.session().scalars(sa.select(AdminSession).where(AdminSession.token_hash == hash_id(raw))).one()


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
    cookie = session_cookie(open_link(client, urlsplit(login_url(runner, "acme")).path))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Expires=" in cookie
    assert "Secure" not in cookie  # PUBLIC_URL is http://


def test_the_session_cookie_is_secure_behind_https(make_app: MakeApp) -> None:
    app = make_app(PUBLIC_URL="https://fremforge.example")
    make_org(app, "acme")
    url = login_url(app.test_cli_runner(), "acme")
    assert url.startswith("https://fremforge.example/admin/login/link/")
    browser = app.test_client()
    cookie = session_cookie(open_link(browser, urlsplit(url).path, base_url="https://fremforge.example"))
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert app.permanent_session_lifetime == timedelta(hours=12)


# -- one-time login links ---------------------------------------------------------------------------------------------


def test_a_login_link_works_once(app: Flask, client: FlaskClient, runner: Any, acme: None) -> None:
    result = runner.invoke(args=["admin", "login-url", "acme"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) >= 2 and "once" in result.output
    url = lines[-1]
    assert re.fullmatch(r"http://fremforge\.test/admin/login/link/[A-Za-z0-9_-]{43}", url)
    path = urlsplit(url).path
    first = open_link(client, path)
    assert first.status_code == 303 and location(first) == PAGE
    assert first.headers["Cache-Control"] == "no-store" and first.headers["Referrer-Policy"] == "no-referrer"
    assert client.get(PAGE).status_code == 200
    record = session_record(app, client)
    assert record.via == "link" and record.login == "login-link" and record.revoked_at is None
    assert record.expires_at - record.created_at == timedelta(hours=12)
    with client.session_transaction() as cookie:
        assert set(cookie) <= {"sid", "csrf", "_permanent", "_flashes"}  # the id, not who is signed in
    again = app.test_client().get(path)
    assert again.status_code == 403 and "used or has expired" in text(again) and again.mimetype == "text/html"
    other = app.test_client()
    other.get("/admin/login")  # any page: a cookie of its own
    with other.session_transaction() as cookie:
        cookie["csrf"] = "c"
    refused = other.post(path, data={"csrf_token": "c"})
    assert refused.status_code == 403 and "used or has expired" in text(refused)
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
    with client.session_transaction() as cookie:
        cookie["csrf"] = "c"
    assert client.post(path, data={"csrf_token": "c"}).status_code == 403
    assert urlsplit(location(client.get(PAGE))).path == "/admin/login"
    assert audit_events(app, "admin.signed_in") == []


def test_a_link_expires_on_the_databases_clock_whatever_the_hosts(
    app: Flask, client: FlaskClient, runner: Any, acme: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host whose clock is 15 minutes behind took a link 15 minutes past its expiry (review): the link's times
    are made and compared on the database's clock."""
    monkeypatch.setattr(login_links, "utcnow", lambda: utcnow() - timedelta(minutes=15), raising=False)
    path = urlsplit(login_url(runner, "acme", "--minutes", "1")).path
    with app.app_context():
        session = db.session()
        link = session.scalars(sa.select(AdminLoginLink)).one()
        assert link.expires_at - utcnow() > timedelta(seconds=30)  # a minute from the database's now, not 14 ago
        with db.write_transaction(session):
            session.execute(sa.update(AdminLoginLink).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert client.get(path).status_code == 403
    with client.session_transaction() as cookie:
        cookie["csrf"] = "c"
    assert client.post(path, data={"csrf_token": "c"}).status_code == 403
    assert audit_events(app, "admin.signed_in") == []


def test_a_session_lives_12_hours_by_the_databases_clock_whatever_the_hosts(
    app: Flask, client: FlaskClient, acme: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host 15 minutes behind made sessions that lived 12 h 15 min (review): the session's times are the
    database's, read with its record, so every host ends it at the same moment."""
    from app.admin import sessions

    monkeypatch.setattr(sessions, "utcnow", lambda: utcnow() - timedelta(minutes=15), raising=False)
    admin_login(app, client)
    with app.app_context():
        record = db.session().scalars(sa.select(AdminSession)).one()
        assert abs(record.created_at - utcnow()) < timedelta(minutes=1)
        with db.write_transaction(db.session()):  # its 12 hours over by the database's clock
            db.session().execute(sa.update(AdminSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert urlsplit(location(client.get(PAGE))).path == "/admin/login"


@pytest.mark.parametrize("token", ["nope", "A" * 43, "x" * 500])
def test_an_unknown_link_is_refused(client: FlaskClient, acme: None, token: str) -> None:
    assert client.get(f"/admin/login/link/{token}").status_code == 403
    with client.session_transaction() as cookie:
        cookie["csrf"] = "c"
    assert client.post(f"/admin/login/link/{token}", data={"csrf_token": "c"}).status_code == 403


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


def test_an_unknown_slug_is_never_echoed_into_a_command_to_copy(runner: Any, acme: None) -> None:
    """`orgs create nobody` is offered for a slug that could be one; what could not ('acme; rm -rf /') gets no
    command to paste into a shell."""
    assert "(create it with: orgs create nobody)" in runner.invoke(args=["admin", "login-url", "nobody"]).output
    result = runner.invoke(args=["admin", "login-url", "acme; rm -rf /"])
    assert result.exit_code == 1 and "orgs create" not in result.output, result.output
    assert "letters, digits and hyphens" in result.output


def test_login_url_without_public_url_points_at_the_local_server(make_app: MakeApp) -> None:
    app = make_app(PUBLIC_URL=None)
    make_org(app, "acme")
    result = app.test_cli_runner().invoke(args=["admin", "login-url", "acme"])
    assert "FREMFORGE_PUBLIC_URL is not set" in result.output
    assert result.output.strip().splitlines()[-1].startswith("http://127.0.0.1:8000/admin/login/link/")


def test_a_link_opened_twice_at_once_signs_in_once(app: Flask, runner: Any, acme: None) -> None:
    path = urlsplit(login_url(runner, "acme")).path
    barrier = threading.Barrier(6)
    statuses: list[int] = []

    def press() -> None:
        browser = app.test_client()
        csrf = form_csrf(browser.get(path))  # every browser sees the button ...
        barrier.wait()
        statuses.append(browser.post(path, data={"csrf_token": csrf}).status_code)  # ... one signs in

    threads = [threading.Thread(target=press) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [303] + [403] * 5
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
        assert "oauth" not in session
    record = session_record(oauth_app, oauth_client)
    assert (record.login, record.via, record.role_checked_at) == ("octo", "oauth", record.created_at)
    assert record.github_token and "ghu_" not in record.github_token  # sealed, not the token itself
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


def test_github_com_is_the_authorize_host_for_the_public_api(make_app: MakeApp) -> None:
    app = make_app(PUBLIC_URL="https://fremforge.example", GITHUB_CLIENT_ID="Iv1.abc", GITHUB_CLIENT_SECRET="shh")
    make_org(app, "acme")
    url = location(app.test_client().get("/admin/oauth/start?org=acme"))
    assert url.startswith("https://github.com/login/oauth/authorize?client_id=Iv1.abc&")
    assert "redirect_uri=https%3A%2F%2Ffremforge.example%2Fadmin%2Foauth%2Fcallback" in url


# -- sessions kept in the database (spec section 6) -------------------------------------------------------------------


class Clock:
    """The sessions' clock (app.admin.sessions.now), moved on by hand instead of waiting."""

    def __init__(self) -> None:
        self.start = self.now = utcnow()

    def at(self, **since_start: float) -> None:
        self.now = self.start + timedelta(**since_start)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    from app.admin import sessions

    c = Clock()
    monkeypatch.setattr(sessions, "now", lambda _database_time: c.now)
    return c


def copy_of(client: FlaskClient, app: Flask) -> FlaskClient:
    """Another browser holding a copy of `client`'s session cookie (as someone who stole it would)."""
    cookie = client.get_cookie("session")
    assert cookie is not None
    thief = app.test_client()
    thief.set_cookie("session", cookie.value)
    return thief


def sign_out(client: FlaskClient) -> None:
    assert location(client.post("/admin/logout", data={"csrf_token": csrf_of(client)})) == "/admin/login"


def token_names(app: Flask) -> list[str]:
    from app.models import ApiToken

    with app.app_context():
        return list(db.session().scalars(sa.select(ApiToken.name)))


def test_a_cookie_copied_before_signing_out_is_refused_after(app: Flask, client: FlaskClient, acme: None) -> None:
    admin_login(app, client)
    thief = copy_of(client, app)
    assert thief.get(PAGE).status_code == 200  # while the session lives, the copy is as good as the original
    stolen_csrf = csrf_of(thief)
    sign_out(client)
    replayed = thief.get(PAGE)
    assert urlsplit(location(replayed)).path == "/admin/login"
    assert "That session was signed out" in text(thief.get(location(replayed)))
    refused = copy_of(client, app)  # the signed-out browser's own cookie no longer names the session either
    assert urlsplit(location(refused.get(PAGE))).path == "/admin/login"
    # Nor can the copy change anything, with the CSRF token it had.
    settings_post = thief.post(SETTINGS, data={"block_action": "none", "csrf_token": stolen_csrf})
    assert urlsplit(location(settings_post)).path == "/admin/login"
    with app.app_context():
        [record] = db.session().scalars(sa.select(AdminSession))
        assert record.revoked_at is not None and record.revoked_reason == "signed_out"
    [event] = audit_events(app, "admin.signed_out")
    assert event.actor == "link:login-link" and event.details == {
        "via": "link",
        "user": "login-link",
        "reason": "signed_out",
    }


def test_a_github_session_copied_before_signing_out_is_refused_after(
    oauth_app: Flask, oauth_client: FlaskClient, fake_github: FakeGitHub
) -> None:
    fake_github.add_user("octo", {"acme-gh": "admin"})
    fake_github.oauth_login_as("octo")
    assert location(sign_in_with_github(oauth_client)) == PAGE
    thief = copy_of(oauth_client, oauth_app)
    assert thief.get(PAGE).status_code == 200
    sign_out(oauth_client)
    assert urlsplit(location(thief.get(PAGE))).path == "/admin/login"
    assert session_record_of_hash(oauth_app).github_token is None  # nothing left to unseal


def session_record_of_hash(app: Flask) -> AdminSession:
    with app.app_context():
        return db.session().scalars(sa.select(AdminSession)).one()


def test_a_session_lasts_12_hours_from_sign_in_however_much_it_is_used(
    app: Flask, client: FlaskClient, acme: None, clock: Clock
) -> None:
    admin_login(app, client)
    for hours in (1, 3, 6, 9, 11, 11.99):  # in use all along: that does not extend it
        clock.at(hours=hours)
        assert client.get(PAGE).status_code == 200, hours
    clock.at(hours=12)
    ended = client.get(PAGE)
    assert urlsplit(location(ended)).path == "/admin/login"
    assert "a session lasts 12 hours" in text(client.get(location(ended)))
    clock.at(hours=12, minutes=1)
    assert urlsplit(location(client.get(PAGE))).path == "/admin/login"
    # Signing in again starts a new 12 hours.
    admin_login(app, client)
    clock.at(hours=23)
    assert client.get(PAGE).status_code == 200


def test_the_session_cookie_holds_only_an_id(app: Flask, client: FlaskClient, acme: None) -> None:
    admin_login(app, client)
    with client.session_transaction() as cookie:
        raw = cookie["sid"]
        assert set(cookie) <= {"sid", "csrf", "_permanent", "_flashes"}
    record = session_record(app, client)
    assert record.token_hash == hashlib.sha256(raw.encode()).hexdigest() and raw not in record.token_hash
    with client.session_transaction() as cookie:
        cookie["sid"] = raw[:-1] + ("A" if raw[-1] != "A" else "B")  # an id of no session
    assert urlsplit(location(client.get(PAGE))).path == "/admin/login"


def signed_in_owner(client: FlaskClient, fake_github: FakeGitHub) -> None:
    fake_github.add_user("octo", {"acme-gh": "admin"})
    fake_github.oauth_login_as("octo")
    assert location(sign_in_with_github(client)) == PAGE
    assert len(membership_checks(fake_github)) == 1  # the sign-in's own


def membership_checks(fake_github: FakeGitHub) -> list[Any]:
    return fake_github.calls_to("GET", "^/user/memberships/orgs/acme-gh$")


@pytest.mark.parametrize("then", ["page", "settings-change"])
def test_an_owner_demoted_on_github_is_signed_out_within_15_minutes(
    oauth_app: Flask, oauth_client: FlaskClient, fake_github: FakeGitHub, clock: Clock, then: str
) -> None:
    signed_in_owner(oauth_client, fake_github)
    fake_github.add_user("octo", {"acme-gh": "member"})  # demoted on GitHub after signing in
    clock.at(minutes=14)
    assert oauth_client.get(PAGE).status_code == 200  # checked 14 minutes ago: not yet due
    assert len(membership_checks(fake_github)) == 1
    clock.at(minutes=16)
    if then == "page":
        response = oauth_client.get(PAGE)
    else:
        csrf = csrf_of(oauth_client)
        response = oauth_client.post(SETTINGS, data={"block_action": "none", "csrf_token": csrf})
    assert response.status_code == 403 and response.mimetype == "text/html", text(response)
    assert "no longer an owner" in text(response) and "is a member of acme-gh on GitHub, not an owner" in text(response)
    assert len(membership_checks(fake_github)) == 2
    assert urlsplit(location(oauth_client.get(PAGE))).path == "/admin/login"  # signed out
    record = session_record_of_hash(oauth_app)
    assert record.revoked_reason == "role_lost" and record.github_token is None
    [event] = audit_events(oauth_app, "admin.signed_out")
    assert event.actor == "oauth:octo" and event.details is not None and event.details["reason"] == "role_lost"
    assert [e.action for e in audit_events(oauth_app, "settings.changed")] == []


def test_the_role_is_checked_again_right_before_a_token_is_created(
    oauth_app: Flask, oauth_client: FlaskClient, fake_github: FakeGitHub
) -> None:
    signed_in_owner(oauth_client, fake_github)
    form = {"name": "ci", "scopes": "findings:write", "expires_days": "30"}
    created = oauth_client.post(PAGE + "/tokens", data={**form, "csrf_token": csrf_of(oauth_client)})
    assert created.status_code == 201, text(created)
    assert len(membership_checks(fake_github)) == 2  # asked again, a minute after signing in
    fake_github.add_user("octo", {})  # no longer in the org at all
    refused = oauth_client.post(PAGE + "/tokens", data={**form, "name": "ci-2", "csrf_token": csrf_of(oauth_client)})
    assert refused.status_code == 403 and "is not a member of acme-gh" in text(refused)
    assert token_names(oauth_app) == ["ci"]
    assert urlsplit(location(oauth_client.get(PAGE))).path == "/admin/login"


def test_an_owner_still_an_owner_is_asked_about_every_15_minutes(
    oauth_app: Flask, oauth_client: FlaskClient, fake_github: FakeGitHub, clock: Clock
) -> None:
    signed_in_owner(oauth_client, fake_github)
    expected = {0: 1, 10: 1, 15: 2, 20: 2, 29: 2, 30: 3, 44: 3, 46: 4}
    for minutes, checks in expected.items():
        clock.at(minutes=minutes)
        assert oauth_client.get(PAGE).status_code == 200, minutes
        assert len(membership_checks(fake_github)) == checks, minutes
    assert session_record_of_hash(oauth_app).role_checked_at == clock.start + timedelta(minutes=46)


def test_github_not_answering_a_role_check_shows_nothing_and_keeps_the_session(
    oauth_app: Flask, oauth_client: FlaskClient, fake_github: FakeGitHub, clock: Clock
) -> None:
    signed_in_owner(oauth_client, fake_github)
    clock.at(minutes=16)
    fake_github.fail("GET", "^/user/memberships/", 502)
    response = oauth_client.get(PAGE)
    assert response.status_code == 503 and response.headers["Retry-After"] == "60"
    assert "cannot be checked with GitHub" in text(response) and "Scans" not in text(response)
    csrf = csrf_of(oauth_client)
    fake_github.fail("GET", "^/user/memberships/", 502)
    assert oauth_client.post(SETTINGS, data={"block_action": "none", "csrf_token": csrf}).status_code == 503
    assert audit_events(oauth_app, "settings.changed") == []
    assert oauth_client.get(PAGE).status_code == 200  # GitHub answers again: confirmed, and on it goes


def test_a_rate_limited_role_check_keeps_the_session(
    oauth_app: Flask, oauth_client: FlaskClient, fake_github: FakeGitHub, clock: Clock
) -> None:
    signed_in_owner(oauth_client, fake_github)
    clock.at(minutes=16)
    fake_github.rate_limit("GET", "^/user/memberships/", retry_after=30)  # a 403, but no answer about the role
    assert oauth_client.get(PAGE).status_code == 503
    assert session_record_of_hash(oauth_app).revoked_at is None
    assert oauth_client.get(PAGE).status_code == 200


def test_a_user_token_github_no_longer_accepts_ends_the_session(
    oauth_app: Flask, oauth_client: FlaskClient, fake_github: FakeGitHub, clock: Clock
) -> None:
    signed_in_owner(oauth_client, fake_github)
    fake_github.user_tokens.clear()  # e.g. the user revoked the app's authorisation on GitHub
    clock.at(minutes=16)
    response = oauth_client.get(PAGE)
    assert response.status_code == 403 and "no longer accepts your sign-in" in text(response)
    assert session_record_of_hash(oauth_app).revoked_reason == "github_token_refused"
    assert urlsplit(location(oauth_client.get(PAGE))).path == "/admin/login"


def test_a_login_link_session_has_no_github_role_to_check(
    app: Flask, client: FlaskClient, acme: None, clock: Clock
) -> None:
    admin_login(app, client)
    clock.at(hours=5)
    assert client.get(PAGE).status_code == 200
    csrf = csrf_of(client)
    changed = client.post(SETTINGS, data={"block_action": "none", "retention_days": "30", "csrf_token": csrf})
    assert location(changed) == SETTINGS


# -- one-time links: spent by a POST only -----------------------------------------------------------------------------


def link_row(app: Flask) -> AdminLoginLink:
    with app.app_context():
        return db.session().scalars(sa.select(AdminLoginLink)).one()


def test_opening_a_link_spends_nothing_and_its_button_does(
    app: Flask, client: FlaskClient, runner: Any, acme: None
) -> None:
    path = urlsplit(login_url(runner, "acme")).path
    assert client.head(path).status_code == 200
    preview = app.test_client().get(path, headers={"User-Agent": "Slackbot-LinkExpanding 1.0"})
    assert preview.status_code == 200 and "Sign in to acme" in text(preview)
    assert preview.headers["Cache-Control"] == "no-store" and preview.headers["Referrer-Policy"] == "no-referrer"
    page = client.get(path)
    assert page.status_code == 200
    assert link_row(app).used_at is None and audit_events(app, "admin.signed_in") == []
    assert urlsplit(location(client.get(PAGE))).path == "/admin/login"  # looking signed no one in
    assert re.search(rf'<form method="post" action="{re.escape(path)}"', text(page))
    assert client.post(path, data={"csrf_token": "wrong"}).status_code == 400  # not without the page's token
    assert link_row(app).used_at is None
    signed_in = client.post(path, data={"csrf_token": form_csrf(page)})
    assert location(signed_in) == PAGE and client.get(PAGE).status_code == 200
    assert link_row(app).used_at is not None
    assert client.get(path).status_code == 403 and client.head(path).status_code == 403  # used now
