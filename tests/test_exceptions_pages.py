"""The exceptions page of Admin → Code security → Image scanning (spec sections 6 and 10): the list by state, the
create form (also opened prefilled from a finding's row on a scan's page) with its errors beside each field, revoking
by a POST, and the excepted findings shown with the exception's reason and expiry."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.datastructures import MultiDict

from app.admin import exceptions_page
from app.models import AuditEvent, Finding, PolicyException, utcnow
from tests.conftest import admin_login, csrf_of
from tests.factories import REPO, census, finding, make_org, make_token, post, seed, set_policy
from tests.test_admin_pages import _Form, run_sql, scalars, table, text_of

BASE = "/admin/orgs/acme/code-security/image-scanning"
PAGE = BASE + "/exceptions"
IMAGE = "ghcr.io/acme/api"
HEADINGS = ["Advisory", "Applies to", "Reason", "Expires", "Created", "Revoked", "State", "Actions"]


@pytest.fixture
def token(app: Flask) -> str:
    make_org(app)
    return make_token(app)


@pytest.fixture
def admin(app: Flask, client: FlaskClient, token: str) -> FlaskClient:
    admin_login(app, client)
    return client


@pytest.fixture
def csrf(admin: FlaskClient) -> str:
    return csrf_of(admin)


def days_ahead(n: int) -> str:
    return (utcnow().date() + timedelta(days=n)).isoformat()


def api_create(client: FlaskClient, token: str, **body: Any) -> dict[str, Any]:
    doc = {"advisory_id": "CVE-2024-0001", "reason": "not reachable", "expires_at": days_ahead(30), **body}
    r = client.post("/api/v1/orgs/acme/exceptions", json=doc, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201, r.json
    return r.json


def api_revoke(client: FlaskClient, token: str, exception_id: int) -> None:
    r = client.delete(f"/api/v1/orgs/acme/exceptions/{exception_id}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.json


def get(client: FlaskClient, url: str) -> str:
    r = client.get(url)
    assert r.status_code == 200, r.text[:2000]
    return r.text


def listed(html: str) -> list[dict[str, Any]]:
    """The exceptions table as {heading: cell text}, plus the cells' links under "_links"."""
    t = table(html, "exceptions")
    head = t["head"]
    assert head == HEADINGS
    rows = []
    for row in t["rows"]:
        texts, links = [text for text, _ in row], [ls for _, ls in row]
        rows.append(dict(zip(head, texts, strict=True)) | {"_links": dict(zip(head, links, strict=True))})
    return rows


def valid_form(csrf: str, **fields: str) -> dict[str, str]:
    return {
        "csrf_token": csrf,
        "advisory_id": "CVE-2024-0001",
        "package_name": "openssl",
        "repo_full_name": REPO,
        "image": IMAGE,
        "reason": "Only reachable through the admin CLI, which is not deployed.",
        "ticket_url": "https://tracker.example/SEC-42",
        "expires_at": days_ahead(30),
        **fields,
    }


def upload(client: FlaskClient, token: str, findings: list[dict[str, Any]], **kw: Any) -> int:
    r = post(client, token, seed(findings, image_ref=f"{IMAGE}:1", **kw))
    assert r.status_code == 202, r.json
    return r.json["scan_run_id"]


def gate_cells(html: str) -> dict[str, tuple[str, list[str]]]:
    """Advisory id -> (text, links) of the finding's gate cell on a scan's page; the text as it reads (the table
    parser puts a space between elements, taken out again before punctuation)."""
    t = table(html, "findings")
    gate = t["head"].index("Gate")
    return {row[1][0].split()[0]: (as_read(row[gate][0]), row[gate][1]) for row in t["rows"]}


def as_read(text: str) -> str:
    return re.sub(r"“ ", "“", re.sub(r" ([,:”])", r"\1", text))


def accept_links(html: str) -> dict[str, list[str]]:
    """Advisory id -> the links of the finding row's last cell (its actions)."""
    return {row[1][0].split()[0]: row[-1][1] for row in table(html, "findings")["rows"]}


# ---------------------------------------------------------------- access


