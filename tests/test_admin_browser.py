"""The admin pages in a real browser (headless Chromium via playwright), used as an org owner would use them.

Signs in with a one-time link from `admin login-url`, changes the policy, trips a validation error, looks at
uploaded Trivy reports in the scans list and a scan's findings, and moves by keyboard; with a GitHub App configured
against the fake GitHub, accepts a blocking finding's risk from its row and sees GitHub turn green. Every page
visited is saved as a full-page screenshot under test-output/browser/<backend>/ (gitignored) for a person to look at.
Nothing leaves the machine: the browser context refuses every request not to 127.0.0.1.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

from app.github.client import github_app
from app.models import PolicyException, utcnow
from app.worker import Loop
from tests.conftest import ROOT, MakeApp, app_with_github, org_with_installation
from tests.factories import FIXTURES, finding, make_org, make_token, post, seed
from tests.fakes import FakeGitHub

SECTION = "/admin/orgs/acme/code-security/image-scanning"
TIMEOUT_MS = 10_000
# (report, image ref, commit): each image on a commit of its own, so each row's posted status is its own verdict.
REPORTS = [
    ("debian-stretch.json", "ghcr.io/acme/debian-stretch:1", "1" * 40),  # DSA vendor ids; medium and low
    ("centos-7.json", "ghcr.io/acme/centos-7:1", "2" * 40),  # RHSA vendor ids; medium and low, one unfixed
    ("fluentd-gems.json", "ghcr.io/acme/fluentd:1", "3" * 40),  # critical + high; a DSA id, a GHSA in References
    ("nuget.json", "ghcr.io/acme/nuget:1", "4" * 40),  # a GHSA as the VulnerabilityID
]
REPO = "acme/api"
GHSA_URL = re.compile(r"^https://github\.com/advisories/(GHSA(?:-[0-9a-z]{4}){3})$", re.IGNORECASE)


# -- what the pages should show, worked out from the report files themselves -------------------------------------------


def vulnerabilities(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for r in report.get("Results") or () for v in r.get("Vulnerabilities") or ()]


def expected_row(report: dict[str, Any]) -> dict[str, str]:
    """The scans list's cells for a report uploaded under block_pull, counted here from the JSON."""
    vulns = vulnerabilities(report)
    keys = {(v["VulnerabilityID"], v["PkgName"], v.get("InstalledVersion"), v.get("PkgPath")) for v in vulns}
    assert len(keys) == len(vulns), "this test counts raw entries: pick a report without duplicate findings"
    count = {
        s: sum(1 for v in vulns if (v.get("Severity") or "").upper() == s)
        for s in ("CRITICAL", "HIGH", "MEDIUM", "LOW")
    }
    fixable = sum(1 for v in vulns if v.get("FixedVersion"))
    status = "failure" if count["CRITICAL"] or count["HIGH"] else "success"  # block_pull: high or critical fails
    return {
        "Critical": str(count["CRITICAL"]),
        "High": str(count["HIGH"]),
        "Medium": str(count["MEDIUM"]),
        "Low": str(count["LOW"]),
        "Fixable": str(fixable),
        "Status": status,
    }


def advisory_url(advisory_id: str) -> str:
    """Where the spec says an advisory id should lead (§6): the CVE record, GitHub advisory, distro trackers."""
    upper = advisory_id.upper()
    if upper.startswith("CVE-"):
        return f"https://www.cve.org/CVERecord?id={advisory_id}"
    if upper.startswith("GHSA-"):
        return f"https://github.com/advisories/{advisory_id}"
    if upper.startswith("DSA-"):
        return f"https://security-tracker.debian.org/tracker/{advisory_id}"
    if upper.startswith("RHSA-"):
        return f"https://access.redhat.com/errata/{advisory_id}"
    raise AssertionError(f"no expectation for {advisory_id}: extend advisory_url")


def expected_links(report: dict[str, Any]) -> set[tuple[str, str]]:
    """(id, url) of every advisory the report names: its ids, vendor ids and GHSA advisories in its references."""
    found = set()
    for v in vulnerabilities(report):
        ids = [v["VulnerabilityID"], *(v.get("VendorIDs") or ())]
        ids += [m.group(1) for ref in v.get("References") or () if (m := GHSA_URL.match(ref))]
        found |= {(i, advisory_url(i)) for i in ids}
    return found


