"""The outbox worker: claims outbox rows, posts the commit status and check run, records what happened.

Rules, so that several workers, stalls, crashes and skewed clocks never leave an older state on GitHub:
- a worker claims rows with a lease taken and checked on the database's clock (PostgreSQL: FOR UPDATE SKIP
  LOCKED); the claim's token fences it: every post is preceded by renewing the lease, every record of an
  outcome is made only while the token still holds the row, and a row whose lease ran out is another's;
- at most one row per commit is in flight, and only the newest outbox item per commit is pending (older ones are
  superseded when a newer one is stored), so a stale state never lands after a newer one while leases hold;
- a worker that finds, after a post, that it lost its lease re-queues the commit's newest outbox item if that one was
  already (partly) posted: whatever it posted late is then overwritten by the newest state;
- 404 and 422 are retried a few times over a few minutes before they count (a one-off answer must not leave an
  older state standing); a check run that cannot be updated is replaced, and every run of the check the app
  created on the commit is brought to the newest conclusion;
- GitHub calls happen outside any database transaction;
- while GitHub is unreachable (connection errors, timeouts, 5xx) a circuit breaker stops the worker from
  trying every due row: see `Circuit`;
- a row given up on during an outage (`app.revival.failed_in_outage`) is put back once GitHub answers again, if it
  is still the newest of its commit: see `app.github.redeliver`.
"""

from __future__ import annotations

import dataclasses
import email.utils
import functools
import json
import logging
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import httpx
import pydantic
import sqlalchemy as sa
from githubkit.exception import RateLimitExceeded, RequestError, RequestFailed, RequestTimeout
from sqlalchemy.orm import Session, aliased, sessionmaker

from app import clock, logs, orgs
from app.db import rowcount, write_transaction
from app.github.client import GitHubApp, github_message
from app.models import CheckRunRecord, Org, OutboxItem, utcnow
from app.policy import CONTEXT
from app.revival import NO_ANSWER, UNREACHABLE, UNREADABLE

log = logging.getLogger(__name__)

# A claim's lifetime on the database's clock. It is renewed before every GitHub call and, for rows still waiting
# in a batch, every RENEW_EVERY; so it only has to outlast one call (GITHUB_TIMEOUT_SECONDS, 10 s by default, and
# a token exchange) with a wide margin. A killed worker's rows are free again after it.
LEASE = timedelta(seconds=60)
RENEW_EVERY = 15.0  # seconds of the worker's monotonic clock
FIRST_DELAY = 1.0
MAX_DELAY = 300.0
MAX_ATTEMPTS = 12  # failures (not rate-limit waits) before a row is given up: about 25 minutes of retries
REFUSAL_TRIES = 4  # 4xx answers (404, 422, ...) before they count as permanent: retried after 30, 60 and 120 s
REFUSAL_FIRST_WAIT = 30.0
REFUSED = frozenset({404, 422})
DEFAULT_RATE_LIMIT_WAIT = timedelta(seconds=60)
MAX_RATE_LIMIT_WAIT = timedelta(hours=1)
CIRCUIT_MAX_DELAY = 60.0  # seconds, before jitter: the longest the circuit stays open before the next probe
# A check-run create that timed out may still land on GitHub later; until GitHub lists as many of our runs as we
# sent creates, or this long after the last create, the worker looks again (every SETTLE_WAIT) and brings any
# run that appeared to the newest conclusion.
SETTLE_WINDOW = timedelta(minutes=2)
SETTLE_WAIT = timedelta(seconds=15)
SETTLING = "checking for a late check run (a create timed out)"
# A post that timed out (or got a 5xx) may still be applied by GitHub a little later. Its commit stays in flight
# this long, so no newer state of the commit is posted before a late landing of the older one could happen.
LATE_LANDING = timedelta(seconds=30)
# ... and a landing later than that (a proxy that held the request) is caught for this long after the post: until
# then, the commit's newest outbox item is not done when posted; every SETTLE_WAIT the worker reads what GitHub shows
# (the commit's combined status, the app's check runs) and posts again what differs, once more after the window.
DOUBT_WINDOW = timedelta(minutes=5)
VERIFYING = "checking that GitHub shows this state (an earlier post of the commit may still land)"


class NotItsAnswer(Exception):
    """A 2xx whose body is not GitHub's answer to the post (a proxy's page, another commit's run, another state): the
    post is not known to have landed, so it counts as unheard (retried, the commit in doubt)."""


UNREADABLE_ERRORS = (pydantic.ValidationError, json.JSONDecodeError, UnicodeDecodeError, NotItsAnswer)
REVIVED = "retrying after outage: GitHub answers again"  # a revived row's last_error until it is tried


@functools.cache
def worker_name() -> str:
    """This process's name among workers: host, pid, and a random part (containers often share both)."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(3)}"


def never() -> bool:
    return False


def backoff(attempt: int, rng: random.Random) -> timedelta:
    """About a second for the first retry, then doubling, with ±20% jitter, capped at five minutes."""
    base = min(MAX_DELAY, FIRST_DELAY * 2 ** (attempt - 1))
    return timedelta(seconds=min(MAX_DELAY, base * rng.uniform(0.8, 1.2)))


def refusal_wait(refusals: int, rng: random.Random) -> timedelta:
    """30 s after the first 404/422, then 60 s, then 120 s (±20%)."""
    return timedelta(seconds=REFUSAL_FIRST_WAIT * 2 ** (refusals - 1) * rng.uniform(0.8, 1.2))


@dataclass(frozen=True)
class Outcome:
    """What one delivery attempt came to."""

    state: str  # delivered | retry | failed | superseded | lost (the lease went to another worker)
    error: str | None = None
    status_code: int | None = None
    wait: timedelta | None = None  # for retry: None = the backoff for this attempt
    counts_as_attempt: bool = True
    unreachable: bool = False  # GitHub did not answer, or answered 5xx: opens the circuit
    refused: bool = False  # a 4xx (404, 422, ...): retried REFUSAL_TRIES times, then failed
    revision: int | None = None  # the row's revision the attempt read (a re-queued row is not marked delivered)
    maybe_landed: bool = False  # a post timed out or got a 5xx: GitHub may still apply it (see LATE_LANDING)
    doubt: datetime | None = None  # delivered: the commit's doubt it waited out (cleared then: nothing left to check)


@dataclass
class Circuit:
    """The circuit breaker of one worker process (kept on its GitHubApp; each process has its own).

    Closed: rows are delivered as claimed. After a failure that says GitHub is unreachable (connection error,
    timeout, 5xx) it opens: the rest of the batch is released untouched (no attempt counted, due time kept) and
    nothing is claimed until `open_until`. Then it is half-open: one row at a time, the oldest due, is tried as a
    probe; the first answer that is not an outage closes it, another outage opens it again for twice as long.
    The open period is FIRST_DELAY doubling per consecutive outage, capped at CIRCUIT_MAX_DELAY, times 0.6-0.8:
    a little shorter than the backoff of the row that tripped it (0.8-1.2 times the same base), so the probe is
    due no later than that row, and several workers do not probe in step.
    """

    failures: int = 0  # consecutive outages; > 0 means open or half-open
    open_until: datetime | None = None
    closings: int = 0  # times it closed after an outage (the worker then puts back what the outage left failed)

    def allows(self, now: datetime) -> bool:
        return self.open_until is None or now >= self.open_until

    @property
    def probing(self) -> bool:
        return self.failures > 0

    def observe(self, outcome: Outcome, now: datetime, rng: random.Random) -> None:
        if outcome.state in ("superseded", "lost"):  # GitHub was not asked, or what it said is another's
            return
        if outcome.unreachable:
            self.failures += 1
            base = min(CIRCUIT_MAX_DELAY, FIRST_DELAY * 2 ** min(self.failures - 1, 30))
            self.open_until = now + timedelta(seconds=base * rng.uniform(0.6, 0.8))
            log.warning(
                "github.circuit.open failures=%s until=%s error=%r",
                self.failures,
                self.open_until.isoformat(timespec="seconds"),
                outcome.error,
            )
        elif self.failures:
            log.info("github.circuit.closed after=%s", self.failures)
            self.failures, self.open_until = 0, None
            self.closings += 1


class Permanent(Exception):
    """GitHub refused (the App is not installed on the repository): recorded, retried as a refusal."""


class LeaseLost(Exception):
    """This worker's claim on a row ran out or went to another worker: post nothing more for it."""


