"""The admin pages of Admin → Code security → Image scanning, signed in through a one-time login link."""

from __future__ import annotations

import re
from datetime import datetime
from html import unescape
from html.parser import HTMLParser
from typing import Any

import pytest
import sqlalchemy as sa
from werkzeug.datastructures import MultiDict

from app import db
from app.admin import audit_page, scan_pages, settings_page
from app.models import ApiToken, AuditEvent, Finding, OrgSettings, OutboxItem, ScanRun
from tests.conftest import admin_login, csrf_of
from tests.factories import FIXTURES, REPO, SHA, SHA2, census, finding, make_org, make_token, post, seed, set_policy

BASE = "/admin/orgs/acme/code-security/image-scanning"
TRIVY = FIXTURES / "trivy"
HEADERS = [
    "Image",
    "Commit",
    "PR",
    "Critical",
    "High",
    "Medium",
    "Low",
    "Fixable",
    "Status",
    "Commit status posted",
    "Scanned",
]


# -- helpers ---------------------------------------------------------------------------------------------------------


class _Tables(HTMLParser):
    """Every <table> of a page: its class, header texts and rows of (cell text, links in the cell)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[dict[str, Any]] = []
        self._cell: list[str] | None = None
        self._links: list[str] = []
        self._row: list[tuple[str, list[str]]] | None = None
        self._in_head = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self.tables.append({"class": a.get("class") or "", "head": [], "rows": []})
        elif tag == "thead":
            self._in_head = True
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell, self._links = [], []
        elif tag == "a" and self._cell is not None:
            self._links.append(a.get("href") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "thead":
            self._in_head = False
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append((" ".join(" ".join(self._cell).split()), self._links))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            table = self.tables[-1]
            if self._in_head:
                table["head"] = [text for text, _ in self._row]
            else:
                table["rows"].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def tables(html: str) -> list[dict[str, Any]]:
    parser = _Tables()
    parser.feed(html)
    return parser.tables


def table(html: str, cls: str) -> dict[str, Any]:
    found = [t for t in tables(html) if cls in t["class"].split()]
    assert len(found) == 1, f"one table of class {cls} expected, found {len(found)}"
    return found[0]


def scan_rows(client, query: str = "") -> list[dict[str, Any]]:
    r = client.get(BASE + query)
    assert r.status_code == 200, r.text
    t = table(r.text, "scans")
    assert t["head"] == HEADERS
    return [dict(zip(HEADERS, [text for text, _ in row], strict=True)) | {"_links": row} for row in t["rows"]]


def text_of(html: str) -> str:
    """The page's visible text in one line, tags removed: for asserting on sentences."""
    html = re.sub(r"(?s)<(script|style|head)\b.*?</\1>", " ", html)
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def upload_report(client, token: str, name: str, image: str | None = None, sha: str = SHA, repo: str = REPO) -> int:
    query = {"image_ref": image or f"ghcr.io/acme/{name.removesuffix('.json')}:1", "commit_sha": sha}
    query["repo_full_name"] = repo
    r = post(client, token, raw=(TRIVY / name).read_bytes(), query=query)
    assert r.status_code == 202, r.json
    return r.json["scan_run_id"]


def upload(client, token: str, findings=None, slug: str = "acme", **kw: Any) -> int:
    r = post(client, token, seed(findings, **kw), slug=slug)
    assert r.status_code == 202, r.json
    return r.json["scan_run_id"]


def run_sql(app, statement: Any) -> None:
    with app.app_context():
        session = db.session()
        session.execute(statement)
        session.commit()


def scalars(app, statement: Any) -> list[Any]:
    with app.app_context():
        return list(db.session().scalars(statement))


@pytest.fixture
def token(app):
    make_org(app)
    return make_token(app)


@pytest.fixture
def admin(app, client, token):
    """The test client signed in as an admin of acme (with the org and a token made)."""
    admin_login(app, client)
    return client


@pytest.fixture
def csrf(admin):
    """The CSRF token of the admin's session, for the forms' posts."""
    return csrf_of(admin)


# -- access ----------------------------------------------------------------------------------------------------------

PAGES = ["", "/settings", "/tokens", "/audit", "/scans/1", f"/commits/{SHA}?repo=acme/api"]


@pytest.mark.parametrize("page", PAGES)
def test_without_a_session_every_page_redirects_to_sign_in(client, token, page):
    r = client.get(BASE + page)
    assert r.status_code == 302
    assert "/admin/login" in r.headers["Location"]


@pytest.mark.parametrize("page", PAGES)
def test_a_session_for_another_org_gets_403(app, client, token, page):
    make_org(app, "other")
    admin_login(app, client, "other")
    assert client.get(BASE + page).status_code == 403


@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("/settings", {"block_action": "block_pull", "retention_days": "30"}),
        ("/tokens", {"name": "ci", "scopes": "findings:write"}),
        ("/tokens/1/revoke", {}),
    ],
)
@pytest.mark.parametrize("csrf", [None, "", "wrong"])
def test_a_post_without_the_right_csrf_token_is_400_and_changes_nothing(app, admin, path, data, csrf):
    before = census(app)
    if csrf is not None:
        data = {**data, "csrf_token": csrf}
    r = admin.post(BASE + path, data=data)
    assert r.status_code == 400
    assert "CSRF" in r.text
    assert census(app) == before