@pytest.mark.parametrize("path", ["/exceptions", "/exceptions?advisory_id=CVE-1"])
def test_without_a_session_it_redirects_to_sign_in_and_another_orgs_session_gets_403(app, client, token, path):
    r = client.get(BASE + path)
    assert r.status_code == 302 and "/admin/login" in r.headers["Location"]
    make_org(app, "other")
    admin_login(app, client, "other")
    assert client.get(BASE + path).status_code == 403


def test_the_section_nav_links_the_page(admin):
    html = get(admin, BASE)
    assert f'<a href="{PAGE}">Exceptions</a>' in html
    assert f'<a href="{PAGE}" aria-current="page">Exceptions</a>' in get(admin, PAGE)


# ---------------------------------------------------------------- the list


def test_the_list_by_state_with_every_column(app, admin, token):
    active = api_create(
        admin,
        token,
        advisory_id="CVE-2024-0001",
        package_name="openssl",
        repo_full_name="Acme/API",
        image="ghcr.io/acme/*",
        ticket_url="https://tracker.example/SEC-1",
    )
    revoked = api_create(admin, token, advisory_id="GHSA-aaaa-bbbb-cccc", reason="a false positive")
    expired = api_create(admin, token, advisory_id="CVE-2023-9999", reason="vendor says not affected")
    api_revoke(admin, token, revoked["id"])
    run_sql(app, sa.update(PolicyException).where(PolicyException.id == expired["id"]).values(expires_at=utcnow()))

    html = get(admin, PAGE)  # active by default
    assert re.search(r'aria-current="true">Active <span class="count">1</span>', html)
    assert 'Expired <span class="count">1</span>' in html and 'Revoked <span class="count">1</span>' in html
    [row] = listed(html)
    assert row["Advisory"] == f"CVE-2024-0001 exception {active['id']} · Images with it (CVE-2024-0001)"
    assert row["Applies to"] == "package openssl repository acme/api image ghcr.io/acme/*"
    assert row["Reason"] == "not reachable ticket: https://tracker.example/SEC-1"
    assert row["_links"]["Reason"] == ["https://tracker.example/SEC-1"]
    assert re.search(r'<a href="https://tracker.example/SEC-1" rel="noopener noreferrer"', html)
    assert row["Expires"] == f"{days_ahead(30)} 00:00 UTC"
    assert row["Created"].endswith("UTC by token:1 (test) · via api")
    assert (row["Revoked"], row["State"], row["Actions"]) == ("—", "active", "Revoke")
    assert f'action="{PAGE}/{active["id"]}/revoke"' in html

    [row] = listed(get(admin, PAGE + "?state=revoked"))
    assert row["Advisory"].startswith("GHSA-aaaa-bbbb-cccc")
    assert row["Applies to"] == "every package, repository and image"
    assert row["Revoked"].endswith("UTC by token:1 (test)")
    assert (row["State"], row["Actions"]) == ("revoked", "")

    [row] = listed(get(admin, PAGE + "?state=expired"))
    assert (row["Advisory"].split()[0], row["Reason"], row["State"], row["Actions"]) == (
        "CVE-2023-9999",
        "vendor says not affected",
        "expired",
        "",
    )
    # An unknown state is the default tab; a state with none says so.
    assert [r["State"] for r in listed(get(admin, PAGE + "?state=bogus"))] == ["active"]
    run_sql(app, sa.update(PolicyException).values(revoked_at=utcnow(), revoked_by="test"))
    assert "No active exceptions." in text_of(get(admin, PAGE))


def test_the_list_is_newest_first_and_paged(app, admin, token, monkeypatch):
    monkeypatch.setattr(exceptions_page, "EXCEPTIONS_PER_PAGE", 2)
    ids = [api_create(admin, token, advisory_id=f"CVE-2024-{n:04d}")["id"] for n in range(5)]
    seen: list[str] = []
    url = PAGE
    while url:
        html = get(admin, url)
        seen += [row["Advisory"].split()[2] for row in listed(html)]
        older = re.search(r'<a href="([^"]+)" rel="next">Older →</a>', html)
        url = older.group(1).replace("&amp;", "&") if older else ""
    assert seen == [str(i) for i in reversed(ids)]
    assert admin.get(PAGE + "?before=x").status_code == 400
    assert "No more active exceptions." in text_of(get(admin, PAGE + f"?before={min(ids)}"))


