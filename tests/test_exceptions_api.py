"""The exceptions API (spec section 10) on SQLite and PostgreSQL: create, list and revoke with their scopes; every bad
field a 422 naming it with nothing stored; what an active exception does to uploads (stored excepted, never blocking,
only inside its scope); each change an entry of the org's audit chain; and expiry at the edge, re-posted on the fake
GitHub."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from app import db, exceptions
from app.clock import now_of
from app.findings.queries import encode_cursor as scans_cursor
from app.github import checks
from app.models import AuditEvent, Org, PolicyException
from tests.conftest import MakeApp, app_with_github, org_with_installation
from tests.factories import SHA2, census, finding, make_org, make_token, post, seed
from tests.fakes import FakeGitHub
from tests.test_reposting import pull_request, sha_of, shown, work

EXCEPTIONS = "/api/v1/orgs/{slug}/exceptions"
REASON = "Not reachable: the parser is never fed untrusted input"
HIGH = "CVE-2024-0001"
MISSING = object()  # a field left out of the body


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def in_days(days: float) -> str:
    """An expiry `days` from now (UTC), as ISO 8601 with a Z."""
    return (datetime.now(UTC) + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def body(**fields: Any) -> dict[str, Any]:
    """A valid exception body, with `fields` changed (MISSING: left out; a timedelta: that long from now)."""
    doc = {"advisory_id": HIGH, "reason": REASON, "expires_at": in_days(30), **fields}
    return {
        k: in_days(v / timedelta(days=1)) if isinstance(v, timedelta) else v for k, v in doc.items() if v is not MISSING
    }


def create(client: FlaskClient, token: str, slug: str = "acme", **fields: Any) -> dict[str, Any]:
    r = client.post(EXCEPTIONS.format(slug=slug), json=body(**fields), headers=auth(token))
    assert r.status_code == 201, r.get_data(as_text=True)
    return r.json


def listed(client: FlaskClient, token: str, **query: Any) -> dict[str, Any]:
    r = client.get(EXCEPTIONS.format(slug="acme"), query_string=query, headers=auth(token))
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.json


def ids(page: dict[str, Any]) -> list[int]:
    return [e["id"] for e in page["items"]]


def revoke(client: FlaskClient, token: str, exception_id: int, slug: str = "acme") -> Any:
    return client.delete(f"{EXCEPTIONS.format(slug=slug)}/{exception_id}", headers=auth(token))


def db_now(app: Flask) -> datetime:
    with app.app_context():
        return now_of(db.session().connection())


def set_expiry(app: Flask, exception_id: int, after_now: timedelta) -> datetime:
    """Move an exception's expires_at to `after_now` from now on the database's clock (negative: into the past),
    as time passing would; the new expiry."""
    with app.app_context():
        session = db.session()
        at = now_of(session.connection()) + after_now
        session.execute(sa.update(PolicyException).where(PolicyException.id == exception_id).values(expires_at=at))
        session.commit()
        return at


def expire_due(app: Flask) -> int:
    """The worker's expiry pass (no GitHub App: nothing re-posted)."""
    with app.app_context():
        return exceptions.expire_due(db.session(), None)


