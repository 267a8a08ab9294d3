"""The insights pages in a real browser (headless Chromium via playwright): an owner uploads two real Trivy reports,
reads the trend on the scans page (the chart, and its numbers in the table beside it), searches an advisory the
reports share and one that only a vendor id names, follows a result to its scan, and comes back from a finding's row;
then does the same with JavaScript turned off. Screenshots go to test-output/browser/<backend>/insights/."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

from app.models import utcnow
from tests.conftest import ROOT
from tests.factories import FIXTURES, make_org, make_token, post
from tests.test_admin_browser import TIMEOUT_MS, Shots, vulnerabilities
from tests.test_admin_browser import page as page  # the fixture: a loopback-only page; console errors fail the test

SECTION = "/admin/orgs/acme/code-security/image-scanning"
REPO = "acme/api"
# Both reports have CVE-2019-18276 (bash, no fix yet); debian-stretch names DSA-4535-1 only as a vendor id.
REPORTS = [
    ("debian-stretch.json", "ghcr.io/acme/debian:1", "1" * 40),
    ("centos-7.json", "ghcr.io/acme/centos:7", "2" * 40),
]
SHARED_ID, VENDOR_ID = "CVE-2019-18276", "DSA-4535-1"


@pytest.fixture
def shots(app: Flask, page: Any) -> Shots:
    backend = app.extensions["fremforge.db"].engine.dialect.name
    folder = ROOT / "test-output" / "browser" / backend / "insights"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    return Shots(page, folder)


def with_id(reports: dict[str, dict[str, Any]], advisory_id: str) -> list[tuple[str, str, str, str | None]]:
    """(image, package, installed, fixed) of every vulnerability naming `advisory_id` as its id or a vendor id."""
    return sorted(
        (image, v["PkgName"], v["InstalledVersion"], v.get("FixedVersion"))
        for image, report in reports.items()
        for v in vulnerabilities(report)
        if advisory_id in (v["VulnerabilityID"], *(v.get("VendorIDs") or ()))
    )


def hits_table(page: Any) -> list[dict[str, str]]:
    table = page.locator("table.advisory-hits")
    headers = [h.strip() for h in table.locator("thead th").all_text_contents()]
    return [
        dict(
            zip(
                headers,
                [" ".join(c.split()) for c in tr.locator(":scope > th, :scope > td").all_inner_texts()],
                strict=True,
            )
        )
        for tr in table.locator("tbody tr").all()
    ]


def counted(reports: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Today's trend: the critical/high/medium/low findings of both reports (each image's only scan)."""
    levels = ("CRITICAL", "HIGH", "MEDIUM", "LOW")
    found = [v for r in reports.values() for v in vulnerabilities(r)]
    return {level.capitalize(): sum(1 for v in found if v.get("Severity") == level) for level in levels}


