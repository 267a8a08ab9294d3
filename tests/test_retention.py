"""Retention: payloads past the org's retention_days leave the database; seq, hashes and time stay, the chain
still verifies, scans keep their counts, and a second run changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from app import db, worker
from app.chain import audit, retention
from app.findings import service
from app.github import outbox
from app.models import AuditEvent, Finding, ScanRun, WebhookDelivery, utcnow
from tests.chainkit import FUTURE, org_id, scalar, verdict
from tests.conftest import admin_login
from tests.factories import SHA, SHA2, finding, make_org, make_token, post, seed

OLD_MARK = "OLD-PAYLOAD-7f3a9c"  # in the titles of the findings that age out
YOUNG_MARK = "YOUNG-PAYLOAD-2b8e1d"


def upload(client, token, n: int, mark: str, image: str, slug: str = "acme", sha: str = SHA) -> None:
    body = seed(
        [finding(f"CVE-2024-{i:04d}", title=f"{mark} {i}") for i in range(n)],
        image_ref=image,
        repo=f"{slug}/api",
        sha=sha,
    )
    assert post(client, token, body, slug=slug).status_code == 202


@pytest.fixture
def aged(app, client, monkeypatch):
    """acme: 30 findings uploaded 400 days ago, 20 uploaded now; retention_days is the default 365."""
    make_org(app)
    token = make_token(app)
    long_ago = utcnow() - timedelta(days=400)
    for module in (service, outbox):  # the scan, its findings and the status it asked for, all that old
        monkeypatch.setattr(module, "utcnow", lambda: long_ago)
    upload(client, token, 30, OLD_MARK, "ghcr.io/acme/old:1")
    monkeypatch.undo()
    upload(client, token, 20, YOUNG_MARK, "ghcr.io/acme/new:1", sha=SHA2)  # another commit: its check run names
    # only its own findings (a commit scanned again a year later would quote the old image's top findings)
    return token


def payloads(app, mark: str) -> int:
    return scalar(app, "SELECT count(*) FROM findings WHERE title LIKE :m", m=f"{mark}%")


def test_aged_payloads_leave_and_the_chain_still_verifies(app, aged):
    before = verdict(app)[1]
    heads_before = scalar(app, "SELECT count(*) FROM findings WHERE payload_hash IS NOT NULL")
    result = app.test_cli_runner().invoke(args=["retention", "run"])
    assert result.exit_code == 0, result.output
    assert "acme: removed the payload of 30 finding(s)" in result.output

    assert payloads(app, OLD_MARK) == 0 and payloads(app, YOUNG_MARK) == 20
    with app.app_context():
        s = db.session()
        old = s.scalars(sa.select(Finding).where(Finding.redacted_at.is_not(None))).all()
        assert len(old) == 30
        for f in old:  # every payload field gone; ids, seq, hashes and time kept
            assert all(getattr(f, c) is None for c in ("cve_id", "severity", "package", "title", "references"))
            assert f.seq and f.payload_hash and f.chain_hash and f.created_at and f.scan_run_id
        scans = {s.image_ref: (s.high, s.accepted) for s in s.scalars(sa.select(ScanRun))}
        assert scans == {"ghcr.io/acme/old:1": (30, 30), "ghcr.io/acme/new:1": (20, 20)}  # counts stay
        event = s.scalars(sa.select(AuditEvent).where(AuditEvent.action == "retention.run")).one()
        assert event.actor == retention.ACTOR
        assert event.details["findings_redacted"] == 30 and event.details["retention_days"] == 365
    assert scalar(app, "SELECT count(*) FROM findings WHERE payload_hash IS NOT NULL") == heads_before

    code, after = verdict(app)
    assert code == 0 and after["entries"] == before["entries"] + 2  # + its retention.started and retention.run events
    assert after["redacted"] == 30


def test_a_second_run_changes_nothing(app, aged):
    runner = app.test_cli_runner()
    assert runner.invoke(args=["retention", "run"]).exit_code == 0
    head = scalar(app, "SELECT head_hash FROM chain_heads")
    events = scalar(app, "SELECT count(*) FROM audit_events")
    second = runner.invoke(args=["retention", "run"])
    assert second.exit_code == 0 and "acme: nothing older than" in second.output
    assert scalar(app, "SELECT head_hash FROM chain_heads") == head
    assert scalar(app, "SELECT count(*) FROM audit_events") == events


def test_the_api_shows_redacted_findings_by_their_hashes(app, client, aged):
    assert app.test_cli_runner().invoke(args=["retention", "run"]).exit_code == 0
    scan = scalar(app, "SELECT id FROM scan_runs WHERE image_ref = 'ghcr.io/acme/old:1'")
    answer = client.get(f"/api/v1/orgs/acme/image-scans/{scan}", headers={"Authorization": f"Bearer {aged}"})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert OLD_MARK not in answer.get_data(as_text=True)


def test_no_trace_of_aged_payloads_stays_in_the_database(app, aged, dialect):
    """On SQLite not only the rows: the file and its WAL no longer hold the bytes."""
    marks = (OLD_MARK.encode(), YOUNG_MARK.encode())
    stored = _stored_bytes_sqlite if dialect == "sqlite" else _stored_bytes_postgresql
    assert all(m in stored(app) for m in marks)  # the check can fail: both are there before
    assert app.test_cli_runner().invoke(args=["retention", "run"]).exit_code == 0
    after = stored(app)
    assert OLD_MARK.encode() not in after and YOUNG_MARK.encode() in after


def _stored_bytes_sqlite(app) -> bytes:
    path = Path(app.config["DATABASE_URL"].removeprefix("sqlite:///"))
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


def _stored_bytes_postgresql(app) -> bytes:
    """The payload text of every finding row. (VACUUM then frees the old row versions, once no transaction
    older than the run still sees them: with other tests sharing the database that moment is not ours to know.)"""
    with app.extensions["fremforge.db"].engine.connect() as conn:
        rows = conn.execute(sa.text('SELECT title, cve_id, package, "references" FROM findings'))
        return "\n".join(str(v) for row in rows for v in row).encode()


def test_each_org_ages_by_its_own_retention_days(app, client):
    make_org(app, "short", retention_days=7)
    make_org(app, "long", retention_days=3650)
    for slug in ("short", "long"):
        token = make_token(app, slug)
        upload(client, token, 5, f"{slug}-mark", f"ghcr.io/{slug}/a:1", slug=slug)
    now = (utcnow() + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    result = app.test_cli_runner().invoke(args=["retention", "run", "--now", now])
    assert result.exit_code == 0, result.output
    assert payloads(app, "short-mark") == 0 and payloads(app, "long-mark") == 5
    # Audit events age too: "short"'s settings change and token creation were 30 days ago as well.
    short = org_id(app, "short")
    assert scalar(app, f"SELECT count(*) FROM audit_events WHERE org_id = {short} AND action IS NULL") == 2
    assert verdict(app, "short")[0] == 0 and verdict(app, "long")[0] == 0


def test_everything_can_age_out_and_still_verify(app, aged):
    result = app.test_cli_runner().invoke(args=["retention", "run", "--now", FUTURE])
    assert result.exit_code == 0 and "warning: --now is" in result.output  # ahead of the clock: said first
    code, v = verdict(app)
    assert code == 0 and v["redacted"] == v["entries"] - 2  # all but the run's own two events


def test_a_bad_now_is_a_usage_error(app):
    result = app.test_cli_runner().invoke(args=["retention", "run", "--now", "yesterday"])
    assert result.exit_code == 2 and "not an ISO-8601 time" in result.output


def test_the_worker_runs_retention(app, aged):
    with app.app_context():
        assert worker.daily_retention() == worker.RETENTION_EVERY
    assert payloads(app, OLD_MARK) == 0


def test_the_worker_ages_payloads_by_the_databases_clock_not_its_hosts(app, aged, monkeypatch):
    """Review: leases and due times are on the database's clock, but the daily run took the worker's own: a host
    clock a year ahead removed every payload (and trimmed every delivery row) at once."""
    monkeypatch.setattr(worker, "utcnow", lambda: datetime.now(UTC).replace(tzinfo=None) + timedelta(days=400))
    before = payloads(app, YOUNG_MARK)
    with app.app_context():
        assert worker.daily_retention() == worker.RETENTION_EVERY
    assert payloads(app, OLD_MARK) == 0 and payloads(app, YOUNG_MARK) == before > 0


def test_a_worker_told_to_stop_ends_its_run_after_the_chunk_in_hand(app, aged, monkeypatch):
    """SIGTERM during a long first run: the run stops between chunks, records what it did; the next run ends it."""
    monkeypatch.setattr(retention, "CHUNK", 10)
    asked = []

    def stopping() -> bool:  # the first ask (before the org) says go on; the next (after one chunk) says stop
        asked.append(True)
        return len(asked) > 1

    with app.app_context():
        assert worker.daily_retention(stopping) == worker.RETENTION_EVERY
    left = payloads(app, OLD_MARK)
    assert 0 < left < 30 and payloads(app, YOUNG_MARK) == 20
    assert len(asked) == 2
    assert verdict(app)[0] == 0  # the chain still verifies

    with app.app_context():
        assert worker.daily_retention() == worker.RETENTION_EVERY  # the next run does the rest
    assert payloads(app, OLD_MARK) == 0
    with app.app_context():
        events = db.session().scalars(sa.select(AuditEvent).where(AuditEvent.action == "retention.run")).all()
        assert [e.details["findings_redacted"] for e in events] == [30 - left, left]


def test_a_worker_told_to_stop_before_retention_leaves_it_to_the_next_run(app, aged):
    with app.app_context():
        assert worker.daily_retention(lambda: True) == worker.RETENTION_EVERY
    assert payloads(app, OLD_MARK) == 30
    assert scalar(app, "SELECT count(*) FROM audit_events WHERE action = 'retention.run'") == 0


def test_old_webhook_delivery_ids_are_pruned(app):
    now = utcnow()
    with app.app_context():
        s = db.session()
        s.add_all(
            [
                WebhookDelivery(delivery_id="old", event="ping", received_at=now - timedelta(days=31)),
                WebhookDelivery(delivery_id="recent", event="ping", received_at=now - timedelta(days=29)),
            ]
        )
        s.commit()
        retention.run(db.session(), now)
    assert scalar(app, "SELECT delivery_id FROM webhook_deliveries") == "recent"
    assert scalar(app, "SELECT count(*) FROM webhook_deliveries") == 1


def test_one_run_at_a_time_per_database(app, aged):
    """Every worker runs retention daily: while one run holds the database's lock, another does nothing."""
    engine = app.extensions["fremforge.db"].engine
    runner = app.test_cli_runner()
    with retention.one_at_a_time(engine) as mine:  # as another process's run would
        assert mine
        busy = runner.invoke(args=["retention", "run"])
        with app.app_context():
            assert worker.daily_retention() == worker.RETENTION_EVERY  # that worker leaves today's run to the other
    assert busy.exit_code == 1 and "another retention run is in progress" in busy.output
    assert payloads(app, OLD_MARK) == 30  # nothing done while busy
    assert scalar(app, "SELECT count(*) FROM audit_events WHERE action = 'retention.run'") == 0

    done = runner.invoke(args=["retention", "run"])  # the lock is free again
    assert done.exit_code == 0, done.output
    assert payloads(app, OLD_MARK) == 0