def upload(client: FlaskClient, token: str, findings: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    r = post(client, token, seed(findings, **kw))
    assert r.status_code == 202, r.get_data(as_text=True)
    return r.json


def stored(client: FlaskClient, token: str, scan_id: int) -> dict[str, tuple[bool, int | None]]:
    """The scan's findings as the read API gives them: advisory id -> (blocking, exception_id)."""
    r = client.get(f"/api/v1/orgs/acme/image-scans/{scan_id}", headers=auth(token))
    assert r.status_code == 200, r.get_data(as_text=True)
    return {f["cve_id"]: (f["blocking"], f["exception_id"]) for f in r.json["findings"]}


def audit_events(app: Flask, slug: str = "acme") -> list[AuditEvent]:
    """The org's audit events, in chain order."""
    with app.app_context():
        session = db.session()
        q = sa.select(AuditEvent).join(Org, Org.id == AuditEvent.org_id).where(Org.slug == slug)
        events = list(session.scalars(q.order_by(AuditEvent.seq)))
        session.expunge_all()
        return events


def exception_events(app: Flask) -> list[tuple[str, str, int]]:
    """(action, actor, exception id) of each exception event in the org's chain, in chain order."""
    return [
        (e.action, e.actor, e.details["exception_id"])
        for e in audit_events(app)
        if e.action and e.action.startswith("exception.")
    ]


@pytest.fixture
def token(app: Flask) -> str:
    """Org acme (GitHub login acme) blocking pull requests; a token with every scope."""
    make_org(app, block_action="block_pull")
    return make_token(app)


# ---------------------------------------------------------------- create and list


def test_create_answers_the_exception_it_stored(app, client, token):
    local = (datetime.now(UTC) + timedelta(days=30)).astimezone(timezone(timedelta(hours=1))).replace(microsecond=0)
    e = create(
        client,
        token,
        advisory_id=" GHSA-abcd-efgh-ijkl ",
        package_name="openssl",
        repo_full_name="ACME/Api",
        image="ghcr.io/acme/*",
        ticket_url="https://tickets.example.com/browse/SEC-12",
        expires_at=local.isoformat(),  # 2027-01-04T12:30:00+01:00
    )
    assert isinstance(e["id"], int)
    assert {k: v for k, v in e.items() if k not in ("id", "created_at", "created_by")} == {
        "advisory_id": "GHSA-abcd-efgh-ijkl",
        "package_name": "openssl",
        "repo_full_name": "acme/api",
        "image": "ghcr.io/acme/*",
        "reason": REASON,
        "ticket_url": "https://tickets.example.com/browse/SEC-12",
        "expires_at": local.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),  # in UTC
        "revoked_by": None,
        "revoked_at": None,
        "source": "api",
        "state": "active",
    }
    assert e["created_by"].startswith("token:")
    assert abs(datetime.fromisoformat(e["created_at"]) - datetime.now(UTC)) < timedelta(minutes=1)
    assert listed(client, token)["items"] == [e]


@pytest.mark.parametrize("advisory_id", ["FOO-1", "made-up/42", "GMS-2024-1", "dsa-5555-1", "RUSTSEC-2024-0001"])
def test_an_unknown_advisory_id_shape_is_allowed(app, client, token, advisory_id):
    assert create(client, token, advisory_id=advisory_id)["advisory_id"] == advisory_id


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("expires_at", timedelta(days=364)),
        ("expires_at", timedelta(days=365, hours=-1)),
        ("expires_at", timedelta(minutes=15)),
        ("expires_at", "date"),  # a date: its start, UTC
        ("reason", "x" * 2000),
        ("reason", "x"),
        ("image", "*"),
        ("image", "localhost:5000/api"),
        ("image", "ghcr.io/acme/api"),
        ("ticket_url", "https://t.example"),
        ("package_name", None),
        ("image", None),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 else str(v)[:20],
)
def test_values_at_the_limits_are_accepted(app, client, token, field, value):
    if value == "date":
        value = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()
    assert create(client, token, **{field: value})["state"] == "active"


def test_list_filters_by_state(app, client, token):
    active = create(client, token, advisory_id="CVE-1")["id"]
    revoked = create(client, token, advisory_id="CVE-2")["id"]
    expired = create(client, token, advisory_id="CVE-3")["id"]
    revoked_after_expiry = create(client, token, advisory_id="CVE-4")["id"]
    assert revoke(client, token, revoked).status_code == 200
    set_expiry(app, expired, timedelta(seconds=-1))
    set_expiry(app, revoked_after_expiry, timedelta(seconds=-1))
    assert revoke(client, token, revoked_after_expiry).status_code == 200

    assert ids(listed(client, token, state="active")) == [active]
    assert ids(listed(client, token, state="expired")) == [expired]
    assert ids(listed(client, token, state="revoked")) == [revoked_after_expiry, revoked]
    everything = listed(client, token)
    assert ids(everything) == [revoked_after_expiry, expired, revoked, active]  # newest first
    assert [e["state"] for e in everything["items"]] == ["revoked", "expired", "revoked", "active"]


