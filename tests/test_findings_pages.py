"""Reading a scan's findings a page at a time: the first page with the scan, the rest by cursor."""

from __future__ import annotations

import base64
import json
import random

import pytest

from app.models import SEVERITIES
from tests.factories import finding, make_org, make_token, post, seed

SCAN = "/api/v1/orgs/{slug}/image-scans/{id}"


@pytest.fixture
def big_scan(app, client):  # type: ignore[no-untyped-def]
    """A scan of 2,345 findings in shuffled severities and packages, and a read token."""
    make_org(app)
    token = make_token(app)
    rng = random.Random(5)
    findings = [
        finding(
            cve_id=f"CVE-2024-{i:05d}",
            severity=rng.choice(SEVERITIES),
            package=f"pkg-{rng.randrange(40):02d}",
            fixed=None if i % 3 else "9.9",
        )
        for i in range(2345)
    ]
    r = post(client, token, seed(findings))
    assert r.status_code == 202, r.json
    return r.json["scan_run_id"], token


def get(client, token, path, **query):  # type: ignore[no-untyped-def]
    return client.get(path, query_string=query, headers={"Authorization": f"Bearer {token}"})


def order_key(f: dict) -> tuple:
    return (SEVERITIES.index(f["severity"]), f["package_name"], f["cve_id"], f["seq"])


def test_a_scan_answers_with_its_first_thousand_findings_and_a_cursor_for_the_rest(client, big_scan):
    scan_id, token = big_scan
    r = get(client, token, SCAN.format(slug="acme", id=scan_id))
    assert r.status_code == 200
    assert len(r.json["findings"]) == 1000 and r.json["findings_next_cursor"]
    seen = list(r.json["findings"])
    cursor = r.json["findings_next_cursor"]
    pages = 0
    while cursor:
        page = get(client, token, SCAN.format(slug="acme", id=scan_id) + "/findings", limit=700, cursor=cursor)
        assert page.status_code == 200, page.json
        assert 0 < len(page.json["items"]) <= 700
        seen += page.json["items"]
        cursor = page.json["next_cursor"]
        pages += 1
        assert pages < 10
    assert len(seen) == 2345 and len({f["seq"] for f in seen}) == 2345  # each finding once
    assert [order_key(f) for f in seen] == sorted(order_key(f) for f in seen)  # most severe first, throughout


def test_the_findings_route_pages_from_the_start_and_ends_with_a_null_cursor(client, big_scan):
    scan_id, token = big_scan
    first = get(client, token, SCAN.format(slug="acme", id=scan_id) + "/findings", limit=2000)
    assert first.status_code == 422 and first.json["details"][0]["path"] == "limit"
    whole = get(client, token, SCAN.format(slug="acme", id=scan_id) + "/findings")
    assert len(whole.json["items"]) == 1000
    last = get(
        client, token, SCAN.format(slug="acme", id=scan_id) + "/findings", limit=1000, cursor=whole.json["next_cursor"]
    )
    last = get(
        client, token, SCAN.format(slug="acme", id=scan_id) + "/findings", limit=1000, cursor=last.json["next_cursor"]
    )
    assert len(last.json["items"]) == 345 and last.json["next_cursor"] is None


def _finding_cursor(*key: object) -> str:
    """A findings cursor as the API encodes one, of any key."""
    return base64.urlsafe_b64encode(b"f:" + json.dumps(list(key)).encode()).decode().rstrip("=")


THIS_SCAN = object()  # stands for the fixture's scan id in a cursor's key


@pytest.mark.parametrize(
    "cursor",
    [
        "nonsense",
        "czoxMg",
        "ZjpbMSwieCJd",
        "ZjpbOSwiIiwiIiwxXQ",
        (THIS_SCAN, True, "a", "b", 1),  # a bool is no rank (PostgreSQL compared it to an integer: a 500)
        (THIS_SCAN, 1, "a", "b", True),
        (THIS_SCAN, 1, "a\x00", "b", 1),  # no stored package has a NUL
        (THIS_SCAN, 1, "a", "b" * 1025, 1),
        (1, "a", "b", 1),  # a cursor of before cursors named their scan
        ("another scan", 1, "a", "b", 1),  # HEAD: another scan's cursor read this one's findings after its key
    ],
)
def test_a_cursor_this_api_did_not_give_out_is_a_422(client, big_scan, cursor):
    scan_id, token = big_scan
    if isinstance(cursor, tuple):
        key = [scan_id if v is THIS_SCAN else scan_id + 1 if v == "another scan" else v for v in cursor]
        cursor = _finding_cursor(*key)
    r = get(client, token, SCAN.format(slug="acme", id=scan_id) + "/findings", cursor=cursor)
    assert r.status_code == 422 and r.json["details"][0]["path"] == "cursor"


def test_another_orgs_scan_is_not_found(app, client, big_scan):
    scan_id, _ = big_scan
    make_org(app, "beta")
    other = make_token(app, "beta")
    r = get(client, other, SCAN.format(slug="beta", id=scan_id) + "/findings")
    assert r.status_code == 404
    r = get(client, other, SCAN.format(slug="acme", id=scan_id) + "/findings")
    assert r.status_code == 403


def test_a_small_scan_has_no_next_cursor(app, client):
    make_org(app)
    token = make_token(app)
    r = post(client, token, seed([finding()]))
    body = get(client, token, SCAN.format(slug="acme", id=r.json["scan_run_id"])).json
    assert len(body["findings"]) == 1 and body["findings_next_cursor"] is None