def test_the_org_page_redirects_to_image_scanning(admin):
    r = admin.get("/admin/orgs/acme")
    assert r.status_code == 302
    assert r.headers["Location"].endswith(BASE)


# -- every page renders ----------------------------------------------------------------------------------------------


def test_base_layout(admin):
    r = admin.get(BASE)
    page = text_of(r.text)
    assert "Admin → Code security → Image scanning" in page
    assert "Organisation acme" in page
    assert "Signed in as login-link" in page
    assert 'href="#main"' in r.text and 'id="main"' in r.text  # the skip link and its target
    assert re.search(
        r'<form method="post" action="/admin/logout"[^>]*>\s*<input type="hidden" name="csrf_token"', r.text
    )
    assert 'aria-current="page">Scans<' in r.text
    css = admin.get("/admin/static/admin.css")
    assert css.status_code == 200
    assert "tabular-nums" in css.text
    css.close()


def test_no_scans_yet_shows_how_to_upload_the_first(admin):
    r = admin.get(BASE)
    assert r.status_code == 200
    page = text_of(r.text)
    assert "No scans yet" in page
    assert "findings:write" in page
    assert "FREMFORGE_URL: http://fremforge.test" in page  # the workflow, for this app and org
    assert '"$FREMFORGE_URL/api/v1/orgs/acme/image-scans/findings"' in page
    assert "trivy image --format json" in page
    assert f'href="{BASE}/tokens"' in r.text


@pytest.mark.parametrize(
    ("page", "texts"),
    [
        ("/settings", ["Block action", "block_pull", "Require signed images", "Allowed issuers", "Retention (days)"]),
        ("/tokens", ["Create a token", "findings:write", "findings:read", "settings:write", "test"]),
        ("/audit", ["Audit log", "Token created", "test"]),
    ],
)
def test_pages_render(admin, page, texts):
    r = admin.get(BASE + page)
    assert r.status_code == 200, r.text
    for t in texts:
        assert t in text_of(r.text)


# -- the scans list --------------------------------------------------------------------------------------------------


def test_scan_rows_carry_the_reports_counts(app, admin, token):
    ids = [upload_report(admin, token, n) for n in ("alpine-39.json", "debian-buster.json", "centos-7.json")]
    rows = scan_rows(admin)
    assert [r["Image"] for r in rows] == [
        "ghcr.io/acme/centos-7:1",
        "ghcr.io/acme/debian-buster:1",
        "ghcr.io/acme/alpine-39:1",
    ]
    got = [[r[h] for h in ("Critical", "High", "Medium", "Low", "Fixable", "Status")] for r in rows]
    assert got == [
        ["0", "0", "1", "2", "2", "success"],
        ["1", "0", "0", "1", "1", "success"],
        ["2", "0", "4", "0", "6", "success"],
    ]
    for row, scan_id in zip(rows, reversed(ids), strict=True):
        cells = row["_links"]
        assert cells[0][1] == [f"{BASE}/scans/{scan_id}"]
        assert row["Commit"] == SHA[:7] + " " + REPO
        assert cells[1][1] == [f"https://github.com/{REPO}/commit/{SHA}"]
        assert row["PR"] == "—"
        assert row["Commit status posted"] == "success · not delivered: no GitHub App configured"
        assert cells[9][1] == [f"{BASE}/commits/{SHA}?repo=acme/api"]
        assert row["Scanned"].endswith(" UTC")


def test_pr_and_delivery_columns(app, admin, token):
    set_policy(app, "acme", block_action="block_pull")
    a = upload(admin, token, [finding(severity="critical")], image_ref="ghcr.io/acme/a:1")
    b = upload(admin, token, [finding(severity="low")], image_ref="ghcr.io/acme/b:1", sha=SHA2)
    c = upload(admin, token, [finding(severity="low")], image_ref="ghcr.io/acme/c:1", sha=SHA2)
    run_sql(app, sa.update(ScanRun).where(ScanRun.id == a).values(pr_number=42))
    delivered_at = datetime(2025, 1, 15, 12, 3)
    run_sql(
        app,
        sa.update(OutboxItem).where(OutboxItem.scan_run_id == a).values(state="delivered", delivered_at=delivered_at),
    )
    run_sql(
        app,
        sa.update(OutboxItem)
        .where(OutboxItem.scan_run_id == c)
        .values(state="pending", attempts=2, last_error="GitHub answered 503"),
    )
    rows = {r["Image"]: r for r in scan_rows(admin)}
    assert rows["ghcr.io/acme/a:1"]["PR"] == "#42"
    assert rows["ghcr.io/acme/a:1"]["_links"][2][1] == [f"https://github.com/{REPO}/pull/42"]
    assert rows["ghcr.io/acme/a:1"]["Status"] == "failure"
    assert rows["ghcr.io/acme/a:1"]["Commit status posted"] == "failure · delivered 2025-01-15"
    assert rows["ghcr.io/acme/c:1"]["Commit status posted"] == "success · retrying: GitHub answered 503"
    assert rows["ghcr.io/acme/b:1"]["Commit status posted"] == "success · not delivered: no GitHub App configured"
    assert b
    set_policy(app, "acme", block_action="none")
    upload(admin, token, image_ref="ghcr.io/acme/d:1")
    rows = {r["Image"]: r for r in scan_rows(admin)}
    assert rows["ghcr.io/acme/d:1"]["Status"] == "skipped"
    assert rows["ghcr.io/acme/d:1"]["Commit status posted"] == "nothing posted (block action none)"