def _now(conn: sa.Connection, pinned: datetime | None) -> datetime:
    """The database's clock, or the time a test pinned it to."""
    return pinned if pinned is not None else clock.now_of(conn)


def claim_token(worker: str) -> str:
    """A fresh fencing token for one batch of claims (fits outbox.claimed_by)."""
    return f"{worker[:90]}/{secrets.token_hex(4)}"


# ---------------------------------------------------------------- claiming


def claim(session: Session, now: datetime | None, token: str, limit: int = 20, oldest_first: bool = False) -> list[int]:
    """Lease up to `limit` due rows for `token`, at most one per commit and none of a commit already in flight.

    Due times and leases are compared on the database's clock (`now` pins it, for tests). Newest rows first,
    or the oldest due first (`oldest_first`, the circuit's probe: the row that waited longest goes first).
    """
    other = aliased(OutboxItem)
    with write_transaction(session):
        conn = session.connection()
        at = _now(conn, now)
        in_flight = (
            sa.select(other.id)
            .where(
                other.org_id == OutboxItem.org_id,
                other.repo_full_name == OutboxItem.repo_full_name,
                other.commit_sha == OutboxItem.commit_sha,
                other.id != OutboxItem.id,
                other.lease_until > at,
            )
            .exists()
        )
        query = (
            sa.select(OutboxItem.id, OutboxItem.org_id, OutboxItem.repo_full_name, OutboxItem.commit_sha)
            .where(
                OutboxItem.state == "pending",
                OutboxItem.next_attempt_at <= at,
                sa.or_(OutboxItem.lease_until.is_(None), OutboxItem.lease_until <= at),
                ~in_flight,
            )
            .order_by(OutboxItem.next_attempt_at, OutboxItem.id if oldest_first else OutboxItem.id.desc())
            .limit(limit)
        )
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(of=OutboxItem, skip_locked=True)
        ids, seen = [], set()
        for row in session.execute(query):
            commit = (row.org_id, row.repo_full_name, row.commit_sha)
            if commit not in seen:  # an older pending row of the same commit waits
                seen.add(commit)
                ids.append(row.id)
        if ids:
            session.execute(
                sa.update(OutboxItem).where(OutboxItem.id.in_(ids)).values(lease_until=at + LEASE, claimed_by=token)
            )
    return sorted(ids)


@dataclass
class Batch:
    """The rows one claim leased, with its fencing token; renews their leases while the batch runs."""

    token: str
    now: datetime | None  # pinned database clock (tests); None: the database's own
    renewed: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def keep_alive(self, session: Session) -> None:
        """Renew every lease of the batch that still holds, when the last renewal is RENEW_EVERY old."""
        with self._lock:
            if time.monotonic() - self.renewed < RENEW_EVERY:
                return
            self.renewed = time.monotonic()
        with write_transaction(session):
            conn = session.connection()
            at = _now(conn, self.now)
            conn.execute(RENEW_ALL, {"token": self.token, "now": at, "until": at + LEASE})


# ---------------------------------------------------------------- delivering


def run_once(
    session: Session,
    gh: GitHubApp,
    now: datetime | None = None,
    rng: random.Random | None = None,
    worker: str | None = None,
    limit: int = 20,
    circuit: Circuit | None = None,
    parallel: int = 1,
    stopping: Callable[[], bool] = never,
) -> int:
    """Claim due rows and deliver each; return how many were handled (tried, or found superseded).

    `now` pins the database's clock (tests); by default leases and due times follow the database's own clock.
    The circuit (by default the one of `gh`, i.e. of this process) may stop the batch early: see `Circuit`.
    With `parallel` > 1, after the batch's first row (delivered alone: it warms the installation token and
    would trip the circuit on an outage) the rest go out on that many threads, each with its own session;
    rows of one commit are never in one batch, so this never reorders a commit's states. Once `stopping` says
    so, the row in hand is finished and the rest of the batch released untried.
    """
    rng = rng or random.Random()
    worker = worker or worker_name()
    if circuit is None:
        circuit = gh.circuit if isinstance(gh.circuit, Circuit) else Circuit()
        gh.circuit = circuit
    handled = 0
    while handled < limit and circuit.allows(now or utcnow()) and not stopping():
        want = 1 if circuit.probing else limit - handled  # half-open: one probe at a time, the oldest due
        batch = Batch(claim_token(worker), now)
        ids = claim(session, now, batch.token, want, oldest_first=circuit.probing)
        first, rest = (ids[:1], ids[1:]) if parallel > 1 and len(ids) > 2 else (ids, [])
        for n, item_id in enumerate(first):
            if stopping():
                release(session, first[n:] + rest, batch.token)
                return handled
            batch.keep_alive(session)
            outcome = deliver(session, gh, item_id, now, batch.token)
            record(session, item_id, outcome, now, rng, batch.token)
            handled += 1
            circuit.observe(outcome, now or utcnow(), rng)
            if not circuit.allows(now or utcnow()):
                release(session, first[n + 1 :] + rest, batch.token)
                return handled
        if rest:
            handled += _deliver_in_parallel(session, gh, rest, now, rng, batch, circuit, parallel, stopping)
            if not circuit.allows(now or utcnow()):
                return handled
        if len(ids) < want:  # nothing more is due
            break
    return handled