def same_url(url: str) -> str:
    """A URL with its path and query percent-decoding undone: RHSA-2019%3A2304 and RHSA-2019:2304 are one page."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{unquote(parts.path)}" + (f"?{unquote(parts.query)}" if parts.query else "")


# -- the browser ----------------------------------------------------------------------------------------------------


@pytest.fixture
def app(request: pytest.FixtureRequest, make_app: MakeApp) -> Flask:
    """The app; for a test parametrised with `app="github"`, with a GitHub App configured against the fake GitHub
    (installed on REPO of acme)."""
    if getattr(request, "param", None) == "github":
        return app_with_github(make_app, request.getfixturevalue("fake_github"), [REPO])
    return make_app()


@pytest.fixture
def out_dir(app: Flask) -> Path:
    """test-output/browser/<backend>/, emptied of the previous run's screenshots."""
    backend = app.extensions["fremforge.db"].engine.dialect.name
    folder = ROOT / "test-output" / "browser" / backend
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    return folder


@pytest.fixture
def page(browser: Any, live_server: str) -> Iterator[Any]:
    """A fresh browser context (its own cookies) and page; any request not to 127.0.0.1 is aborted and recorded."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-GB")
    context.set_default_timeout(TIMEOUT_MS)
    blocked: list[str] = []
    errors: list[str] = []

    def only_loopback(route: Any) -> None:
        url = route.request.url
        if urlsplit(url).hostname == "127.0.0.1":
            route.continue_()
        else:
            blocked.append(url)
            route.abort("blockedbyclient")

    context.route("**/*", only_loopback)
    page = context.new_page()
    # The guard works: a request off the machine fails in the page and is recorded.
    assert page.evaluate("fetch('http://example.invalid/').then(() => 'loaded', () => 'refused')") == "refused"
    assert blocked == ["http://example.invalid/"]
    blocked.clear()

    def on_console(msg: Any) -> None:
        # "Failed to load resource" repeats a response's status, which on_response judges (a 422 page is fine).
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            errors.append(f"console error: {msg.text}")

    def on_response(r: Any) -> None:
        if r.status >= 500 or (r.status >= 400 and r.request.resource_type != "document"):
            errors.append(f"{r.status} {r.request.resource_type} {r.url}")

    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on("console", on_console)
    page.on("response", on_response)
    try:
        yield page
    finally:
        context.close()
    assert blocked == [], f"the pages tried to load something off the machine: {blocked}"
    assert errors == [], errors


class Shots:
    """Full-page screenshots, numbered in the order the pages were visited."""

    def __init__(self, page: Any, folder: Path) -> None:
        self.page, self.folder, self.n = page, folder, 0

    def __call__(self, name: str) -> None:
        self.n += 1
        self.page.screenshot(path=str(self.folder / f"{self.n:02d}-{name}.png"), full_page=True)


def stylesheet_applied(page: Any) -> bool:
    """admin.css loaded and in force (its rules parsed, the skip link moved off screen until focused), waited for up
    to TIMEOUT_MS: the page's elements can be found before its stylesheet has been applied."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            """() => [...document.styleSheets].some(
                         s => s.href && s.href.endsWith('/admin.css') && s.cssRules.length > 20)
                     && getComputedStyle(document.querySelector('.skip-link')).position === 'absolute'""",
            timeout=TIMEOUT_MS,
        )
    except PlaywrightTimeout:
        return False
    return True


def scans_table(page: Any) -> list[dict[str, Any]]:
    """The scans list as rows of {column heading: cell text}, plus the row's locator under "_row"."""
    table = page.locator("table.scans")
    headers = [h.strip() for h in table.locator("thead th").all_text_contents()]
    rows = []
    for tr in table.locator("tbody tr").all():
        cells = [" ".join(c.split()) for c in tr.locator(":scope > th, :scope > td").all_inner_texts()]
        rows.append(dict(zip(headers, cells, strict=True)) | {"_row": tr})
    return rows