def test_a_delivery_of_today_shows_its_time(app, admin, token):
    scan_id = upload(admin, token)
    now = scan_pages.utcnow().replace(hour=12, minute=3, second=0, microsecond=0)
    run_sql(
        app, sa.update(OutboxItem).where(OutboxItem.scan_run_id == scan_id).values(state="delivered", delivered_at=now)
    )
    [row] = scan_rows(admin)
    assert row["Commit status posted"] == "success · delivered 12:03"


def test_filters(app, admin, token):
    set_policy(app, "acme", block_action="block_pull")
    a = upload(admin, token, [finding(severity="critical")], image_ref="ghcr.io/acme/a:1")
    b = upload(admin, token, [finding(severity="low")], image_ref="ghcr.io/acme/b:1", sha=SHA2)
    c = upload(admin, token, [finding(severity="low")], image_ref="ghcr.io/acme/a:1", repo="acme/web")
    run_sql(app, sa.update(ScanRun).where(ScanRun.id == b).values(pr_number=7))

    def ids(query: str) -> list[int]:
        return [int(r["_links"][0][1][0].rsplit("/", 1)[1]) for r in scan_rows(admin, query)]

    assert ids("") == [c, b, a]
    assert ids("?repo=acme/web") == [c]
    assert ids("?repo=ACME/API") == [b, a]
    assert ids("?image=ghcr.io/acme/a:1") == [c, a]
    assert ids(f"?commit={SHA2}") == [b]
    assert ids(f"?commit={SHA.upper()}") == [c, a]
    assert ids("?pr=7") == [b]
    assert ids("?pr=%237") == [b]
    assert ids("?status=failure") == [a]
    assert ids("?status=success&image=ghcr.io/acme/a:1") == [c]
    assert ids("?status=") == [c, b, a]  # blank fields are no filter

    r = admin.get(BASE + "?repo=acme/nothing")
    assert r.status_code == 200
    assert "No scans match" in text_of(r.text)
    assert "No scans yet" not in text_of(r.text)
    assert 'value="acme/nothing"' in r.text  # the form keeps what was typed


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ("?pr=abc", "pr", "Enter a pull request number"),
        ("?pr=99999999999", "pr", "Enter a pull request number"),
        ("?commit=abc123", "commit", "full 40-character SHA"),
        ("?status=green", "status", "Choose success, failure or skipped"),
        ("?repo=api", "repo", "owner/name"),
        ("?repo=acme/..", "repo", "as GitHub names them"),
        ("?repo=-acme/api", "repo", "as GitHub names them"),
        ("?cursor=nonsense", "cursor", "page link is not valid"),
    ],
)
def test_a_bad_filter_is_named_beside_its_field(admin, token, query, field, message):
    upload(admin, token)
    r = admin.get(BASE + query)
    assert r.status_code == 400
    assert message in text_of(r.text)
    if field != "cursor":
        assert f'id="{field}-error"' in r.text
        assert re.search(rf'id="{field}"[^>]*aria-invalid="true"', r.text)
    assert not [t for t in tables(r.text) if "scans" in t["class"]]


def test_pagination_follows_the_older_link(admin, token, monkeypatch):
    monkeypatch.setattr(scan_pages, "SCANS_PER_PAGE", 2)
    made = [upload(admin, token, image_ref=f"ghcr.io/acme/app:{i}") for i in range(5)]
    seen: list[int] = []
    url = BASE + "?repo=acme/api"
    pages = 0
    while url:
        r = admin.get(url)
        assert r.status_code == 200
        rows = table(r.text, "scans")["rows"]
        seen += [int(row[0][1][0].rsplit("/", 1)[1]) for row in rows]
        older = re.search(r'<a href="([^"]+)" rel="next">Older →</a>', r.text)
        url = older.group(1).replace("&amp;", "&") if older else ""
        if url:
            assert "repo=acme%2Fapi" in url or "repo=acme/api" in url  # filters carried along
        pages += 1
    assert seen == list(reversed(made))
    assert pages == 3


def test_a_page_of_scans_takes_a_fixed_number_of_queries(app, admin, token):
    engine = app.extensions["fremforge.db"].engine

    def statements_for_index() -> int:
        count = 0

        def counter(*_args: Any) -> None:
            nonlocal count
            count += 1

        sa.event.listen(engine, "before_cursor_execute", counter)
        try:
            r = admin.get(BASE)
        finally:
            sa.event.remove(engine, "before_cursor_execute", counter)
        assert r.status_code == 200
        return count

    for i in range(5):
        upload(admin, token, image_ref=f"ghcr.io/acme/app:{i}", sha=f"{i:040x}")
    assert len(scan_rows(admin)) == 5
    with_5 = statements_for_index()
    for i in range(5, 50):
        upload(admin, token, image_ref=f"ghcr.io/acme/app:{i}", sha=f"{i:040x}")
    assert len(scan_rows(admin)) == 50
    with_50 = statements_for_index()
    assert with_5 == with_50
    assert with_50 <= 6  # org and policy, the scans, their outbox rows (and BEGIN on SQLite)