def _deliver_in_parallel(
    session: Session,
    gh: GitHubApp,
    ids: list[int],
    now: datetime | None,
    rng: random.Random,
    batch: Batch,
    circuit: Circuit,
    parallel: int,
    stopping: Callable[[], bool],
) -> int:
    """Deliver claimed rows on `parallel` threads; on an outage or a stop, rows not yet started are released."""
    sessions = sessionmaker(session.get_bind(), expire_on_commit=False)
    halt = threading.Event()  # the circuit opened: start nothing more

    def one(item_id: int) -> Outcome | None:
        if halt.is_set() or stopping():
            return None
        with sessions() as own:
            batch.keep_alive(own)
            outcome = deliver(own, gh, item_id, now, batch.token)
            record(own, item_id, outcome, now, rng, batch.token)
            return outcome

    handled = 0
    untried: list[int] = []
    with ThreadPoolExecutor(parallel, thread_name_prefix="deliver") as pool:
        futures = {pool.submit(one, item_id): item_id for item_id in ids}
        for future in as_completed(futures):
            outcome = future.result()
            if outcome is None:
                untried.append(futures[future])
                continue
            handled += 1
            circuit.observe(outcome, now or utcnow(), rng)
            if not circuit.allows(now or utcnow()):
                halt.set()
    release(session, untried, batch.token)
    return handled


def release(session: Session, ids: list[int], token: str) -> None:
    """Give claimed rows back untried (the circuit opened, or the worker stops): no attempt counted, due time kept."""
    if ids:
        with write_transaction(session):
            session.execute(
                sa.update(OutboxItem)
                .where(OutboxItem.id.in_(ids), OutboxItem.claimed_by == token)
                .values(lease_until=None, claimed_by=None)
            )


# Rows of this process with a post sent and the attempt's outcome not recorded yet (record() clears them). If an
# error ends the batch first, they are given back with their commits in flight for LATE_LANDING, as after a post
# that timed out: that post may still land. Those whose post did time out (or got a 502/504) are also in doubt for
# DOUBT_WINDOW (the others' posts were answered: landed or refused, nothing more can land from them).
_unrecorded: dict[int, datetime | None] = {}  # row -> the posting_until its Fence wrote (cleared if answered)
_uncertain: set[int] = set()
_unrecorded_lock = threading.Lock()


def release_worker(session: Session, worker: str) -> int:
    """Give back every row this worker process still holds (after an error ended its batch), so they, and newer
    outbox items of their commits, are not held up until the leases run out. Its threads have all stopped by then."""
    with _unrecorded_lock:
        in_doubt, uncertain, sent = sorted(_unrecorded), sorted(_uncertain), dict(_unrecorded)
    mine = OutboxItem.claimed_by.startswith(f"{worker[:90]}/", autoescape=True)
    with write_transaction(session):
        conn = session.connection()
        at = clock.now_of(conn)
        for item in conn.execute(_COMMIT_OF, {"ids": uncertain}).all() if uncertain else ():
            # Whoever holds the row now (the lease may have run out while the error was backed off): the doubt is a
            # fact, and a newer state posted meanwhile without it is posted again after a late landing, then checked.
            conn.execute(MARK_DOUBT, {"item": item.id, "until": at + DOUBT_WINDOW})
            _requeue_newest(conn, item, at + LATE_LANDING)
        for item_id, until in sent.items():  # answered, or in doubt now: no longer a post whose worker died
            if until is not None:
                conn.execute(CLEAR_POSTING, {"item": item_id, "sent": until})
        if in_doubt:
            session.execute(
                sa.update(OutboxItem)
                .where(mine, OutboxItem.id.in_(in_doubt))
                .values(lease_until=at + LATE_LANDING, next_attempt_at=at + LATE_LANDING, claimed_by=None)
            )
        done = session.execute(sa.update(OutboxItem).where(mine).values(lease_until=None, claimed_by=None))
    with _unrecorded_lock:
        for item_id in in_doubt:
            _unrecorded.pop(item_id, None)
        _uncertain.difference_update(uncertain)
    return rowcount(done) + len(in_doubt)


def _requeue_newest(conn: sa.Connection, item: Any, due: datetime) -> int | None:
    """Queue the newest outbox item of `item`'s commit again, if it is not `item`: it may have been (partly) posted
    before a late post of `item`, or be in flight now (its worker, holding an older revision, will not mark it
    delivered)."""
    keys = {"org": item.org_id, "repo": item.repo_full_name, "sha": item.commit_sha}
    newest = conn.execute(NEWEST_OF_COMMIT, keys).one()
    if newest.id == item.id:
        return None
    conn.execute(REQUEUE, {"item": newest.id, "now": due})
    return int(newest.id)


class Fence:
    """One claimed row's lease, checked on the database's clock before each post and after it.

    Whenever it finds the lease lost after a post was sent (the post may have landed after a newer outbox item's), the
    commit's newest outbox item is queued again, so the newest state is posted over whatever landed late.
    """

    def __init__(self, session: Session, item: Any, now: datetime | None, token: str) -> None:
        self.session, self.item, self.now, self.token = session, item, now, token
        self.posting = False  # a post was sent and its outcome not yet recorded
        self.sent: datetime | None = None  # the row's posting_until this fence wrote, until the post's answer

    def hold(self) -> None:
        """Renew the lease before a post; raise LeaseLost when it ran out or went to another worker."""
        with write_transaction(self.session):
            conn = self.session.connection()
            at = _now(conn, self.now)
            sent = at + DOUBT_WINDOW
            keys = {"item": self.item.id, "token": self.token, "now": at, "until": at + LEASE, "posting": sent}
            if self.sent is None:
                held = conn.execute(HOLD, keys)
            else:  # a later post of the same pass: its own mark moves on
                held = conn.execute(HOLD_AGAIN, {**keys, "sent": self.sent})
            if held.rowcount != 1:
                if self.sent is not None:  # the posts since the pass's first hold were all answered
                    conn.execute(CLEAR_POSTING, {"item": self.item.id, "sent": self.sent})
                requeued = self._requeue_newest(conn, at) if self.posting else None
        if held.rowcount != 1:
            self.sent = None
            self._lost("before=post", requeued)
        self.posting, self.sent = True, sent
        with _unrecorded_lock:
            _unrecorded[self.item.id] = sent

    def answered(self) -> None:
        """The post was answered (refused, rate limited, a 500/503) or never reached GitHub: its mark goes."""
        if self.sent is None:
            return
        with write_transaction(self.session):
            self.session.connection().execute(CLEAR_POSTING, {"item": self.item.id, "sent": self.sent})
        self.sent = None

    def posted(self, mark: sa.Update | None, maybe_later: bool = False) -> None:
        """After a post: record it (`mark`, a fact whoever holds the row now), then check the lease held through it.

        Also after a post that failed in a way that may still land (`maybe_later`): then a re-queued newest outbox item
        waits LATE_LANDING before it is posted again, and the commit is in doubt for DOUBT_WINDOW.
        """
        if maybe_later:
            with _unrecorded_lock:
                _uncertain.add(self.item.id)
        with write_transaction(self.session):
            conn = self.session.connection()
            if mark is not None:
                conn.execute(mark, {"item": self.item.id, "read_revision": self.item.revision})
            at = _now(conn, self.now)
            if maybe_later:  # a fact whoever holds the row now: the commit's newest state is checked until then
                conn.execute(MARK_DOUBT, {"item": self.item.id, "until": at + DOUBT_WINDOW})
            # Answered, or in doubt from here on: the sent post's own mark goes (with the renewal, when it holds).
            keys = {"item": self.item.id, "token": self.token, "now": at, "sent": self.sent}
            held = conn.execute(POSTED, {**keys, "until": at + LEASE})
            if held.rowcount != 1:
                if self.sent is not None:
                    conn.execute(CLEAR_POSTING, keys)
                requeued = self._requeue_newest(conn, at + LATE_LANDING if maybe_later else at)
        self.sent = None
        if held.rowcount != 1:
            self._lost("after=post", requeued)
        if not maybe_later:
            self.posting = False

    def _requeue_newest(self, conn: sa.Connection, due: datetime) -> int | None:
        return _requeue_newest(conn, self.item, due)

    def _lost(self, when: str, requeued: int | None) -> None:
        log.warning(
            "github.posting.lease_lost outbox=%s commit=%s %s requeued=%s",
            self.item.id,
            self.item.commit_sha,
            when,
            requeued,
        )
        raise LeaseLost()


