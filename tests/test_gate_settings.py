"""The gate's settings (spec section 3): block_threshold, ignore_unfixed, block_on through the API and what an upload
gets under them. Baselines (block_on: new with a pull request's base known) are not here yet: without one, every
finding is new and counts (the spec's fail-closed rule)."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from app import db
from app.db import write_transaction
from app.models import AuditEvent, OrgSettings
from tests.factories import census, finding, make_org, make_token, post, seed, set_policy

SETTINGS = "/api/v1/orgs/acme/image-scans/settings"


@pytest.fixture
def admin_token(app) -> str:
    make_org(app)
    return make_token(app, "acme", ["settings:write", "findings:write"])


def put(client: Any, token: str, body: Any) -> Any:
    return client.put(SETTINGS, json=body, headers={"Authorization": f"Bearer {token}"})


def test_defaults_keep_the_rule_every_org_had(client, admin_token):
    shown = client.get(SETTINGS, headers={"Authorization": f"Bearer {admin_token}"}).get_json()
    assert (shown["block_threshold"], shown["ignore_unfixed"], shown["block_on"]) == ("high", False, "all")


def test_the_gate_settings_change_and_are_audited(app, client, admin_token):
    r = put(client, admin_token, {"block_threshold": "critical", "ignore_unfixed": True, "block_on": "new"})
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["block_threshold"], r.get_json()["ignore_unfixed"], r.get_json()["block_on"]) == (
        "critical",
        True,
        "new",
    )
    with app.app_context():
        event = db.session().scalars(sa.select(AuditEvent).order_by(AuditEvent.seq.desc())).first()
    assert event is not None and event.action == "settings.changed"
    assert event.details["changes"] == {
        "block_threshold": {"old": "high", "new": "critical"},
        "ignore_unfixed": {"old": False, "new": True},
        "block_on": {"old": "all", "new": "new"},
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("block_threshold", "unknown"),
        ("block_threshold", "HIGH"),
        ("block_threshold", None),
        ("ignore_unfixed", "true"),
        ("ignore_unfixed", 1),
        ("block_on", "changed"),
        ("block_on", ["new"]),
    ],
)
def test_a_bad_gate_setting_is_422_naming_it_and_changes_nothing(app, client, admin_token, field, value):
    before = census(app)
    r = put(client, admin_token, {"block_action": "block_pull", field: value})
    assert r.status_code == 422, r.get_json()
    assert any(d["path"] == field for d in r.get_json()["details"]), r.get_json()
    assert census(app) == before


def status_of(client: Any, token: str, findings: list[dict[str, Any]], image: str, **extra: Any) -> str:
    r = post(client, token, seed(findings, image_ref=image, **extra))
    assert r.status_code == 202, r.get_json()
    return r.get_json()["status"]


@pytest.mark.parametrize(
    ("policy", "findings", "expected"),
    [
        ({}, [finding(severity="high")], "failure"),
        ({}, [finding(severity="medium")], "success"),
        ({"block_threshold": "critical"}, [finding(severity="high")], "success"),
        ({"block_threshold": "critical"}, [finding(severity="critical")], "failure"),
        ({"block_threshold": "medium"}, [finding(severity="medium")], "failure"),
        ({"block_threshold": "low"}, [finding(severity="unknown")], "success"),
        ({"ignore_unfixed": True}, [finding(severity="critical", fixed=None)], "success"),
        ({"ignore_unfixed": True}, [finding(severity="critical", fixed="1.0")], "failure"),
        ({"block_on": "new"}, [finding(severity="high")], "failure"),  # no baseline: every finding is new
    ],
    ids=[
        "default-high",
        "default-medium",
        "critical-high",
        "critical-critical",
        "medium-medium",
        "low-unknown",
        "unfixed-ignored",
        "fixed-counts",
        "new-without-baseline",
    ],
)
def test_an_upload_is_judged_by_the_gate(app, client, admin_token, policy, findings, expected):
    set_policy(app, "acme", block_action="block_pull", **policy)
    assert status_of(client, admin_token, findings, "ghcr.io/acme/api:1") == expected


def test_the_signing_finding_blocks_whatever_the_gate_ignores(app, client, admin_token):
    set_policy(
        app,
        "acme",
        block_action="block_pull",
        require_signed=True,
        block_threshold="critical",
        ignore_unfixed=True,
        block_on="new",
    )
    assert status_of(client, admin_token, [finding(severity="low")], "ghcr.io/acme/api:1") == "failure"


GHA = "https://token.actions.githubusercontent.com"
COSTLY_BUT_QUICK = "^(?:a{1000})$|(?:b{300}){300}"  # 91,000 written out: over the bound, compiled in a few ms


def test_allowed_issuers_take_a_plain_list_of_urls_beside_objects(app, client, admin_token):
    """Spec §3: "list of OIDC issuer URLs, each optionally with a subject pattern" (HEAD before: a bare URL was a 422
    `must be an object`). Stored and shown as objects; a bad URL alone is a 422 at its path; the gate admits by it."""
    other = "https://issuer.example.com"
    issuers = [GHA, {"issuer": other}]
    r = put(client, admin_token, {"block_action": "block_pull", "require_signed": True, "allowed_issuers": issuers})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["allowed_issuers"] == [
        {"issuer": GHA, "subject_pattern": None},
        {"issuer": other, "subject_pattern": None},
    ]
    bad = put(client, admin_token, {"allowed_issuers": ["http://not-https.example.com"]})
    assert bad.status_code == 422 and bad.get_json()["details"][0]["path"] == "allowed_issuers[0].issuer"
    signed = {"signature_status": "signed", "signature_subject": "repo:acme/api:ref:refs/heads/main"}
    assert status_of(client, admin_token, [finding(severity="low")], "a:1", signature_issuer=GHA, **signed) == (
        "success"
    )
    assert status_of(
        client, admin_token, [finding(severity="low")], "a:2", signature_issuer="https://x.test", **signed
    ) == ("failure")


@pytest.mark.parametrize(
    "pattern",
    [
        "(?:a{3000}){3000}",  # 17 characters: 7 s and 2.4 GiB to compile
        "(?:a{65535}){65535}",  # never finished compiling
        "(?:(?:ab){100}){100}{100}",
        r"\p{L}{60000}",  # syntax only `regex` reads: measured by its counts
        "(?V1)(?:a{3000}){3000}",
        "(?:a{3000,}){3000,}",
    ],
)
def test_a_subject_pattern_too_costly_to_compile_is_422_at_once(app, client, admin_token, pattern):
    before = census(app)
    issuers = [{"issuer": GHA, "subject_pattern": pattern}]
    r = put(client, admin_token, {"require_signed": True, "allowed_issuers": issuers})
    assert r.status_code == 422, r.get_json()
    [detail] = r.get_json()["details"]
    assert detail["path"] == "allowed_issuers[0].subject_pattern" and "too costly" in detail["message"]
    assert census(app) == before


@pytest.mark.parametrize("pattern", ["(?x)(?:a{30 00}){30 00}", "(?x:(?:a{30 00}){30 00})", "(?ix)^repo:acme/"])
def test_a_subject_pattern_in_verbose_mode_is_422(app, client, admin_token, pattern):
    """`regex` reads `{30 00}` as 3000 in verbose mode, Python's parser as text: such a pattern cannot be measured."""
    before = census(app)
    issuers = [{"issuer": GHA, "subject_pattern": pattern}]
    r = put(client, admin_token, {"require_signed": True, "allowed_issuers": issuers})
    assert r.status_code == 422, r.get_json()
    [detail] = r.get_json()["details"]
    assert detail["path"] == "allowed_issuers[0].subject_pattern" and "verbose" in detail["message"]
    assert census(app) == before


def test_a_costly_pattern_stored_before_the_check_admits_no_one(app, client, admin_token):
    """Stored by an earlier version (or by hand): never compiled, so it matches no subject and the upload fails.
    (This one would compile in a few ms, and match.)"""
    set_policy(app, "acme", block_action="block_pull", require_signed=True)
    with app.app_context():
        session = db.session()
        with write_transaction(session):
            session.execute(
                sa.update(OrgSettings).values(allowed_issuers=[{"issuer": GHA, "subject_pattern": COSTLY_BUT_QUICK}])
            )
    body = seed([], signature_status="signed", signature_issuer=GHA, signature_subject="a" * 1000)
    r = post(client, admin_token, body)
    assert r.status_code == 202 and r.get_json()["status"] == "failure", r.get_json()