# -- a scan ----------------------------------------------------------------------------------------------------------


def advisory_links(html: str) -> dict[str, list[str]]:
    """Finding id -> the hrefs of its advisory cell."""
    t = table(html, "findings")
    return {row[1][0].split()[0]: row[1][1] for row in t["rows"] if len(row) > 2}


def test_scan_detail_header_and_findings_order(app, admin, token):
    scan_id = upload_report(admin, token, "alpine-39.json")
    r = admin.get(f"{BASE}/scans/{scan_id}")
    assert r.status_code == 200
    page = text_of(r.text)
    for t in ("ghcr.io/acme/alpine-39:1", SHA, REPO, "every image of this commit", "warn", "unknown"):
        assert t in page
    assert "1 image · 2 critical · warning only" in page
    assert "not delivered: no GitHub App configured" in page
    rows = table(r.text, "findings")["rows"]
    severities = [row[0][0] for row in rows]
    assert severities == ["critical", "critical", "medium", "medium", "medium", "medium"]
    api = admin.get(f"/api/v1/orgs/acme/image-scans/{scan_id}", headers={"Authorization": f"Bearer {token}"}).json
    assert [row[1][0].split()[0] for row in rows] == [f["cve_id"] for f in api["findings"]]  # the API's order
    assert [row[2][0] for row in rows] == [f["package_name"] for f in api["findings"]]
    for row, f in zip(rows, api["findings"], strict=True):
        assert row[4][0] == (f"fixed in {f['fixed_version']}" if f["fixed_version"] else "no fix yet")


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        ("alpine-39.json", "https://www.cve.org/CVERecord?id=CVE-"),
        ("debian-buster.json", "https://security-tracker.debian.org/tracker/DSA-"),
        ("centos-7.json", "https://access.redhat.com/errata/RHSA-"),
        ("npm.json", "https://github.com/advisories/GHSA-"),  # a GHSA named in the references
        ("nuget.json", "https://github.com/advisories/GHSA-"),  # a GHSA as the id
        ("gomod.json", "https://osv.dev/vulnerability/GMS-"),  # anything else: OSV
    ],
)
def test_detail_links_advisories(admin, token, report, expected):
    scan_id = upload_report(admin, token, report)
    r = admin.get(f"{BASE}/scans/{scan_id}")
    links = [href for hrefs in advisory_links(r.text).values() for href in hrefs]
    assert any(h.startswith(expected) for h in links), links
    api = admin.get(f"/api/v1/orgs/acme/image-scans/{scan_id}", headers={"Authorization": f"Bearer {token}"}).json
    for f in api["findings"]:  # every advisory the API names is linked, the finding's own id first
        assert advisory_links(r.text)[f["cve_id"]][: len(f["advisories"])] == [a["url"] for a in f["advisories"]]


def test_detail_links_a_ghsa_vendor_id_and_distro_ids(admin, token):
    scan_id = upload(
        admin,
        token,
        [
            finding("CVE-2024-0001", vendor_ids=["GHSA-abcd-efgh-jkmp", "DSA-5000-1"]),
            finding("RHSA-2024:0002", package="bash"),
            finding("RUSTSEC-2024-0003", package="smallvec"),
        ],
    )
    links = advisory_links(admin.get(f"{BASE}/scans/{scan_id}").text)
    assert links["CVE-2024-0001"] == [
        "https://www.cve.org/CVERecord?id=CVE-2024-0001",
        "https://github.com/advisories/GHSA-abcd-efgh-jkmp",
        "https://security-tracker.debian.org/tracker/DSA-5000-1",
    ]
    assert links["RHSA-2024:0002"] == ["https://access.redhat.com/errata/RHSA-2024%3A0002"]
    assert links["RUSTSEC-2024-0003"] == ["https://osv.dev/vulnerability/RUSTSEC-2024-0003"]


def test_severity_filter_and_pages_of_findings(admin, token, monkeypatch):
    monkeypatch.setattr(scan_pages, "FINDINGS_PER_PAGE", 2)
    scan_id = upload_report(admin, token, "alpine-39.json")
    r = admin.get(f"{BASE}/scans/{scan_id}?severity=critical")
    assert [row[0][0] for row in table(r.text, "findings")["rows"]] == ["critical", "critical"]
    assert "Next 2 →" not in r.text
    r = admin.get(f"{BASE}/scans/{scan_id}?severity=high")
    assert "No high findings in this scan" in text_of(r.text)
    seen = []
    for page in (1, 2, 3):
        r = admin.get(f"{BASE}/scans/{scan_id}?page={page}")
        seen += [row[1][0].split()[0] for row in table(r.text, "findings")["rows"]]
        assert ("Next 2 →" in r.text) == (page < 3)
    assert len(seen) == 6