def deliver(session: Session, gh: GitHubApp, item_id: int, now: datetime | None, token: str) -> Outcome:
    """Post the status and check run of one claimed row (each at most once), outside any transaction.

    A database error propagates (the worker backs off and reconnects); any other unexpected error counts as a
    failed attempt of this row, so one bad row cannot stop the others.
    """
    conn = session.connection()
    item = conn.execute(ITEM, {"item": item_id}).one()  # the row with its org's installation and the commit's doubt
    # Until when an older post of the commit may still land: one that timed out, or one whose worker died unanswered.
    doubt = max((d for d in (item.doubt, item.posting) if d is not None), default=None)
    at = _now(conn, now) if doubt is not None else None
    logs.set_context(org=item.slug, scan_run_id=item.scan_run_id, outbox_id=item.id)  # this thread's lines, to record()
    session.commit()  # end the read transaction before talking to GitHub
    if item.state != "pending":  # superseded while it waited
        return Outcome("superseded")
    owner, repo = item.repo_full_name.split("/", 1)
    fence = Fence(session, item, now, token)
    settled = True
    try:
        installation_id = item.installation_id or _find_installation(session, gh, OrgIds(item.org_id), owner, repo)
        status_refused: RequestFailed | None = None
        if not item.status_posted:
            fence.hold()
            try:
                posted = _call(
                    gh,
                    installation_id,
                    lambda c: c.rest.repos.create_commit_status(owner, repo, item.commit_sha, data=item.commit_status),
                )
            except RequestFailed as exc:
                if not classify(exc).refused:
                    raise
                # Refused (a 422 once a commit has 1,000 statuses, a permission's 403): the check run is posted all
                # the same, so that it does not keep an older conclusion; the refusal is raised after it.
                fence.answered()
                status_refused = exc
            else:
                _check_status_answer(posted.parsed_data, item.commit_status)
                fence.posted(MARK_STATUS)
        elif doubt is not None:  # posted on an earlier pass; an older post may have landed since
            _status_in_step(gh, installation_id, item, owner, repo, fence)
        runs = CheckRuns(session, gh, installation_id, item, owner, repo, fence)
        if not item.check_posted:
            settled = runs.post()
        elif doubt is not None:
            runs.in_step()
        if status_refused is not None:
            raise status_refused
    except LeaseLost:
        return Outcome("lost", revision=item.revision)
    except sa.exc.SQLAlchemyError:
        raise
    except (Permanent, RequestError) as exc:
        outcome = classify(exc, item.revision)
        if fence.posting and isinstance(exc, RequestError) and not _not_created(exc):
            try:  # it may still land: if the lease went meanwhile, the newest outbox item must be posted after it
                fence.posted(None, maybe_later=True)
            except LeaseLost:
                return Outcome("lost", revision=item.revision)
            return dataclasses.replace(outcome, maybe_landed=True)
        fence.answered()
        return outcome
    except UNREADABLE_ERRORS as exc:  # GitHub's answer, or what githubkit made of it, could not be read
        error = type(exc).__name__
        log.warning("github.posting.unreadable_answer outbox=%s commit=%s error=%s", item.id, item.commit_sha, error)
        outcome = Outcome("retry", f"{UNREADABLE}: {type(exc).__name__}", revision=item.revision)  # this row's alone
        return dataclasses.replace(outcome, maybe_landed=fence.posting)
    except Exception as exc:  # a bug of ours: counted, so the row ends failed, not retried forever
        log.exception("github.posting.unexpected_error outbox=%s commit=%s", item.id, item.commit_sha)
        outcome = Outcome("retry", f"unexpected error: {type(exc).__name__}", revision=item.revision)
        return dataclasses.replace(outcome, maybe_landed=fence.posting)
    if not settled:
        return Outcome("retry", SETTLING, wait=SETTLE_WAIT, counts_as_attempt=False, revision=item.revision)
    if at is not None and doubt is not None and at < doubt:  # looked at again until the doubt is past, once after
        return Outcome("retry", VERIFYING, wait=SETTLE_WAIT, counts_as_attempt=False, revision=item.revision)
    return Outcome("delivered", revision=item.revision, doubt=doubt)


def _status_in_step(gh: GitHubApp, installation_id: int, item: Any, owner: str, repo: str, fence: Fence) -> None:
    """Post the row's commit status again if GitHub shows another one for our context (an older post landed late)."""
    combined = _call(
        gh,
        installation_id,
        lambda c: c.rest.repos.get_combined_status_for_ref(owner, repo, item.commit_sha, per_page=100),
    ).parsed_data
    shown = next(((s.state, s.description) for s in combined.statuses if s.context == CONTEXT), None)
    wanted = (item.commit_status["state"], item.commit_status.get("description"))
    if shown == wanted:
        return
    log.warning(
        "github.posting.status_not_in_step outbox=%s commit=%s shown=%s wanted=%s",
        item.id,
        item.commit_sha,
        shown[0] if shown else None,
        wanted[0],
    )
    fence.hold()
    _call(
        gh,
        installation_id,
        lambda c: c.rest.repos.create_commit_status(owner, repo, item.commit_sha, data=item.commit_status),
    )
    fence.posted(None)