# ---------------------------------------------------------------- create


def test_a_created_exception_is_listed_and_an_audit_event(app, admin, csrf):
    form = valid_form(csrf)
    r = admin.post(PAGE, data=form)
    assert r.status_code == 303
    assert r.headers["Location"].endswith(PAGE)
    [row] = scalars(app, sa.select(PolicyException))
    assert (row.advisory_id, row.package_name, row.repo_full_name, row.image) == (
        "CVE-2024-0001",
        "openssl",
        REPO,
        IMAGE,
    )
    assert (row.reason, row.ticket_url, row.source, row.created_by) == (
        form["reason"],
        form["ticket_url"],
        "admin",
        "link:login-link",
    )
    assert row.expires_at == utcnow().replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=30)

    html = get(admin, r.headers["Location"])
    assert f"Created exception {row.id}: CVE-2024-0001 in openssl in acme/api for {IMAGE}, until" in text_of(html)
    [shown] = listed(html)
    assert shown["Advisory"] == f"CVE-2024-0001 exception {row.id} · Images with it (CVE-2024-0001)"
    assert shown["Created"].endswith("by link:login-link · via admin")

    [event] = scalars(app, sa.select(AuditEvent).where(AuditEvent.action == "exception.created"))
    assert event.actor == "link:login-link"
    assert event.details["exception_id"] == row.id and event.details["reason"] == form["reason"]
    audit = text_of(get(admin, BASE + "/audit"))
    assert "Exception created" in audit
    assert f"Exception: {row.id}" in audit and "Advisory: CVE-2024-0001" in audit and f"Image: {IMAGE}" in audit


def test_optional_fields_left_empty_cover_everything(app, admin, csrf):
    form = valid_form(csrf, package_name=" ", repo_full_name="", image="", ticket_url="")
    assert admin.post(PAGE, data=form).status_code == 303
    [row] = scalars(app, sa.select(PolicyException))
    assert (row.package_name, row.repo_full_name, row.image, row.ticket_url) == (None, None, None, None)
    assert listed(get(admin, PAGE))[0]["Applies to"] == "every package, repository and image"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("advisory_id", "", "Enter the advisory id"),
        ("advisory_id", "  ", "Enter the advisory id"),
        ("advisory_id", "FREMFORGE-UNSIGNED-IMAGE", "FREMFORGE- ids are the app's own signing findings"),
        ("advisory_id", "CVE-1 CVE-2", "An advisory id has no spaces"),
        ("advisory_id", "C" * 1025, "at most 1024 characters"),
        ("package_name", "p" * 1025, "A package name is at most 1024 characters"),
        ("repo_full_name", "not a repo", "Enter a repository as owner/name"),
        ("image", "ghcr.io/acme/api:1.0", "without a tag or digest"),
        ("image", "ghcr.io/acme/api@sha256:00", "without a tag or digest"),
        ("reason", "", "Say why this risk is accepted"),
        ("reason", "r" * 2001, "A reason is at most 2,000 characters."),
        ("ticket_url", "http://tracker.example/SEC-1", "Enter an https:// link"),
        ("ticket_url", "javascript:alert(1)", "Enter an https:// link"),
        ("expires_at", "", "Enter the date it expires"),
        ("expires_at", "next week", "Enter the date it expires"),
        ("expires_at", "2020-01-01", "Choose a date in the future"),
        ("expires_at", "today", "Choose a date in the future"),
        ("expires_at", "far", "Choose a date at most 365 days ahead"),
    ],
)
def test_a_bad_field_is_422_with_its_error_beside_it_and_nothing_stored(app, admin, csrf, field, value, message):
    value = {"today": days_ahead(0), "far": days_ahead(366)}.get(value, value)
    before = census(app)
    form = valid_form(csrf, **{field: value})
    r = admin.post(PAGE, data=form)
    assert r.status_code == 422
    assert census(app) == before
    errors = re.findall(r'<p class="field-error" id="([a-z_]+)-error">(.*?)</p>', r.text, re.S)
    assert [name for name, _ in errors] == [field], errors  # only this field, beside it
    assert message in text_of(errors[0][1])
    tag = "textarea" if field == "reason" else "input"
    assert re.search(rf'<{tag} id="{field}"[^>]*aria-invalid="true"[^>]*aria-describedby="{field}-error', r.text)
    # The error sits in the field's own block, just before its input.
    block = re.search(rf'<div class="field">\s*<label for="{field}">(.*?)</div>', r.text, re.S)
    assert block is not None and f'id="{field}-error"' in block.group(1)
    assert "Nothing was changed" in text_of(r.text)
    assert f'<a href="#{field}">{exceptions_page.LABELS[field]}:' in r.text  # the summary links the field
    # Every value is kept as typed, to correct.
    page = _Form()
    page.feed(r.text)
    kept = dict(page.data)
    for name in exceptions_page.FIELDS:
        assert kept[name].strip() == form[name].strip(), name


