"""The worker process's loop: deliver the outbox, put back what an outage left undelivered, apply retention daily,
beat a heartbeat, survive every error."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.orm import Session

from app import clock, db, exceptions, migrate
from app.chain import retention
from app.db import write_transaction
from app.github import outbox, posting, redeliver
from app.github.client import GitHubApp
from app.insights import index as advisory_index
from app.models import WorkerHeartbeat, utcnow
from app.web import urls

log = logging.getLogger(__name__)

RETENTION_EVERY = 24 * 3600.0
RETENTION_RETRY = 3600.0
BEAT_EVERY = 10.0  # seconds; /readyz wants a beat from the last ALIVE_WITHIN
ALIVE_WITHIN = timedelta(minutes=1)
# The heartbeat comes from a thread of its own (a long retention run or a slow round does not stop it), but only
# while the loop shows progress: a round that began longer ago than this means the loop is stuck.
STUCK_AFTER = 600.0
EXPIRY_EVERY = 10.0  # seconds between looks for expired exceptions (spec: re-posted within a minute)
INDEX_EVERY = 5.0  # seconds between additions to the advisory search's index (latest scans not indexed yet)
PRUNE_EVERY = 60.0  # seconds between prunings of the advisory search's index (rows of scans no longer latest)
ERROR_FIRST_WAIT = 1.0  # after an error the loop waits this long, doubling per error in a row...
ERROR_MAX_WAIT = 30.0  # ...up to this
# Seconds between looks at whether the hourly look for failed webhook deliveries is due (the database says, for every
# worker process: see redeliver.hourly).
REDELIVERY_CHECK_EVERY = 60.0


class NotMigrated(Exception):
    """The database is at an older schema than this app's: the loop waits for `db upgrade` as for any error."""


