"""The delivery worker: claims outbox rows, posts the commit status and check run, records what happened.

Rules, so that several workers and crashes never lose or reorder a commit's state:
- a worker claims a row with a lease (PostgreSQL: FOR UPDATE SKIP LOCKED); a crashed worker's row is
  claimed again once its lease has run out;
- at most one row per commit is in flight, and only the newest wish per commit is pending (older ones
  are superseded when a newer one is stored), so a stale state never lands after a newer one;
- GitHub calls happen outside any database transaction;
- while GitHub is unreachable (connection errors, timeouts, 5xx) a circuit breaker stops the worker from
  trying every due row: see `Circuit`.
"""

from __future__ import annotations

import logging
import os
import random
import socket
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import sqlalchemy as sa
from githubkit.exception import RateLimitExceeded, RequestError, RequestFailed, RequestTimeout
from sqlalchemy.orm import Session, aliased, sessionmaker

from app.db import write_transaction
from app.github.client import GitHubApp
from app.models import CheckRunRecord, Org, OutboxItem, utcnow
from app.policy import CONTEXT

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=2)  # longer than the few GitHub calls one row needs, with their timeouts
FIRST_DELAY = 1.0
MAX_DELAY = 300.0
MAX_ATTEMPTS = 12  # failures (not rate-limit waits) before a row is given up: about 25 minutes of retries
DEFAULT_RATE_LIMIT_WAIT = timedelta(seconds=60)
CIRCUIT_MAX_DELAY = 60.0  # seconds, before jitter: the longest the circuit stays open before the next probe


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def backoff(attempt: int, rng: random.Random) -> timedelta:
    """About a second for the first retry, then doubling, with ±20% jitter, capped at five minutes."""
    base = min(MAX_DELAY, FIRST_DELAY * 2 ** (attempt - 1))
    return timedelta(seconds=min(MAX_DELAY, base * rng.uniform(0.8, 1.2)))


@dataclass(frozen=True)
class Outcome:
    """What one delivery attempt came to."""

    state: str  # delivered | retry | failed | superseded
    error: str | None = None
    status_code: int | None = None
    wait: timedelta | None = None  # for retry: None = the backoff for this attempt
    counts_as_attempt: bool = True
    unreachable: bool = False  # GitHub did not answer, or answered 5xx: opens the circuit


@dataclass
class Circuit:
    """The circuit breaker of one worker process (kept on its GitHubApp; each process has its own).

    Closed: rows are delivered as claimed. After a failure that says GitHub is unreachable (connection error,
    timeout, 5xx) it opens: the rest of the batch is released untouched (no attempt counted, due time kept) and
    nothing is claimed until `open_until`. Then it is half-open: one row at a time is tried as a probe; the
    first answer that is not an outage closes it, another outage opens it again for twice as long. The open
    period is FIRST_DELAY doubling per consecutive outage, capped at CIRCUIT_MAX_DELAY, times 0.6-0.8: a little
    shorter than the backoff of the row that tripped it (0.8-1.2 times the same base), so the probe is due no
    later than that row, and several workers do not probe in step.
    """

    failures: int = 0  # consecutive outages; > 0 means open or half-open
    open_until: datetime | None = None

    def allows(self, now: datetime) -> bool:
        return self.open_until is None or now >= self.open_until

    @property
    def probing(self) -> bool:
        return self.failures > 0

    def observe(self, outcome: Outcome, now: datetime, rng: random.Random) -> None:
        if outcome.state == "superseded":  # GitHub was not asked
            return
        if outcome.unreachable:
            self.failures += 1
            base = min(CIRCUIT_MAX_DELAY, FIRST_DELAY * 2 ** min(self.failures - 1, 30))
            self.open_until = now + timedelta(seconds=base * rng.uniform(0.6, 0.8))
            log.warning(
                "github.circuit.open failures=%s until=%s error=%s",
                self.failures,
                self.open_until.isoformat(timespec="seconds"),
                outcome.error,
            )
        elif self.failures:
            log.info("github.circuit.closed after=%s", self.failures)
            self.failures, self.open_until = 0, None