def test_list_pages_newest_first_with_a_cursor(app, client, token):
    made = [create(client, token, advisory_id=f"CVE-{n}")["id"] for n in range(7)]
    for n in (1, 4):
        revoke(client, token, made[n])
    pages, cursor = [], None
    while True:
        page = listed(client, token, limit=2, **({"cursor": cursor} if cursor else {}))
        pages.append(ids(page))
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == [made[6:4:-1], made[4:2:-1], made[2:0:-1], made[:1]]

    first = listed(client, token, state="active", limit=3)
    assert ids(first) == [made[6], made[5], made[3]]
    rest = listed(client, token, state="active", limit=3, cursor=first["next_cursor"])
    assert ids(rest) == [made[2], made[0]] and rest["next_cursor"] is None
    assert listed(client, token, limit=7)["next_cursor"] is None  # exactly a page: no cursor to an empty one


@pytest.mark.parametrize(
    ("query", "path"),
    [
        ({"cursor": "nonsense"}, "cursor"),
        ({"cursor": scans_cursor(3)}, "cursor"),  # a cursor of another list
        ({"cursor": exceptions.encode_cursor(2**31)}, "cursor"),
        ({"cursor": "eDotMQ"}, "cursor"),  # x:-1
        ({"cursor": "x" * 201}, "cursor"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"state": "gone"}, "state"),
    ],
)
def test_a_bad_query_is_a_422_naming_it(app, client, token, query, path):
    create(client, token)
    r = client.get(EXCEPTIONS.format(slug="acme"), query_string=query, headers=auth(token))
    assert r.status_code == 422, r.get_data(as_text=True)
    assert r.json["error"] == "validation_failed"
    assert [d["path"] for d in r.json["details"]] == [path]


# ---------------------------------------------------------------- revoke


def test_revoke_keeps_the_row_revoked_and_again_changes_nothing(app, client, token):
    e = create(client, token)
    first = revoke(client, token, e["id"])
    assert first.status_code == 200
    assert first.json["state"] == "revoked"
    assert first.json["revoked_by"] == e["created_by"] and first.json["revoked_at"] is not None
    assert {k: v for k, v in first.json.items() if not k.startswith("revoked") and k != "state"} == {
        k: v for k, v in e.items() if not k.startswith("revoked") and k != "state"
    }
    again = revoke(client, token, e["id"])
    assert (again.status_code, again.json) == (200, first.json)
    assert [a for a, _, _ in exception_events(app)] == ["exception.created", "exception.revoked"]
    assert ids(listed(client, token, state="revoked")) == [e["id"]]


@pytest.mark.parametrize("exception_id", [999, 0, 2**31 - 1, 2**31, 10**20])
def test_revoking_an_unknown_exception_is_a_404(app, client, token, exception_id):
    create(client, token)
    r = revoke(client, token, exception_id)
    assert r.status_code == 404, r.get_data(as_text=True)
    assert r.json["error"] == "not_found"


def test_another_orgs_exception_is_a_404_to_acme_and_stays_active(app, client, token):
    make_org(app, "other")
    other = make_token(app, "other")
    theirs = create(client, other, slug="other")
    before = census(app)
    r = revoke(client, token, theirs["id"])
    assert r.status_code == 404, r.get_data(as_text=True)
    assert census(app) == before
    assert listed(client, token)["items"] == []
    assert revoke(client, other, theirs["id"], slug="acme").status_code == 403  # their token on acme
    r = client.get(EXCEPTIONS.format(slug="other"), headers=auth(other))
    assert [e["state"] for e in r.json["items"]] == ["active"]


