"""Retention: chain entries older than the org's `retention_days` lose their payload; `seq`, the hashes, the ids
and the time stay, so the chain still verifies. Idempotent, and recorded in the org's audit chain.

Layout: a finding's payload lives in its chain row, and retention sets those columns to NULL in chunks of
`CHUNK` seqs, each chunk a short write transaction (ingest keeps appending in between). Its cost is the rows
that age, once: a daily run touches one day of rows. The freed bytes leave the database too: SQLite runs with
`secure_delete` (freed space is zeroed) and the WAL is truncated afterwards; PostgreSQL is vacuumed, so the
old row versions are gone.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.orm import Session

from app import chain, reposts, revival, sqlite_writers
from app.chain import audit
from app.db import rowcount, write_transaction
from app.models import (
    DEFAULT_RETENTION_DAYS,
    FINDING_PAYLOAD_COLUMNS,
    AuditEvent,
    ChainHead,
    Finding,
    LatestAdvisory,
    Org,
    OrgSettings,
    OutboxItem,
    WebhookDelivery,
)
from app.web import idempotency, urls

log = logging.getLogger(__name__)
CHUNK = 50_000
DAY = timedelta(days=1)
ACTOR = "system:retention"
FINAL_OUTBOX_STATES = ("delivered", "failed", "superseded", "not_delivered")
# Webhook delivery ids are kept to ignore redeliveries; GitHub redelivers within days, so a month is plenty.
WEBHOOK_DEDUPE_WINDOW = timedelta(days=30)
_f, _a, _o = Finding.__table__, AuditEvent.__table__, OutboxItem.__table__

REDACT_FINDINGS = (
    sa.update(_f)
    .where(
        _f.c.org_id == sa.bindparam("org"),
        _f.c.seq > sa.bindparam("lo"),
        _f.c.seq <= sa.bindparam("hi"),
        _f.c.created_at < sa.bindparam("cutoff"),
        _f.c.redacted_at.is_(None),
    )
    .values({**{c: sa.null() for c in FINDING_PAYLOAD_COLUMNS}, "redacted_at": sa.bindparam("now")})
)
# The advisory search's index rows of findings that lost their payload (app.findings.latest): the search shows the
# finding's fields, and those are gone.
_la = LatestAdvisory.__table__
DROP_REDACTED_FROM_INDEX = sa.delete(_la).where(
    _la.c.org_id == sa.bindparam("org"),
    _la.c.seq > sa.bindparam("lo"),
    _la.c.seq <= sa.bindparam("hi"),
    sa.exists().where(_f.c.org_id == _la.c.org_id, _f.c.seq == _la.c.seq, _f.c.redacted_at.is_not(None)),
)
REDACT_AUDIT = (
    sa.update(_a)
    .where(_a.c.org_id == sa.bindparam("org"), _a.c.created_at < sa.bindparam("cutoff"), _a.c.redacted_at.is_(None))
    .values(action=sa.null(), actor=sa.null(), details=sa.null(), redacted_at=sa.bindparam("now"))
)
# The outbox holds what was posted to GitHub. Its check run body names findings (summary, text): that ages out
# with them. What was posted stays, as the record of it (the commit status's state, description and link, the
# check run's conclusion and title, the delivery's state and time): it names no finding. A row given up on in an
# outage that is still its commit's newest is not done with: it is posted once GitHub answers (a trimmed one never
# was, and GitHub kept the commit's older state), so it keeps its body until then, or for REVIVAL_KEPT_AT_MOST past
# the cut-off (GitHub gone for good, the App removed: retention still ends).
REVIVAL_KEPT_AT_MOST = timedelta(days=30)
AGED_OUTBOX = sa.select(_o.c.id, _o.c.check_run).where(
    _o.c.org_id == sa.bindparam("org"),
    _o.c.created_at < sa.bindparam("cutoff"),
    _o.c.state.in_(FINAL_OUTBOX_STATES),
    _o.c.redacted_at.is_(None),
    ~sa.and_(revival.AWAITING_REVIVAL, _o.c.created_at >= sa.bindparam("revival_floor")),
)
TRIM_OUTBOX = (
    sa.update(_o)
    .where(_o.c.id == sa.bindparam("row"))
    .values(check_run=sa.bindparam("trimmed"), redacted_at=sa.bindparam("now"))
)
KEPT_CHECK_RUN = ("name", "head_sha", "status", "conclusion", "details_url", "external_id")


def trimmed(check_run: dict[str, Any]) -> dict[str, Any]:
    """A check run body without what names findings: its conclusion and title stay."""
    kept = {k: check_run[k] for k in KEPT_CHECK_RUN if k in check_run}
    title = (check_run.get("output") or {}).get("title")
    if title is not None:
        kept["output"] = {"title": title}
    return kept


@dataclass(frozen=True)
class OrgRetention:
    """What one run of retention did to one org."""

    slug: str
    cutoff: datetime
    findings: int
    audit_events: int
    outbox: int

    @property
    def changed(self) -> bool:
        return bool(self.findings or self.audit_events or self.outbox)

    def describe(self) -> str:
        when = chain.timestamp(self.cutoff)
        if not self.changed:
            return f"{self.slug}: nothing older than {when}"
        return (
            f"{self.slug}: removed the payload of {self.findings} finding(s) and {self.audit_events} audit "
            f"event(s) older than {when}; {self.outbox} finished delivery row(s) trimmed to what was posted"
        )


# One run at a time per database, whichever processes start one (every worker runs it daily). On PostgreSQL an
# advisory lock keyed by this class and the schema the app's tables are in (apps on other schemas don't collide).
LOCK_CLASS = 0x66726574  # "fret"
_LOCK_ARGS = (LOCK_CLASS, sa.func.hashtext(sa.func.current_schema()))


class Busy(RuntimeError):
    """Another process is applying retention to this database right now."""


def never() -> bool:
    return False


def run(session: Session, now: datetime, stopping: Callable[[], bool] = never) -> list[OrgRetention]:
    """Apply every org's retention as of `now` (naive UTC); then make the freed bytes leave the database.

    `stopping` is asked between chunks: once it says yes (a worker told to stop), the run ends after the chunk
    in hand, recording what it did; the next run picks up the rest. Raises Busy, having done nothing, while
    another process runs it.
    """
    with one_at_a_time(_engine(session)) as mine:
        if not mine:
            raise Busy("another retention run is in progress on this database (a worker's daily run?)")
        return _run(session, now, stopping)


def _engine(session: Session) -> sa.Engine:
    """The engine the session is bound to: the lock and the reclaiming each take a connection of their own."""
    bind = session.get_bind()
    if not isinstance(bind, sa.Engine):
        raise TypeError(f"retention needs a session bound to an Engine, not a {type(bind).__name__}")
    return bind


@contextmanager
def one_at_a_time(engine: sa.Engine) -> Iterator[bool]:
    """Whether this process holds the database's retention lock (held until the block ends).

    PostgreSQL: a session advisory lock (see LOCK_CLASS), on a connection of its own. SQLite: an flock on a file
    beside the database (all its users are on one host); not on the database file itself, whose locks are SQLite's.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            try:
                mine = bool(conn.scalar(sa.select(sa.func.pg_try_advisory_lock(*_LOCK_ARGS))))
                conn.commit()
            except BaseException:  # the lock may have been granted: a session that ends holds nothing
                conn.invalidate()
                raise
            try:
                yield mine
            finally:
                if mine:
                    _unlock(conn)
        return
    path = sqlite_writers.database_file(engine)
    if path is None:  # a database of this process alone
        yield True
        return
    # Read-only is enough for flock, and works on a lock file another user (a CLI run as root?) created.
    with open(os.open(f"{path}.retention-lock", os.O_RDONLY | os.O_CREAT, 0o644)) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _unlock(conn: sa.Connection) -> None:
    """Release the advisory lock; where that fails, end the connection's session, which releases it too."""
    try:
        released = conn.scalar(sa.select(sa.func.pg_advisory_unlock(*_LOCK_ARGS)))
        conn.commit()
    except Exception:
        log.warning("retention.unlock_failed: closing the lock's connection instead", exc_info=True)
        conn.invalidate()
        return
    if not released:
        conn.invalidate()


