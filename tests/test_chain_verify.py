"""`chain verify` on a 1,000-entry chain: intact, then each kind of tampering found at its exact first bad seq."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
import sqlalchemy as sa

from app.chain import verify
from app.models import FINDING_PAYLOAD_COLUMNS, AuditEvent, Finding, utcnow
from tests.chainkit import FUTURE, build_chain, fake_hash, org_id, sql, verdict
from tests.factories import make_org, make_token

SIZE = 1000
ORG = "org_id = :org"

# name: (statements, first bad seq, fault). Seqs 1-2 are audit events, 3-1000 findings.
MUTATIONS = {
    "a payload field changed": (
        [f"UPDATE findings SET title = 'nothing to see' WHERE {ORG} AND seq = 500"],
        500,
        "payload_changed",
    ),
    "an audit event's actor changed": (
        [f"UPDATE audit_events SET actor = 'someone else' WHERE {ORG} AND seq = 2"],
        2,
        "payload_changed",
    ),
    "a payload_hash changed": (
        [f"UPDATE findings SET payload_hash = :forged WHERE {ORG} AND seq = 500"],
        500,
        "payload_hash_changed",
    ),
    "a chain_hash changed": (
        [f"UPDATE findings SET chain_hash = :forged WHERE {ORG} AND seq = 500"],
        500,
        "chain_hash_changed",
    ),
    "the last chain_hash changed": (
        [f"UPDATE findings SET chain_hash = :forged WHERE {ORG} AND seq = {SIZE}"],
        SIZE,
        "chain_hash_changed",
    ),
    "two entries swapped": (
        [
            f"UPDATE findings SET seq = -1 WHERE {ORG} AND seq = 400",
            f"UPDATE findings SET seq = 400 WHERE {ORG} AND seq = 600",
            f"UPDATE findings SET seq = 600 WHERE {ORG} AND seq = -1",
        ],
        400,
        "order_changed",
    ),
    "two neighbours swapped": (
        [
            f"UPDATE findings SET seq = -1 WHERE {ORG} AND seq = 400",
            f"UPDATE findings SET seq = 400 WHERE {ORG} AND seq = 401",
            f"UPDATE findings SET seq = 401 WHERE {ORG} AND seq = -1",
        ],
        400,
        "order_changed",
    ),
    "a fresh entry emptied as if by retention": (
        [
            "UPDATE findings SET cve_id = NULL, severity = NULL, package = NULL, installed_version = NULL,"
            ' fixed_version = NULL, target = NULL, title = NULL, primary_url = NULL, "references" = NULL,'
            f" vendor_ids = NULL, synthetic = NULL, redacted_at = created_at WHERE {ORG} AND seq = 500"
        ],
        500,
        "payload_removed",
    ),
    "a payload_hash rewritten in capitals": (
        [f"UPDATE findings SET payload_hash = upper(payload_hash) WHERE {ORG} AND seq = 500"],
        500,
        "payload_hash_changed",
    ),
    "the head row deleted": ([f"DELETE FROM chain_heads WHERE {ORG}"], SIZE, "head_mismatch"),
    "an entry deleted": ([f"DELETE FROM findings WHERE {ORG} AND seq = 500"], 500, "entry_missing"),
    "the tail deleted": ([f"DELETE FROM findings WHERE {ORG} AND seq > 990"], 991, "entry_missing"),
    "an entry inserted, the rest renumbered": (
        [
            f"UPDATE findings SET seq = seq + 100000 WHERE {ORG} AND seq >= 500",
            f"UPDATE findings SET seq = seq - 99999 WHERE {ORG} AND seq >= 100000",
            "INSERT INTO findings (org_id, scan_run_id, seq, payload_hash, chain_hash, created_at, cve_id, severity)"
            f" SELECT org_id, scan_run_id, 500, :forged, chain_hash, created_at, 'CVE-2099-0001', 'low'"
            f" FROM findings WHERE {ORG} AND seq = 499",
            f"UPDATE chain_heads SET seq = seq + 1 WHERE {ORG}",
        ],
        500,
        "entry_inserted",
    ),
    "an entry inserted with a seq already used": (
        [
            "INSERT INTO audit_events (org_id, seq, payload_hash, chain_hash, created_at, action, actor)"
            f" SELECT org_id, 500, payload_hash, chain_hash, created_at, action, actor FROM audit_events"
            f" WHERE {ORG} AND seq = 1"
        ],
        500,
        "entry_inserted",
    ),
    "an entry appended past the head": (
        [
            "INSERT INTO findings (org_id, scan_run_id, seq, payload_hash, chain_hash, created_at, cve_id)"
            f" SELECT org_id, scan_run_id, {SIZE + 1}, payload_hash, :forged, created_at, cve_id FROM findings"
            f" WHERE {ORG} AND seq = 3"
        ],
        SIZE + 1,
        "entry_inserted",
    ),
}


@pytest.fixture
def chain(app, client):
    build_chain(app, client, size=SIZE)
    code, v = verdict(app)
    assert (code, v["intact"], v["entries"], v["head_seq"]) == (0, True, SIZE, SIZE)
    return org_id(app, "acme")


@pytest.mark.parametrize("name", MUTATIONS)
def test_each_mutation_is_found_at_its_first_bad_seq(app, chain, name):
    statements, first_bad, fault = MUTATIONS[name]
    sql(app, *statements, org=chain, forged=fake_hash(name))
    code, v = verdict(app)
    assert code == 1
    assert (v["intact"], v["first_bad_seq"], v["fault"]) == (False, first_bad, fault), v["message"]
    assert f"BROKEN at seq {first_bad}" in v["message"]


def test_an_entry_moved_to_another_org_is_missing_here_and_foreign_there(app, chain):
    make_org(app, "beta")  # beta's chain: one audit event (seq 1)
    beta = org_id(app, "beta")
    sql(app, f"UPDATE findings SET org_id = :beta WHERE {ORG} AND seq = 500", org=chain, beta=beta)

    code, v = verdict(app, "acme")
    assert (code, v["first_bad_seq"], v["fault"]) == (1, 500, "entry_missing")
    assert "stored under org 'beta'" in v["message"]
    code, v = verdict(app, "beta")
    assert (code, v["first_bad_seq"], v["fault"]) == (1, 500, "other_org")


@pytest.mark.parametrize(
    ("column", "fault"), [("payload_hash", "payload_hash_changed"), ("chain_hash", "chain_hash_changed")]
)
def test_a_redacted_entry_whose_hash_changed(app, chain, column, fault):
    result = app.test_cli_runner().invoke(args=["retention", "run", "--now", FUTURE])
    assert result.exit_code == 0, result.output
    code, v = verdict(app)
    assert (code, v["redacted"]) == (0, SIZE)  # every entry aged out, and the chain still verifies
    sql(app, f"UPDATE findings SET {column} = :forged WHERE {ORG} AND seq = 300", org=chain, forged=fake_hash(column))
    code, v = verdict(app)
    assert (code, v["first_bad_seq"], v["fault"]) == (1, 300, fault), v["message"]


def test_a_payload_emptied_without_retention_is_a_changed_payload(app, chain):
    sql(app, f"UPDATE findings SET title = NULL, cve_id = NULL WHERE {ORG} AND seq = 700", org=chain)
    code, v = verdict(app)
    assert (code, v["first_bad_seq"], v["fault"]) == (1, 700, "payload_changed")


def _update(app, table, where, **values) -> None:
    """An UPDATE with typed values (times as each backend keeps them), straight on the database."""
    with app.extensions["fremforge.db"].engine.begin() as conn:
        conn.execute(sa.update(table).where(where).values(**values))


def test_a_fresh_entry_emptied_and_backdated_is_no_retentions(app, chain):
    """A finding emptied a minute ago and made to look two days old: no retention ran then (no run's event has that
    time), so it is no retention's work, whatever its age. HEAD: intact, as the day-old rule took any such time."""
    now = utcnow()
    emptied = {c: None for c in FINDING_PAYLOAD_COLUMNS}
    where = (Finding.org_id == chain) & (Finding.seq == 500)
    _update(app, Finding, where, **emptied, created_at=now - timedelta(days=2), redacted_at=now - timedelta(minutes=1))
    code, v = verdict(app)
    assert (code, v["first_bad_seq"], v["fault"]) == (1, 500, "payload_removed"), v["message"]
    assert "when no retention ran" in v["message"]