def classify(exc: Exception, revision: int | None = None) -> Outcome:
    """Map a failed GitHub call onto retry-or-not, the way the worker records it."""
    if isinstance(exc, RequestError) and not isinstance(exc, RequestFailed | RequestTimeout):
        if isinstance(exc.exc, RequestError):  # githubkit wraps failures of the token exchange
            return classify(exc.exc, revision)
        error = f"{UNREACHABLE}: {type(exc.exc).__name__}"
        return Outcome("retry", error, unreachable=True, revision=revision)
    if isinstance(exc, Permanent):
        return Outcome("retry", str(exc), getattr(exc, "status_code", None), refused=True, revision=revision)
    if isinstance(exc, RequestTimeout):
        return Outcome("retry", NO_ANSWER, unreachable=True, revision=revision)
    assert isinstance(exc, RequestFailed)
    code = exc.response.status_code
    # A rate limit: what githubkit recognised (Retry-After, or no requests left), any 429, and a 403 saying so (a
    # secondary limit may come with none of those headers): not a refusal, and no attempt used up.
    if isinstance(exc, RateLimitExceeded) or code == 429 or (code == 403 and _says_rate_limited(exc)):
        wait = rate_limit_wait(exc.response.headers)
        return Outcome("retry", _message(exc), code, wait, counts_as_attempt=False, revision=revision)
    if code >= 500 or code == 401:
        return Outcome("retry", _message(exc), code, unreachable=code >= 500, revision=revision)
    if 400 <= code < 500:  # a refusal (404, 422, a permission's 403, a proxy's 400 or 409...): a one-off answer
        return Outcome("retry", _message(exc), code, refused=True, revision=revision)  # must not be final
    return Outcome("failed", _message(exc), code, revision=revision)  # (a 3xx or 1xx: not GitHub's API answering)


def _says_rate_limited(exc: RequestFailed) -> bool:
    """Whether GitHub's message says the call was rate limited (GitHub Enterprise's older words: abuse detection)."""
    message = (github_message(exc) or "").lower()
    return "rate limit" in message or "abuse detection" in message


def rate_limit_wait(headers: Mapping[str, str]) -> timedelta:
    """How long a rate-limited call waits (spec section 4): what `Retry-After` asks, else until `x-ratelimit-reset`
    (on GitHub's own clock, its answer's `Date`, so a skewed clock here changes nothing), else a minute; a time
    already past, or one that cannot be read, waits the minute too, and no wait is longer than MAX_RATE_LIMIT_WAIT
    (GitHub's limits reset hourly: a later time is a wrong clock or a wrong header)."""
    try:
        if "retry-after" in headers:
            value = headers["retry-after"].strip()
            wait = timedelta(seconds=int(value)) if value.isascii() and value.isdigit() else _until(value, headers)
        elif "x-ratelimit-reset" in headers:
            reset = datetime.fromtimestamp(int(headers["x-ratelimit-reset"]), tz=UTC)
            wait = reset - _github_now(headers)
        else:
            return DEFAULT_RATE_LIMIT_WAIT
    except (ValueError, TypeError, OverflowError, OSError):
        return DEFAULT_RATE_LIMIT_WAIT
    if wait <= timedelta():
        return DEFAULT_RATE_LIMIT_WAIT
    return min(wait, MAX_RATE_LIMIT_WAIT)


def _until(http_date: str, headers: Mapping[str, str]) -> timedelta:
    return email.utils.parsedate_to_datetime(http_date) - _github_now(headers)


def _github_now(headers: Mapping[str, str]) -> datetime:
    """GitHub's time as its answer's `Date` says it; ours when it has none."""
    if "date" in headers:
        found = email.utils.parsedate_to_datetime(headers["date"])
        if found.tzinfo is not None:
            return found
    return datetime.now(UTC)


def as_app(gh: GitHubApp, fn: Any) -> Any:
    """One GitHub call as the App (its JWT); when GitHub refused the JWT for its times, once more on GitHub's clock."""
    try:
        return fn(gh.app)
    except RequestFailed as exc:
        if not _jwt_refused_for_its_times(gh, exc):
            raise
        return fn(gh.app)


def _call(gh: GitHubApp, installation_id: int, fn: Any) -> Any:
    """One GitHub call as the installation; on 401, mint a new token once and try again. A redirect is not followed
    (app.github.client): it is a refusal here."""
    try:
        return _not_redirected(fn(gh.installation(installation_id)))
    except RequestError as exc:
        if _jwt_refused_for_its_times(gh, exc):  # our clock is off: the token exchange is tried again on GitHub's
            return _not_redirected(fn(gh.installation(installation_id)))
        if not isinstance(exc, RequestFailed) or exc.response.status_code != 401 or isinstance(exc, RateLimitExceeded):
            raise
        log.info("github.token.reminted installation=%s", installation_id)
        gh.forget_token(installation_id)
        return _not_redirected(fn(gh.installation(installation_id)))


def _not_redirected(answer: Any) -> Any:
    """The answer, unless it is a redirect (a renamed or transferred repository, a proxy's): nothing was posted, and
    following it would turn a POST into a GET whose 200 passed for the post. Refused (retried as a refusal)."""
    code = getattr(answer, "status_code", None)
    if isinstance(code, int) and 300 <= code < 400:
        where = str(answer.headers.get("location") or "")[:200]
        raise _permanent(
            f"GitHub answered {code}: a redirect to {where!r} (was the repository renamed or moved?)", code
        )
    return answer


def _check_status_answer(answer: Any, asked: Mapping[str, Any]) -> None:
    """The status GitHub answered a post with is the one posted; else NotItsAnswer."""
    if getattr(answer, "state", None) != asked.get("state") or getattr(answer, "context", None) != asked.get("context"):
        raise NotItsAnswer(f"the answer to a status post is not that status: {_said(answer, 'state', 'context')}")


def _check_run_answer(answer: Any, asked: Mapping[str, Any], run_id: int | None) -> Any:
    """The check run GitHub answered a create (`run_id` None) or an update with is the one asked for: its id, name,
    commit and conclusion; else NotItsAnswer. The answer."""
    said = {"name": asked.get("name"), "conclusion": asked.get("conclusion")}
    if run_id is None:
        said["head_sha"] = asked.get("head_sha")
    else:
        said["id"] = run_id
    if any(getattr(answer, key, None) != value for key, value in said.items() if value is not None):
        raise NotItsAnswer(f"the answer is not the check run asked for: {_said(answer, *said)}")
    if not isinstance(getattr(answer, "id", None), int):
        raise NotItsAnswer("the answer names no check run")
    return answer


def _said(answer: Any, *keys: str) -> str:
    return ", ".join(f"{k}={str(getattr(answer, k, None))[:80]!r}" for k in keys)


def _jwt_refused_for_its_times(gh: GitHubApp, exc: RequestError) -> bool:
    """Whether GitHub refused the App's JWT because its times are off by its clock (then learnt: see learn_clock)."""
    inner: Any = exc
    while not isinstance(inner, RequestFailed | RequestTimeout) and isinstance(inner.exc, RequestError):
        inner = inner.exc  # githubkit wraps failures of the token exchange
    return isinstance(inner, RequestFailed) and gh.learn_clock(inner.response)