class Permanent(Exception):
    """GitHub refused for good (404, 422, ...): record the message, do not retry."""


# ---------------------------------------------------------------- claiming


def claim(session: Session, now: datetime, worker: str, limit: int = 20) -> list[int]:
    """Lease up to `limit` due rows, at most one per commit and none of a commit already in flight."""
    other = aliased(OutboxItem)
    in_flight = (
        sa.select(other.id)
        .where(
            other.org_id == OutboxItem.org_id,
            other.repo_full_name == OutboxItem.repo_full_name,
            other.commit_sha == OutboxItem.commit_sha,
            other.id != OutboxItem.id,
            other.lease_until > now,
        )
        .exists()
    )
    query = (
        sa.select(OutboxItem.id, OutboxItem.org_id, OutboxItem.repo_full_name, OutboxItem.commit_sha)
        .where(
            OutboxItem.state == "pending",
            OutboxItem.next_attempt_at <= now,
            sa.or_(OutboxItem.lease_until.is_(None), OutboxItem.lease_until <= now),
            ~in_flight,
        )
        .order_by(OutboxItem.id.desc())
        .limit(limit)
    )
    with write_transaction(session):
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(of=OutboxItem, skip_locked=True)
        ids, seen = [], set()
        for row in session.execute(query):
            commit = (row.org_id, row.repo_full_name, row.commit_sha)
            if commit not in seen:  # newest first: an older pending row of the same commit waits
                seen.add(commit)
                ids.append(row.id)
        if ids:
            session.execute(
                sa.update(OutboxItem).where(OutboxItem.id.in_(ids)).values(lease_until=now + LEASE, claimed_by=worker)
            )
    return sorted(ids)


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
) -> int:
    """Claim due rows and deliver each; return how many were handled (tried, or found superseded).

    The circuit (by default the one of `gh`, i.e. of this process) may stop the batch early: see `Circuit`.
    With `parallel` > 1, after the batch's first row (delivered alone: it warms the installation token and
    would trip the circuit on an outage) the rest go out on that many threads, each with its own session;
    rows of one commit are never in one batch, so this never reorders a commit's states.
    """
    now = now or utcnow()
    rng = rng or random.Random()
    worker = worker or worker_name()
    if circuit is None:
        circuit = gh.circuit = gh.circuit or Circuit()
    handled = 0
    while handled < limit and circuit.allows(now):
        want = 1 if circuit.probing else limit - handled  # half-open: one probe at a time
        ids = claim(session, now, worker, want)
        first, rest = (ids[:1], ids[1:]) if parallel > 1 and len(ids) > 2 else (ids, [])
        for n, item_id in enumerate(first):
            outcome = deliver(session, gh, item_id, now)
            record(session, item_id, outcome, now, rng)
            handled += 1
            circuit.observe(outcome, now, rng)
            if not circuit.allows(now):
                release(session, first[n + 1 :] + rest, worker)
                return handled
        if rest:
            handled += _deliver_in_parallel(session, gh, rest, now, rng, worker, circuit, parallel)
            if not circuit.allows(now):
                return handled
        if len(ids) < want:  # nothing more is due
            break
    return handled


def _deliver_in_parallel(
    session: Session,
    gh: GitHubApp,
    ids: list[int],
    now: datetime,
    rng: random.Random,
    worker: str,
    circuit: Circuit,
    parallel: int,
) -> int:
    """Deliver claimed rows on `parallel` threads; on an outage, rows not yet started are released untried."""
    sessions = sessionmaker(session.get_bind(), expire_on_commit=False)

    def one(item_id: int) -> Outcome:
        with sessions() as own:
            outcome = deliver(own, gh, item_id, now)
            record(own, item_id, outcome, now, rng)
            return outcome

    handled = 0
    with ThreadPoolExecutor(parallel, thread_name_prefix="deliver") as pool:
        futures = {pool.submit(one, item_id): item_id for item_id in ids}
        for future in as_completed(futures):
            if future.cancelled():
                continue
            handled += 1
            circuit.observe(future.result(), now, rng)
            if not circuit.allows(now):
                release(session, [i for f, i in futures.items() if f.cancel()], worker)
    return handled


