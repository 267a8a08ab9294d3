"""The gate on the admin pages (spec sections 3, 4 and 6): a scan's findings marked blocking / new / existing on the
base / excepted, with the baseline it was compared with; a commit judged under the current policy beside what was
last posted to GitHub, and a sentence when the two differ."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from app import db, orgs
from app.admin import scan_pages
from app.models import Finding, Repost, utcnow
from tests.conftest import admin_login
from tests.factories import finding, make_org, make_token, set_policy
from tests.test_admin_pages import table, text_of
from tests.test_gate_api import HEAD, IMAGE, MAIN, open_pull_request, pull_request_with_baseline, upload

PAGES = "/admin/orgs/acme/code-security/image-scanning"
GATE = 6  # the findings table's last column: how the gate judged each finding


@pytest.fixture
def app(webhook_app: Flask) -> Flask:
    return webhook_app


@pytest.fixture
def token(app: Flask) -> str:
    make_org(app)
    return make_token(app)


@pytest.fixture
def admin(app: Flask, client: FlaskClient, token: str) -> FlaskClient:
    admin_login(app, client)
    return client


def page(client: FlaskClient, path: str) -> str:
    r = client.get(PAGES + path)
    assert r.status_code == 200, r.get_data(as_text=True)[:2000]
    return r.get_data(as_text=True)


def gate_column(html: str) -> dict[tuple[str, str], str]:
    """(advisory id, package) -> the text of the finding's gate cell."""
    t = table(html, "findings")
    assert t["head"][GATE] == "Gate"
    return {(row[1][0].split()[0], row[2][0]): row[GATE][0] for row in t["rows"]}


def run_sql(app: Flask, statement: Any) -> None:
    with app.app_context():
        session = db.session()
        session.execute(statement)
        session.commit()


# ---------------------------------------------------------------- a scan


def test_a_scan_compared_with_its_baseline_marks_each_finding_and_links_the_baseline(app, admin, token):
    base, head = pull_request_with_baseline(admin, token, app)
    html = page(admin, f"/scans/{head}")
    assert gate_column(html) == {
        ("CVE-2024-0001", "openssl"): "existing on the base",
        ("CVE-2024-0001", "libssl3"): "blocking new",
        ("CVE-2024-0003", "openssl"): "blocking new",
        ("CVE-2024-0004", "openssl"): "new",
        ("CVE-2024-0005", "openssl"): "new",
    }
    # Badges carry their words (not colour alone), each in its own element.
    assert '<span class="badge gate-blocking">blocking</span>' in html
    assert '<span class="badge gate-new">new</span>' in html
    assert '<span class="badge gate-existing">existing on the base</span>' in html
    text = text_of(html)
    assert f"Baseline compared with scan {base} (this image built from the pull request" in text
    assert f'href="{PAGES}/scans/{base}"' in html
    assert "blocking on new findings" in text
    assert "2 findings of this image block, and the policy blocks pull requests" in text
    assert "A finding blocks when its severity is at or above the policy" in text
    assert "high or critical findings" not in text  # the rule before the threshold existed
    assert "no baseline" not in text
    # The baseline's own page: built from main, compared with nothing, every finding counted.
    text = text_of(page(admin, f"/scans/{base}"))
    assert "not compared: every finding counted" not in text  # it was judged under block_on new
    assert "no baseline: every finding counted" in text
    assert set(gate_column(page(admin, f"/scans/{base}")).values()) == {"blocking"}


def test_block_on_new_without_a_baseline_says_every_finding_counted(app, admin, token):
    set_policy(app, "acme", block_action="block_pull", block_on="new")
    open_pull_request(admin, base="develop")
    scan = upload(admin, token, [finding("CVE-1", "critical"), finding("CVE-2", "low")], sha=HEAD)["scan_run_id"]
    html = page(admin, f"/scans/{scan}")
    text = text_of(html)
    assert "no baseline: every finding counted" in text
    assert "compared with scan" not in text
    assert "1 finding of this image blocks, and the policy blocks pull requests" in text
    assert gate_column(html) == {("CVE-1", "openssl"): "blocking", ("CVE-2", "openssl"): "not blocking"}