@pytest.mark.parametrize(
    ("method", "scope", "status"),
    [
        ("GET", "findings:read", 200),
        ("GET", "settings:write", 403),
        ("GET", "findings:write", 403),
        ("POST", "settings:write", 201),
        ("POST", "findings:read", 403),
        ("POST", "findings:write", 403),
        ("DELETE", "settings:write", 200),
        ("DELETE", "findings:read", 403),
        ("DELETE", "findings:write", 403),
    ],
)
def test_scopes(app, client, token, method, scope, status):
    e = create(client, token)
    scoped = make_token(app, "acme", [scope])
    url = EXCEPTIONS.format(slug="acme") + (f"/{e['id']}" if method == "DELETE" else "")
    before = census(app)
    r = client.open(url, method=method, json=body() if method == "POST" else None, headers=auth(scoped))
    assert r.status_code == status, r.get_data(as_text=True)
    if status == 403:
        assert census(app) == before
        assert r.json["error"] == "forbidden"


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_no_token_is_a_401_and_an_unknown_org_a_404(app, client, token, method):
    e = create(client, token)
    tail = f"/{e['id']}" if method == "DELETE" else ""
    data = body() if method == "POST" else None
    r = client.open(EXCEPTIONS.format(slug="acme") + tail, method=method, json=data)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    r = client.open(EXCEPTIONS.format(slug="nobody") + tail, method=method, json=data, headers=auth(token))
    assert r.status_code == 404


# ---------------------------------------------------------------- every bad field: a 422 naming it, nothing stored


BAD_FIELDS = [
    (dict(reason=MISSING), "reason"),
    (dict(reason=""), "reason"),
    (dict(reason="   \n"), "reason"),
    (dict(reason="x" * 2001), "reason"),
    (dict(reason=None), "reason"),
    (dict(expires_at=MISSING), "expires_at"),
    (dict(expires_at=timedelta(days=-1)), "expires_at"),
    (dict(expires_at=timedelta(seconds=-1)), "expires_at"),  # a second ago
    (dict(expires_at="2020-01-01"), "expires_at"),
    (dict(expires_at=timedelta(days=366)), "expires_at"),
    (dict(expires_at=timedelta(days=365, hours=1)), "expires_at"),
    (dict(expires_at="next tuesday"), "expires_at"),
    (dict(expires_at=""), "expires_at"),
    (dict(expires_at=20270104), "expires_at"),
    (dict(expires_at="0001-01-01T00:00:00+01:00"), "expires_at"),  # before the first UTC time: was a 500
    (dict(ticket_url="http://tickets.example.com/SEC-12"), "ticket_url"),
    (dict(ticket_url="ftp://tickets.example.com/SEC-12"), "ticket_url"),
    (dict(ticket_url="tickets.example.com/SEC-12"), "ticket_url"),
    (dict(ticket_url="https://"), "ticket_url"),
    (dict(ticket_url="https://tickets.example.com/a b"), "ticket_url"),
    (dict(advisory_id=MISSING), "advisory_id"),
    (dict(advisory_id=""), "advisory_id"),
    (dict(advisory_id="   "), "advisory_id"),
    (dict(advisory_id="CVE 2024 0001"), "advisory_id"),
    (dict(advisory_id="x" * 1025), "advisory_id"),
    (dict(advisory_id=None), "advisory_id"),
    (dict(advisory_id="FREMFORGE-UNSIGNED-IMAGE"), "advisory_id"),
    (dict(advisory_id="fremforge-untrusted-signer"), "advisory_id"),
    (dict(advisory_id="Fremforge-anything-else"), "advisory_id"),
    (dict(image="ghcr.io/acme/api:1.2"), "image"),  # a tag
    (dict(image="ghcr.io/acme/api@sha256:" + "a" * 64), "image"),  # a digest
    (dict(image="ghcr.io//api"), "image"),
    (dict(image="ghcr.io/acme/"), "image"),
    (dict(image="/acme/api"), "image"),
    (dict(image="https://ghcr.io/acme/api"), "image"),
    (dict(image="ghcr.io/acme api"), "image"),
    (dict(image=""), "image"),
    (dict(repo_full_name="not a repo"), "repo_full_name"),
    (dict(repo_full_name="acme/api/extra"), "repo_full_name"),
    (dict(package_name=""), "package_name"),
    (dict(state="active"), "state"),  # assigned, never given
    (dict(source="admin"), "source"),
]


