"""Ingest's two ways of writing findings and its re-assessment under the locked policy.

PostgreSQL writes up to store.ONE_STATEMENT_ROWS findings in one statement with the head's move and the outbox item,
more by COPY; both must leave the same chain. An upload is judged first under the policy its request read; when the
policy locked for the write differs (a change landed meanwhile), it is judged again: never under the stale one.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from app import chain, db, orgs, policy
from app.chain.verify import verify_org
from app.findings import schemas, service, store
from app.models import FINDING_PAYLOAD_COLUMNS, ChainHead, Finding, Org, OutboxItem, ScanRun
from app.web.urls import Urls
from tests.factories import census, finding, make_org, make_token, post, seed, set_policy


@pytest.mark.parametrize(
    "count", [store.ONE_STATEMENT_ROWS, store.ONE_STATEMENT_ROWS + 1], ids=["one-statement", "copy"]
)
def test_either_way_of_writing_findings_leaves_a_whole_chain(app, client, count):
    make_org(app)
    token = make_token(app)
    findings = [finding(f"CVE-2024-{i:05d}", ("critical", "high", "low")[i % 3]) for i in range(count)]
    r = post(client, token, seed(findings))
    assert r.status_code == 202, r.get_json()
    assert r.get_json()["accepted"] == count
    with app.app_context():
        s = db.session()
        org = orgs.by_slug(s, "acme")
        assert org is not None
        head = s.get(ChainHead, org.id)
        seqs = s.scalars(sa.select(Finding.seq).where(Finding.org_id == org.id).order_by(Finding.seq)).all()
        assert head is not None and head.seq == seqs[-1] and len(seqs) == count
        assert seqs == list(range(seqs[0], seqs[0] + count))  # contiguous, after the token's audit event
        assert s.scalar(sa.select(sa.func.count()).select_from(OutboxItem)) == 1
        verdict = verify_org(db.database().engine, org.id)
    assert verdict.intact, verdict.describe("acme")


def test_an_org_made_by_hand_gets_its_chain_head_and_settings_with_its_first_upload(app):
    """An org inserted without the app (no chain head, no settings row): its first upload starts the chain at the
    genesis hash, its second goes on from there, and the chain verifies."""
    upload = schemas.parse_upload(_body([finding("CVE-2024-00001"), finding("CVE-2024-00002")]), {}, 100)
    with app.app_context():
        s = db.session()
        s.execute(sa.insert(Org).values(slug="byhand", github_login="byhand"))
        s.commit()
        org = orgs.by_slug(s, "byhand")
        assert org is not None and s.get(ChainHead, org.id) is None
        for _ in range(2):
            result = service.ingest(s, org, upload, Urls("http://fremforge.test"), False, policy.Policy())
            assert result is not None and result.accepted == 2
        head = s.get(ChainHead, org.id)
        assert head is not None and head.seq == 4
        verdict = verify_org(db.database().engine, org.id)
    assert verdict.intact, verdict.describe("byhand")


def test_an_upload_is_judged_again_when_the_locked_policy_differs(app):
    """The request read `warn`; block_pull landed before the write: the scan fails, as block_pull says."""
    make_org(app)
    set_policy(app, "acme", block_action="block_pull")
    upload = schemas.parse_upload(_body([finding(severity="critical")]), {}, 100)
    stale = policy.Policy(block_action="warn")
    with app.app_context():
        s = db.session()
        org = orgs.by_slug(s, "acme")
        assert org is not None
        result = service.ingest(s, org, upload, Urls("http://fremforge.test"), deliver=False, expected=stale)
        assert result is not None
        scan = s.get(ScanRun, result.scan_run_id)
        assert scan is not None
        assert (result.status, scan.status, scan.block_action) == ("failure", "failure", "block_pull")
        assert result.commit_status is not None and result.commit_status["state"] == "failure"


def test_an_upload_under_a_policy_disabled_meanwhile_stores_nothing(app):
    make_org(app)
    set_policy(app, "acme", enabled=False)
    upload = schemas.parse_upload(_body([finding()]), {}, 100)
    with app.app_context():
        s = db.session()
        org = orgs.by_slug(s, "acme")
        assert org is not None
        result = service.ingest(s, org, upload, Urls("http://fremforge.test"), deliver=False, expected=policy.Policy())
        assert result is None
        assert s.scalar(sa.select(sa.func.count()).select_from(ScanRun)) == 0


def test_a_failing_last_statement_stores_nothing_and_the_next_upload_goes_on(app, client, monkeypatch):
    """The upload's last statement fails: the answer is an error, nothing of the upload is stored, the chain head
    stays, and the connection serves the next upload."""
    make_org(app)
    token = make_token(app)
    real = store.MOVE_HEAD
    monkeypatch.setattr(store, "MOVE_HEAD", real.values(seq=None))  # NOT NULL: refused by the database
    before = census(app)
    r = post(client, token, seed([finding()]))
    assert r.status_code == 500, r.get_json()
    assert census(app) == before
    monkeypatch.setattr(store, "MOVE_HEAD", real)
    r = post(client, token, seed([finding()]))
    assert r.status_code == 202, r.get_json()
    with app.app_context():
        s = db.session()
        org = orgs.by_slug(s, "acme")
        assert org is not None
        assert s.scalar(sa.select(sa.func.count()).select_from(Finding)) == 1
        verdict = verify_org(db.database().engine, org.id)
    assert verdict.intact, verdict.describe("acme")


def _body(findings: list[dict]) -> bytes:
    return json.dumps(seed(findings)).encode()


def test_rows_made_before_the_head_is_locked_are_the_rows_made_after():
    """store.linked_json(store.unlinked_json(...)) (the rows' JSON made from their canonical payloads before the chain
    head is locked) says what store's own JSON of the whole rows says, column for column, for hostile strings too:
    but for created_at's "Z" (which PostgreSQL's timestamp input ignores) and an absent `truncated` (NULL)."""
    from datetime import datetime

    now = datetime(2026, 12, 6, 1, 2, 3, 456789)
    findings = [
        {"cve_id": f'CVE-"{i}"\\\n', "severity": "high", "package": "pkg\u2028", "installed_version": "1.0",
         "fixed_version": None, "target": "t", "title": "title </script>", "primary_url": None,
         "references": ["https://x"], "vendor_ids": ["DSA-1"], "synthetic": False, "truncated": i == 1}
        for i in range(3)
    ]  # fmt: skip
    flags = [(True, None, 3), (False, True, None), (True, False, None)]
    payloads = [chain.canonical(chain.finding_payload(7, 42, chain.timestamp(now), f)) for f in findings]
    links = [(100 + i, f"{i:064x}", f"{i + 1:064x}") for i in range(3)]
    rows = [
        (7, 42, seq, ph, ch, now, *(_column(f, c) for c in FINDING_PAYLOAD_COLUMNS), *flag)
        for f, flag, (seq, ph, ch) in zip(findings, flags, links, strict=True)
    ]
    linked = json.loads(store.linked_json(store.unlinked_json(payloads, flags), links))
    for obj in linked:
        assert obj.pop("created_at") == now.isoformat() + "Z"
        obj.setdefault("truncated", None)
    whole = json.loads(store._json_rows(rows))
    for obj in whole:
        assert obj.pop("created_at") == now.isoformat()
    assert linked == whole


def _column(finding: dict, column: str) -> object:
    """A finding's value as store.insert takes it (JSON columns as JSON text; truncated NULL unless cut)."""
    if column in ("references", "vendor_ids"):
        return json.dumps(finding[column])
    return (finding[column] or None) if column == "truncated" else finding[column]