def release(session: Session, ids: list[int], worker: str) -> None:
    """Give claimed rows back untried (the circuit opened): no attempt counted, their due time unchanged."""
    if ids:
        with write_transaction(session):
            session.execute(
                sa.update(OutboxItem)
                .where(OutboxItem.id.in_(ids), OutboxItem.claimed_by == worker)
                .values(lease_until=None, claimed_by=None)
            )


def deliver(session: Session, gh: GitHubApp, item_id: int, now: datetime) -> Outcome:
    """Post the status and check run of one claimed row (each at most once), outside any transaction."""
    item = session.connection().execute(ITEM, {"item": item_id}).one()  # the row with its org's installation
    if item.state != "pending":  # superseded while it waited
        session.commit()
        return Outcome("superseded")
    session.commit()  # end the read transaction before talking to GitHub
    owner, repo = item.repo_full_name.split("/", 1)
    org = OrgIds(item.org_id)
    try:
        installation_id = item.installation_id or _find_installation(session, gh, org, owner, repo)
        if not item.status_posted:
            _call(
                gh,
                installation_id,
                lambda c: c.rest.repos.create_commit_status(owner, repo, item.commit_sha, data=item.commit_status),
            )
            _mark(session, MARK_STATUS, item_id)
        if not item.check_posted:
            _post_check_run(session, gh, installation_id, org, item, owner, repo, now)  # marks check_posted
    except (Permanent, RequestError) as exc:
        return classify(exc)
    return Outcome("delivered")


def classify(exc: Exception) -> Outcome:
    """Map a failed GitHub call onto retry-or-not, the way the worker records it."""
    if isinstance(exc, RequestError) and not isinstance(exc, RequestFailed | RequestTimeout):
        if isinstance(exc.exc, RequestError):  # githubkit wraps failures of the token exchange
            return classify(exc.exc)
        return Outcome("retry", f"could not reach GitHub: {type(exc.exc).__name__}", unreachable=True)
    if isinstance(exc, Permanent):
        return Outcome("failed", str(exc), getattr(exc, "status_code", None))
    if isinstance(exc, RequestTimeout):
        return Outcome("retry", "GitHub did not answer in time", unreachable=True)
    assert isinstance(exc, RequestFailed)
    code = exc.response.status_code
    if isinstance(exc, RateLimitExceeded):
        return Outcome("retry", _message(exc), code, exc.retry_after, counts_as_attempt=False)
    if code == 429:
        return Outcome("retry", _message(exc), code, DEFAULT_RATE_LIMIT_WAIT, counts_as_attempt=False)
    if code >= 500 or code == 401:
        return Outcome("retry", _message(exc), code, unreachable=code >= 500)
    return Outcome("failed", _message(exc), code)


def _call(gh: GitHubApp, installation_id: int, fn: Any) -> Any:
    """One GitHub call as the installation; on 401, mint a new token once and try again."""
    try:
        return fn(gh.installation(installation_id))
    except RequestFailed as exc:
        if exc.response.status_code != 401 or isinstance(exc, RateLimitExceeded):
            raise
        log.info("github.token.reminted installation=%s", installation_id)
        gh.forget_token(installation_id)
        return fn(gh.installation(installation_id))


def _find_installation(session: Session, gh: GitHubApp, org: OrgIds, owner: str, repo: str) -> int:
    """The installation covering the repo, asked of GitHub with the App JWT, and remembered for the org."""
    try:
        found = gh.app.rest.apps.get_repo_installation(owner, repo).parsed_data.id
    except RequestFailed as exc:
        if exc.response.status_code == 404:
            raise _permanent(f"the GitHub App is not installed on {owner}/{repo}", 404) from None
        raise
    with write_transaction(session):
        session.execute(sa.update(Org).where(Org.id == org.id).values(installation_id=found))
    return found