@pytest.mark.parametrize(("change", "path"), BAD_FIELDS, ids=[f"{p}-{i}" for i, (_, p) in enumerate(BAD_FIELDS)])
def test_every_bad_field_is_a_422_naming_it_with_nothing_stored(app, client, token, change, path):
    before = census(app)
    r = client.post(EXCEPTIONS.format(slug="acme"), json=body(**change), headers=auth(token))
    assert r.status_code == 422, r.get_data(as_text=True)
    assert r.json["error"] == "validation_failed"
    assert [d["path"] for d in r.json["details"]] == [path], r.json
    assert census(app) == before


def test_several_bad_fields_are_all_named(app, client, token):
    doc = body(reason="", ticket_url="http://x", advisory_id="FREMFORGE-UNSIGNED-IMAGE", image="a:1")
    r = client.post(EXCEPTIONS.format(slug="acme"), json=doc, headers=auth(token))
    assert r.status_code == 422
    assert sorted(d["path"] for d in r.json["details"]) == ["advisory_id", "image", "reason", "ticket_url"]


@pytest.mark.parametrize(
    ("data", "headers", "status"),
    [
        (b"{", {"Content-Type": "application/json"}, 400),
        (b"", {"Content-Type": "application/json"}, 400),
        (b"[]", {"Content-Type": "application/json"}, 422),
        (b"{}", {"Content-Type": "text/plain"}, 415),
    ],
)
def test_a_body_that_is_not_an_exception_is_refused_with_nothing_stored(app, client, token, data, headers, status):
    before = census(app)
    r = client.post(EXCEPTIONS.format(slug="acme"), data=data, headers={**headers, **auth(token)})
    assert r.status_code == status, r.get_data(as_text=True)
    assert census(app) == before


# ---------------------------------------------------------------- the effect on uploads


def test_a_covered_finding_is_stored_excepted_and_the_only_blocker_no_longer_fails(app, client, token):
    findings = [finding(HIGH, "high"), finding("CVE-2024-0002", "low", package="zlib")]
    before = upload(client, token, findings, sha=SHA2)
    assert (before["status"], before["commit_status"]["state"]) == ("failure", "failure")

    e = create(client, token)
    after = upload(client, token, findings)
    assert (after["status"], after["commit_status"]["state"]) == ("success", "success")
    assert stored(client, token, after["scan_run_id"]) == {HIGH: (False, e["id"]), "CVE-2024-0002": (False, None)}
    assert stored(client, token, before["scan_run_id"])[HIGH] == (True, None)  # the stored verdict is history
    r = client.get(f"/api/v1/orgs/acme/image-scans/{after['scan_run_id']}", headers=auth(token))
    assert r.json["blocking"] == 0 and r.json["severity_counts"]["high"] == 1  # still counted, not blocking


def test_a_covered_finding_beside_another_blocker_still_fails_the_scan(app, client, token):
    e = create(client, token)
    answer = upload(client, token, [finding(HIGH, "high"), finding("CVE-2024-0009", "critical", package="zlib")])
    assert answer["status"] == "failure"
    assert stored(client, token, answer["scan_run_id"]) == {HIGH: (False, e["id"]), "CVE-2024-0009": (True, None)}


def test_a_vendor_id_in_any_letter_case_covers_at_upload(app, client, token):
    e = create(client, token, advisory_id="dsa-5555-1")
    answer = upload(client, token, [finding("CVE-2024-7777", "critical", vendor_ids=["RHSA-1", "DSA-5555-1"])])
    assert answer["status"] == "success"
    assert stored(client, token, answer["scan_run_id"]) == {"CVE-2024-7777": (False, e["id"])}


def test_the_oldest_matching_exception_is_recorded(app, client, token):
    older = create(client, token, advisory_id="cve-2024-0001")
    create(client, token, package_name="openssl")
    answer = upload(client, token, [finding(HIGH, "high")])
    assert stored(client, token, answer["scan_run_id"]) == {HIGH: (False, older["id"])}