def test_what_was_posted_is_kept_and_only_the_check_run_details_go(app, client, aged):
    read = make_token(app, scopes=["findings:read"])
    scans = client.get("/api/v1/orgs/acme/image-scans", headers={"Authorization": f"Bearer {read}"}).json["items"]
    old = next(s for s in scans if s["image_ref"] == "ghcr.io/acme/old:1")
    assert scalar(app, "SELECT count(*) FROM outbox WHERE created_at < :t", t=utcnow() - timedelta(days=399)) == 1
    named = "CVE-2024-00"  # the check run's summary names the top findings
    assert named in str(scalar(app, "SELECT check_run FROM outbox WHERE scan_run_id = :s", s=old["scan_run_id"]))

    assert app.test_cli_runner().invoke(args=["retention", "run"]).exit_code == 0
    again = client.get(
        f"/api/v1/orgs/acme/image-scans/{old['scan_run_id']}", headers={"Authorization": f"Bearer {read}"}
    ).json
    assert again["commit_status"] == old["commit_status"]  # state, description, link and delivery state kept
    check_run = scalar(app, "SELECT check_run FROM outbox WHERE scan_run_id = :s", s=old["scan_run_id"])
    assert named not in str(check_run) and "summary" not in str(check_run)  # the findings it named are gone
    admin_login(app, client)
    page = client.get("/admin/orgs/acme/code-security/image-scanning").get_data(as_text=True)
    assert "nothing posted" not in page
    assert app.test_cli_runner().invoke(args=["retention", "run"]).output.count("trimmed") == 0  # nothing left to do