def test_a_create_without_the_csrf_token_is_400_and_stores_nothing(app, admin, csrf):
    before = census(app)
    for token in (None, "", "wrong"):
        data = {k: v for k, v in valid_form(csrf).items() if k != "csrf_token"}
        if token is not None:
            data["csrf_token"] = token
        r = admin.post(PAGE, data=data)
        assert r.status_code == 400 and "CSRF" in r.text
    assert census(app) == before


# ---------------------------------------------------------------- revoke


def test_revoke_is_a_post_with_the_csrf_token(app, admin, csrf, token):
    made = api_create(admin, token)
    url = f"{PAGE}/{made['id']}/revoke"
    html = get(admin, PAGE)
    assert re.search(
        rf'<form method="post" action="{re.escape(url)}" class="inline">\s*'
        rf'<input type="hidden" name="csrf_token" value="{csrf}">',
        html,
    )
    before = census(app)
    assert admin.get(url).status_code == 405  # no GET side effects
    for bad in ({}, {"csrf_token": ""}, {"csrf_token": "wrong"}):
        r = admin.post(url, data=bad)
        assert r.status_code == 400 and "CSRF" in r.text
    assert census(app) == before
    assert [r["State"] for r in listed(get(admin, PAGE))] == ["active"]

    r = admin.post(url, data={"csrf_token": csrf})
    assert r.status_code == 303 and r.headers["Location"].endswith(PAGE)
    page = get(admin, r.headers["Location"])
    assert f"Revoked exception {made['id']}: CVE-2024-0001 blocks again" in text_of(page)
    assert "No active exceptions." in text_of(page)
    [row] = listed(get(admin, PAGE + "?state=revoked"))
    assert row["State"] == "revoked" and row["Revoked"].endswith("by link:login-link")
    [event] = scalars(app, sa.select(AuditEvent).where(AuditEvent.action == "exception.revoked"))
    assert event.actor == "link:login-link" and event.details["exception_id"] == made["id"]

    # Again: nothing changes. Another org's exception, or none, is not found.
    r = admin.post(url, data={"csrf_token": csrf})
    assert "was revoked already" in text_of(get(admin, r.headers["Location"]))
    assert len(scalars(app, sa.select(AuditEvent).where(AuditEvent.action == "exception.revoked"))) == 1
    make_org(app, "other")
    theirs = make_token(app, "other")
    r = admin.post(
        "/api/v1/orgs/other/exceptions",
        json={"advisory_id": "CVE-1", "reason": "x", "expires_at": days_ahead(3)},
        headers={"Authorization": f"Bearer {theirs}"},
    )
    assert r.status_code == 201
    for other in (r.json["id"], 424242, 99999999999):
        assert admin.post(f"{PAGE}/{other}/revoke", data={"csrf_token": csrf}).status_code == 404
    assert scalars(app, sa.select(PolicyException.revoked_at).where(PolicyException.id == r.json["id"])) == [None]


# ---------------------------------------------------------------- from a scan's page