def test_synthetic_signing_findings_are_explained(app, admin, token):
    set_policy(app, "acme", require_signed=True)
    unsigned = upload(admin, token, [])
    page = text_of(admin.get(f"{BASE}/scans/{unsigned}").text)
    assert "FREMFORGE-UNSIGNED-IMAGE" in page
    assert "This image is not signed (signature status: unknown)" in page
    assert "requires signed images" in page

    set_policy(
        app,
        "acme",
        allowed_issuers=[
            {"issuer": "https://token.actions.githubusercontent.com", "subject_pattern": "^https://github.com/acme/"}
        ],
    )
    untrusted = upload(
        admin,
        token,
        [],
        signature_status="signed",
        signature_issuer="https://accounts.example.com",
        signature_subject="mallory@example.com",
    )
    r = admin.get(f"{BASE}/scans/{untrusted}")
    page = text_of(r.text)
    assert "FREMFORGE-UNTRUSTED-SIGNER" in page
    assert "signed by https://accounts.example.com with the subject mallory@example.com" in page
    assert "matches none of this organisation's allowed issuers" in page
    assert advisory_links(r.text)["FREMFORGE-UNTRUSTED-SIGNER"] == []  # the app's own ids link nowhere


def test_redacted_findings_show_as_such(app, admin, token):
    scan_id = upload(admin, token, [finding("CVE-2023-0001"), finding("CVE-2023-0002", package="zlib")])
    first = scalars(app, sa.select(Finding).where(Finding.cve_id == "CVE-2023-0001"))[0]
    payload = {c: None for c in ("cve_id", "severity", "package", "installed_version", "fixed_version", "target")}
    run_sql(
        app,
        sa.update(Finding)
        .where(Finding.id == first.id)
        .values(
            **payload,
            title=None,
            primary_url=None,
            references=None,
            vendor_ids=None,
            synthetic=None,
            redacted_at=datetime(2027, 1, 1),
        ),
    )
    r = admin.get(f"{BASE}/scans/{scan_id}")
    assert r.status_code == 200
    page = text_of(r.text)
    assert f"Finding #{first.seq}: its details were removed by retention on 2027-01-01 00:00 UTC" in page
    assert "CVE-2023-0002" in page
    assert "CVE-2023-0001" not in page


def test_another_orgs_scan_is_404(app, admin, token):
    make_org(app, "other")
    other_token = make_token(app, "other")
    theirs = upload(admin, other_token, repo="other/app", slug="other")
    mine = upload(admin, token)
    assert admin.get(f"{BASE}/scans/{mine}").status_code == 200
    r = admin.get(f"{BASE}/scans/{theirs}")
    assert r.status_code == 404
    assert "other/app" not in r.text
    assert admin.get(f"{BASE}/scans/999999").status_code == 404
    assert admin.get(f"{BASE}/scans/99999999999").status_code == 404
    assert admin.get(f"{BASE}/commits/{SHA}?repo=other/app").status_code == 404


# -- a commit --------------------------------------------------------------------------------------------------------


def test_commit_page_lists_every_image_and_the_posted_aggregate(app, admin, token):
    set_policy(app, "acme", block_action="block_pull")
    a1 = upload(admin, token, [finding(severity="critical")], image_ref="ghcr.io/acme/a:1")
    b = upload(admin, token, [finding(severity="low")], image_ref="ghcr.io/acme/b:1")
    a2 = upload(admin, token, [finding(severity="low")], image_ref="ghcr.io/acme/a:1")
    upload(admin, token, image_ref="ghcr.io/acme/elsewhere:1", sha=SHA2)
    r = admin.get(f"{BASE}/commits/{SHA}?repo=acme/api")
    assert r.status_code == 200
    page = text_of(r.text)
    assert "Posted to GitHub" in page
    assert "success fremforge/image-scan 2 images · 2 low" in page
    assert "not delivered: no GitHub App configured" in page
    assert f"Asked by scan {a2}" in page
    rows = table(r.text, "scans")["rows"]
    assert [int(row[0][1][0].rsplit("/", 1)[1]) for row in rows] == [a2, b, a1]  # latest first, this commit only
    assert [row[7][0] for row in rows] == [
        "yes: latest of this image",
        "yes: latest of this image",
        "no: a later scan of this image",
    ]
    assert [row[6][0] for row in rows] == ["success", "success", "failure"]
    assert f"https://github.com/{REPO}/commit/{SHA}" in r.text


def test_commit_page_without_repo_redirects_or_404s(admin, token):
    upload(admin, token)
    r = admin.get(f"{BASE}/commits/{SHA}")
    assert r.status_code == 302
    assert r.headers["Location"].endswith(f"/commits/{SHA}?repo=acme/api")
    assert admin.get(f"{BASE}/commits/{SHA2}").status_code == 404
    assert admin.get(f"{BASE}/commits/{SHA2}?repo=acme/api").status_code == 404
    assert admin.get(f"{BASE}/commits/not-a-sha?repo=acme/api").status_code == 404
    assert admin.get(f"{BASE}/commits/{SHA.upper()}?repo=ACME/API").status_code == 200