SCOPES = [
    ({"package_name": "openssl"}, {}, True),
    ({"package_name": "openssl"}, {"package": "libssl3"}, False),
    ({"package_name": "openssl"}, {"package": "OpenSSL"}, False),
    ({"repo_full_name": "ACME/API"}, {}, True),
    ({"repo_full_name": "acme/api"}, {"repo": "acme/web"}, False),
    ({"image": "ghcr.io/acme/*"}, {}, True),
    ({"image": "ghcr.io/acme/*"}, {"image_ref": "docker.io/acme/api:1"}, False),
    ({"image": "ghcr.io/acme/api"}, {"image_ref": "ghcr.io/acme/api@sha256:" + "b" * 64}, True),
    ({"image": "ghcr.io/acme/api"}, {"image_ref": "ghcr.io/acme/api-worker:1"}, False),
    ({"image": "*/acme/api"}, {"image_ref": "registry.example.com:5000/acme/api:9"}, True),
    ({"package_name": "openssl", "repo_full_name": "acme/api", "image": "ghcr.io/acme/api"}, {}, True),
    (
        {"package_name": "openssl", "repo_full_name": "acme/api", "image": "ghcr.io/acme/api"},
        {"repo": "acme/web"},
        False,
    ),
]


@pytest.mark.parametrize(("scope", "where", "covered"), SCOPES)
def test_a_scoped_exception_covers_only_inside_its_scope(app, client, token, scope, where, covered):
    e = create(client, token, **scope)
    package = where.get("package", "openssl")
    kw = {k: v for k, v in where.items() if k != "package"}
    answer = upload(client, token, [finding(HIGH, "high", package=package)], **kw)
    assert answer["status"] == ("success" if covered else "failure")
    assert stored(client, token, answer["scan_run_id"]) == {HIGH: (not covered, e["id"] if covered else None)}


def test_revoked_and_expired_exceptions_cover_nothing(app, client, token):
    revoked = create(client, token)
    revoke(client, token, revoked["id"])
    answer = upload(client, token, [finding(HIGH, "high")], sha=sha_of("after-revoke"))
    assert answer["status"] == "failure"

    expired = create(client, token)
    set_expiry(app, expired["id"], timedelta(seconds=-1))  # before the worker records it
    answer = upload(client, token, [finding(HIGH, "high")], sha=sha_of("after-expiry"))
    assert answer["status"] == "failure"
    assert expire_due(app) == 1
    answer = upload(client, token, [finding(HIGH, "high")], sha=sha_of("after-recorded"))
    assert answer["status"] == "failure"
    assert stored(client, token, answer["scan_run_id"]) == {HIGH: (True, None)}


def test_another_orgs_exception_covers_nothing(app, client, token):
    make_org(app, "other")
    create(client, make_token(app, "other"), slug="other")
    answer = upload(client, token, [finding(HIGH, "high")])
    assert answer["status"] == "failure"
    assert stored(client, token, answer["scan_run_id"]) == {HIGH: (True, None)}


def test_a_synthetic_signing_finding_still_blocks_beside_an_excepted_one(app, client, token):
    r = client.put("/api/v1/orgs/acme/image-scans/settings", json={"require_signed": True}, headers=auth(token))
    assert r.status_code == 200
    e = create(client, token)
    answer = upload(client, token, [finding(HIGH, "high")], signature_status="unsigned")
    assert answer["status"] == "failure"
    assert stored(client, token, answer["scan_run_id"]) == {
        HIGH: (False, e["id"]),
        "FREMFORGE-UNSIGNED-IMAGE": (True, None),
    }


# ---------------------------------------------------------------- the audit chain