def test_a_findings_row_opens_the_form_prefilled_and_nothing_is_made_until_the_post(app, admin, token, csrf):
    set_policy(app, "acme", block_action="block_pull", require_signed=True)
    scan = upload(
        admin,
        token,
        [finding("CVE-2024-0001", "critical", package="openssl"), finding("CVE-2024-0002", "low", package="zlib")],
        signature_status="unsigned",
    )
    scan_html = get(admin, f"{BASE}/scans/{scan}")
    links = accept_links(scan_html)
    assert links.keys() == {"CVE-2024-0001", "CVE-2024-0002", "FREMFORGE-UNSIGNED-IMAGE"}
    assert links["FREMFORGE-UNSIGNED-IMAGE"] == []  # signing has its own allowlist
    [href] = links["CVE-2024-0001"]
    href = href.replace("&amp;", "&")
    parts = urlsplit(href)
    assert parts.path == PAGE and parts.fragment == "create"
    assert parse_qs(parts.query) == {
        "advisory_id": ["CVE-2024-0001"],
        "package_name": ["openssl"],
        "repo_full_name": [REPO],
        "image": [IMAGE],  # the scan's image name: every tag of it
        "scan": [str(scan)],
    }
    assert "Accept this risk" in text_of(scan_html)

    before = census(app)
    html = get(admin, href)
    assert census(app) == before  # showing the form makes nothing
    form = _Form()
    form.feed(html)
    shown = dict(form.data)
    assert {k: shown[k] for k in ("advisory_id", "package_name", "repo_full_name", "image", "scan")} == {
        "advisory_id": "CVE-2024-0001",
        "package_name": "openssl",
        "repo_full_name": REPO,
        "image": IMAGE,
        "scan": str(scan),
    }
    assert shown["reason"] == "" and shown["expires_at"] == ""
    assert "Filled in from a finding of scan" in text_of(html)
    assert 'id="create"' in html and html.index('id="create"') < html.index('id="list-title"')  # the form first

    # The browser's POST of that form, reason and expiry filled in: back on the scan, the finding excepted.
    data = MultiDict([(k, v) for k, v in form.data if k not in ("csrf_token", "reason", "expires_at")])
    data.update({"csrf_token": csrf, "reason": "Fixed upstream next sprint.", "expires_at": days_ahead(14)})
    r = admin.post(PAGE, data=data)
    assert r.status_code == 303 and r.headers["Location"].endswith(f"{BASE}/scans/{scan}")
    [made] = scalars(app, sa.select(PolicyException))
    page = get(admin, r.headers["Location"])
    assert f"Created exception {made.id}: CVE-2024-0001 in openssl in acme/api for {IMAGE}" in text_of(page)
    text, hrefs = gate_cells(page)["CVE-2024-0001"]
    assert text == (
        f"blocking excepted now by exception {made.id}, until {days_ahead(14)} 00:00 UTC: “Fixed upstream next sprint.”"
    )
    assert hrefs == [f"{PAGE}?state=active&before={made.id + 1}#exception-{made.id}"]
    assert gate_cells(page)["CVE-2024-0002"][0] == "not blocking"
    assert accept_links(page)["CVE-2024-0001"] == []  # covered now: nothing to accept
    assert accept_links(page)["CVE-2024-0002"] != []
    # The link beside the finding opens the list where the exception is.
    listing = listed(get(admin, hrefs[0]))
    assert listing[0]["Advisory"] == f"CVE-2024-0001 exception {made.id} · Images with it (CVE-2024-0001)"


def test_a_form_from_a_row_with_an_error_keeps_its_way_back_to_the_scan(app, admin, token, csrf):
    scan = upload(admin, token, [finding("CVE-2024-0001")])
    data = valid_form(csrf, scan=str(scan), reason="")
    r = admin.post(PAGE, data=data)
    assert r.status_code == 422
    assert f'<input type="hidden" name="scan" value="{scan}">' in r.text
    r = admin.post(PAGE, data=valid_form(csrf, scan=str(scan)))
    assert r.headers["Location"].endswith(f"/scans/{scan}")
    r = admin.post(PAGE, data=valid_form(csrf, scan="../../x"))  # anything else: back to the list
    assert r.headers["Location"].endswith(PAGE)