def _post_check_run(
    session: Session,
    gh: GitHubApp,
    installation_id: int,
    org: OrgIds,
    item: Any,  # an ITEM row
    owner: str,
    repo: str,
    now: datetime,
) -> None:
    """Create the commit's check run once, then update it in place; find a run whose create was lost.
    Marks the row's check as posted in the transaction that records the run (one write per step)."""
    record, attempt_marked = _check_record(session, org.id, item.repo_full_name, item.commit_sha, now)
    body = dict(item.check_run)
    if record.github_id is None and not attempt_marked:  # a create was tried before: did it land?
        record_id = _find_lost_run(gh, installation_id, owner, repo, item.commit_sha, body.get("external_id"))
        if record_id is not None:
            _set_run(session, record.id, record_id)
            record.github_id = record_id
    if record.github_id is not None:
        update = {k: v for k, v in body.items() if k != "head_sha"}
        try:
            _call(gh, installation_id, lambda c: c.rest.checks.update(owner, repo, record.github_id, data=update))
        except RequestFailed as exc:
            if exc.response.status_code != 404:  # a run deleted on GitHub's side: make a new one
                raise
        else:
            _mark(session, MARK_CHECK, item.id)
            return
    if not attempt_marked or record.github_id is not None:
        with write_transaction(session):
            session.connection().execute(ATTEMPT_CREATE, {"record": record.id, "at": now})
    created = _call(gh, installation_id, lambda c: c.rest.checks.create(owner, repo, data=body))
    _set_run(session, record.id, created.parsed_data.id, posted_item=item.id)


def _find_lost_run(
    gh: GitHubApp, installation_id: int, owner: str, repo: str, sha: str, external_id: str | None
) -> int | None:
    runs = _call(
        gh,
        installation_id,
        lambda c: c.rest.checks.list_for_ref(owner, repo, sha, check_name=CONTEXT, filter_="latest"),
    ).parsed_data.check_runs
    for run in runs:
        if run.external_id == external_id:
            return run.id
    return None


@dataclass
class RunRecord:
    """The commit's check run record, as the worker needs it."""

    id: int
    github_id: int | None


def _check_record(session: Session, org_id: int, repo: str, sha: str, now: datetime) -> tuple[RunRecord, bool]:
    """The commit's check run record, made if new; when it has no run and no create was ever tried, the create
    about to happen is recorded in the same transaction (True)."""
    with write_transaction(session):
        conn = session.connection()
        row = conn.execute(FIND_RUN, {"org": org_id, "repo": repo, "sha": sha}).one_or_none()
        if row is None:
            new = {"org_id": org_id, "repo_full_name": repo, "commit_sha": sha, "create_attempted_at": now}
            return RunRecord(conn.execute(NEW_RUN, new).scalar_one(), None), True
        marked = row.github_id is None and row.create_attempted_at is None
        if marked:
            conn.execute(ATTEMPT_CREATE, {"record": row.id, "at": now})
    return RunRecord(row.id, row.github_id), marked


# Core statements, built once: the worker's per-row writes skip the ORM's bulk-update bookkeeping.
_outbox, _runs = OutboxItem.__table__, CheckRunRecord.__table__
SET_RUN = (
    sa.update(_runs)
    .where(_runs.c.id == sa.bindparam("record"))
    .values(github_id=sa.bindparam("github_id"), create_attempted_at=None, updated_at=sa.bindparam("at"))
)
FIND_RUN = sa.select(_runs.c.id, _runs.c.github_id, _runs.c.create_attempted_at).where(
    _runs.c.org_id == sa.bindparam("org"),
    _runs.c.repo_full_name == sa.bindparam("repo"),
    _runs.c.commit_sha == sa.bindparam("sha"),
)
NEW_RUN = sa.insert(_runs).returning(_runs.c.id)
ATTEMPT_CREATE = (
    sa.update(_runs).where(_runs.c.id == sa.bindparam("record")).values(create_attempted_at=sa.bindparam("at"))
)
MARK_STATUS = sa.update(_outbox).where(_outbox.c.id == sa.bindparam("item")).values(status_posted=True)
MARK_CHECK = sa.update(_outbox).where(_outbox.c.id == sa.bindparam("item")).values(check_posted=True)