def _run(session: Session, now: datetime, stopping: Callable[[], bool]) -> list[OrgRetention]:
    orgs = session.execute(
        sa.select(Org.id, Org.slug, sa.func.coalesce(OrgSettings.retention_days, DEFAULT_RETENTION_DAYS))
        .outerjoin(OrgSettings, OrgSettings.org_id == Org.id)
        .order_by(Org.id)
    ).all()
    session.rollback()  # no read snapshot held across the writes below
    outcomes: list[OrgRetention] = []
    for org_id, slug, days in orgs:
        if stopping():
            log.info("retention.stopped: %d of %d orgs done; the next run does the rest", len(outcomes), len(orgs))
            return outcomes  # no reclaiming either: it can take a while, and the next run does it
        outcomes.append(run_org(session, org_id, slug, days, now, stopping))
    with write_transaction(session):
        pruned = rowcount(
            session.execute(sa.delete(WebhookDelivery).where(WebhookDelivery.received_at < now - WEBHOOK_DEDUPE_WINDOW))
        )
    if pruned:
        log.info("retention.webhook_deliveries deleted=%d", pruned)
    forgotten = idempotency.forget_old(session)  # uploads' Idempotency-Keys past their 24 hours
    if forgotten:
        log.info("retention.idempotency_keys deleted=%d", forgotten)
    if any(o.changed for o in outcomes):
        _reclaim(session)
    return outcomes


