"""The commit's posted state through the HTTP API: aggregation over images, block actions, signing, the outbox."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from app import db
from app.models import OutboxItem
from tests.factories import REPO, SHA, SHA2, census, finding, make_org, make_token, post, seed, set_policy

A = "ghcr.io/acme/api:1"
B = "ghcr.io/acme/worker:1"
HIGH = [finding("CVE-2023-0001", "high")]
CRITICAL = [finding("CVE-2023-0002", "critical")]
CLEAN = [finding("CVE-2023-0003", "low", fixed=None)]
TARGET = f"http://fremforge.test/admin/orgs/acme/code-security/image-scanning/commits/{SHA}?repo=acme%2Fapi"
NOT_DELIVERED = {
    "state": "not_delivered",
    "detail": "not delivered: no GitHub App configured",
    "attempts": 0,
    "github_shows_older": None,
}


@pytest.fixture
def token(app):
    make_org(app)
    return make_token(app)


def up(client, token, image: str, findings: list[dict[str, Any]], sha: str = SHA, repo: str = REPO, **extra):
    r = post(client, token, seed(findings, image_ref=image, sha=sha, repo=repo, **extra))
    assert r.status_code == 202, r.json
    return r.json


def get_scan(client, token, scan_id: int) -> dict[str, Any]:
    r = client.get(f"/api/v1/orgs/acme/image-scans/{scan_id}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.json
    return r.json


def outbox_rows(app) -> list[dict[str, Any]]:
    with app.app_context():
        rows = db.session().scalars(sa.select(OutboxItem).order_by(OutboxItem.id)).all()
        return [
            {
                "id": o.id,
                "scan_run_id": o.scan_run_id,
                "repo": o.repo_full_name,
                "sha": o.commit_sha,
                "state": o.state,
                "last_error": o.last_error,
                "commit_status": o.commit_status,
                "check_run": o.check_run,
                "attempts": o.attempts,
                "next_attempt_at": o.next_attempt_at,
            }
            for o in rows
        ]


def state_of(body: dict[str, Any]) -> str:
    return body["commit_status"]["state"]


# ------------------------------------------------------------------ aggregation over images


def test_passing_image_never_turns_a_failing_image_green(app, client, token):
    set_policy(app, "acme", block_action="block_pull")

    a1 = up(client, token, A, HIGH)
    assert a1["status"] == "failure"
    assert a1["url"] == f"http://fremforge.test/admin/orgs/acme/code-security/image-scanning/scans/{a1['scan_run_id']}"
    assert a1["commit_status"] == {
        "context": "fremforge/image-scan",
        "state": "failure",
        "description": "1 image · 1 high · blocking",
    }

    b1 = up(client, token, B, CLEAN)
    assert b1["status"] == "success"  # B's own verdict
    assert state_of(b1) == "failure"  # the commit's: A still blocks
    assert b1["commit_status"]["description"] == "2 images · 1 high · blocking"  # what blocks

    b2 = up(client, token, B, [])  # B again, still passing: A is still failing
    assert b2["status"] == "success" and state_of(b2) == "failure"

    a2 = up(client, token, A, CLEAN)  # A fixed: its latest scan passes
    assert a2["status"] == "success"
    assert a2["commit_status"] == {
        "context": "fremforge/image-scan",
        "state": "success",
        "description": "2 images · 1 low",
    }

    b3 = up(client, token, B, CRITICAL)  # now B blocks
    assert b3["status"] == "failure" and state_of(b3) == "failure"
    assert b3["commit_status"]["description"] == "2 images · 1 critical · blocking"


def test_only_the_latest_scan_of_each_image_counts(app, client, token):
    set_policy(app, "acme", block_action="block_pull")
    up(client, token, A, [finding(f"CVE-2023-{i:04d}", "high") for i in range(3)])
    a2 = up(client, token, A, CRITICAL)
    # A's earlier three highs are not added to its latest scan's single critical
    assert a2["commit_status"]["description"] == "1 image · 1 critical · blocking"
    b = up(client, token, B, [finding("CVE-2023-0100", "medium")])
    assert b["commit_status"]["description"] == "2 images · 1 critical · blocking"
    a3 = up(client, token, A, [])
    assert a3["commit_status"] == {
        "context": "fremforge/image-scan",
        "state": "success",
        "description": "2 images · 1 medium",
    }


def test_other_commits_and_repos_are_aggregated_apart(app, client, token):
    set_policy(app, "acme", block_action="block_pull")
    assert state_of(up(client, token, A, HIGH)) == "failure"
    other_sha = up(client, token, B, CLEAN, sha=SHA2)
    assert other_sha["commit_status"]["description"] == "1 image · 1 low" and state_of(other_sha) == "success"
    other_repo = up(client, token, B, CLEAN, repo="acme/web")
    assert other_repo["commit_status"]["description"] == "1 image · 1 low" and state_of(other_repo) == "success"


def test_stored_verdicts_are_history_the_posted_state_follows_the_current_policy(app, client, token):
    a = up(client, token, A, CRITICAL)  # default policy: warn
    assert a["status"] == "success"
    set_policy(app, "acme", block_action="block_pull")
    b = up(client, token, B, CLEAN)
    assert state_of(b) == "failure"  # A judged again under block_pull (spec section 4)
    assert b["commit_status"]["description"] == "2 images · 1 critical · blocking"
    assert get_scan(client, token, a["scan_run_id"])["status"] == "success"  # the verdict it got, kept as history


# ------------------------------------------------------------------ block actions


def test_warn_posts_success_naming_the_count(app, client, token):
    body = up(client, token, A, CRITICAL + HIGH + [finding("CVE-2023-0009", "high", package="curl")])
    assert body["status"] == "success"
    assert body["severity_counts"] == {"critical": 1, "high": 2, "medium": 0, "low": 0, "unknown": 0}
    assert body["commit_status"] == {
        "context": "fremforge/image-scan",
        "state": "success",
        "description": "1 image · 1 critical, 2 high · warning only",
    }
    [row] = outbox_rows(app)
    assert row["commit_status"]["state"] == "success" and row["check_run"]["conclusion"] == "success"


def test_none_stores_but_posts_nothing_and_leaves_earlier_posts(app, client, token):
    set_policy(app, "acme", block_action="block_pull")
    first = up(client, token, A, HIGH)
    assert state_of(first) == "failure"
    before = outbox_rows(app)
    assert len(before) == 1

    set_policy(app, "acme", block_action="none")
    body = up(client, token, A, CRITICAL)
    assert body["status"] == "skipped"
    assert body["commit_status"] is None
    assert body["accepted"] == 1
    assert body["severity_counts"]["critical"] == 1
    assert outbox_rows(app) == before  # nothing new, the earlier wish untouched

    scan = get_scan(client, token, body["scan_run_id"])
    assert scan["status"] == "skipped" and scan["commit_status"] is None
    assert [f["cve_id"] for f in scan["findings"]] == ["CVE-2023-0002"]  # still stored
    assert get_scan(client, token, first["scan_run_id"])["commit_status"]["state"] == "failure"


def test_none_leaves_a_pending_wish_pending(app, client, token):
    app.config["GITHUB_APP_CONFIGURED"] = True
    set_policy(app, "acme", block_action="block_pull")
    up(client, token, A, HIGH)
    before = outbox_rows(app)
    assert [r["state"] for r in before] == ["pending"]
    set_policy(app, "acme", block_action="none")
    up(client, token, B, CLEAN)
    assert outbox_rows(app) == before


def test_disabled_parses_but_stores_and_posts_nothing(app, client, token):
    set_policy(app, "acme", block_action="block_pull")
    up(client, token, A, HIGH)
    set_policy(app, "acme", enabled=False, require_signed=True)
    before, rows = census(app), outbox_rows(app)
    r = post(client, token, seed(CRITICAL, image_ref=B, signature_status="unsigned"))
    assert r.status_code == 202, r.json
    assert r.json == {"accepted": 0, "status": "disabled"}
    bad = post(client, token, seed([finding(severity="severe")], image_ref=B))
    assert bad.status_code == 422 and bad.json["details"][0]["path"] == "findings[0].severity"
    assert census(app) == before and outbox_rows(app) == rows


# ------------------------------------------------------------------ signing


def test_require_signed_unsigned_gets_a_synthetic_critical(app, client, token):
    set_policy(app, "acme", block_action="block_pull", require_signed=True)
    body = up(client, token, A, CLEAN, signature_status="unsigned")
    assert body["accepted"] == 1  # the uploaded finding only
    assert body["severity_counts"] == {"critical": 1, "high": 0, "medium": 0, "low": 1, "unknown": 0}
    assert body["fixable"] == 0
    assert body["status"] == "failure"
    assert body["commit_status"]["state"] == "failure"
    assert body["commit_status"]["description"] == "1 image · 1 critical · blocking"

    scan = get_scan(client, token, body["scan_run_id"])
    assert scan["signature_status"] == "unsigned"
    synthetic = [f for f in scan["findings"] if f["synthetic"]]
    assert len(synthetic) == 1
    s = synthetic[0]
    assert (s["cve_id"], s["severity"], s["fixable"], s["target"]) == ("FREMFORGE-UNSIGNED-IMAGE", "critical", False, A)
    assert s["advisories"] == []
    assert [f["cve_id"] for f in scan["findings"] if not f["synthetic"]] == ["CVE-2023-0003"]


def test_require_signed_absent_signature_counts_as_unknown(app, client, token):
    set_policy(app, "acme", block_action="block_pull", require_signed=True)
    body = up(client, token, A, [])
    assert body["accepted"] == 0 and body["severity_counts"]["critical"] == 1 and body["status"] == "failure"
    scan = get_scan(client, token, body["scan_run_id"])
    assert scan["signature_status"] == "unknown"
    assert [f["cve_id"] for f in scan["findings"]] == ["FREMFORGE-UNSIGNED-IMAGE"]


def test_require_signed_allowed_and_untrusted_signers(app, client, token):
    gha = "https://token.actions.githubusercontent.com"
    set_policy(
        app,
        "acme",
        block_action="block_pull",
        require_signed=True,
        allowed_issuers=[{"issuer": gha, "subject_pattern": "^https://github.com/acme/"}],
    )
    ok = up(
        client,
        token,
        A,
        CLEAN,
        signature_status="signed",
        signature_issuer=gha,
        signature_subject="https://github.com/acme/api/.github/workflows/build.yml@refs/heads/main",
    )
    assert ok["status"] == "success" and ok["severity_counts"]["critical"] == 0
    assert state_of(ok) == "success"

    bad = up(
        client,
        token,
        B,
        CLEAN,
        signature_status="signed",
        signature_issuer=gha,
        signature_subject="https://github.com/evil/api/.github/workflows/build.yml@refs/heads/main",
    )
    assert bad["status"] == "failure" and bad["accepted"] == 1 and bad["severity_counts"]["critical"] == 1
    assert state_of(bad) == "failure"
    scan = get_scan(client, token, bad["scan_run_id"])
    assert [f["cve_id"] for f in scan["findings"] if f["synthetic"]] == ["FREMFORGE-UNTRUSTED-SIGNER"]


def test_require_signed_via_trivy_query_parameters(app, client, token):
    set_policy(app, "acme", block_action="block_pull", require_signed=True)
    report = {
        "SchemaVersion": 2,
        "ArtifactName": A,
        "Results": [
            {
                "Target": "x",
                "Vulnerabilities": [
                    {"VulnerabilityID": "CVE-2023-0003", "PkgName": "zlib", "InstalledVersion": "1", "Severity": "LOW"}
                ],
            }
        ],
    }
    q = {"commit_sha": SHA, "repo_full_name": REPO}
    unsigned = post(client, token, report, query={**q, "signature_status": "unsigned"})
    assert unsigned.status_code == 202, unsigned.json
    assert unsigned.json["status"] == "failure" and unsigned.json["severity_counts"]["critical"] == 1
    signed = post(
        client,
        token,
        report,
        query={**q, "signature_status": "signed", "signature_issuer": "https://token.actions.githubusercontent.com"},
    )
    assert signed.status_code == 202, signed.json
    assert signed.json["status"] == "success" and signed.json["commit_status"]["state"] == "success"


# ------------------------------------------------------------------ the outbox


def test_no_github_app_rows_are_not_delivered(app, client, token):
    assert app.config["GITHUB_APP_CONFIGURED"] is False
    set_policy(app, "acme", block_action="block_pull")
    a = up(client, token, A, HIGH)
    b = up(client, token, B, CLEAN)
    rows = outbox_rows(app)
    assert [(r["scan_run_id"], r["state"], r["last_error"], r["next_attempt_at"]) for r in rows] == [
        (a["scan_run_id"], "not_delivered", "no GitHub App configured", None),
        (b["scan_run_id"], "not_delivered", "no GitHub App configured", None),
    ]
    last = rows[-1]
    assert last["commit_status"] == {
        "state": "failure",
        "description": b["commit_status"]["description"],
        "context": "fremforge/image-scan",
        "target_url": TARGET,
    }
    assert last["check_run"]["conclusion"] == "failure"
    assert last["check_run"]["name"] == "fremforge/image-scan"
    assert last["check_run"]["head_sha"] == SHA
    assert last["check_run"]["details_url"] == TARGET
    summary = last["check_run"]["output"]["summary"]
    assert f"`{A}`" in summary and f"`{B}`" in summary
    # top findings with advisory links: A's from the database, B's from the upload being stored
    assert "[CVE-2023-0001](https://www.cve.org/CVERecord?id=CVE-2023-0001)" in summary
    assert "[CVE-2023-0003](https://www.cve.org/CVERecord?id=CVE-2023-0003)" in summary
    assert summary.index(A) < summary.index("CVE-2023-0001") < summary.index(B) < summary.index("CVE-2023-0003")

    for body in (a, b):
        scan = get_scan(client, token, body["scan_run_id"])
        cs = scan["commit_status"]
        assert cs["delivery"] == NOT_DELIVERED
        assert cs["delivery"]["detail"] == "not delivered: no GitHub App configured"
        assert cs["target_url"] == TARGET
        assert {k: cs[k] for k in ("context", "state", "description")} == body["commit_status"]
    listed = client.get(
        "/api/v1/orgs/acme/image-scans", query_string={"commit_sha": SHA}, headers={"Authorization": f"Bearer {token}"}
    )
    assert listed.status_code == 200
    assert [i["commit_status"]["delivery"] for i in listed.json["items"]] == [NOT_DELIVERED, NOT_DELIVERED]


def test_newer_wish_supersedes_older_pending_ones(app, client, token):
    app.config["GITHUB_APP_CONFIGURED"] = True  # no worker runs in tests: wishes stay pending
    set_policy(app, "acme", block_action="block_pull")
    a = up(client, token, A, HIGH)
    other = up(client, token, A, HIGH, sha=SHA2)  # another commit: never superseded by SHA's scans
    b = up(client, token, B, CLEAN)
    rows = outbox_rows(app)
    assert [(r["scan_run_id"], r["sha"], r["state"]) for r in rows] == [
        (a["scan_run_id"], SHA, "superseded"),
        (other["scan_run_id"], SHA2, "pending"),
        (b["scan_run_id"], SHA, "pending"),
    ]
    assert all(r["last_error"] is None for r in rows)
    assert rows[-1]["commit_status"]["state"] == "failure"
    a2 = up(client, token, A, CLEAN)
    rows = outbox_rows(app)
    assert [r["state"] for r in rows] == ["superseded", "pending", "superseded", "pending"]
    assert rows[-1]["scan_run_id"] == a2["scan_run_id"] and rows[-1]["commit_status"]["state"] == "success"
    old = get_scan(client, token, a["scan_run_id"])["commit_status"]["delivery"]
    assert old == {
        "state": "superseded",
        "detail": "superseded by a newer scan of the same commit",
        "attempts": 0,
        "github_shows_older": None,
    }
    new = get_scan(client, token, a2["scan_run_id"])["commit_status"]["delivery"]
    assert new == {"state": "pending", "detail": "waiting to be delivered", "attempts": 0, "github_shows_older": None}