def _find_installation(session: Session, gh: GitHubApp, org: OrgIds, owner: str, repo: str) -> int:
    """The installation covering the repo, asked of GitHub with the App JWT, and remembered for the org. A suspended
    one is not: GitHub refuses its posts until it is unsuspended, whose webhook links it again and posts the org's
    commits again (app.github.handlers.installation)."""
    try:
        try:
            installation = gh.app.rest.apps.get_repo_installation(owner, repo).parsed_data
        except RequestFailed as exc:
            if not _jwt_refused_for_its_times(gh, exc):
                raise
            installation = gh.app.rest.apps.get_repo_installation(owner, repo).parsed_data
    except RequestFailed as exc:
        if exc.response.status_code == 404:
            raise _permanent(f"the GitHub App is not installed on {owner}/{repo}", 404) from None
        raise
    found = installation.id
    if installation.suspended_at is not None:
        raise _permanent(f"the GitHub App's installation on {owner} is suspended", 403)
    with write_transaction(session):  # remembered unless another org holds it: an installation is one org's
        orgs.lock_installation(session, found)
        held = sa.or_(Org.installation_id == found, Org.suspended_installation_id == found)
        other = session.scalars(sa.select(Org.slug).where(held, Org.id != org.id).limit(1)).first()
        if other is None:
            session.execute(sa.update(Org).where(Org.id == org.id).values(installation_id=found))
        else:
            log.warning("github.installation.held_by_another org_id=%s installation=%s other=%s", org.id, found, other)
    return found


def _not_created(exc: RequestError) -> bool:
    """Whether a failed post surely changed nothing: GitHub answered it (4xx, 500, 503), or it never reached GitHub.
    After a timeout, a dropped connection or a gateway's 502/504, GitHub may still apply it later."""
    if not isinstance(exc, RequestFailed | RequestTimeout) and isinstance(exc.exc, RequestError):
        return _not_created(exc.exc)  # githubkit wraps failures of the token exchange
    if isinstance(exc, RequestFailed):
        return exc.response.status_code not in (502, 504)  # a gateway's answer says nothing of what GitHub did
    return isinstance(exc, RequestError) and isinstance(exc.exc, httpx.ConnectError)


class _Refused(Exception):
    """GitHub refused to update another run of ours (404/422): the rest go on, then the row retries."""

    def __init__(self, cause: RequestFailed) -> None:
        super().__init__(str(cause))
        self.cause = cause


class Run(NamedTuple):
    """A run of our check on the commit, as GitHub lists it."""

    id: int
    external_id: str | None
    conclusion: str | None
    title: str | None
    summary: str | None = None


class CheckRuns:
    """The commit's runs of `fremforge/image-scan`: one updated in place, every other one the app made kept in step.

    The run on record is PATCHed; a record with no run creates one (new commit, or after a re-run was asked),
    unless a create whose answer was lost turns up in GitHub's list; a run that cannot be updated (404, 422) is
    replaced by a new one. Every other run the app created on the commit (a create that timed out and landed
    later, runs from before a re-run) that does not show the newest conclusion is updated too.
    """

    def __init__(
        self, session: Session, gh: GitHubApp, installation_id: int, item: Any, owner: str, repo: str, fence: Fence
    ) -> None:
        self.session, self.gh, self.installation_id = session, gh, installation_id
        self.item, self.owner, self.repo, self.fence = item, owner, repo, fence
        self.body: dict[str, Any] = dict(item.check_run)
        self.update = {k: v for k, v in self.body.items() if k != "head_sha"}

    def post(self) -> bool:
        """Bring the commit's runs to this row's state; True when no create of ours can still land later.

        The row's check half is marked posted only then: until it is, each retry lists the runs and brings any that
        appeared in step. A 404/422 on another run of ours is raised after the rest are done (retried as a refusal).
        """
        record = self._record()
        runs = self._ours()
        target = record.github_id if record.github_id in {r.id for r in runs} else None
        if target is None and record.github_id is None and record.create_attempted_at is not None:
            lost = [r.id for r in runs if r.external_id == self.body.get("external_id")]
            # A create whose answer was lost landed when GitHub lists every run we asked for: the newest is it (runs
            # from before a re-run have the same external id, and older ids).
            if lost and len(runs) >= record.creates_sent:
                target = max(lost)
                self._set_run(record.id, target)
        elif target is None and record.github_id is not None:
            target = record.github_id  # not listed (yet): PATCH tells
        self.fence.hold()
        if target is not None and not self._patch(target, replace_on_refusal=True):
            log.info("github.check_run.replaced outbox=%s run=%s", self.item.id, target)
            target = None
            self.fence.hold()
        if target is None:
            record = self._count_create(record.id)
            try:
                created = _call(
                    self.gh,
                    self.installation_id,
                    lambda c: c.rest.checks.create(self.owner, self.repo, data=self.body),
                )
            except RequestError as exc:
                if _not_created(exc):  # a definite answer: no run will land from it
                    self._uncount_create(record.id)
                raise
            target = _check_run_answer(created.parsed_data, self.body, None).id
            self._set_run(record.id, target)
        refused: RequestFailed | None = None
        for run in runs:
            if run.id != target and (
                run.conclusion != self.body.get("conclusion") or run.title != self.body.get("output", {}).get("title")
            ):
                self.fence.hold()
                try:
                    self._patch(run.id, replace_on_refusal=False)
                except _Refused as exc:
                    refused = exc.cause
        known = len({r.id for r in runs} | {target})
        settled = (
            known >= record.creates_sent
            or record.last_create_at is None
            or (self._now() - record.last_create_at >= SETTLE_WINDOW)
        )
        self.fence.posted(MARK_CHECK if settled and refused is None else None)
        if refused is not None:
            raise refused
        return settled

    def in_step(self) -> None:
        """After this row's runs were posted: bring any of ours that shows another state to this row's (an older
        post landed late). A 404/422 is raised after the rest are done (retried as a refusal)."""
        refused: RequestFailed | None = None
        output = self.body.get("output", {})
        wanted = (self.body.get("conclusion"), output.get("title"), output.get("summary"))
        for run in self._ours():
            if (run.conclusion, run.title, run.summary) != wanted:  # the summary too: same counts, other findings
                log.warning("github.check_run.not_in_step outbox=%s run=%s", self.item.id, run.id)
                self.fence.hold()
                try:
                    self._patch(run.id, replace_on_refusal=False)
                except _Refused as exc:
                    refused = exc.cause
                self.fence.posted(None)
        if refused is not None:
            raise refused

    def _ours(self) -> list[Run]:
        mine = {"app_id": int(self.gh.app_id)} if str(self.gh.app_id).isdigit() else {}
        listed = _call(
            self.gh,
            self.installation_id,
            lambda c: c.rest.checks.list_for_ref(
                self.owner,
                self.repo,
                self.item.commit_sha,
                check_name=CONTEXT,
                filter_="all",
                per_page=100,
                **mine,
            ),
        ).parsed_data.check_runs
        return [
            Run(r.id, r.external_id, r.conclusion, *((r.output.title, r.output.summary) if r.output else (None, None)))
            for r in listed
        ]

    def _patch(self, run_id: int, replace_on_refusal: bool) -> bool:
        """PATCH one run; False when GitHub refuses it (gone, or cannot be updated) and it is to be replaced, else
        _Refused."""
        try:
            updated = _call(
                self.gh,
                self.installation_id,
                lambda c: c.rest.checks.update(self.owner, self.repo, run_id, data=self.update),
            )
            _check_run_answer(updated.parsed_data, self.body, run_id)
        except RequestFailed as exc:
            if exc.response.status_code not in REFUSED or isinstance(exc, RateLimitExceeded):
                raise
            if not replace_on_refusal:
                log.warning("github.check_run.not_updated run=%s error=%r", run_id, _message(exc))
                raise _Refused(exc) from exc
            return False
        return True

    def _now(self) -> datetime:
        at = _now(self.session.connection(), self.fence.now)
        self.session.commit()
        return at

    def _record(self) -> Any:
        """The commit's check run record, made if new."""
        keys = {"org": self.item.org_id, "repo": self.item.repo_full_name, "sha": self.item.commit_sha}
        with write_transaction(self.session):
            conn = self.session.connection()
            row = conn.execute(FIND_RUN, keys).one_or_none()
            if row is None:
                new = {"org_id": keys["org"], "repo_full_name": keys["repo"], "commit_sha": keys["sha"]}
                conn.execute(NEW_RUN, new)
                row = conn.execute(FIND_RUN, keys).one()
        return row

    def _count_create(self, record_id: int) -> Any:
        """Record a create about to be sent, before sending it (its answer may be lost)."""
        with write_transaction(self.session):
            conn = self.session.connection()
            at = _now(conn, self.fence.now)
            conn.execute(ATTEMPT_CREATE, {"record": record_id, "at": at})
            return conn.execute(FIND_RUN_BY_ID, {"record": record_id}).one()

    def _uncount_create(self, record_id: int) -> None:
        with write_transaction(self.session):
            self.session.connection().execute(UNCOUNT_CREATE, {"record": record_id})

    def _set_run(self, record_id: int, github_id: int) -> None:
        with write_transaction(self.session):
            self.session.connection().execute(SET_RUN, {"record": record_id, "github_id": github_id, "at": utcnow()})