def test_under_block_on_all_and_warn_nothing_is_compared_and_nothing_blocked(app, admin, token):
    scan = upload(admin, token, [finding("CVE-1", "critical")])["scan_run_id"]  # the default policy: warn, all
    html = page(admin, f"/scans/{scan}")
    text = text_of(html)
    assert "not compared: every finding counted (block on all)" in text
    assert "does not block: under the block action warn the state posted is success" in text
    assert "A finding blocks when" not in text  # only said where something can block
    assert gate_column(html) == {("CVE-1", "openssl"): "not blocking"}
    set_policy(app, "acme", block_action="block_pull", block_threshold="critical")
    scan = upload(admin, token, [finding("CVE-1", "high")], image_ref="ghcr.io/acme/api:2")["scan_run_id"]
    text = text_of(page(admin, f"/scans/{scan}"))
    assert "does not block: no finding met the blocking rule" in text


def test_excepted_and_redacted_findings_keep_their_marks_through_filters_and_pages(app, admin, token, monkeypatch):
    monkeypatch.setattr(scan_pages, "FINDINGS_PER_PAGE", 2)
    set_policy(app, "acme", block_action="block_pull")
    found = [finding(f"CVE-{i}", severity) for i, severity in enumerate(["critical", "high", "high", "low", "low"])]
    scan = upload(admin, token, found)["scan_run_id"]
    run_sql(app, sa.update(Finding).where(Finding.cve_id == "CVE-2").values(exception_id=7, blocking=False))
    run_sql(
        app,
        sa.update(Finding)
        .where(Finding.cve_id == "CVE-0")
        .values(cve_id=None, severity=None, package=None, installed_version=None, redacted_at=datetime(2027, 1, 1)),
    )
    marks: dict[str, str] = {}
    for n in (1, 2, 3):
        rows = table(page(admin, f"/scans/{scan}?page={n}"), "findings")["rows"]
        assert len(rows) == (2 if n < 3 else 1)
        marks |= {row[1][0].split()[0]: row[-2][0] for row in rows}  # the gate cell, before the actions
    assert marks == {
        "CVE-1": "blocking",
        "CVE-2": "excepted (exception 7)",
        "CVE-3": "not blocking",
        "CVE-4": "not blocking",
        "Finding": "blocking",  # the redacted one: its flags are not payload, retention keeps them
    }
    rows = table(page(admin, f"/scans/{scan}?severity=high"), "findings")["rows"]
    assert [(row[1][0].split()[0], row[GATE][0]) for row in rows] == [
        ("CVE-1", "blocking"),
        ("CVE-2", "excepted (exception 7)"),
    ]


def test_uploaded_strings_stay_escaped(app, admin, token):
    set_policy(app, "acme", block_action="block_pull")
    evil = '<img src=x onerror="alert(1)">'
    scan = upload(admin, token, [finding("CVE-1", "critical", package=evil)], image_ref=f"{IMAGE}:<b>x</b>")
    for path in (
        f"/scans/{scan['scan_run_id']}",
        f"/commits/{'0123456789abcdef0123456789abcdef01234567'}?repo=acme/api",
    ):
        html = page(admin, path)
        assert "<img src=x" not in html and "<b>x</b>" not in html
        assert "&lt;b&gt;x&lt;/b&gt;" in html
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in page(admin, f"/scans/{scan['scan_run_id']}")


# ---------------------------------------------------------------- a commit


def current_rows(html: str) -> list[dict[str, Any]]:
    t = table(html, "current")
    return [dict(zip(t["head"], row, strict=True)) for row in t["rows"]]


def queue_repost(app: Flask, sha: str) -> None:
    with app.app_context():
        session = db.session()
        org = orgs.by_slug(session, "acme")
        assert org is not None
        session.add(
            Repost(
                org_id=org.id,
                repo_full_name="acme/api",
                commit_sha=sha,
                base_url="http://fremforge.test",
                version=1,
                requested_at=utcnow(),
            )
        )
        session.commit()