def _set_run(session: Session, record_id: int, github_id: int, posted_item: int | None = None) -> None:
    with write_transaction(session):
        conn = session.connection()
        conn.execute(SET_RUN, {"record": record_id, "github_id": github_id, "at": utcnow()})
        if posted_item is not None:
            conn.execute(MARK_CHECK, {"item": posted_item})


def _mark(session: Session, statement: sa.Update, item_id: int) -> None:
    with write_transaction(session):
        session.connection().execute(statement, {"item": item_id})


def _permanent(message: str, status_code: int | None = None) -> Permanent:
    exc = Permanent(message)
    exc.status_code = status_code  # type: ignore[attr-defined]
    return exc


def _message(exc: RequestFailed) -> str:
    """GitHub's own message for a failed call, e.g. `GitHub answered 422: Validation Failed`."""
    text = ""
    try:
        body = exc.response.json()
        if isinstance(body, dict):
            text = str(body.get("message") or "")
    except ValueError:
        pass
    return f"GitHub answered {exc.response.status_code}" + (f": {text}" if text else "")


# ---------------------------------------------------------------- recording


class OrgIds(NamedTuple):
    id: int


ITEM = (
    sa.select(
        _outbox.c.id,
        _outbox.c.state,
        _outbox.c.org_id,
        _outbox.c.repo_full_name,
        _outbox.c.commit_sha,
        _outbox.c.commit_status,
        _outbox.c.check_run,
        _outbox.c.status_posted,
        _outbox.c.check_posted,
        Org.__table__.c.installation_id,
    )
    .join_from(_outbox, Org.__table__, Org.__table__.c.id == _outbox.c.org_id)
    .where(_outbox.c.id == sa.bindparam("item"))
)
LOCK_ROW = (
    sa.select(_outbox.c.state, _outbox.c.attempts, _outbox.c.commit_sha)
    .where(_outbox.c.id == sa.bindparam("item"))
    .with_for_update()
)
UPDATE_ROW = sa.update(_outbox).where(_outbox.c.id == sa.bindparam("item"))


def record(session: Session, item_id: int, outcome: Outcome, now: datetime, rng: random.Random) -> None:
    """Store the outcome and release the lease: delivered, retry later, or failed for good."""
    with write_transaction(session):
        conn = session.connection()
        row = conn.execute(LOCK_ROW, {"item": item_id}).one()
        values: dict[str, Any] = {"lease_until": None, "claimed_by": None}
        if outcome.state == "delivered":
            values.update(state="delivered", delivered_at=now, last_error=None)
            log.info("github.delivery.delivered outbox=%s commit=%s", item_id, row.commit_sha)
        elif outcome.state != "superseded":
            attempts = row.attempts + (1 if outcome.counts_as_attempt else 0)
            values.update(last_error=outcome.error, last_status_code=outcome.status_code, attempts=attempts)
            if outcome.state == "failed" or attempts >= MAX_ATTEMPTS:
                if row.state == "pending":
                    values["state"] = "failed"
                log.warning(
                    "github.delivery.failed outbox=%s commit=%s error=%s", item_id, row.commit_sha, outcome.error
                )
            else:
                wait = outcome.wait if outcome.wait is not None else backoff(attempts, rng)
                values["next_attempt_at"] = now + wait
                log.info(
                    "github.delivery.retry outbox=%s attempt=%s in=%.0fs error=%s",
                    item_id,
                    attempts,
                    wait.total_seconds(),
                    outcome.error,
                )
        conn.execute(UPDATE_ROW.values(**values), {"item": item_id})