def test_the_target_url_posted_to_github_opens_the_commit_page(admin, token):
    r = post(admin, token, seed())
    assert r.status_code == 202
    with admin.application.app_context():
        [target] = [w.commit_status["target_url"] for w in db.session().scalars(sa.select(OutboxItem))]
    page = admin.get(target.removeprefix("http://fremforge.test"))
    assert page.status_code == 200
    assert "Posted to GitHub" in page.text


# -- settings --------------------------------------------------------------------------------------------------------

VALID = {
    "enabled": "1",
    "block_action": "block_pull",
    "require_signed": "1",
    "allowed_issuers": "https://token.actions.githubusercontent.com ^https://github.com/acme/\n\n",
    "retention_days": "90",
}


def settings_of(app) -> dict[str, Any]:
    with app.app_context():
        s = db.session().scalars(sa.select(OrgSettings)).one()
        return {c: getattr(s, c) for c in settings_page.SETTING_LABELS}


def audit_events(app, action: str) -> list[AuditEvent]:
    return scalars(app, sa.select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq))


def test_settings_form_shows_the_policy(app, admin):
    set_policy(
        app,
        "acme",
        require_signed=True,
        retention_days=30,
        allowed_issuers=[
            {"issuer": "https://issuer.example", "subject_pattern": "^repo:acme/"},
            {"issuer": "https://token.actions.githubusercontent.com"},
        ],
    )
    r = admin.get(BASE + "/settings")
    assert re.search(r'id="block_action-warn"[^>]*value="warn" checked', r.text)
    assert re.search(r'id="require_signed"[^>]*checked', r.text)
    assert re.search(r'id="enabled"[^>]*checked', r.text)
    assert ">https://issuer.example ^repo:acme/\nhttps://token.actions.githubusercontent.com</textarea>" in r.text
    assert 'value="30"' in r.text
    for value in ("none", "warn", "block_pull"):  # a sentence for each block action
        assert settings_page.BLOCK_ACTION_HELP[value] in text_of(r.text)
    assert re.search(r'<label for="retention_days">', r.text)