def test_entries_aged_out_by_a_run_whose_own_event_aged_out_since_are_intact(app, chain):
    """The run of three days ago aged out everything made ten days ago; today's run (retention 1 day) aged out that
    run's event, which keeps only its time: the entries it emptied are still a retention's."""
    long_ago = utcnow() - timedelta(days=10)
    _update(app, Finding, Finding.org_id == chain, created_at=long_ago)
    _update(app, AuditEvent, AuditEvent.org_id == chain, created_at=long_ago)
    runner = app.test_cli_runner()
    assert runner.invoke(args=["policy", "set", "acme", "--retention-days", "1"]).exit_code == 0
    before = (utcnow() - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert runner.invoke(args=["retention", "run", "--now", before]).exit_code == 0
    assert runner.invoke(args=["retention", "run"]).exit_code == 0
    code, v = verdict(app)
    assert (code, v["intact"], v["redacted"]) == (0, True, SIZE + 2), v  # + the first run's two events


def test_the_head_row_must_match_the_last_entry(app, chain):
    sql(app, f"UPDATE chain_heads SET head_hash = :forged WHERE {ORG}", org=chain, forged=fake_hash("head"))
    code, v = verdict(app)
    assert (code, v["first_bad_seq"], v["fault"]) == (1, SIZE, "head_mismatch")


def test_the_api_gives_the_same_verdict_to_settings_write_tokens(app, client, chain):
    reader = make_token(app, scopes=["findings:read"])
    admin = make_token(app, scopes=["settings:write"])
    assert (
        client.get("/api/v1/orgs/acme/audit/verify", headers={"Authorization": f"Bearer {reader}"}).status_code == 403
    )
    sql(app, f"DELETE FROM findings WHERE {ORG} AND seq = 777", org=chain)
    answer = client.get("/api/v1/orgs/acme/audit/verify", headers={"Authorization": f"Bearer {admin}"})
    assert answer.status_code == 200
    _, cli = verdict(app)
    assert answer.json == cli and answer.json["first_bad_seq"] == 777


def test_an_empty_chain_is_intact(app):
    make_org(app, "empty")
    sql(app, "DELETE FROM audit_events")
    sql(app, "UPDATE chain_heads SET seq = 0, head_hash = :genesis", genesis="0" * 64)
    code, v = verdict(app, "empty")
    assert (code, v["intact"], v["entries"]) == (0, True, 0)


def test_verify_of_an_unknown_org_is_a_clear_error(app):
    result = app.test_cli_runner().invoke(args=["chain", "verify", "nobody"])
    assert result.exit_code == 1 and "there is no organisation 'nobody'" in result.output


def test_a_slug_in_another_letter_case_names_the_org_there_is(app):
    make_org(app, "Codertocat")  # as an installation of an older version made it
    result = app.test_cli_runner().invoke(args=["chain", "verify", "codertocat"])
    assert result.exit_code == 1 and "there is 'Codertocat'" in result.output and "orgs create" not in result.output


# -- the pure walk, without a database ---------------------------------------------------------------------------


def _entries(n: int) -> list[verify.Entry]:
    out, prev = [], bytes(32)
    for seq in range(1, n + 1):
        payload = {"org_id": 1, "created_at": "2026-01-01T00:00:00.000000Z", "action": "a", "actor": "x", "details": {}}
        ph = verify.payload_digest("audit", {**payload, "details": {"n": seq}})
        prev = hashlib.sha256(prev + ph).digest()
        out.append((seq, "audit", seq, {**payload, "details": {"n": seq}}, ph.hex(), prev.hex()))
    return out


def test_walk_accepts_a_whole_chain_and_names_a_cut_one():
    entries = _entries(5)
    head = (5, entries[-1][5])
    assert verify.walk(entries, head).intact
    cut = verify.walk(entries[:3], head)
    assert (cut.intact, cut.first_bad_seq, cut.fault) == (False, 4, "entry_missing")
    past = verify.walk(entries, (4, entries[3][5]))
    assert (past.first_bad_seq, past.fault) == (5, "entry_inserted")