@dataclass
class Loop:
    """One worker process: what it delivers with, how it waits, and when it stops."""

    gh: GitHubApp | None
    poll_seconds: float = 1.0
    parallel: int = 4
    once: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    name: str = field(default_factory=posting.worker_name)
    handled: int = 0
    errors_in_a_row: int = 0
    holding_rows: bool = False  # an error may have left rows of this process claimed
    schema_seen: bool = False  # the database was seen at this app's schema (or a newer one): never asked again
    started: datetime = field(default_factory=utcnow)
    round_began: float = field(default_factory=time.monotonic)
    _retention_due: float = 0.0
    _expiry_due: float = 0.0
    _index_due: float = 0.0
    _prune_due: float = 0.0
    _revive_due: float = 0.0  # outbox items given up on in an outage: looked for every redeliver.REVIVE_EVERY...
    _closings_seen: int = 0  # ...and when the circuit breaker closed since (GitHub answers again)
    _redelivery_due: float = 0.0

    def __post_init__(self) -> None:
        if self.once:
            self._retention_due = self._redelivery_due = float("inf")

    @property
    def app_id(self) -> str | None:
        """The GitHub App this worker posts as (None: none), as its heartbeat says."""
        return self.gh.app_id if self.gh is not None else None

    def run(self) -> int:
        """Until stopped (or, with `once`, until nothing is due): never exits on a database or GitHub error."""
        if not self.once:
            sessions = db.database().sessions
            threading.Thread(target=self.heartbeat, args=(sessions,), name="heartbeat", daemon=True).start()
        while not self.stop.is_set():
            try:
                handled = self.step()
            except Exception as exc:  # a database restart, a lock, a full disk, a bug: back off and go on
                self.recover(exc)
                if self.once:
                    if self.holding_rows:  # its rows go back before the command fails
                        self.release_on_exit()
                    raise
                continue
            self.errors_in_a_row = 0
            if handled == 0:
                if self.once:
                    break
                self.stop.wait(self.idle_wait())
        if self.holding_rows:  # stopped while backing off after an error: its rows go back on the way out
            self.release_on_exit()
        return self.handled

    def release_on_exit(self) -> None:
        """Give back the rows an error left this process holding (their posts' marks cleared, doubts recorded), so
        newer states of their commits are not held up until the leases run out; best effort: the database may still
        be away, and then the leases do it."""
        try:
            released = posting.release_worker(db.session(), self.name)
        except Exception as exc:
            log.warning("worker.release_failed error=%s", type(exc).__name__)
            return
        self.holding_rows = False
        log.info("worker.released rows=%s", released)

    def heartbeat(self, sessions: Callable[[], Session]) -> None:
        """Beat every BEAT_EVERY from a session of its own until the loop stops."""
        while not self.stop.is_set():
            self.beat_once(sessions)
            self.stop.wait(BEAT_EVERY)

    def beat_once(self, sessions: Callable[[], Session]) -> bool:
        """Beat if the loop makes progress (a round began within STUCK_AFTER); errors are only logged."""
        if time.monotonic() - self.round_began >= STUCK_AFTER:
            log.warning("worker.stuck round_began=%.0fs_ago", time.monotonic() - self.round_began)
            return False
        try:
            with sessions() as session:
                beat(session, self.name, self.started, self.app_id)
        except Exception as exc:  # the database is away: no beat, and /readyz says so
            log.warning("worker.heartbeat_failed error=%s", type(exc).__name__)
            return False
        return True

    def step(self) -> int:
        """Run retention, exceptions' expiry and the advisory index's upkeep when due, store the outbox items of commits
        asked to be posted again, deliver one round; the rows handled."""
        self.round_began = time.monotonic()
        if not self.schema_seen:  # e.g. started while the database was away: nothing done on an older schema
            if migrate.older(current_app):
                raise NotMigrated(migrate.NOT_MIGRATED)
            self.schema_seen = True
        if self.once:
            beat(db.session(), self.name, self.started, self.app_id)
        if time.monotonic() >= self._retention_due:
            self._retention_due = time.monotonic() + daily_retention(self.stop.is_set)
        if time.monotonic() >= self._expiry_due:  # exceptions that expired: audited, their commits re-posted
            self._expiry_due = time.monotonic() + EXPIRY_EVERY
            exceptions.expire_due(db.session(), urls.configured() if self.gh is not None else None)
        if time.monotonic() >= self._index_due:  # before pruning: a round's rows of replaced scans go at once
            self._index_due = time.monotonic() + INDEX_EVERY
            advisory_index.index_advisories(db.session(), self.stop.is_set)
        if time.monotonic() >= self._prune_due:
            self._prune_due = time.monotonic() + PRUNE_EVERY
            advisory_index.prune_advisories(db.session(), self.stop.is_set)
        if self.gh is None:
            return 0
        if self.holding_rows:  # an error ended the last batch: its rows go back before anything else
            released = posting.release_worker(db.session(), self.name)
            self.holding_rows = False
            log.info("worker.released rows=%s", released)
        # Commits asked to be posted again (a settings change, a pull request's base learnt) become outbox items
        # first, so this round delivers them.
        reposted = outbox.repost_asked(db.session(), deliver=True, stopping=self.stop.is_set)
        revived = self.revive(self.gh)  # delivered by this round, and counted there
        handled = posting.run_once(
            db.session(), self.gh, worker=self.name, parallel=self.parallel, stopping=self.stop.is_set
        )
        handled += reposted
        self.handled += handled
        if time.monotonic() >= self._redelivery_due and not self.stop.is_set():
            self._redelivery_due = time.monotonic() + REDELIVERY_CHECK_EVERY
            self.redeliver_webhooks(self.gh)
        return handled or revived

    def revive(self, gh: GitHubApp) -> int:
        """Every REVIVE_EVERY, and at once when the circuit breaker closed (GitHub answers again): put back the outbox
        items given up on during an outage that are still the newest of their commit (redeliver.revive_after_outage).
        The items put back."""
        circuit = gh.circuit if isinstance(gh.circuit, posting.Circuit) else None
        closed = circuit is not None and circuit.closings != self._closings_seen
        if not closed and time.monotonic() < self._revive_due:
            return 0
        self._revive_due = time.monotonic() + redeliver.REVIVE_EVERY
        if circuit is not None:
            self._closings_seen = circuit.closings
        return redeliver.revive_after_outage(db.session(), gh, answered=closed)

    def redeliver_webhooks(self, gh: GitHubApp) -> None:
        """The hourly look for webhook deliveries that failed (redeliver.hourly); errors are logged, never raised."""
        try:
            redeliver.hourly(db.session(), gh, stopping=self.stop.is_set)
        except Exception:  # a database error or a bug: the worker goes on delivering, and looks again later
            log.exception("github.redelivery.failed")
            db.discard_session()

    def idle_wait(self) -> float:
        if self.gh is not None:
            return self.poll_seconds
        return min(BEAT_EVERY, max(0.0, self._retention_due - time.monotonic()))

    def recover(self, exc: Exception) -> None:
        """Log the error, drop the session (its connection may be dead), and wait before the next round."""
        self.errors_in_a_row += 1
        wait = min(ERROR_MAX_WAIT, ERROR_FIRST_WAIT * 2 ** (self.errors_in_a_row - 1)) * random.uniform(0.8, 1.2)
        if not self.once:  # with once there is no retry: the command ends, saying why in one line
            behind = isinstance(exc, NotMigrated) or (
                isinstance(exc, sa.exc.SQLAlchemyError) and not db.unavailable(exc) and migrate.behind(current_app)
            )
            log.warning(
                "worker.error errors_in_a_row=%s retry_in=%.1fs error=%s detail=%r",
                self.errors_in_a_row,
                wait,
                type(exc).__name__,
                migrate.NOT_MIGRATED if behind else (str(exc).splitlines()[0][:300] if str(exc) else ""),
                exc_info=self.errors_in_a_row == 1 and not behind,  # the first error's traceback, unless the schema's
            )
        db.discard_session()
        self.holding_rows = self.gh is not None
        if not self.once:
            self.stop.wait(wait)