def policy(runner: FlaskCliRunner) -> dict[str, Any]:
    result = runner.invoke(args=["policy", "show", "acme"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


# -- the test -------------------------------------------------------------------------------------------------------


def test_an_owner_uses_the_admin_pages_in_a_browser(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner, live_server: str, page: Any, out_dir: Path
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    shot = Shots(page, out_dir)
    scans_url = live_server + SECTION

    # 1. An org and a CI token; a one-time sign-in link from the command line lands on the (empty) scans page.
    make_org(app, "acme", "acme")
    token = make_token(app, "acme", ["findings:write"])
    result = runner.invoke(args=["admin", "login-url", "acme"])
    assert result.exit_code == 0, result.output
    link = result.output.strip().splitlines()[-1]
    assert link.startswith(f"{live_server}/admin/login/link/"), result.output
    page.goto(link)  # opening the link shows a button and spends nothing ...
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in to acme")
    shot("login-link")
    page.get_by_role("button", name="Sign in to acme").click()  # ... pressing it signs in
    expect(page).to_have_url(scans_url)
    expect(page.get_by_role("heading", level=1)).to_have_text("Scans")
    expect(page.get_by_role("heading", name="No scans yet")).to_be_visible()
    expect(page.locator("#workflow-snippet")).to_contain_text(f"FREMFORGE_URL: {live_server}")
    expect(page.locator(".who")).to_contain_text("acme")
    assert stylesheet_applied(page)
    shot("scans-empty")

    # 2. Settings: choose block_pull, save, see it saved, and still chosen after a reload.
    page.get_by_role("navigation", name="Image scanning").get_by_role("link", name="Settings").click()
    expect(page).to_have_url(f"{scans_url}/settings")
    block_pull = page.get_by_role("radio", name="block_pull")
    expect(page.get_by_role("radio", name="warn")).to_be_checked()  # the default
    shot("settings")
    block_pull.check()
    page.get_by_role("button", name="Save settings").click()
    expect(page.locator(".flash-success")).to_contain_text("Saved")
    expect(page.locator(".flash-success")).to_contain_text("block action")
    expect(block_pull).to_be_checked()
    shot("settings-saved")
    page.reload()
    expect(page.get_by_role("heading", level=1)).to_have_text("Settings")
    expect(page.locator(".flash-success")).to_have_count(0)  # flashed once
    expect(block_pull).to_be_checked()
    assert policy(runner)["block_action"] == "block_pull"

    # 3. A retention of 0 days is refused, with the error beside the field; nothing is stored.
    before = policy(runner)
    retention = page.get_by_label("Retention (days)")
    retention.fill("0")
    page.get_by_role("button", name="Save settings").click()
    message = "Enter a whole number of days, from 1 to"
    expect(page.locator(".error-summary")).to_contain_text("Nothing was changed")
    field = page.locator("div.field").filter(has=page.locator("#retention_days"))
    expect(field.locator(".field-error")).to_contain_text(message)
    expect(retention).to_have_attribute("aria-invalid", "true")
    expect(retention).to_have_attribute("aria-describedby", re.compile(r"\bretention_days-error\b"))
    expect(retention).to_have_value("0")  # the value as typed, to correct
    expect(page.locator(".field-error")).to_have_count(1)  # only this field is wrong
    error_box = field.locator(".field-error").bounding_box()
    input_box = retention.bounding_box()
    assert error_box and input_box
    assert 0 <= input_box["y"] - (error_box["y"] + error_box["height"]) < 40, (error_box, input_box)  # just above it
    shot("settings-invalid-retention")
    page.locator(".error-summary a").click()  # the summary's link moves to the field
    expect(page).to_have_url(re.compile(r"#retention_days$"))
    assert policy(runner) == before
    assert before["retention_days"] == 365

    # 4. Four real Trivy reports uploaded through the API; the scans list shows each, newest first, counted right.
    reports = {}
    for name, image, sha in REPORTS:
        raw = (FIXTURES / "trivy" / name).read_bytes()
        reports[image] = json.loads(raw)
        r = post(client, token, raw=raw, query={"image_ref": image, "commit_sha": sha, "repo_full_name": REPO})
        assert r.status_code == 202, r.get_json()
    page.goto(scans_url)
    expect(page.locator("table.scans tbody tr")).to_have_count(len(REPORTS))
    rows = scans_table(page)
    assert [r["Image"] for r in rows] == [image for _, image, _ in reversed(REPORTS)]
    for row, (_, image, sha) in zip(rows, reversed(REPORTS), strict=True):
        want = expected_row(reports[image])
        assert {k: row[k] for k in want} == want, image
        assert row["Commit"] == f"{sha[:7]} {REPO}"
        assert row["PR"] == "—"
        assert row["Commit status posted"].startswith(want["Status"]), row["Commit status posted"]
        commit_link = row["_row"].locator("td").first.get_by_role("link")
        expect(commit_link).to_have_attribute("href", f"https://github.com/{REPO}/commit/{sha}")
    expect(page.locator(".policy-summary")).to_contain_text("block_pull")
    wrap = page.locator(".table-wrap")  # the table fits the window: no sideways scrolling at 1280px
    assert wrap.evaluate("w => w.scrollWidth <= w.clientWidth"), wrap.evaluate("w => [w.scrollWidth, w.clientWidth]")
    for row in rows:  # a short image ref is not broken across lines (the column leaves it room)
        assert row["_row"].locator("th.image a").evaluate("a => a.getClientRects().length") == 1, row["Image"]
    # Severity counts line up under their headings (right-aligned numbers, one column each).
    head = page.locator("table.scans thead th", has_text=re.compile(r"^Critical$")).bounding_box()
    cell = rows[0]["_row"].locator("td.num").first.bounding_box()
    assert head and cell and abs((head["x"] + head["width"]) - (cell["x"] + cell["width"])) < 1
    shot("scans")

    # 5. Each scan's detail, opened from its image link: findings linked to their advisories where the spec says.
    for _, image, _ in REPORTS:
        page.goto(scans_url)
        page.get_by_role("link", name=image, exact=True).click()
        expect(page.get_by_role("heading", level=1)).to_contain_text(image)
        want = expected_row(reports[image])
        expect(page.locator(".facts")).to_contain_text(want["Status"])
        vulns = vulnerabilities(reports[image])
        expect(page.locator("table.findings tbody tr")).to_have_count(len(vulns))
        links = page.locator("table.findings th.advisory a")
        shown = {(a.text_content().strip(), same_url(a.get_attribute("href"))) for a in links.all()}
        assert shown == {(i, same_url(u)) for i, u in expected_links(reports[image])}, image
        # An advisory id or a version is never broken in two (at its hyphens) to make room.
        for unbroken in [*links.all(), *page.locator("table.findings td > code, table.findings .fixable code").all()]:
            assert unbroken.evaluate("e => e.getClientRects().length") == 1, unbroken.text_content()
        # Most severe first.
        order = ["critical", "high", "medium", "low", "unknown"]
        severities = [
            s.strip() for s in page.locator("table.findings tbody tr td:first-child .badge").all_text_contents()
        ]
        assert severities == sorted(severities, key=order.index), severities
        shot(f"scan-{image.split('/')[-1].split(':')[0]}")
    hosts = {urlsplit(u).hostname for _, image, _ in REPORTS for _, u in expected_links(reports[image])}
    assert hosts == {"www.cve.org", "security-tracker.debian.org", "access.redhat.com", "github.com"}

    # The audit log names the policy change.
    page.get_by_role("navigation", name="Image scanning").get_by_role("link", name="Audit log").click()
    expect(page.locator("table.audit")).to_contain_text("Settings changed")
    expect(page.locator("table.audit")).to_contain_text("block_pull")
    shot("audit")

    # 6. Keyboard: the first Tab from the top of a page reaches the skip link, shown while focused; Enter skips.
    page.goto(scans_url)
    skip = page.get_by_role("link", name="Skip to main content")
    expect(skip).not_to_be_in_viewport()  # off screen until focused
    page.keyboard.press("Tab")
    expect(skip).to_be_focused()
    expect(skip).to_be_visible()
    expect(skip).to_be_in_viewport(ratio=1)
    shot("skip-link-focused")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"#main$"))
    expect(page.locator("main#main")).to_be_focused()

    # 7. The pages may not be framed (CSP and X-Frame-Options), and signing out ends the session for good.
    answer = page.goto(scans_url)
    assert answer is not None
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    assert answer.headers["x-frame-options"] == "DENY" and answer.headers["cache-control"] == "no-store"
    cookies = page.context.cookies()
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{live_server}/admin/login")
    expect(page.locator(".flash-info")).to_contain_text("You are signed out.")
    page.context.clear_cookies()
    page.context.add_cookies(cookies)  # the cookie from before signing out, put back
    page.goto(scans_url)
    expect(page).to_have_url(re.compile(r"/admin/login\?next="))
    expect(page.locator(".flash-info")).to_contain_text("That session was signed out")
    shot("replayed-cookie-refused")


# -- accepting a risk from a finding's row ---------------------------------------------------------------------------


def work(app: Flask) -> None:
    """The outbox worker until nothing is left, as `flask worker run` does it: re-posts asked become deliveries."""
    with app.app_context():
        gh = github_app()
        assert gh is not None
        Loop(gh, once=True).run()


@pytest.mark.parametrize("app", ["github"], indirect=True)
def test_an_owner_accepts_a_findings_risk_and_github_turns_green(
    app: Flask,
    client: FlaskClient,
    runner: FlaskCliRunner,
    live_server: str,
    page: Any,
    out_dir: Path,
    fake_github: FakeGitHub,
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    folder = out_dir / "exceptions"  # apart from the other test's screenshots (each empties its own)
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    shot = Shots(page, folder)
    sha, image = "5" * 40, "ghcr.io/acme/api"
    reason = "xz is only in the build stage; the runtime image never runs it."
    expiry = (utcnow().date() + timedelta(days=30)).isoformat()

    # 1. An org blocking pull requests, its App installed; a critical, fixable finding uploaded: GitHub shows red.
    token = org_with_installation(app)
    blocking = finding("CVE-2024-3094", "critical", package="xz-utils", installed="5.6.0", fixed="5.6.1")
    r = post(client, token, seed([blocking], image_ref=f"{image}:1", sha=sha, repo=REPO))
    assert r.status_code == 202, r.get_json()
    scan_url = f"{live_server}{SECTION}/scans/{r.get_json()['scan_run_id']}"
    work(app)
    status = fake_github.latest_status("acme", "api", sha)
    assert status is not None and status["state"] == "failure", status
    assert fake_github.runs_of("acme", "api", sha)[-1]["conclusion"] == "failure"

    # 2. Signed in, the scan's page marks the finding blocking; its row's link opens the form, prefilled.
    result = runner.invoke(args=["admin", "login-url", "acme"])
    assert result.exit_code == 0, result.output
    page.goto(result.output.strip().splitlines()[-1])
    page.get_by_role("button", name="Sign in to acme").click()
    expect(page).to_have_url(live_server + SECTION)
    page.goto(scan_url)
    row = page.locator("table.findings tbody tr").filter(has_text="CVE-2024-3094")
    expect(row.locator("td.gate")).to_have_text("blocking")
    shot("scan-blocking")
    row.get_by_role("link", name="Accept this risk").click()
    expect(page).to_have_url(re.compile(re.escape(f"{live_server}{SECTION}/exceptions?") + r".*#create$"))
    expect(page.get_by_role("heading", level=2, name="Accept a risk")).to_be_visible()
    expect(page.get_by_label("Advisory", exact=True)).to_have_value("CVE-2024-3094")
    expect(page.get_by_label("Package (optional)")).to_have_value("xz-utils")
    expect(page.get_by_label("Repository (optional)")).to_have_value(REPO)
    expect(page.get_by_label("Image (optional)")).to_have_value(image)  # the scan's image name: every tag
    expect(page.get_by_label("Reason", exact=True)).to_have_value("")
    with app.app_context():  # opening the form made nothing
        from app import db

        assert db.session().query(PolicyException).count() == 0
    shot("exception-form-prefilled")

    # 3. A reason and an expiry, then the POST: back on the scan, the finding excepted with both.
    page.get_by_label("Reason", exact=True).fill(reason)
    page.get_by_label("Expires", exact=True).fill(expiry)
    page.get_by_role("button", name="Create exception").click()
    expect(page).to_have_url(scan_url)
    expect(page.locator(".flash-success")).to_contain_text("Created exception")
    gate = row.locator("td.gate")
    expect(gate).to_contain_text("excepted now")
    expect(gate).to_contain_text(reason)
    expect(gate).to_contain_text(f"until {expiry} 00:00 UTC")
    expect(row.get_by_role("link", name="Accept this risk")).to_have_count(0)  # nothing left to accept
    shot("scan-excepted")

    # 4. The exception listed (active), linked from the finding.
    gate.get_by_role("link", name=re.compile(r"^exception \d+$")).click()
    listed = page.locator("table.exceptions tbody tr")
    expect(listed).to_have_count(1)
    expect(listed).to_contain_text("CVE-2024-3094")
    expect(listed).to_contain_text(reason)
    expect(listed).to_contain_text("via admin")
    shot("exceptions-list")

    # 5. The worker re-posts the commit: GitHub shows success, and the check run lists the exception.
    work(app)
    status = fake_github.latest_status("acme", "api", sha)
    assert status is not None and status["state"] == "success", status
    run = fake_github.runs_of("acme", "api", sha)[-1]
    assert run["conclusion"] == "success", run
    summary = run["output"]["summary"]
    assert "1 excepted" in summary, summary
    assert f"Excepted until {expiry}: `CVE-2024-3094` in `xz-utils`" in summary, summary
    assert "xz is only in the build stage" in summary, summary
