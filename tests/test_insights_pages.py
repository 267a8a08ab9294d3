"""The insights pages (issue 17): the advisory search over every image's latest scan, the images now, one image
with its trend, the trend on the scans page (its chart's numbers are its table's), and the links between them."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from app.admin import insights_pages
from app.findings import service
from app.insights import advisories, chart, images
from app.models import Image, ScanRun, utcnow
from app.web import cursors
from tests.conftest import admin_login
from tests.factories import finding, make_org, make_token, post, seed
from tests.test_admin_pages import run_sql, scalars, table, text_of

BASE = "/admin/orgs/acme/code-security/image-scanning"
SEARCH = BASE + "/advisories"
IMAGES = BASE + "/images"
LOG4J = finding("CVE-2021-44228", "critical", "log4j-core", "2.14.1", "2.15.0")
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def tokens(app: Flask) -> dict[str, str]:
    make_org(app, "acme")
    make_org(app, "other")
    return {slug: make_token(app, slug) for slug in ("acme", "other")}


@pytest.fixture
def admin(app: Flask, client: FlaskClient, tokens: dict[str, str]) -> FlaskClient:
    admin_login(app, client, "acme")
    return client


def upload(client: FlaskClient, token: str, findings: list[dict[str, Any]] | None = None, **kw: Any) -> int:
    slug = kw.pop("slug", "acme")
    r = post(client, token, seed(findings, **kw), slug=slug)
    assert r.status_code == 202, r.get_json()
    return int(r.get_json()["scan_run_id"])


def get(client: FlaskClient, url: str, status: int = 200, **query: str) -> str:
    r = client.get(url, query_string=query or None)
    assert r.status_code == status, (r.status_code, text_of(r.get_data(as_text=True))[:500])
    assert r.mimetype == "text/html"
    return r.get_data(as_text=True)


def hits(html: str) -> list[dict[str, Any]]:
    t = table(html, "advisory-hits")
    return [{h: (text, links) for h, (text, links) in zip(t["head"], row, strict=True)} for row in t["rows"]]


def image_id(app: Flask, repo: str, name: str) -> int:
    [found] = scalars(app, sa.select(Image.id).where(Image.repo_full_name == repo, Image.image_name == name))
    return int(found)


def next_link(html: str) -> str | None:
    found = re.search(r'<a href="([^"]+)" rel="next">', html)
    return found.group(1).replace("&amp;", "&") if found else None


# -- access ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [SEARCH + "?q=CVE-2021-44228", IMAGES, IMAGES + "/1", "/admin/orgs/acme/advisories"])
def test_without_a_session_it_redirects_to_sign_in_and_another_orgs_session_gets_403(
    app: Flask, client: FlaskClient, tokens: dict[str, str], path: str
) -> None:
    r = client.get(path)
    assert r.status_code == 302 and "/admin/login" in r.headers["Location"]
    admin_login(app, client, "other")
    assert client.get(path).status_code == 403


def test_the_section_nav_links_the_new_pages(admin: FlaskClient) -> None:
    html = get(admin, BASE)
    assert f'<a href="{IMAGES}">Images</a>' in html
    assert f'<a href="{SEARCH}">Advisories</a>' in html
    assert f'<a href="{IMAGES}" aria-current="page">Images</a>' in get(admin, IMAGES)
    assert f'<a href="{SEARCH}" aria-current="page">Advisories</a>' in get(admin, SEARCH)


# -- advisory search -------------------------------------------------------------------------------------------------


def test_the_search_answers_for_this_orgs_latest_scans_only(app: Flask, admin: FlaskClient, tokens) -> None:
    acme, other = tokens["acme"], tokens["other"]
    vendor = finding("DSA-5000-1", "high", "liblog4j2-java", "2.11", "2.15", vendor_ids=["CVE-2021-44228"])
    api = upload(admin, acme, [LOG4J], image_ref="ghcr.io/acme/api:1", ref="refs/heads/main")
    web = upload(admin, acme, [vendor, finding()], image_ref="ghcr.io/acme/web:7", sha="b" * 40)
    run_sql(app, sa.update(ScanRun).where(ScanRun.id == web).values(pr_number=42))  # as a pull_request webhook sets it
    upload(admin, acme, [LOG4J], image_ref="ghcr.io/acme/worker:1")
    upload(admin, acme, [finding()], image_ref="ghcr.io/acme/worker:2")  # fixed in its newest scan: drops out
    upload(admin, other, [LOG4J], slug="other", repo="other/secret", image_ref="ghcr.io/other/secret:1")

    html = get(admin, SEARCH, q="cve-2021-44228")
    rows = hits(html)
    assert [r["Image"][0].split()[0] for r in rows] == ["ghcr.io/acme/web", "ghcr.io/acme/api"]
    web_row, api_row = rows
    assert web_row["Advisory"][0] == "DSA-5000-1 has it as a vendor id: CVE-2021-44228"
    assert (web_row["Package"][0], web_row["Installed"][0], web_row["Fix"][0]) == (
        "liblog4j2-java",
        "2.11",
        "fixed in 2.15",
    )
    assert web_row["PR"] == ("#42", ["https://github.com/acme/api/pull/42"])
    assert web_row["Commit"] == ("bbbbbbb", ["https://github.com/acme/api/commit/" + "b" * 40])
    assert api_row["Advisory"][0] == "CVE-2021-44228"
    assert (api_row["Severity"][0], api_row["Exception"][0]) == ("critical", "none")
    assert "from refs/heads/main" in api_row["Image"][0]
    # The image links to its page, its latest scan to the scan's page.
    assert web_row["Image"][1][:2] == [
        f"{IMAGES}/{image_id(app, 'acme/api', 'ghcr.io/acme/web')}",
        f"{BASE}/scans/{web}",
    ]
    assert api_row["Image"][1][1] == f"{BASE}/scans/{api}"
    assert "2 findings in 2 images" in text_of(html)
    page = text_of(html)
    assert "other/secret" not in page and "ghcr.io/other" not in page and "worker" not in page

    # The other org sees its own image only; acme's image pages are not its.
    admin_login(app, admin, "other")
    [row] = hits(get(admin, "/admin/orgs/other/code-security/image-scanning/advisories", q="CVE-2021-44228"))
    assert row["Image"][0].startswith("ghcr.io/other/secret")
    get(
        admin,
        f"/admin/orgs/other/code-security/image-scanning/images/{image_id(app, 'acme/api', 'ghcr.io/acme/api')}",
        404,
    )


def test_a_vendor_id_is_found_as_itself_too(admin: FlaskClient, tokens) -> None:
    upload(admin, tokens["acme"], [finding("CVE-2019-5094", "medium", "e2fsprogs", vendor_ids=["DSA-4535-1"])])
    [row] = hits(get(admin, SEARCH, q="dsa-4535-1"))
    assert row["Advisory"][0] == "CVE-2019-5094 has it as a vendor id: DSA-4535-1"


def test_an_image_fixed_in_its_newest_scan_drops_out_and_comes_back(admin: FlaskClient, tokens) -> None:
    t = tokens["acme"]
    upload(admin, t, [LOG4J], image_ref="ghcr.io/acme/api:1")
    assert len(hits(get(admin, SEARCH, q="CVE-2021-44228"))) == 1
    upload(admin, t, [finding()], image_ref="ghcr.io/acme/api:2")
    html = get(admin, SEARCH, q="CVE-2021-44228")
    assert "advisory-hits" not in html
    assert "No image has CVE-2021-44228 now" in text_of(html)
    upload(admin, t, [LOG4J], image_ref="ghcr.io/acme/api:3")  # a regression: listed again, at its newest scan
    [row] = hits(get(admin, SEARCH, q="CVE-2021-44228"))
    assert "ghcr.io/acme/api:3" in row["Image"][0]


def test_a_prefix_search_pages_through_every_hit_once(admin: FlaskClient, tokens, monkeypatch) -> None:
    monkeypatch.setattr(insights_pages, "HITS_PER_PAGE", 2)
    t = tokens["acme"]
    for i in range(5):
        upload(admin, t, [finding(f"CVE-2024-{1000 + i}")], image_ref=f"ghcr.io/acme/img{i}:1")
    upload(admin, t, [finding("CVE-2023-0001")], image_ref="ghcr.io/acme/old:1")
    seen: list[str] = []
    url: str | None = SEARCH + "?q=CVE-2024-*"
    pages = 0
    while url:
        html = get(admin, url)
        seen += [r["Advisory"][0] for r in hits(html)]
        url = next_link(html)
        if url:
            assert parse_qs(urlsplit(url).query)["q"] == ["CVE-2024-*"]  # the search carried along
        pages += 1
        if pages > 1:
            assert f'<a href="{SEARCH}?q=CVE-2024-*">← First page</a>' in html.replace("%2A", "*")
    assert sorted(seen) == [f"CVE-2024-{1000 + i}" for i in range(5)]
    assert len(seen) == len(set(seen)) and pages == 3


@pytest.mark.parametrize(
    ("q", "message"),
    [
        ("C*", "needs at least 4 characters before the *"),
        ("CVE 2021", "is not an advisory id"),
        ("CVE-2021-44228%", "is not an advisory id"),
        ("x" * 201, "is longer than 200 characters"),
    ],
)
def test_a_bad_search_is_400_with_the_reason_beside_the_field(admin: FlaskClient, tokens, q: str, message: str) -> None:
    upload(admin, tokens["acme"], [LOG4J])
    html = get(admin, SEARCH, 400, q=q)
    field_error = re.search(r'<p class="field-error" id="q-error">(.*?)</p>', html, re.S)
    assert field_error and message in text_of(field_error.group(1))
    assert 'aria-invalid="true"' in html and 'aria-describedby="q-error q-hint"' in html
    assert "advisory-hits" not in html


@pytest.mark.parametrize(
    ("search_cursor", "images_cursor"),
    [
        ("nonsense", "nonsense"),
        (cursors.encode(images.CURSOR, 1), cursors.encode(advisories.CURSOR, 1)),  # each list's is no other's
        (cursors.encode_key(advisories.CURSOR, "X", 2**63), cursors.encode(images.CURSOR, 2**31)),  # too large
    ],
)
def test_a_page_link_this_app_did_not_give_out_is_400(
    admin: FlaskClient, tokens, search_cursor: str, images_cursor: str
) -> None:
    html = get(admin, SEARCH, 400, q="CVE-2021-44228", cursor=search_cursor)
    assert "That page link is not valid" in text_of(html)
    assert "That page link is not valid" in text_of(get(admin, IMAGES, 400, cursor=images_cursor))


def test_no_search_yet_says_what_to_do(admin: FlaskClient) -> None:
    page = text_of(get(admin, SEARCH))
    assert "Search an advisory" in page and "Enter an advisory id above" in page
    assert "Search an advisory" in text_of(get(admin, SEARCH, q="   "))  # blank: no search, no error


def test_an_exception_in_force_is_shown_beside_the_hit(admin: FlaskClient, tokens) -> None:
    t = tokens["acme"]
    upload(admin, t, [LOG4J], image_ref="ghcr.io/acme/api:1")
    upload(admin, t, [LOG4J], image_ref="ghcr.io/acme/web:1")
    expires = (utcnow().date() + timedelta(days=30)).isoformat()
    body = {
        "advisory_id": "cve-2021-44228",
        "image": "ghcr.io/acme/api",
        "reason": "<b>not</b> reachable",
        "expires_at": expires,
    }
    r = admin.post("/api/v1/orgs/acme/exceptions", json=body, headers={"Authorization": f"Bearer {t}"})
    assert r.status_code == 201, r.get_json()
    made = r.get_json()["id"]
    html = get(admin, SEARCH, q="CVE-2021-44228")
    by_image = {row["Image"][0].split()[0]: row["Exception"] for row in hits(html)}
    text, links = by_image["ghcr.io/acme/api"]
    assert text.startswith(f"excepted by exception {made} until ") and "<b>not</b> reachable" in text
    assert links == [f"{BASE}/exceptions?state=active&before={made + 1}#exception-{made}"]
    assert by_image["ghcr.io/acme/web"] == ("none", [])
    assert "<b>not</b>" not in html and "&lt;b&gt;not&lt;/b&gt;" in html


def test_upload_strings_are_escaped(admin: FlaskClient, tokens) -> None:
    hostile = "<script>alert(1)</script>"
    upload(
        admin,
        tokens["acme"],
        [finding("CVE-2021-44228", package=hostile, installed='1"><img src=x>', fixed=None)],
    )
    for html in (get(admin, SEARCH, q="CVE-2021-44228"), get(admin, IMAGES)):
        assert "<script>alert" not in html and '"><img src=x>' not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in get(admin, SEARCH, q="CVE-2021-44228")


def test_the_short_address_redirects_to_the_search(admin: FlaskClient) -> None:
    r = admin.get("/admin/orgs/acme/advisories?q=CVE-2021-44228&_external=1&_scheme=javascript")
    assert r.status_code == 302
    assert r.headers["Location"] == f"{SEARCH}?q=CVE-2021-44228"


def test_the_search_takes_a_fixed_number_of_queries(app: Flask, admin: FlaskClient, tokens) -> None:
    def statements(url: str) -> int:
        return count_statements(app, admin, url)

    t = tokens["acme"]
    upload(admin, t, [LOG4J], image_ref="ghcr.io/acme/img0:1")
    with_1 = statements(SEARCH + "?q=CVE-2021-44228")
    for i in range(1, 20):
        upload(admin, t, [LOG4J, finding()], image_ref=f"ghcr.io/acme/img{i}:1")
    assert len(hits(get(admin, SEARCH, q="CVE-2021-44228"))) == 20
    assert statements(SEARCH + "?q=CVE-2021-44228") == with_1


def count_statements(app: Flask, client: FlaskClient, url: str) -> int:
    """The SQL statements one page view runs (the session's check included)."""
    engine = app.extensions["fremforge.db"].engine
    count = 0

    def counter(*_args: Any) -> None:
        nonlocal count
        count += 1

    sa.event.listen(engine, "before_cursor_execute", counter)
    try:
        r = client.get(url)
    finally:
        sa.event.remove(engine, "before_cursor_execute", counter)
    assert r.status_code == 200
    return count


# -- the scan page links each finding to the search ------------------------------------------------------------------


def test_a_findings_row_links_to_its_advisory_search(admin: FlaskClient, tokens) -> None:
    t = tokens["acme"]
    scan = upload(admin, t, [LOG4J, finding("CVE-2019-5094", "medium", vendor_ids=["DSA-4535-1"])])
    upload(admin, t, [LOG4J], image_ref="ghcr.io/acme/web:1")
    html = get(admin, f"{BASE}/scans/{scan}")
    t_findings = table(html, "findings")
    column = t_findings["head"].index("Title and target")  # the link sits under the title
    links = {row[1][0].split()[0]: row[column] for row in t_findings["rows"]}
    assert links["CVE-2021-44228"][1] == [f"{SEARCH}?q=CVE-2021-44228"]
    assert links["CVE-2021-44228"][0].endswith("Images with it (CVE-2021-44228)")
    assert links["CVE-2019-5094"][1] == [f"{SEARCH}?q=CVE-2019-5094"]
    # Followed: both images with it.
    found = hits(get(admin, links["CVE-2021-44228"][1][0]))
    assert sorted(r["Image"][0].split()[0] for r in found) == ["ghcr.io/acme/api", "ghcr.io/acme/web"]


def test_the_apps_own_findings_link_to_no_search(app: Flask, admin: FlaskClient, tokens) -> None:
    from tests.factories import set_policy

    set_policy(app, "acme", require_signed=True)
    scan = upload(admin, tokens["acme"], [finding()], signature_status="unsigned")
    t_findings = table(get(admin, f"{BASE}/scans/{scan}"), "findings")
    column = t_findings["head"].index("Title and target")  # the link sits under the title
    links = {row[1][0].split()[0]: row[column][1] for row in t_findings["rows"]}
    assert links == {"FREMFORGE-UNSIGNED-IMAGE": [], "CVE-2023-1234": [f"{SEARCH}?q=CVE-2023-1234"]}


# -- images now, and one image ---------------------------------------------------------------------------------------


def images_rows(html: str) -> list[dict[str, Any]]:
    t = table(html, "images")
    return [{h: (text, links) for h, (text, links) in zip(t["head"], row, strict=True)} for row in t["rows"]]


def test_images_now_lists_each_images_latest_scan(app: Flask, admin: FlaskClient, tokens) -> None:
    t = tokens["acme"]
    upload(admin, t, [LOG4J], image_ref="ghcr.io/acme/api:1")
    web = upload(admin, t, [finding(severity="low")], image_ref="ghcr.io/acme/web:1", sha="c" * 40)
    api2 = upload(admin, t, [finding(severity="medium")], image_ref="ghcr.io/acme/api:2", ref="refs/heads/main")
    upload(admin, tokens["other"], [LOG4J], slug="other", repo="other/api", image_ref="ghcr.io/other/api:1")
    rows = images_rows(get(admin, IMAGES))
    assert [r["Image"][0] for r in rows] == ["ghcr.io/acme/api acme/api", "ghcr.io/acme/web acme/api"]
    api, web_row = rows
    assert api["Latest scan"] == ("ghcr.io/acme/api:2 refs/heads/main", [f"{BASE}/scans/{api2}"])
    assert [api[c][0] for c in ("Critical", "High", "Medium", "Low", "Fixable", "Status")] == [
        "0",
        "0",
        "1",
        "0",
        "1",
        "success",
    ]
    assert web_row["Latest scan"][1] == [f"{BASE}/scans/{web}"]
    assert web_row["Commit"][0] == "ccccccc"
    assert api["Image"][1] == [f"{IMAGES}/{image_id(app, 'acme/api', 'ghcr.io/acme/api')}"]


def test_images_now_pages_and_filters_by_repo(admin: FlaskClient, tokens, monkeypatch) -> None:
    monkeypatch.setattr(insights_pages, "IMAGES_PER_PAGE", 2)
    t = tokens["acme"]
    for i in range(5):
        upload(admin, t, image_ref=f"ghcr.io/acme/img{i}:1")
    upload(admin, t, image_ref="ghcr.io/acme/elsewhere:1", repo="acme/web")
    seen: list[str] = []
    url: str | None = IMAGES + "?repo=ACME/api"
    while url:
        html = get(admin, url)
        seen += [r["Image"][0].split()[0] for r in images_rows(html)]
        url = next_link(html)
        assert not url or parse_qs(urlsplit(url).query)["repo"] == ["ACME/api"]
    assert seen == [f"ghcr.io/acme/img{i}" for i in range(5)]
    html = get(admin, IMAGES, 400, repo="not a repo")
    assert "Enter a repository as owner/name" in text_of(html)
    assert "No images match" in text_of(get(admin, IMAGES, repo="acme/nothing"))


def test_no_images_yet_says_what_to_do(admin: FlaskClient) -> None:
    page = text_of(get(admin, IMAGES))
    assert "No images yet" in page and "Scans shows how to set that workflow up" in page


@pytest.mark.parametrize("path", ["/999", "/2147483648", "/99999999999999999999"])
def test_an_unknown_image_is_a_404_page(admin: FlaskClient, tokens, path: str) -> None:
    upload(admin, tokens["acme"])
    html = get(admin, IMAGES + path, 404)
    assert "the Images page lists every image" in text_of(html) or "Not Found" in html


def test_the_image_page_shows_its_latest_scan_and_links_to_its_scans(app: Flask, admin: FlaskClient, tokens) -> None:
    t = tokens["acme"]
    first = upload(admin, t, [LOG4J], image_ref="ghcr.io/acme/api:1")
    latest = upload(admin, t, [LOG4J, finding()], image_ref="ghcr.io/acme/api@sha256:" + "a" * 64, sha="d" * 40)
    upload(admin, t, [LOG4J], image_ref="ghcr.io/acme/web:1")
    upload(admin, t, [LOG4J], image_ref="ghcr.io/acme/api:1", repo="acme/fork")
    html = get(admin, f"{IMAGES}/{image_id(app, 'acme/api', 'ghcr.io/acme/api')}")
    page = text_of(html)
    assert f"Scan {latest} of ghcr.io/acme/api@sha256:" in page
    assert "1 critical" in page and "1 high" in page and "2 fixable" in page
    scans_url = re.search(r'<a href="([^"]+)">every scan of this image</a>', html)
    assert scans_url
    listing = get(admin, scans_url.group(1).replace("&amp;", "&"))
    ids = [int(row[0][1][0].rsplit("/", 1)[1]) for row in table(listing, "scans")["rows"]]
    assert ids == [latest, first]  # every tag and digest of this image in this repo, nothing else
    assert 'id="name" name="name" value="ghcr.io/acme/api"' in listing


def test_the_scans_list_refuses_an_image_name_with_a_tag(admin: FlaskClient) -> None:
    html = get(admin, BASE, 400, name="ghcr.io/acme/api:1")
    assert "Enter an image name without tag or digest" in text_of(html)


def test_the_image_page_takes_a_fixed_number_of_queries(app: Flask, admin: FlaskClient, tokens) -> None:
    t = tokens["acme"]
    upload(admin, t, image_ref="ghcr.io/acme/api:0")
    url = f"{IMAGES}/{image_id(app, 'acme/api', 'ghcr.io/acme/api')}"
    once = count_statements(app, admin, url)
    for i in range(1, 15):
        upload(admin, t, image_ref=f"ghcr.io/acme/api:{i}")
    assert count_statements(app, admin, url) == once
    images_once = count_statements(app, admin, IMAGES)
    for i in range(10):
        upload(admin, t, image_ref=f"ghcr.io/acme/other{i}:1")
    assert count_statements(app, admin, IMAGES) == images_once


# -- the trend: chart and table --------------------------------------------------------------------------------------


def trend_of_page(html: str, element_id: str) -> tuple[dict[date, tuple[int, ...]], dict[date, tuple[int, ...]]]:
    """The trend as the page's chart draws it and as its table says it: {day: (critical, high, medium, low)}."""
    found = re.search(rf'<svg [^>]*id="{element_id}".*?</svg>', html, re.S)
    assert found, "no chart"
    svg = ET.fromstring(found.group(0))
    assert svg.get("role") == "img"
    referred = [svg.get("aria-labelledby"), svg.get("aria-describedby")]
    assert [svg.find(f"{SVG}{tag}").get("id") for tag in ("title", "desc")] == referred  # type: ignore[union-attr]
    top = max(int(t.text or "0") for t in svg.iter(f"{SVG}text") if t.get("class") == "tick-y")
    lines = {p.get("data-level"): p.get("points", "").split() for p in svg.iter(f"{SVG}polyline")}
    rows = table(html, "trend-table")
    assert rows["head"] == ["Day", "Critical", "High", "Medium", "Low"]
    table_days = {date.fromisoformat(r[0][0]): tuple(int(c[0]) for c in r[1:]) for r in rows["rows"]}
    days = sorted(table_days)
    assert days == [days[0] + timedelta(days=i) for i in range(len(days))]  # every day once
    drawn = {
        day: tuple(chart.value_of(float(lines[level][i].split(",")[1]), top) for level in chart.LEVELS)
        for i, day in enumerate(days)
    }
    assert all(len(points) == len(days) for points in lines.values())
    return drawn, table_days


def at_day(monkeypatch: pytest.MonkeyPatch, days_ago: int) -> None:
    """Uploads from now on are stored as made at 09:00 `days_ago` days before today (the ingest's clock)."""
    at = datetime.combine(utcnow().date() - timedelta(days=days_ago), datetime.min.time()) + timedelta(hours=9)
    monkeypatch.setattr(service, "utcnow", lambda: at)


def criticals(n: int, severity: str = "critical") -> list[dict[str, Any]]:
    return [finding(f"CVE-2020-{severity}-{i}", severity) for i in range(n)]


def test_the_charts_numbers_are_the_tables(app: Flask, admin: FlaskClient, tokens, monkeypatch) -> None:
    t = tokens["acme"]
    plan = [  # (days ago, image, findings)
        (200, "api", criticals(5)),
        (60, "api", criticals(2) + criticals(3, "low")),
        (45, "web", criticals(7, "high") + criticals(1, "medium")),
        (20, "api", criticals(12)),
        (3, "web", criticals(2, "medium")),
    ]
    for ago, name, findings in plan:
        at_day(monkeypatch, ago)
        upload(admin, t, findings, image_ref=f"ghcr.io/acme/{name}:{ago}")
    monkeypatch.undo()
    today = utcnow().date()

    drawn, shown = trend_of_page(get(admin, BASE), "trend-org")
    assert drawn == shown
    assert len(shown) == 90 and max(shown) == today
    assert shown[today - timedelta(days=89)] == (5, 0, 0, 0)
    assert shown[today - timedelta(days=60)] == (2, 0, 0, 3)
    assert shown[today - timedelta(days=45)] == (2, 7, 1, 3)
    assert shown[today - timedelta(days=20)] == (12, 7, 1, 0)
    assert shown[today] == (12, 0, 2, 0)

    api = image_id(app, "acme/api", "ghcr.io/acme/api")
    drawn, shown = trend_of_page(get(admin, f"{IMAGES}/{api}"), "trend-image")
    assert drawn == shown
    assert shown[today - timedelta(days=89)] == (5, 0, 0, 0) and shown[today] == (12, 0, 0, 0)


def test_the_trend_is_on_the_first_unfiltered_scans_page_only(admin: FlaskClient, tokens) -> None:
    assert "trend-chart" not in get(admin, BASE)  # no scans yet: the onboarding, no chart
    upload(admin, tokens["acme"])
    assert 'id="trend-org"' in get(admin, BASE)
    assert "trend-chart" not in get(admin, BASE, repo="acme/api")