def run_org(
    session: Session, org_id: int, slug: str, retention_days: int, now: datetime, stopping: Callable[[], bool] = never
) -> OrgRetention:
    cutoff = now - timedelta(days=retention_days)
    head_seq = session.scalar(sa.select(ChainHead.seq).where(ChainHead.org_id == org_id)) or 0
    compared = _judged_against_baselines(session, org_id)
    session.rollback()
    params = {"org": org_id, "cutoff": cutoff, "now": now}
    findings = 0
    started = {"cutoff": chain.timestamp(cutoff), "retention_days": retention_days}
    for lo in range(0, head_seq, CHUNK):  # short transactions: appends go on between chunks
        if lo and stopping():  # what was redacted so far is recorded below; the rest waits for the next run
            break
        with write_transaction(session):
            removed = rowcount(session.execute(REDACT_FINDINGS, {**params, "lo": lo, "hi": lo + CHUNK}))
            session.execute(DROP_REDACTED_FROM_INDEX, {"org": org_id, "lo": lo, "hi": lo + CHUNK})
            if removed and compared:
                # A baseline emptied counts its dropped findings as gone (new on the heads again, failing closed): the
                # open pull requests' heads are posted again under it, as after a settings change. Asked with each
                # removal (a later one may empty more), in its transaction: a run cut short after it (the database
                # away, a deadlock) leaves it asked, where the next run would find nothing left to remove. Before the
                # audit entry below: the order of an upload's locks (app.locks), the org's chain head last.
                reposts.ask_for_org(session.connection(), org_id, urls.configured())
            if removed and not findings:
                # The run's cut-off goes in with its first removal: if the run is cut short (the database away, the
                # worker killed) before its retention.run event below, `chain verify` still finds whose they were.
                audit.record(session, org_id, audit.Action.RETENTION_STARTED, ACTOR, started, at=now)
            findings += removed
    with write_transaction(session):
        audit_events = rowcount(session.execute(REDACT_AUDIT, params))
        aged = session.execute(AGED_OUTBOX, {**params, "revival_floor": cutoff - REVIVAL_KEPT_AT_MOST}).all()
        if aged:
            session.execute(TRIM_OUTBOX, [{"row": r.id, "trimmed": trimmed(r.check_run), "now": now} for r in aged])
        outbox = len(aged)
        outcome = OrgRetention(slug, cutoff, findings, audit_events, outbox)
        if outcome.changed:  # a run that changes nothing leaves nothing, so a second run is a no-op
            details = {
                "cutoff": chain.timestamp(cutoff),
                "retention_days": retention_days,
                "findings_redacted": findings,
                "audit_events_redacted": audit_events,
                "outbox_rows_trimmed": outbox,
            }
            audit.record(session, org_id, audit.Action.RETENTION_RUN, ACTOR, details, at=now)
    log.info(
        "retention.org org=%s cutoff=%s findings_redacted=%d audit_events_redacted=%d outbox_rows_trimmed=%d",
        slug,
        chain.timestamp(cutoff),
        findings,
        audit_events,
        outbox,
    )
    return outcome


def _judged_against_baselines(session: Session, org_id: int) -> bool:
    """Whether the org's commits are judged against baselines (block_on new) and posted (a GitHub App)."""
    if not current_app.config.get("GITHUB_APP_CONFIGURED"):
        return False
    return session.scalar(sa.select(OrgSettings.block_on).where(OrgSettings.org_id == org_id)) == "new"


def _reclaim(session: Session) -> None:
    """Let the removed payloads leave the files too, not only the rows."""
    engine = _engine(session)
    session.close()
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            for table in (_f.name, _a.name, _o.name):
                conn.exec_driver_sql(f"VACUUM {table}")
        else:  # secure_delete zeroed the freed space; the WAL still holds the old pages until truncated
            raw = conn.connection.driver_connection  # outside any transaction (autocommit), as a checkpoint needs
            busy, _, _ = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()  # type: ignore[union-attr]
            if busy:
                log.warning("retention.wal_busy: readers kept the WAL; it is truncated at a later checkpoint")