def test_worker_once_without_a_github_app_records_expiry_too(app, client, token, capture):
    """`worker --once` does one round of what is due, also with no GitHub App to deliver to (as the long-running
    worker does): an expired exception's event is recorded."""
    made = create(client, token, advisory_id="CVE-1", expires_at=in_days(1))
    set_expiry(app, made["id"], timedelta(seconds=-1))
    buffer = capture("text")
    result = app.test_cli_runner().invoke(args=["worker", "--once"])
    assert result.exit_code == 0 and "no GitHub App configured" in buffer.getvalue(), result.output
    assert exception_events(app)[-1] == ("exception.expired", "system", made["id"])


def test_create_revoke_and_expiry_are_entries_of_the_orgs_chain_which_verifies(app, client, token):
    first = create(client, token, advisory_id="CVE-1")
    upload(client, token, [finding("CVE-1", "high"), finding("CVE-2", "low")])  # findings between the events
    second = create(client, token, advisory_id="CVE-2", expires_at=in_days(1))
    revoke(client, token, first["id"])
    revoke(client, token, first["id"])  # again: no second event
    set_expiry(app, second["id"], timedelta(seconds=-1))
    assert expire_due(app) == 1
    assert expire_due(app) == 0  # recorded once

    actor = first["created_by"]
    assert exception_events(app) == [
        ("exception.created", actor, first["id"]),
        ("exception.created", actor, second["id"]),
        ("exception.revoked", actor, first["id"]),
        ("exception.expired", "system", second["id"]),
    ]
    created = next(e for e in audit_events(app) if e.action == "exception.created")
    assert created.details == {
        "exception_id": first["id"],
        "advisory_id": "CVE-1",
        "package_name": None,
        "repo_full_name": None,
        "image": None,
        "reason": REASON,
        "ticket_url": None,
        "expires_at": first["expires_at"],
        "source": "api",
    }
    r = client.get("/api/v1/orgs/acme/audit/verify", headers=auth(token))
    assert r.status_code == 200, r.get_data(as_text=True)
    verdict = r.json
    assert verdict["intact"] is True and verdict["first_bad_seq"] is None
    seqs = [e.seq for e in audit_events(app)]
    assert verdict["entries"] == verdict["head_seq"] and max(seqs) <= verdict["head_seq"]
    assert len(set(seqs)) == len(seqs)


def test_a_refused_exception_adds_nothing_to_the_chain(app, client, token):
    create(client, token)
    before = client.get("/api/v1/orgs/acme/audit/verify", headers=auth(token)).json
    client.post(EXCEPTIONS.format(slug="acme"), json=body(reason=""), headers=auth(token))
    revoke(client, token, 999)
    after = client.get("/api/v1/orgs/acme/audit/verify", headers=auth(token)).json
    assert (after["intact"], after["head_seq"], after["head_hash"]) == (True, before["head_seq"], before["head_hash"])


# ---------------------------------------------------------------- expiry at the edge, re-posted on GitHub


@pytest.fixture
def gh_app(make_app: MakeApp, fake_github: FakeGitHub) -> Flask:
    return app_with_github(make_app, fake_github, ["acme/api"])


def summary(fake: FakeGitHub, sha: str) -> str:
    return fake.runs_of("acme", "api", sha)[-1]["output"]["summary"]


def green_by_an_exception(app: Flask, fake: FakeGitHub) -> tuple[FlaskClient, str, str, dict[str, Any]]:
    """An open pull request whose head has one high finding: red; then an exception makes it green (re-posted).
    The client, the token, the head and the exception."""
    token = org_with_installation(app)  # block_pull
    client = app.test_client()
    head = sha_of("excepted-head")
    upload(client, token, [finding(HIGH, "high")], sha=head)
    pull_request(client, 1, head)
    work(app)
    assert shown(fake, head) == ("failure", "1 image · 1 high · blocking")
    assert "excepted" not in summary(fake, head).lower()

    e = create(client, token, expires_at=in_days(1))
    work(app)
    assert shown(fake, head) == ("success", "1 image · 1 high")
    text = summary(fake, head)
    until = e["expires_at"][:10]
    assert f"· 1 excepted, the first expiring {until}" in text
    assert f"- Excepted until {until}: `{HIGH}` — {checks.md_text(REASON)} (exception {e['id']})" in text
    return client, token, head, e