# Core statements, built once: the worker's per-row writes skip the ORM's bulk-update bookkeeping.
_outbox, _runs = OutboxItem.__table__, CheckRunRecord.__table__
SET_RUN = (
    sa.update(_runs)
    .where(_runs.c.id == sa.bindparam("record"))
    .values(github_id=sa.bindparam("github_id"), create_attempted_at=None, updated_at=sa.bindparam("at"))
)
_RUN_COLUMNS = (
    _runs.c.id,
    _runs.c.github_id,
    _runs.c.create_attempted_at,
    _runs.c.creates_sent,
    _runs.c.last_create_at,
)
FIND_RUN = sa.select(*_RUN_COLUMNS).where(
    _runs.c.org_id == sa.bindparam("org"),
    _runs.c.repo_full_name == sa.bindparam("repo"),
    _runs.c.commit_sha == sa.bindparam("sha"),
)
FIND_RUN_BY_ID = sa.select(*_RUN_COLUMNS).where(_runs.c.id == sa.bindparam("record"))
NEW_RUN = sa.insert(_runs)
ATTEMPT_CREATE = (
    sa.update(_runs)
    .where(_runs.c.id == sa.bindparam("record"))
    .values(
        create_attempted_at=sa.bindparam("at"),
        last_create_at=sa.bindparam("at"),
        creates_sent=_runs.c.creates_sent + 1,
    )
)
UNCOUNT_CREATE = (
    sa.update(_runs).where(_runs.c.id == sa.bindparam("record")).values(creates_sent=_runs.c.creates_sent - 1)
)
_same_revision = (_outbox.c.id == sa.bindparam("item"), _outbox.c.revision == sa.bindparam("read_revision"))
MARK_STATUS = sa.update(_outbox).where(*_same_revision).values(status_posted=True)
MARK_CHECK = sa.update(_outbox).where(*_same_revision).values(check_posted=True)
_OF_COMMIT = (  # the rows of one commit: parameters org, repo, sha
    _outbox.c.org_id == sa.bindparam("org"),
    _outbox.c.repo_full_name == sa.bindparam("repo"),
    _outbox.c.commit_sha == sa.bindparam("sha"),
)
CLEAR_DOUBT = (
    sa.update(_outbox)
    .where(
        *_OF_COMMIT,
        sa.or_(_outbox.c.doubt_until <= sa.bindparam("seen"), _outbox.c.posting_until <= sa.bindparam("seen")),
    )
    .values(
        doubt_until=sa.case((_outbox.c.doubt_until <= sa.bindparam("seen"), None), else_=_outbox.c.doubt_until),
        posting_until=sa.case((_outbox.c.posting_until <= sa.bindparam("seen"), None), else_=_outbox.c.posting_until),
    )
)
_COMMIT_OF = sa.select(_outbox.c.id, _outbox.c.org_id, _outbox.c.repo_full_name, _outbox.c.commit_sha).where(
    _outbox.c.id.in_(sa.bindparam("ids", expanding=True))
)
MARK_DOUBT = (
    sa.update(_outbox)
    .where(
        _outbox.c.id == sa.bindparam("item"),
        sa.or_(_outbox.c.doubt_until.is_(None), _outbox.c.doubt_until < sa.bindparam("until")),
    )
    .values(doubt_until=sa.bindparam("until"))
)
_held = (_outbox.c.claimed_by == sa.bindparam("token"), _outbox.c.lease_until > sa.bindparam("now"))
RENEW = sa.update(_outbox).where(_outbox.c.id == sa.bindparam("item"), *_held).values(lease_until=sa.bindparam("until"))
# Before a post: the lease renewed, and the post marked as sent (a mark already there, of a worker that died, stays).
_posting = sa.bindparam("posting", type_=sa.DateTime())
_live_mark_of_another = sa.and_(
    _outbox.c.posting_until > sa.bindparam("now"),
    sa.or_(_outbox.c.doubt_until.is_(None), _outbox.c.doubt_until < _outbox.c.posting_until),
)
HOLD = RENEW.values(
    doubt_until=sa.case((_live_mark_of_another, _outbox.c.posting_until), else_=_outbox.c.doubt_until),
    posting_until=_posting,
)
HOLD_AGAIN = RENEW.values(
    posting_until=sa.case((_outbox.c.posting_until == sa.bindparam("sent"), _posting), else_=_outbox.c.posting_until)
)
# After it: the lease renewed, and this post's own mark cleared.
_own_mark_cleared = sa.case((_outbox.c.posting_until == sa.bindparam("sent"), None), else_=_outbox.c.posting_until)
POSTED = RENEW.values(posting_until=_own_mark_cleared)
CLEAR_POSTING = (
    sa.update(_outbox)
    .where(_outbox.c.id == sa.bindparam("item"), _outbox.c.posting_until == sa.bindparam("sent"))
    .values(posting_until=None)
)
RENEW_ALL = sa.update(_outbox).where(*_held).values(lease_until=sa.bindparam("until"))
NEWEST_OF_COMMIT = (
    sa.select(_outbox.c.id, _outbox.c.state, _outbox.c.status_posted, _outbox.c.check_posted)
    .where(*_OF_COMMIT)
    .order_by(_outbox.c.id.desc())
    .limit(1)
)
# Post the row again from the start; its lease (if a worker has it in hand) stays, and that worker, having read
# an older revision, records its outcome without marking the row delivered.
REQUEUE = (
    sa.update(_outbox)
    .where(_outbox.c.id == sa.bindparam("item"))
    .values(
        state="pending",
        status_posted=False,
        check_posted=False,
        revision=_outbox.c.revision + 1,
        attempts=0,
        refusals=0,
        next_attempt_at=sa.bindparam("now"),
        last_error="GitHub may show an older state (a stalled worker posted it late): posting the newest again",
    )
)