def test_a_finding_that_lost_its_payload_leaves_the_advisory_search(app, client, aged):
    """CVE-2024-0025 is only in the old image's findings (its latest scan): found before retention, not after,
    while CVE-2024-0005, also in the young image, is still found there."""

    def images_with(advisory: str) -> list[str]:
        r = client.get(f"/api/v1/orgs/acme/advisories/{advisory}/images", headers={"Authorization": f"Bearer {aged}"})
        assert r.status_code == 200, r.get_json()
        return sorted(i["image_name"] for i in r.get_json()["items"])

    assert images_with("CVE-2024-0025") == ["ghcr.io/acme/old"]
    assert images_with("CVE-2024-0005") == ["ghcr.io/acme/new", "ghcr.io/acme/old"]
    assert app.test_cli_runner().invoke(args=["retention", "run"]).exit_code == 0
    assert images_with("CVE-2024-0025") == []
    assert images_with("CVE-2024-0005") == ["ghcr.io/acme/new"]


def test_a_run_cut_short_after_its_first_removal_still_verifies(app, aged, monkeypatch):
    """The database went away (or the worker was killed) between a chunk's removals and the run's retention.run event:
    the retention.started event that came with the first removal holds the run's cut-off, so `chain verify` takes the
    removals as retention's. HEAD wrote the cut-off only at the end: the chain was reported BROKEN for good."""
    real = audit.record

    def database_gone(session, org_id, action, *args, **kwargs):  # type: ignore[no-untyped-def]
        if action == audit.Action.RETENTION_RUN:
            raise sa.exc.OperationalError("INSERT", {}, Exception("server closed the connection"))
        return real(session, org_id, action, *args, **kwargs)

    monkeypatch.setattr(audit, "record", database_gone)
    result = app.test_cli_runner().invoke(args=["retention", "run"])
    assert result.exit_code != 0
    assert payloads(app, OLD_MARK) == 0  # its chunk was committed
    code, v = verdict(app)
    assert (code, v["intact"]) == (0, True), v