def test_an_owner_searches_an_advisory_and_follows_it_to_a_scan(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner, live_server: str, page: Any, shots: Shots
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    make_org(app, "acme")
    token = make_token(app, "acme", ["findings:write"])
    reports = {}
    for name, image, sha in REPORTS:
        raw = (FIXTURES / "trivy" / name).read_bytes()
        reports[image] = json.loads(raw)
        r = post(client, token, raw=raw, query={"image_ref": image, "commit_sha": sha, "repo_full_name": REPO})
        assert r.status_code == 202, r.get_json()
    result = runner.invoke(args=["admin", "login-url", "acme"])
    assert result.exit_code == 0, result.output
    page.goto(result.output.strip().splitlines()[-1])
    page.get_by_role("button", name="Sign in to acme").click()
    expect(page).to_have_url(live_server + SECTION)

    # 1. The scans page draws the trend, and has its numbers in a table beside it, behind a disclosure.
    chart = page.get_by_role(
        "img", name=re.compile(r"^Findings by severity per day, last 90 days: every image of acme")
    )
    expect(chart).to_be_visible()
    numbers = page.locator("table.trend-table")
    expect(numbers).to_be_hidden()
    page.get_by_text("The numbers, day by day").first.click()
    expect(numbers).to_be_visible()
    expect(numbers.locator("tbody tr")).to_have_count(90)
    today = numbers.get_by_role("row").filter(has=page.get_by_role("rowheader", name=utcnow().date().isoformat()))
    cells = [c.strip() for c in today.locator("td").all_inner_texts()]
    assert dict(zip(["Critical", "High", "Medium", "Low"], map(int, cells), strict=True)) == counted(reports)
    for level, n in counted(reports).items():  # the chart's legend says the same
        expect(chart.locator(f'g.legend[data-level="{level.lower()}"]')).to_have_text(f"{level} {n}")
    shots("scans-trend")

    # 2. The Advisories tab: search the id both reports have; a row per finding, counted from the reports.
    page.get_by_role("navigation", name="Image scanning").get_by_role("link", name="Advisories").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Advisories")
    page.get_by_label("Advisory").fill(SHARED_ID.lower())
    page.get_by_label("Advisory").press("Enter")
    expect(page.locator("table.advisory-hits tbody tr")).to_have_count(len(with_id(reports, SHARED_ID)))
    rows = hits_table(page)
    assert sorted(
        (r["Image"].split()[0], r["Package"], r["Installed"], None if r["Fix"] == "no fix yet" else r["Fix"])
        for r in rows
    ) == [(i.split(":")[0], p, v, f) for i, p, v, f in with_id(reports, SHARED_ID)]
    assert all(r["Advisory"] == SHARED_ID and r["Exception"] == "none" for r in rows)
    shots("advisory-search")

    # 3. An id that only a vendor id names: found too, and said so.
    page.get_by_label("Advisory").fill(VENDOR_ID)
    page.get_by_role("button", name="Search").click()
    expected = with_id(reports, VENDOR_ID)
    expect(page.locator("table.advisory-hits tbody tr")).to_have_count(len(expected))
    assert {r["Advisory"] for r in hits_table(page)} == {f"CVE-2019-5094 has it as a vendor id: {VENDOR_ID}"}
    shots("advisory-vendor-id")

    # 4. A bad search: the reason beside the field, the field marked.
    page.get_by_label("Advisory").fill("C*")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#q-error")).to_contain_text("needs at least 4 characters before the *")
    expect(page.get_by_label("Advisory")).to_have_attribute("aria-invalid", "true")

    # 5. From a result to its scan: the centos image's latest scan, where the finding's row leads back to the search.
    page.get_by_label("Advisory").fill(SHARED_ID)
    page.get_by_label("Advisory").press("Enter")
    page.get_by_role("link", name="ghcr.io/acme/centos:7", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("ghcr.io/acme/centos:7")
    row = page.locator("table.findings tbody tr").filter(has_text=SHARED_ID)
    expect(row).to_have_count(1)
    shots("scan-from-search")
    row.get_by_role("link", name=f"Images with it ({SHARED_ID})").click()
    expect(page.get_by_label("Advisory")).to_have_value(SHARED_ID)
    expect(page.locator("table.advisory-hits tbody tr")).to_have_count(2)

    # 6. The Images tab: each image now; one image's page with its trend, and its scans.
    page.get_by_role("navigation", name="Image scanning").get_by_role("link", name="Images").click()
    expect(page.locator("table.images tbody tr")).to_have_count(2)
    page.get_by_role("link", name="ghcr.io/acme/debian", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("ghcr.io/acme/debian")
    expect(
        page.get_by_role(
            "img", name="Findings by severity per day, last 90 days: ghcr.io/acme/debian in acme/api", exact=True
        )
    ).to_be_visible()
    shots("image")
    page.get_by_role("link", name="every scan of this image").click()
    expect(page.locator("table.scans tbody tr")).to_have_count(1)
    expect(page.locator("table.scans")).to_contain_text("ghcr.io/acme/debian:1")


def test_the_search_works_without_javascript(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner, live_server: str, browser: Any
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    make_org(app, "acme")
    token = make_token(app, "acme", ["findings:write"])
    name, image, sha = REPORTS[0]
    r = post(
        client,
        token,
        raw=(FIXTURES / "trivy" / name).read_bytes(),
        query={"image_ref": image, "commit_sha": sha, "repo_full_name": REPO},
    )
    assert r.status_code == 202, r.get_json()
    context = browser.new_context(java_script_enabled=False, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    context.route(
        "**/*",
        lambda route: route.continue_() if urlsplit(route.request.url).hostname == "127.0.0.1" else route.abort(),
    )
    try:
        page = context.new_page()
        result = runner.invoke(args=["admin", "login-url", "acme"])
        page.goto(result.output.strip().splitlines()[-1])
        page.get_by_role("button", name="Sign in to acme").click()
        page.goto(live_server + SECTION + "/advisories")
        page.get_by_label("Advisory").fill(VENDOR_ID)
        page.get_by_role("button", name="Search").click()
        expect(page.locator("table.advisory-hits tbody tr")).to_have_count(4)
        page.get_by_role("link", name=image, exact=True).first.click()
        expect(page.get_by_role("heading", level=1)).to_contain_text(image)
        page.goto(live_server + SECTION)
        expect(page.get_by_role("img", name=re.compile("^Findings by severity per day"))).to_be_visible()
        page.get_by_text("The numbers, day by day").click()  # <details> opens without a script
        expect(page.locator("table.trend-table")).to_be_visible()
    finally:
        context.close()
