"""The gate in the read API (spec sections 2 and 3): each scan says how many of its findings blocked and which scan
it was compared with; each finding whether it blocked, whether it is new on the pull request, and the exception that
covered it — in the scan's first page and in `/findings` pages, as the OpenAPI document says."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import jsonschema_rs
import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from app import db
from app.models import Finding
from app.openapi import document
from tests.factories import finding, make_org, make_token, post, seed, set_policy
from tests.test_openapi import DRAFT_2020_12, Checked
from tests.test_webhooks import deliver, edited

REPO = "acme/api"
HEAD = "a" * 40  # the pull request's head commit
BASE_SHA = "b" * 40  # its base commit
MAIN = "c" * 40  # a commit of the base branch, scanned with ref refs/heads/main
IMAGE = "ghcr.io/acme/api"
SCANS = "/api/v1/orgs/{slug}/image-scans"
SCAN = "/api/v1/orgs/{slug}/image-scans/{scan_run_id}"
FINDINGS = "/api/v1/orgs/{slug}/image-scans/{scan_run_id}/findings"
UPLOAD = "/api/v1/orgs/{slug}/image-scans/findings"


# ---------------------------------------------------------------- helpers (test_gate_pages uses them too)


@pytest.fixture
def app(webhook_app: Flask) -> Flask:
    """The app with a webhook secret: pull_request events say which base a head is compared with."""
    return webhook_app


@pytest.fixture
def token(app: Flask) -> str:
    make_org(app)  # GitHub login acme: the owner of acme/api
    return make_token(app)


def open_pull_request(client: FlaskClient, head: str = HEAD, base: str = "main", base_sha: str = BASE_SHA) -> None:
    """A signed pull_request `opened` delivery for acme/api: `head` is the head of PR #2, based on `base`."""
    body = edited(
        "pull_request.opened",
        repository__full_name=REPO,
        repository__owner__login="acme",
        pull_request__head__sha=head,
        pull_request__base__ref=base,
        pull_request__base__sha=base_sha,
    )
    r = deliver(client, "pull_request", body=body)
    assert r.status_code == 200, r.get_data(as_text=True)