def beat(session: Session, name: str, started: datetime, github_app_id: str | None = None) -> None:
    """Record that this worker is alive, on the database's clock, and the GitHub App it posts as (None: none, stored
    as "": NULL is a worker of an earlier release, which did not say)."""
    with write_transaction(session):
        conn = session.connection()
        params = {"worker": name, "app": github_app_id or ""}
        done = conn.execute(BEAT, params)
        if done.rowcount == 0:
            conn.execute(FIRST_BEAT, {**params, "started": started})


def alive(conn: sa.Connection) -> bool:
    """Whether some worker beat within ALIVE_WITHIN, on the database's clock."""
    return bool(apps_alive(conn))


UNKNOWN_APP = "an App an earlier release's worker did not name"  # its heartbeat's github_app_id is NULL


def apps_alive(conn: sa.Connection) -> set[str | None]:
    """The GitHub Apps the workers that beat within ALIVE_WITHIN (on the database's clock) post as; None stands for
    a worker with no GitHub App, UNKNOWN_APP for one of an earlier release (during an upgrade). Empty: none alive."""
    since = clock.now_of(conn) - ALIVE_WITHIN
    apps: set[str | None] = set()
    for beat_at, app_id in conn.execute(BEATS).all():
        if not isinstance(beat_at, datetime):
            beat_at = datetime.fromisoformat(beat_at)
        if beat_at >= since:
            apps.add(UNKNOWN_APP if app_id is None else app_id or None)
    return apps


_beats = WorkerHeartbeat.__table__
BEAT = (
    sa.update(_beats)
    .where(_beats.c.name == sa.bindparam("worker"))
    .values(beat_at=clock.database_now(), github_app_id=sa.bindparam("app"))
)
FIRST_BEAT = sa.insert(_beats).values(
    name=sa.bindparam("worker"),
    started_at=sa.bindparam("started"),
    beat_at=clock.database_now(),
    github_app_id=sa.bindparam("app"),
)
# The newest beats, one row per worker process ever started (its name): those alive are among them.
BEATS = sa.select(_beats.c.beat_at, _beats.c.github_app_id).order_by(_beats.c.beat_at.desc()).limit(1000)


def daily_retention(stopping: Callable[[], bool] = retention.never) -> float:
    """Run retention as of the database's clock (ended early once `stopping` says so); the seconds until the next run
    (an hour when it failed)."""
    try:
        with db.database().engine.connect() as conn:  # the database's clock, as leases and due times: not this host's
            now = clock.now_of(conn)
        retention.run(db.session(), now, stopping)
    except retention.Busy:  # another worker is doing today's run
        log.info("retention.skipped: another process is applying it")
        return RETENTION_EVERY
    except Exception:  # the worker goes on delivering; the next try is logged again if it fails
        log.exception("retention.failed: retrying in an hour")
        db.discard_session()
        return RETENTION_RETRY
    return RETENTION_EVERY