def test_a_finding_uploaded_under_an_exception_shows_its_reason_and_expiry(app, admin, token, csrf):
    set_policy(app, "acme", block_action="block_pull")
    assert admin.post(PAGE, data=valid_form(csrf, reason="Not reachable: no TLS in this image.")).status_code == 303
    [made] = scalars(app, sa.select(PolicyException.id))
    scan = upload(admin, token, [finding("CVE-2024-0001", "critical", package="openssl"), finding("CVE-9", "high")])
    [stored] = scalars(app, sa.select(Finding.exception_id).where(Finding.cve_id == "CVE-2024-0001"))
    assert stored == made
    page = get(admin, f"{BASE}/scans/{scan}")
    text, hrefs = gate_cells(page)["CVE-2024-0001"]
    assert text == (
        f"excepted (exception {made}) exception {made}, until {days_ahead(30)} 00:00 UTC: "
        "“Not reachable: no TLS in this image.”"
    )
    assert hrefs == [f"{PAGE}?state=active&before={made + 1}#exception-{made}"]
    assert gate_cells(page)["CVE-9"][0] == "blocking"
    assert "1 finding of this image blocks" in text_of(page)
    assert accept_links(page)["CVE-2024-0001"] == []

    # Revoked since: the finding keeps what the upload judged, and says the exception is revoked.
    admin.post(f"{PAGE}/{made}/revoke", data={"csrf_token": csrf})
    page = get(admin, f"{BASE}/scans/{scan}")
    text, hrefs = gate_cells(page)["CVE-2024-0001"]
    assert text.startswith(f"excepted (exception {made}) exception {made} (revoked), until")
    assert hrefs == [f"{PAGE}?state=revoked&before={made + 1}#exception-{made}"]
    assert accept_links(page)["CVE-2024-0001"] != []  # nothing covers it now


def test_the_scan_page_reads_the_exceptions_in_one_query(app, admin, token, csrf):
    for n in range(3):
        admin.post(PAGE, data=valid_form(csrf, advisory_id=f"CVE-{n}", package_name="", image=""))
    scan = upload(admin, token, [finding(f"CVE-{n}", package=f"p{n}") for n in range(6)])
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM exceptions" in statement:
            statements.append(statement)

    engine = app.extensions["fremforge.db"].engine
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        page = get(admin, f"{BASE}/scans/{scan}")
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert len(statements) == 1, statements
    assert sum("excepted" in cell[0] for cell in gate_cells(page).values()) == 3


# ---------------------------------------------------------------- escaping


def test_hostile_values_are_escaped_everywhere_they_are_shown(app, admin, token, csrf):
    evil_reason = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    evil_ticket = 'https://tracker.example/"><script>alert(3)</script>'
    evil_package = "<b>openssl</b>"
    form = valid_form(csrf, reason=evil_reason, ticket_url=evil_ticket, package_name=evil_package, image="")
    assert admin.post(PAGE, data=form).status_code == 303
    scan = upload(admin, token, [finding("CVE-2024-0001", package=evil_package)])
    pages = [get(admin, PAGE), get(admin, f"{BASE}/scans/{scan}"), get(admin, BASE + "/audit")]
    # The prefilled form echoes its query string into values, escaped too.
    pages.append(get(admin, PAGE + '?advisory_id="><script>alert(4)</script>&image=<b>x</b>'))
    for html in pages:
        assert "<script>alert" not in html and "<img src=x" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=&#34;alert(2)&#34;&gt;" in pages[0]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[1] and "&lt;script&gt;alert(1)" in pages[2]
    assert 'href="https://tracker.example/&#34;&gt;&lt;script&gt;alert(3)&lt;/script&gt;"' in pages[0]
    assert 'value="&#34;&gt;&lt;script&gt;alert(4)&lt;/script&gt;"' in pages[3]
    # A ticket URL that is not https (stored by some other way) is shown, never a link.
    run_sql(app, sa.update(PolicyException).values(ticket_url="javascript:alert(5)"))
    html = get(admin, PAGE)
    assert 'href="javascript:' not in html and "ticket: javascript:alert(5)" in text_of(html)