def test_an_exception_keeps_a_pull_request_green_until_it_expires_then_it_turns_red(gh_app, fake_github):
    app = gh_app
    client, token, head, e = green_by_an_exception(app, fake_github)

    # One second before the expiry it still covers: an upload is excepted, the worker records no expiry. (Retried
    # when the machine took longer than that second, so that what was seen was seen before the expiry.)
    for _ in range(5):
        expiry = set_expiry(app, e["id"], timedelta(seconds=1))
        answer = upload(
            client, token, [finding(HIGH, "high")], sha=sha_of("just-before"), image_ref="ghcr.io/acme/api:2"
        )
        recorded = expire_due(app)
        if db_now(app) < expiry:
            break
    else:
        pytest.fail("could not upload and look within one second of the expiry")
    assert answer["status"] == "success" and recorded == 0
    assert stored(client, token, answer["scan_run_id"]) == {HIGH: (False, e["id"])}
    assert listed(client, token, state="active")["items"][0]["id"] == e["id"]

    set_expiry(app, e["id"], timedelta(seconds=-1))  # a second after the expiry, on the database's clock
    work(app)  # records the expiry, re-posts the org's commits
    assert shown(fake_github, head) == ("failure", "1 image · 1 high · blocking")
    assert "excepted" not in summary(fake_github, head).lower()
    assert ids(listed(client, token, state="expired")) == [e["id"]]
    assert [a for a, _, i in exception_events(app) if i == e["id"]] == ["exception.created", "exception.expired"]
    answer = upload(client, token, [finding(HIGH, "high")], sha=sha_of("after"))
    assert answer["status"] == "failure"


def test_a_revoked_exception_turns_the_pull_request_red_again(gh_app, fake_github):
    app = gh_app
    client, token, head, e = green_by_an_exception(app, fake_github)
    assert revoke(client, token, e["id"]).status_code == 200
    work(app)
    assert shown(fake_github, head) == ("failure", "1 image · 1 high · blocking")
    assert "excepted" not in summary(fake_github, head).lower()
    assert [a for a, _, i in exception_events(app) if i == e["id"]] == ["exception.created", "exception.revoked"]


@pytest.mark.parametrize(
    "path, doc, field, said",
    [
        # HEAD: pydantic's own words, naming its classes or quoting a regular expression
        ("settings", {"allowed_issuers": [7]}, "allowed_issuers[0]", "must be an object"),
        ("settings", [], "$", "must be an object"),
        ("settings", {"allowed_issuers": [{"issuer": "http://x"}]}, "allowed_issuers[0].issuer", "must be an https://"),
        ("exceptions", body(ticket_url="http://x"), "ticket_url", "must be an https:// URL"),
        ("exceptions", body(reason="   "), "reason", "must not be empty or only white space"),
        ("exceptions", body(reason="r" * 2001), "reason", "must have at most 2000 characters"),
        ("exceptions", body(package_name=7), "package_name", "must be a"),
        # HEAD: 201, an exception no finding could ever match
        ("exceptions", body(advisory_id="CVE-2099-*"), "advisory_id", "must be one advisory's id"),
        ("exceptions", body(repo_full_name="evil/api"), "repo_full_name", "is outside this organisation's GitHub"),
    ],
)
def test_a_refused_field_is_said_in_a_sentence_of_our_own(
    client: FlaskClient, token: str, path: str, doc: Any, field: str, said: str
) -> None:
    if path == "settings":
        r = client.put("/api/v1/orgs/acme/image-scans/settings", json=doc, headers=auth(token))
    else:
        r = client.post(EXCEPTIONS.format(slug="acme"), json=doc, headers=auth(token))
    assert r.status_code == 422, r.json
    detail = next(d for d in r.json["details"] if d["path"] == field)
    assert detail["message"].startswith(said), detail
    for theirs in ("Input should", "String should", "instance of", "^https", "Value error"):
        assert theirs not in r.json["message"] and theirs not in detail["message"], r.json