def upload(client: FlaskClient, token: str, findings: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    r = post(client, token, seed(findings, **kw))
    assert r.status_code == 202, r.json
    return r.json


def read(client: FlaskClient, token: str, path: str, **query: Any) -> Any:
    r = client.get(path, query_string=query, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.json


def scan_of(client: FlaskClient, token: str, scan_id: int) -> dict[str, Any]:
    return read(client, token, SCAN.format(slug="acme", scan_run_id=scan_id))


def flags(findings: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[bool, bool | None, int | None]]:
    """(advisory id, package) -> (blocking, new, exception_id), as the API says them."""
    return {(f["cve_id"], f["package_name"]): (f["blocking"], f["new"], f["exception_id"]) for f in findings}


BASE_FINDINGS = [
    finding("CVE-2024-0001", "critical"),  # on the base and the head: existing
    finding("CVE-2024-0002", "high", package="zlib"),  # fixed on the head
]
HEAD_FINDINGS = [
    finding("CVE-2024-0001", "critical"),  # existing on the base: does not block under block_on new
    finding("CVE-2024-0003", "high"),  # new, fixable: blocks
    finding("CVE-2024-0004", "critical", fixed=None),  # new, unfixed: ignored
    finding("CVE-2024-0005", "medium"),  # new, below the threshold
    finding("CVE-2024-0001", "high", package="libssl3"),  # same advisory, another package: new, blocks
]


def pull_request_with_baseline(client: FlaskClient, token: str, app: Flask) -> tuple[int, int]:
    """block_pull, threshold high, unfixed ignored, block_on new; a scan of main (the baseline) and of the head of a
    pull request into main. The ids of (baseline, head)."""
    set_policy(app, "acme", block_action="block_pull", block_threshold="high", ignore_unfixed=True, block_on="new")
    open_pull_request(client)
    base = upload(client, token, BASE_FINDINGS, image_ref=f"{IMAGE}:main", sha=MAIN, ref="refs/heads/main")
    head = upload(client, token, HEAD_FINDINGS, image_ref=f"{IMAGE}:pr-2@sha256:{'0' * 64}", sha=HEAD)
    return base["scan_run_id"], head["scan_run_id"]


# ---------------------------------------------------------------- the scan and its findings


def test_a_scan_compared_with_its_baseline_says_what_is_new_and_what_blocks(app, client, token):
    base, head = pull_request_with_baseline(client, token, app)
    scan = scan_of(client, token, head)
    assert (scan["status"], scan["blocking"], scan["baseline_scan_id"], scan["pr"]) == ("failure", 2, base, 2)
    assert flags(scan["findings"]) == {
        ("CVE-2024-0001", "openssl"): (False, False, None),  # existing on the base
        ("CVE-2024-0001", "libssl3"): (True, True, None),  # the same advisory in another package is new
        ("CVE-2024-0003", "openssl"): (True, True, None),
        ("CVE-2024-0004", "openssl"): (False, True, None),  # new, but unfixed ones are ignored
        ("CVE-2024-0005", "openssl"): (False, True, None),  # below the threshold
    }
    assert sum(f["blocking"] for f in scan["findings"]) == scan["blocking"]
    # The baseline itself was built from main, the head of no pull request: nothing to compare it with.
    baseline = scan_of(client, token, base)
    assert (baseline["blocking"], baseline["baseline_scan_id"]) == (2, None)
    assert {f["new"] for f in baseline["findings"]} == {None}
    assert all(f["blocking"] for f in baseline["findings"])


def test_the_list_of_scans_says_each_ones_blocking_count_and_baseline(app, client, token):
    base, head = pull_request_with_baseline(client, token, app)
    items = read(client, token, SCANS.format(slug="acme"))["items"]
    assert [(s["scan_run_id"], s["blocking"], s["baseline_scan_id"]) for s in items] == [
        (head, 2, base),
        (base, 2, None),
    ]
    assert read(client, token, SCANS.format(slug="acme"), pr=2)["items"][0]["baseline_scan_id"] == base


def test_findings_pages_carry_the_same_flags_as_the_first_page(app, client, token):
    _, head = pull_request_with_baseline(client, token, app)
    first = scan_of(client, token, head)["findings"]
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:  # one finding a page: every page says the flags
        page = read(
            client,
            token,
            FINDINGS.format(slug="acme", scan_run_id=head),
            limit=1,
            **({"cursor": cursor} if cursor else {}),
        )
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(HEAD_FINDINGS)
    assert [(f["seq"], f["blocking"], f["new"], f["exception_id"]) for f in seen] == [
        (f["seq"], f["blocking"], f["new"], f["exception_id"]) for f in first
    ]


def test_block_on_new_without_a_baseline_counts_every_finding(app, client, token):
    set_policy(app, "acme", block_action="block_pull", block_on="new")
    open_pull_request(client, base="develop")  # nothing was built from develop, nor at its base commit
    upload(client, token, BASE_FINDINGS, image_ref=f"{IMAGE}:main", sha=MAIN, ref="refs/heads/main")
    scan = scan_of(
        client, token, upload(client, token, HEAD_FINDINGS, image_ref=f"{IMAGE}:pr", sha=HEAD)["scan_run_id"]
    )
    assert (scan["baseline_scan_id"], scan["blocking"], scan["status"]) == (None, 4, "failure")
    assert {f["new"] for f in scan["findings"]} == {None}  # no baseline: null, not true
    assert [f["cve_id"] for f in scan["findings"] if not f["blocking"]] == ["CVE-2024-0005"]  # only the medium


@pytest.mark.parametrize(
    ("policy", "blocking"),
    [
        ({"block_action": "block_pull"}, {"CVE-1": True, "CVE-2": True, "CVE-3": False, "CVE-4": False}),
        (
            {"block_action": "block_pull", "block_threshold": "critical"},
            {"CVE-1": True, "CVE-2": False, "CVE-3": False, "CVE-4": False},
        ),
        (
            {"block_action": "block_pull", "block_threshold": "low", "ignore_unfixed": True},
            {"CVE-1": True, "CVE-2": False, "CVE-3": True, "CVE-4": False},
        ),
        # Under warn nothing counts toward the verdict (it is success whatever is found); under none nothing is judged.
        (
            {"block_action": "warn", "block_threshold": "low"},
            dict.fromkeys(("CVE-1", "CVE-2", "CVE-3", "CVE-4"), False),
        ),
        ({"block_action": "none"}, dict.fromkeys(("CVE-1", "CVE-2", "CVE-3", "CVE-4"), False)),
    ],
)
def test_blocking_follows_the_threshold_and_unfixed_rule_under_block_on_all(app, client, token, policy, blocking):
    set_policy(app, "acme", **policy)
    found = [
        finding("CVE-1", "critical"),
        finding("CVE-2", "high", fixed=""),  # unfixed
        finding("CVE-3", "low"),
        finding("CVE-4", "unknown"),  # unknown meets no threshold
    ]
    scan = scan_of(client, token, upload(client, token, found)["scan_run_id"])
    assert {f["cve_id"]: f["blocking"] for f in scan["findings"]} == blocking
    assert scan["blocking"] == sum(blocking.values())
    assert (scan["baseline_scan_id"], {f["new"] for f in scan["findings"]}) == (None, {None})  # block_on all
    assert {f["exception_id"] for f in scan["findings"]} == {None}


def test_a_synthetic_signing_finding_blocks_and_is_counted(app, client, token):
    set_policy(app, "acme", block_action="block_pull", block_threshold="critical", require_signed=True)
    scan = scan_of(client, token, upload(client, token, [finding("CVE-1", "high")])["scan_run_id"])
    assert flags(scan["findings"]) == {
        ("FREMFORGE-UNSIGNED-IMAGE", "image-signature"): (True, None, None),
        ("CVE-1", "openssl"): (False, None, None),
    }
    assert scan["blocking"] == 1


def test_retention_keeps_the_flags_of_a_finding_it_empties(app, client, token):
    _, head = pull_request_with_baseline(client, token, app)
    with app.app_context():
        session = db.session()
        session.execute(
            sa.update(Finding)
            .where(Finding.scan_run_id == head, Finding.cve_id == "CVE-2024-0003")
            .values(cve_id=None, severity=None, package=None, installed_version=None, redacted_at=datetime(2027, 1, 1))
        )
        session.commit()
    redacted = [f for f in scan_of(client, token, head)["findings"] if f["redacted"]]
    assert [(f["blocking"], f["new"], f["exception_id"]) for f in redacted] == [(True, True, None)]


def test_a_stored_null_blocking_reads_false(app, client, token):
    scan_id = upload(client, token, [finding()])["scan_run_id"]
    with app.app_context():
        session = db.session()
        session.execute(sa.update(Finding).where(Finding.scan_run_id == scan_id).values(blocking=None))
        session.commit()
    [f] = scan_of(client, token, scan_id)["findings"]
    assert f["blocking"] is False


# ---------------------------------------------------------------- the OpenAPI document says so


def _validator(name: str) -> Any:
    root = {"$schema": DRAFT_2020_12, "$ref": f"#/components/schemas/{name}", "components": document()["components"]}
    return jsonschema_rs.validator_for(root)


def test_the_document_requires_the_gates_fields():
    schemas = document()["components"]["schemas"]
    assert {"blocking", "baseline_scan_id"} <= set(schemas["Scan"]["required"])
    assert {"blocking", "new", "exception_id"} <= set(schemas["Finding"]["required"])


def test_answers_validate_against_the_document_and_answers_without_the_fields_do_not(app, client, token):
    _, head = pull_request_with_baseline(client, token, app)
    checked = Checked(app, {"client": client, "token": token})
    detail = checked("GET", SCAN, scan_run_id=head, expect=200)
    listed = checked("GET", SCANS, expect=200)
    page = checked("GET", FINDINGS, scan_run_id=head, query={"limit": "2"}, expect=200)
    checked("POST", UPLOAD, body=seed([finding()], image_ref=f"{IMAGE}:again", sha=HEAD), expect=202)
    assert detail["blocking"] == 2 and listed["items"][0]["baseline_scan_id"] is not None and page["items"]

    scan_schema, finding_schema = _validator("Scan"), _validator("Finding")
    scan = {k: v for k, v in detail.items() if k not in ("findings", "findings_next_cursor")}
    assert scan_schema.is_valid(scan)
    for key in ("blocking", "baseline_scan_id"):
        assert not scan_schema.is_valid({k: v for k, v in scan.items() if k != key}), key
    assert not scan_schema.is_valid(scan | {"blocking": -1})
    assert not scan_schema.is_valid(scan | {"baseline_scan_id": "5"})
    one = detail["findings"][0]
    assert finding_schema.is_valid(one)
    for key in ("blocking", "new", "exception_id"):
        assert not finding_schema.is_valid({k: v for k, v in one.items() if k != key}), key
    assert not finding_schema.is_valid(one | {"blocking": None})
    assert finding_schema.is_valid(one | {"new": None, "exception_id": 7})