class _Form(HTMLParser):
    """The fields a browser would submit from a page's forms (checked boxes and radios, inputs, textareas)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.data: list[tuple[str, str]] = []
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "input" and a.get("name"):
            if a.get("type") in ("checkbox", "radio") and "checked" not in a:
                return
            self.data.append((a["name"] or "", a.get("value") or ""))
        elif tag == "textarea":
            self._textarea = a.get("name")
            self.data.append((self._textarea or "", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "textarea":
            self._textarea = None

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            name, text = self.data[-1]
            self.data[-1] = (name, text + data)


def test_the_settings_form_submitted_unchanged_changes_nothing(app, admin, csrf):
    set_policy(
        app,
        "acme",
        block_action="block_pull",
        require_signed=True,
        retention_days=30,
        allowed_issuers=[
            {"issuer": "https://issuer.example", "subject_pattern": "^repo:acme/(api|web) .*$"},
            {"issuer": "https://token.actions.githubusercontent.com"},
        ],
    )
    before = settings_of(app), len(audit_events(app, "settings.changed"))
    form = _Form()
    form.feed(admin.get(BASE + "/settings").text)
    data = MultiDict([(k, v) for k, v in form.data if k != "csrf_token"] + [("csrf_token", csrf)])
    r = admin.post(BASE + "/settings", data=data)
    assert r.status_code == 302
    assert (settings_of(app), len(audit_events(app, "settings.changed"))) == before
    assert "Saved. Nothing changed." in text_of(admin.get(BASE + "/settings").text)


@pytest.mark.parametrize("page", ["/settings", "/tokens", "/exceptions"])
def test_a_form_with_a_nul_character_is_refused_not_echoed(app, admin, csrf, page):
    before = settings_of(app), census(app)
    r = admin.post(BASE + page, data={**VALID, "retention_days": "\x00", "name": "a\x00b", "csrf_token": csrf})
    assert r.status_code == 400 and r.mimetype == "text/html"
    assert "\x00" not in r.text and "NUL character" in r.text
    assert (settings_of(app), census(app)) == before


def test_settings_post_saves_and_records_old_and_new(app, admin, csrf):
    gate = {"block_threshold": "critical", "ignore_unfixed": "1", "block_on": "new"}
    r = admin.post(BASE + "/settings", data={**VALID, **gate, "csrf_token": csrf})
    assert r.status_code == 302
    assert r.headers["Location"].endswith(BASE + "/settings")
    assert settings_of(app) == {
        "enabled": True,
        "block_action": "block_pull",
        "require_signed": True,
        "allowed_issuers": [
            {"issuer": "https://token.actions.githubusercontent.com", "subject_pattern": "^https://github.com/acme/"}
        ],
        "retention_days": 90,
        "block_threshold": "critical",
        "ignore_unfixed": True,
        "block_on": "new",
    }
    [event] = audit_events(app, "settings.changed")
    assert event.actor == "link:login-link"
    assert event.details["changes"]["block_action"] == {"old": "warn", "new": "block_pull"}
    assert event.details["changes"]["retention_days"] == {"old": 365, "new": 90}
    assert event.details["changes"]["block_threshold"] == {"old": "high", "new": "critical"}
    assert set(event.details["changes"]) == {
        "block_action",
        "require_signed",
        "allowed_issuers",
        "retention_days",
        "block_threshold",
        "ignore_unfixed",
        "block_on",
    }
    page = admin.get(r.headers["Location"])
    assert "Saved" in text_of(page.text)
    audit_page = admin.get(BASE + "/audit").text
    audit = text_of(audit_page)
    assert "Settings changed" in audit
    [who] = [row[1][0] for row in table(audit_page, "audit")["rows"] if row[2][0] == "Settings changed"]
    assert who == "link:login-link"
    assert "Block action: warn → block_pull" in audit
    assert "Retention (days): 365 → 90" in audit
    assert "Require signed images: off → on" in audit
    assert "Block threshold: high → critical" in audit and "Ignore unfixed findings: off → on" in audit


def test_settings_post_unchecked_boxes_turn_off_and_nothing_changed_is_no_event(app, admin, csrf):
    admin.post(BASE + "/settings", data={**VALID, "csrf_token": csrf})
    unchecked = {k: v for k, v in VALID.items() if k not in ("enabled", "require_signed")} | {"csrf_token": csrf}
    r = admin.post(BASE + "/settings", data=unchecked)
    assert r.status_code == 302
    assert settings_of(app)["enabled"] is False
    assert settings_of(app)["require_signed"] is False
    admin.post(BASE + "/settings", data=unchecked)
    assert len(audit_events(app, "settings.changed")) == 2
    assert "Nothing changed" in text_of(admin.get(BASE + "/settings").text)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("retention_days", "0", "Enter a whole number of days, from 1 to 3650."),
        ("retention_days", "3651", "Enter a whole number of days, from 1 to 3650."),
        ("retention_days", "ten", "Enter a whole number of days, from 1 to 3650."),
        ("retention_days", "", "Enter a whole number of days, from 1 to 3650."),
        ("retention_days", "9" * 5000, "Enter a whole number of days, from 1 to 3650."),
        ("block_action", "block_all", "Choose none, warn or block_pull."),
        (
            "allowed_issuers",
            "https://ok.example\n\nhttp://insecure.example",
            "Line 3: the issuer must be an https:// URL",
        ),
        (
            "allowed_issuers",
            "https://ok.example ([unclosed",
            "Line 1: the subject pattern is not a valid regular expression",
        ),
        ("block_threshold", "severe", "Choose critical, high, medium or low."),
        ("block_on", "changed", "Choose all or new."),
    ],
)
def test_settings_post_invalid_is_422_beside_the_field_and_changes_nothing(app, admin, csrf, field, value, message):
    before, rows = settings_of(app), census(app)
    r = admin.post(BASE + "/settings", data={**VALID, "csrf_token": csrf, field: value})
    assert r.status_code == 422
    error = re.search(rf'<p class="field-error" id="{field}-error">(.*?)</p>', r.text, re.S)
    assert error is not None, r.text
    assert message in text_of(error.group(1))
    assert re.search(rf'id="{field}"[^>]*aria-invalid="true"', r.text)
    assert "Nothing was changed" in text_of(r.text)
    assert settings_of(app) == before
    assert census(app) == rows
    if field not in ("block_action", "block_threshold", "block_on"):  # a typed value is shown again, to fix it
        assert (value.splitlines() or [""])[0][:50] in r.text


# -- tokens ----------------------------------------------------------------------------------------------------------


def test_without_a_public_url_no_command_to_copy_takes_the_requests_host(app, admin, csrf):
    app.config["PUBLIC_URL"] = None
    cookie = admin.get_cookie("session")
    assert cookie is not None
    evil = {"Host": "evil.example", "Cookie": f"session={cookie.value}"}
    form = {"csrf_token": csrf, "name": "ci", "scopes": ["findings:write"]}
    bare = app.test_client(use_cookies=False)
    created = bare.post(BASE + "/tokens", data=form, headers=evil)
    empty = bare.get(BASE, headers=evil)  # no scans yet: the workflow steps to copy
    for r in (created, empty):
        assert r.status_code in (200, 201), r.text
        assert "evil.example" not in r.text
        assert "http://127.0.0.1:8000" in r.text  # where `make run` serves, said to be replaced
        assert "FREMFORGE_PUBLIC_URL" in text_of(r.text)


def test_token_create_shows_the_secret_once_and_it_works(app, admin, csrf):
    r = admin.post(
        BASE + "/tokens",
        data={
            "csrf_token": csrf,
            "name": "acme/api CI",
            "scopes": ["findings:write", "findings:read"],
            "expires_days": "30",
        },
    )
    assert r.status_code == 201
    assert r.headers["Cache-Control"] == "no-store"
    secret = re.search(r'id="secret" value="(ffis_[A-Za-z0-9]+)"', r.text).group(1)
    assert "will not be shown again" in text_of(r.text)
    assert 'data-copy="secret"' in r.text

    assert post(admin, secret, seed()).status_code == 202
    listing = admin.get(BASE + "/tokens")
    assert secret not in listing.text
    row = next(row for row in table(listing.text, "tokens")["rows"] if row[0][0] == "acme/api CI")
    assert row[1][0] == secret[:11] + "…"
    assert row[2][0] == "findings:write findings:read"
    assert row[3][0].endswith("by link:login-link")
    assert row[4][0].endswith(" UTC")
    assert row[5][0].endswith(" UTC")  # just used for the upload
    assert row[6][0] == "active"
    [event] = [e for e in audit_events(app, "token.created") if e.details["name"] == "acme/api CI"]
    assert event.actor == "link:login-link"


def test_token_revoke(app, admin, csrf):
    r = admin.post(BASE + "/tokens", data={"csrf_token": csrf, "name": "short-lived", "scopes": "findings:write"})
    secret = re.search(r'id="secret" value="(ffis_[A-Za-z0-9]+)"', r.text).group(1)
    [token_id] = scalars(app, sa.select(ApiToken.id).where(ApiToken.name == "short-lived"))
    r = admin.post(f"{BASE}/tokens/{token_id}/revoke", data={"csrf_token": csrf})
    assert r.status_code == 302
    page = admin.get(r.headers["Location"])
    assert "Revoked the token “short-lived”" in text_of(page.text)
    row = next(row for row in table(page.text, "tokens")["rows"] if row[0][0] == "short-lived")
    assert row[6][0].startswith("revoked")
    assert post(admin, secret, seed()).status_code == 401
    [event] = audit_events(app, "token.revoked")
    assert event.actor == "link:login-link"
    assert "Token revoked" in text_of(admin.get(BASE + "/audit").text)
    # Revoking again changes nothing; another org's token is not found.
    admin.post(f"{BASE}/tokens/{token_id}/revoke", data={"csrf_token": csrf})
    assert len(audit_events(app, "token.revoked")) == 1
    make_org(app, "other")
    make_token(app, "other")
    [theirs] = scalars(app, sa.select(ApiToken.id).order_by(ApiToken.id.desc()).limit(1))
    assert admin.post(f"{BASE}/tokens/{theirs}/revoke", data={"csrf_token": csrf}).status_code == 404
    assert admin.post(f"{BASE}/tokens/99999999999/revoke", data={"csrf_token": csrf}).status_code == 404


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"name": "", "scopes": "findings:write"}, "name"),
        ({"name": "x" * 101, "scopes": "findings:write"}, "name"),
        ({"name": "ci"}, "scopes"),
        ({"name": "ci", "scopes": "admin"}, "scopes"),
        ({"name": "ci", "scopes": "findings:write", "expires_days": "0"}, "expires_days"),
        ({"name": "ci", "scopes": "findings:write", "expires_days": "soon"}, "expires_days"),
    ],
)
def test_token_create_invalid_is_422_and_makes_nothing(app, admin, csrf, data, field):
    before = census(app)
    r = admin.post(BASE + "/tokens", data={"csrf_token": csrf, **data})
    assert r.status_code == 422
    assert f'id="{field}-error"' in r.text
    assert 'id="secret"' not in r.text
    assert census(app) == before


# -- audit -----------------------------------------------------------------------------------------------------------


def test_audit_is_newest_first_and_paged(app, admin, csrf, monkeypatch):
    monkeypatch.setattr(audit_page, "EVENTS_PER_PAGE", 2)
    for days in (10, 20, 30, 40):
        admin.post(BASE + "/settings", data={**VALID, "csrf_token": csrf, "retention_days": str(days)})
    seen: list[str] = []
    url = BASE + "/audit"
    while url:
        r = admin.get(url)
        assert r.status_code == 200
        seen += [row[3][0] for row in table(r.text, "audit")["rows"]]
        older = re.search(r'<a href="([^"]+)" rel="next">Older →</a>', r.text)
        url = older.group(1) if older else ""
    changes = [s for s in seen if "Retention" in s]
    assert changes[:4] == [
        "Retention (days): 30 → 40",
        "Retention (days): 20 → 30",
        "Retention (days): 10 → 20",
        "Block action: warn → block_pull Require signed images: off → on Allowed issuers: (none) → "
        "https://token.actions.githubusercontent.com ^https://github.com/acme/ Retention (days): 365 → 10",
    ]
    assert len(seen) == 7  # and the fixture's: the token made, the login link made and the sign-in with it
    assert admin.get(BASE + "/audit?before=x").status_code == 400


# -- errors ----------------------------------------------------------------------------------------------------------


def test_errors_are_pages_in_the_admin_frame(admin, monkeypatch, caplog):
    r = admin.get(f"{BASE}/scans/424242")
    assert r.status_code == 404
    assert r.mimetype == "text/html"
    assert "Admin → Code security → Image scanning" in text_of(r.text)
    assert "There is no scan 424242 in acme." in text_of(r.text)

    r = admin.get(BASE + "?repo=%00")  # the app refuses NUL before any view: its status stays
    assert r.status_code == 400
    assert r.mimetype == "text/html"

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(scan_pages.queries, "list_scans", broken)
    r = admin.get(BASE)
    assert r.status_code == 500
    assert "it was logged" in text_of(r.text)
    assert "boom" not in r.text
    assert "admin.unhandled_error" in caplog.text