def test_a_commit_under_the_current_policy_beside_what_was_posted(app, admin, token):
    base, head = pull_request_with_baseline(admin, token, app)
    worker = upload(admin, token, [finding("CVE-9", "critical")], image_ref="ghcr.io/acme/worker:pr", sha=HEAD)
    html = page(admin, f"/commits/{HEAD}?repo=acme/api")
    text = text_of(html)
    assert "Posted to GitHub" in text and "Under the current policy" in text
    assert "The state aggregates the latest scan of each image, judged under the current policy" in text
    assert "latest judged scan" not in text
    assert "failure fremforge/image-scan 2 images · 1 new critical, 2 new high · blocking" in text
    assert "The same as last posted to GitHub." in text
    assert "differs" not in text
    rows = current_rows(html)
    assert [r["Image"][0] for r in rows] == [f"{IMAGE}:pr-2@sha256:{'0' * 64}", "ghcr.io/acme/worker:pr"]
    assert [r["Status"][0] for r in rows] == ["failure", "failure"]
    assert [r["Blocking"][0] for r in rows] == ["2 high", "1 critical"]
    assert rows[0]["Not blocking"][0] == "1 below the threshold, 1 unfixed, 1 existing on the base"
    assert rows[1]["Not blocking"][0] == "none"
    assert rows[0]["Baseline"] == (f"compared with scan {base}", [f"{PAGES}/scans/{base}"])
    assert rows[1]["Baseline"][0] == "no baseline: every finding counts"  # no worker image was built from main
    assert rows[0]["Image"][1] == [f"{PAGES}/scans/{head}"]
    assert rows[1]["Image"][1] == [f"{PAGES}/scans/{worker['scan_run_id']}"]


def test_a_changed_policy_says_the_commit_differs_from_what_github_shows(app, admin, token):
    pull_request_with_baseline(admin, token, app)
    set_policy(app, "acme", block_threshold="critical")  # the new highs no longer block; the criticals never did
    html = page(admin, f"/commits/{HEAD}?repo=acme/api")
    text = text_of(html)
    assert "failure fremforge/image-scan 1 image · 2 new high · blocking" in text  # what was posted
    assert "success fremforge/image-scan 1 image · 2 critical, 2 high, 1 medium" in text  # what it is now
    assert "This differs from what was last posted to GitHub." in text
    assert "GitHub shows the state as of the last post" in text
    assert "re-post under the current policy is queued" not in text
    [row] = current_rows(html)
    assert (row["Status"][0], row["Blocking"][0]) == ("success", "none")
    assert row["Not blocking"][0] == "3 below the threshold, 1 unfixed, 1 existing on the base"
    queue_repost(app, HEAD)
    text = text_of(page(admin, f"/commits/{HEAD}?repo=acme/api"))
    assert "This differs from what was last posted to GitHub. A re-post under the current policy is queued" in text


def test_under_warn_the_counts_are_what_would_block(app, admin, token):
    set_policy(app, "acme", block_threshold="low")
    upload(admin, token, [finding("CVE-1", "low"), finding("CVE-2", "unknown")], sha=MAIN)
    html = page(admin, f"/commits/{MAIN}?repo=acme/api")
    [row] = current_rows(html)
    assert (row["Status"][0], row["Would block"][0], row["Not blocking"][0]) == (
        "success",
        "1 low",
        "1 below the threshold",
    )
    assert row["Baseline"][0] == "not compared: every finding counts (block on all)"
    assert "success fremforge/image-scan 1 image · 1 low · warning only" in text_of(html)


@pytest.mark.parametrize(
    ("policy", "why"),
    [({"block_action": "none"}, "the block action is none"), ({"enabled": False}, "scanning is disabled")],
)
def test_nothing_is_posted_under_block_action_none_or_disabled(app, admin, token, policy, why):
    upload(admin, token, [finding("CVE-1", "critical")], sha=MAIN)
    set_policy(app, "acme", **policy)
    html = page(admin, f"/commits/{MAIN}?repo=acme/api")
    text = text_of(html)
    assert f"Nothing is posted under the current policy: {why}" in text
    assert "GitHub keeps showing the state last posted." in text
    assert "success fremforge/image-scan 1 image · 1 critical" in text  # what was posted, under warn
    assert 'class="data current"' not in html


def test_a_commit_never_posted_says_what_the_current_policy_would_post(app, admin, token):
    set_policy(app, "acme", block_action="none")
    upload(admin, token, [finding("CVE-1", "critical")], sha=MAIN)
    set_policy(app, "acme", block_action="block_pull")
    text = text_of(page(admin, f"/commits/{MAIN}?repo=acme/api"))
    assert "Nothing was posted for this commit" in text
    assert "failure fremforge/image-scan 1 image · 1 critical · blocking" in text
    assert "Nothing has been posted for this commit yet." in text