def _permanent(message: str, status_code: int | None = None) -> Permanent:
    exc = Permanent(message)
    exc.status_code = status_code  # type: ignore[attr-defined]
    return exc


def _message(exc: RequestFailed) -> str:
    """A failed call as recorded, e.g. `GitHub answered 422: Validation Failed`."""
    text = github_message(exc)
    return f"GitHub answered {exc.response.status_code}" + (f": {text}" if text else "")


# ---------------------------------------------------------------- recording


class OrgIds(NamedTuple):
    id: int


# The latest time until which a post of an older outbox item of the item's commit may still land (their doubt_until).
_same_commit = _outbox.alias("same_commit")
_older_of_commit = (
    _same_commit.c.org_id == _outbox.c.org_id,
    _same_commit.c.repo_full_name == _outbox.c.repo_full_name,
    _same_commit.c.commit_sha == _outbox.c.commit_sha,
    _same_commit.c.id < _outbox.c.id,  # a late landing of the row's own state changes nothing
)
_COMMIT_DOUBT = sa.select(sa.func.max(_same_commit.c.doubt_until)).where(*_older_of_commit).scalar_subquery()
_COMMIT_POSTING = sa.select(sa.func.max(_same_commit.c.posting_until)).where(*_older_of_commit).scalar_subquery()
ITEM = (
    sa.select(
        _outbox.c.id,
        _outbox.c.state,
        _outbox.c.revision,
        _outbox.c.org_id,
        _outbox.c.repo_full_name,
        _outbox.c.commit_sha,
        _outbox.c.commit_status,
        _outbox.c.check_run,
        _outbox.c.status_posted,
        _outbox.c.check_posted,
        _outbox.c.scan_run_id,
        Org.__table__.c.installation_id,
        Org.__table__.c.slug,
        _COMMIT_DOUBT.label("doubt"),
        _COMMIT_POSTING.label("posting"),
    )
    .join_from(_outbox, Org.__table__, Org.__table__.c.id == _outbox.c.org_id)
    .where(_outbox.c.id == sa.bindparam("item"))
)
LOCK_ROW = (
    sa.select(
        _outbox.c.state,
        _outbox.c.attempts,
        _outbox.c.refusals,
        _outbox.c.revision,
        _outbox.c.claimed_by,
        _outbox.c.org_id,
        _outbox.c.repo_full_name,
        _outbox.c.commit_sha,
    )
    .where(_outbox.c.id == sa.bindparam("item"))
    .with_for_update()
)
UPDATE_ROW = sa.update(_outbox).where(_outbox.c.id == sa.bindparam("item"))


def record(
    session: Session, item_id: int, outcome: Outcome, now: datetime | None, rng: random.Random, token: str
) -> None:
    """Store the outcome and release the lease: delivered, retry later, or failed for good.

    Fenced: nothing is recorded unless `token` still holds the row (a worker that stalled past its lease has
    nothing to say about a row another worker took). A row re-queued while it was in hand stays pending.
    """
    try:
        if outcome.state != "lost":
            _record(session, item_id, outcome, now, rng, token)
    finally:
        logs.clear_context()
    with _unrecorded_lock:
        _unrecorded.pop(item_id, None)
        _uncertain.discard(item_id)


def _record(
    session: Session, item_id: int, outcome: Outcome, now: datetime | None, rng: random.Random, token: str
) -> None:
    with write_transaction(session):
        conn = session.connection()
        row = conn.execute(LOCK_ROW, {"item": item_id}).one()
        if row.claimed_by != token:
            log.warning("github.posting.lease_lost outbox=%s commit=%s before=record", item_id, row.commit_sha)
            return
        at = _now(conn, now)
        values: dict[str, Any] = {"lease_until": None, "claimed_by": None}
        if outcome.maybe_landed:  # the commit stays in flight until a late landing of that post is past
            values["lease_until"] = values["next_attempt_at"] = at + LATE_LANDING
            values["doubt_until"] = at + DOUBT_WINDOW
        if outcome.revision is not None and outcome.revision != row.revision:
            values.setdefault("next_attempt_at", at)  # re-queued meanwhile: post it again from the start
        elif outcome.state == "delivered":
            values.update(delivered_at=at, last_error=None)
            if row.state == "pending":  # an outbox item superseded while in hand keeps saying so
                values["state"] = "delivered"
            if outcome.doubt is not None:  # waited out and checked after: later passes of the commit need not read back
                commit = {"org": row.org_id, "repo": row.repo_full_name, "sha": row.commit_sha}
                conn.execute(CLEAR_DOUBT, {**commit, "seen": outcome.doubt})
            log.info("github.posting.delivered outbox=%s commit=%s", item_id, row.commit_sha)
        elif outcome.state != "superseded":
            attempts = row.attempts + (1 if outcome.counts_as_attempt else 0)
            refusals = row.refusals + (1 if outcome.refused else 0)
            values.update(
                last_error=outcome.error, last_status_code=outcome.status_code, attempts=attempts, refusals=refusals
            )
            if outcome.state == "failed" or attempts >= MAX_ATTEMPTS or refusals >= REFUSAL_TRIES:
                if row.state == "pending":
                    values["state"] = "failed"
                log.warning(
                    "github.posting.failed outbox=%s commit=%s error=%r", item_id, row.commit_sha, outcome.error
                )
            else:
                if outcome.wait is not None:
                    wait = outcome.wait
                elif outcome.refused:
                    wait = refusal_wait(refusals, rng)
                else:
                    wait = backoff(attempts, rng)
                values["next_attempt_at"] = max(at + wait, values.get("next_attempt_at", at))
                log.info(
                    "github.posting.retry outbox=%s attempt=%s in=%.0fs error=%r",
                    item_id,
                    attempts,
                    wait.total_seconds(),
                    outcome.error,
                )
        conn.execute(UPDATE_ROW.values(**values), {"item": item_id})
