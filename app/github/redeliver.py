"""What an outage left undelivered, delivered once GitHub answers again: outbox items given up on for a transient
reason, and webhook deliveries that failed while the app was down.

Outbox items (`revive_after_outage`, run by the worker every minute and when its circuit breaker closes): an item that
ran out of tries while GitHub was away (`app.revival.revivable`) is put back to pending once GitHub answers, when it is
still the newest item of its commit, under the commit's lock that an upload storing a newer item takes too; an older
one is marked superseded instead (a newer state of its commit exists, so it is never posted). The worker's claims,
leases and fences (app.github.posting) then deliver it as any other item, so a stale state never lands over a newer
one. Permanent failures stay failed.

Webhook deliveries (`redeliver_failed`; hourly by the worker through `hourly`, and by `flask webhooks redeliver`): the
App's deliveries are listed with its JWT (`GET /app/hook/deliveries`, newest first, paged by `cursor` as GitHub's Link
header says) back to a time: by default where the last successful look began, at most three days back (GitHub keeps
deliveries that long). Each event (`guid`, the `X-GitHub-Delivery` the app dedupes by) that no delivery got a 2xx for
and that the app has not recorded is asked for again (`POST /app/hook/deliveries/{id}/attempts`), oldest first,
bounded per run; not when its newest delivery was itself a redelivery that the app refused (a 4xx other than 408/429:
asking again would not help). Errors are logged and returned, never raised.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import sqlalchemy as sa
from githubkit.exception import RateLimitExceeded, RequestError, RequestFailed
from sqlalchemy.orm import Session

from app import clock, locks, revival
from app.db import rowcount, write_transaction
from app.github import posting
from app.github.client import GitHubApp, github_message
from app.github.handlers.common import upsert_for
from app.models import OutboxItem, RedeliveryLook, WebhookDelivery, utcnow

log = logging.getLogger(__name__)

REVIVE_EVERY = 60.0  # seconds between the worker's looks for outbox items to put back
REVIVE_BATCH = 500  # items put back per look at most; the rest at the next

HOOK = "app"  # the App's webhook: the one row of webhook_redelivery_looks
LOOK_EVERY = timedelta(hours=1)
KEPT = timedelta(days=3)  # GitHub keeps a webhook's deliveries this long
# Deliveries are timed on GitHub's clock and looks on the database's: the next look starts a little before the last.
OVERLAP = timedelta(minutes=5)
PER_PAGE = 100  # GitHub's maximum
MAX_PAGES = 30  # deliveries listed per look at most: PER_PAGE * MAX_PAGES
MAX_ASKS = 100  # redeliveries asked per look at most; a look that had more to ask is not recorded as done


# ---------------------------------------------------------------- outbox items given up on in an outage

_outbox = OutboxItem.__table__
REVIVABLE_ROWS = (
    sa.select(_outbox.c.id, _outbox.c.org_id, _outbox.c.repo_full_name, _outbox.c.commit_sha)
    .where(revival.AWAITING_REVIVAL)
    .order_by(_outbox.c.id)
    .limit(sa.bindparam("limit"))
)
# Given up on in an outage, but its commit has a newer item: this state is never posted.
SUPERSEDE_STALE = sa.update(_outbox).where(revival.REVIVABLE, revival.HAS_NEWER).values(state="superseded")
# Back to pending with a fresh set of tries (404/422 refusals counted so far still count); a lease that keeps its
# commit in flight for a late landing stays (see posting.LATE_LANDING).
REVIVE = (
    sa.update(_outbox)
    .where(_outbox.c.id == sa.bindparam("item"), revival.AWAITING_REVIVAL)
    .values(
        state="pending",
        attempts=0,
        revivals=_outbox.c.revivals + 1,
        next_attempt_at=sa.bindparam("now"),
        last_error=posting.REVIVED,
    )
)


def revive_after_outage(
    session: Session,
    gh: GitHubApp,
    *,
    answered: bool = False,
    now: datetime | None = None,
    circuit: posting.Circuit | None = None,
    rng: random.Random | None = None,
    limit: int = REVIVE_BATCH,
) -> int:
    """Put back to pending the outbox items given up on during an outage that are still the newest of their commit,
    once GitHub answers again; the items put back.

    `answered`: GitHub answered just now (the circuit closed), so it is not asked first; otherwise, when there are such
    items, one cheap call as the App tells (`github_answers`). While the circuit (by default the process's) is open,
    nothing is asked: its probes tell when GitHub is back. `now` pins the database's clock (tests).
    """
    with write_transaction(session):
        stale = rowcount(session.execute(SUPERSEDE_STALE))
    if stale:
        log.info("outbox.superseded_after_outage items=%s", stale)
    rows = session.execute(REVIVABLE_ROWS, {"limit": limit}).all()
    session.commit()
    if not rows:
        return 0
    circuit = circuit if circuit is not None else _circuit_of(gh)
    if not answered:
        if circuit is not None and not circuit.allows(now or utcnow()):
            return 0
        if not github_answers(gh, circuit, now, rng):
            log.info("outbox.revive.waiting items=%s: GitHub does not answer yet", len(rows))
            return 0
    revived = 0
    for row in rows:
        with write_transaction(session):
            conn = session.connection()
            # The lock an upload (or a re-post) takes before it stores a newer item of the commit: while it is held,
            # no newer item appears, so the row is put back only if it is the newest.
            locks.commit_and_policy(conn, row.org_id, row.repo_full_name, row.commit_sha)
            at = now if now is not None else clock.now_of(conn)
            revived += rowcount(conn.execute(REVIVE, {"item": row.id, "now": at}))
    log.info("outbox.revived items=%s of=%s", revived, len(rows))
    return revived


def github_answers(
    gh: GitHubApp,
    circuit: posting.Circuit | None = None,
    now: datetime | None = None,
    rng: random.Random | None = None,
) -> bool:
    """Whether GitHub answers: one call as the App (its webhook's newest delivery); any answer but a 5xx counts.

    The circuit hears of it as of a delivery: an answer closes it, none opens it for longer.
    """
    error: str | None = None
    try:
        posting.as_app(gh, lambda app: app.rest.apps.list_webhook_deliveries(per_page=1))
    except RequestFailed as exc:
        if exc.response.status_code >= 500:
            error = _failure(exc)
    except RequestError as exc:
        error = _failure(exc)
    if circuit is not None:
        outcome = posting.Outcome("retry", error, unreachable=True) if error else posting.Outcome("delivered")
        circuit.observe(outcome, now or utcnow(), rng or random.Random())
    return error is None


def _circuit_of(gh: GitHubApp) -> posting.Circuit | None:
    return gh.circuit if isinstance(gh.circuit, posting.Circuit) else None


# ---------------------------------------------------------------- webhook deliveries that failed


@dataclass(frozen=True)
class Delivery:
    """One delivery of the App's webhook, as GitHub lists it."""

    id: int
    guid: str  # the event's id: X-GitHub-Delivery, the same for every delivery of the event
    event: str
    action: str | None
    status_code: int
    status: str
    redelivery: bool
    delivered_at: datetime  # naive UTC

    @classmethod
    def of(cls, item: Any) -> Delivery:
        at = item.delivered_at
        at = at.astimezone(UTC).replace(tzinfo=None) if at.tzinfo else at
        action = item.action if isinstance(item.action, str) else None
        return cls(item.id, item.guid, item.event, action, item.status_code, item.status, item.redelivery, at)

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def app_was_away(self) -> bool:
        """Whether the failure says the app did not answer or was overwhelmed, rather than refused the payload."""
        return self.status_code < 200 or self.status_code >= 500 or self.status_code in (408, 429)

    def describe(self) -> str:
        what = f"{self.event}.{self.action}" if self.action else self.event
        again = "redelivery " if self.redelivery else ""
        return (
            f"delivery {self.id} ({what}, event {self.guid}): {again}failed {self.status_code} {self.status!r} "
            f"at {self.delivered_at:%Y-%m-%dT%H:%M:%S}Z"
        )


@dataclass
class Asked:
    """A redelivery asked for, and whether GitHub took it (202)."""

    delivery: Delivery
    accepted: bool
    error: str | None = None


@dataclass
class Look:
    """One look at the webhook's deliveries: what it examined and what it asked for."""

    since: datetime
    started: datetime
    seen: int = 0  # deliveries listed since `since`
    asked: list[Asked] = field(default_factory=list)
    complete: bool = False  # everything since `since` examined and every failed one asked for: recorded as done
    error: str | None = None

    def lines(self) -> list[str]:
        """The look in words, a line each (what `webhooks redeliver` prints)."""
        out = [f"looked at {self.seen} webhook deliveries since {self.since:%Y-%m-%dT%H:%M:%S}Z"]
        for asked in self.asked:
            verb = "asked GitHub to redeliver" if asked.accepted else f"GitHub refused ({asked.error}) to redeliver"
            out.append(f"{verb} {asked.delivery.describe()}")
        accepted = sum(1 for a in self.asked if a.accepted)
        if self.error is not None:
            out.append(f"stopped: {self.error}")
        elif not self.asked:
            out.append("nothing to redeliver")
        else:
            out.append(f"asked for {accepted} redeliver{'y' if accepted == 1 else 'ies'}")
        if self.error is None and not self.complete:
            out.append("more remain: the next look goes on from the same time")
        return out


_looks = RedeliveryLook.__table__
LOOKED_AT = sa.select(_looks.c.looked_at).where(_looks.c.hook == HOOK)
RECORD_LOOK = (
    sa.update(_looks)
    .where(_looks.c.hook == HOOK, sa.or_(_looks.c.looked_at.is_(None), _looks.c.looked_at < sa.bindparam("at")))
    .values(looked_at=sa.bindparam("at"))
)
CLAIM_HOURLY = (
    sa.update(_looks)
    .where(_looks.c.hook == HOOK, sa.or_(_looks.c.tried_at.is_(None), _looks.c.tried_at <= sa.bindparam("due")))
    .values(tried_at=sa.bindparam("at"))
)
_HANDLED_CHUNK = 500


def hourly(
    session: Session, gh: GitHubApp, now: datetime | None = None, stopping: Callable[[], bool] = posting.never
) -> Look | None:
    """The worker's look, when the last one began an hour ago or more (on the database's clock, shared by every worker
    process: one of them takes it); None when it is not due. Once `stopping` says so, no more redeliveries are asked
    for (the look then counts as not done)."""
    with write_transaction(session):
        conn = session.connection()
        at = now if now is not None else clock.now_of(conn)
        _ensure_row(conn)
        taken = rowcount(conn.execute(CLAIM_HOURLY, {"at": at, "due": at - LOOK_EVERY}))
    if not taken:
        return None
    return redeliver_failed(session, gh, now=now, stopping=stopping)


def redeliver_failed(
    session: Session,
    gh: GitHubApp,
    since: datetime | None = None,
    now: datetime | None = None,
    stopping: Callable[[], bool] = posting.never,
) -> Look:
    """Ask GitHub to redeliver every webhook delivery since `since` (naive UTC; by default where the last successful
    look began, at most three days back) that failed and whose event the app has not handled. See the module's
    docstring; `now` pins the database's clock (tests)."""
    with write_transaction(session):
        conn = session.connection()
        started = now if now is not None else clock.now_of(conn)
        _ensure_row(conn)
        looked_at = conn.execute(LOOKED_AT).scalar_one_or_none()
    oldest = started - KEPT
    if since is None:
        since = looked_at - OVERLAP if looked_at is not None else oldest
    look = Look(max(since, oldest), started)
    try:
        deliveries, listed_all = _list(gh, look.since)
    except RequestError as exc:
        look.error = f"could not list the webhook's deliveries: {_failure(exc)}"
        log.warning("github.redelivery.list_failed error=%r", look.error)
        return look
    look.seen = len(deliveries)
    wanted = _to_redeliver(session, deliveries)
    for delivery in wanted[:MAX_ASKS]:
        if stopping():
            listed_all = False
            break
        try:
            posting.as_app(gh, lambda app, d=delivery: app.rest.apps.redeliver_webhook_delivery(d.id))
        except RequestFailed as exc:
            if exc.response.status_code >= 500 or exc.response.status_code == 429 or isinstance(exc, RateLimitExceeded):
                look.error = f"could not ask for redeliveries: {_failure(exc)}"
                break
            refused = _failure(exc)  # e.g. too old to redeliver: asking again would not do
            look.asked.append(Asked(delivery, False, refused))
            log.warning("github.redelivery.refused delivery=%s id=%s error=%r", delivery.guid, delivery.id, refused)
            continue
        except RequestError as exc:
            look.error = f"could not ask for redeliveries: {_failure(exc)}"
            break
        look.asked.append(Asked(delivery, True))
        log.info(
            "github.redelivery.asked delivery=%s id=%s event=%s status_code=%s",
            delivery.guid,
            delivery.id,
            delivery.event,
            delivery.status_code,
        )
    if look.error is not None:
        log.warning("github.redelivery.stopped asked=%s error=%r", len(look.asked), look.error)
    look.complete = listed_all and look.error is None and len(wanted) <= MAX_ASKS
    if look.complete:
        with write_transaction(session):
            session.execute(RECORD_LOOK, {"at": started})
    log.info(
        "github.redelivery.looked since=%s seen=%s asked=%s complete=%s",
        look.since.isoformat(timespec="seconds"),
        look.seen,
        len(look.asked),
        look.complete,
    )
    return look


def _ensure_row(conn: sa.Connection) -> None:
    insert = upsert_for(conn.dialect.name, _looks).values(hook=HOOK)
    conn.execute(insert.on_conflict_do_nothing(index_elements=["hook"]))


def _list(gh: GitHubApp, since: datetime) -> tuple[list[Delivery], bool]:
    """The deliveries since `since`, newest first, page by page; and whether the listing reached `since` (False when
    it stopped at MAX_PAGES)."""
    found: list[Delivery] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        response = posting.as_app(
            gh,
            lambda app, c=cursor: app.rest.apps.list_webhook_deliveries(
                per_page=PER_PAGE, **({"cursor": c} if c else {})
            ),
        )
        page = [Delivery.of(item) for item in response.parsed_data]
        found += [d for d in page if d.delivered_at >= since]
        cursor = _next_cursor(response)
        if cursor is None or not page or any(d.delivered_at < since for d in page):
            return found, True
    log.warning("github.redelivery.too_many pages=%s since=%s", MAX_PAGES, since.isoformat(timespec="seconds"))
    return found, False


def _next_cursor(response: Any) -> str | None:
    """The cursor of the next page, from the Link header (None on the last page)."""
    url = response.raw_response.links.get("next", {}).get("url")
    if not url:
        return None
    cursor = parse_qs(urlsplit(url).query).get("cursor")
    return cursor[0] if cursor else None


def _to_redeliver(session: Session, deliveries: list[Delivery]) -> list[Delivery]:
    """The delivery to redeliver of each event that failed and that the app has not handled, oldest event first."""
    by_event: dict[str, list[Delivery]] = {}
    for delivery in deliveries:
        by_event.setdefault(delivery.guid, []).append(delivery)
    handled = _handled(session, by_event)
    wanted = []
    for guid, tries in by_event.items():
        if guid in handled or any(d.ok for d in tries):
            continue
        newest = max(tries, key=lambda d: (d.delivered_at, d.id))
        if newest.redelivery and not newest.app_was_away:
            log.info("github.redelivery.given_up delivery=%s status_code=%s", guid, newest.status_code)
            continue
        wanted.append(newest)
    return sorted(wanted, key=lambda d: (min(t.delivered_at for t in by_event[d.guid]), d.id))


def _handled(session: Session, guids: Iterable[str]) -> set[str]:
    """The events the app recorded (app.github.webhooks dedupes by X-GitHub-Delivery)."""
    ids = list(guids)
    found: set[str] = set()
    for start in range(0, len(ids), _HANDLED_CHUNK):
        chunk = ids[start : start + _HANDLED_CHUNK]
        found.update(
            session.scalars(sa.select(WebhookDelivery.delivery_id).where(WebhookDelivery.delivery_id.in_(chunk)))
        )
    session.commit()
    return found


def _failure(exc: RequestError) -> str:
    """A failed call in words: GitHub's status and message, or why it did not answer."""
    if isinstance(exc, RequestFailed):
        text = github_message(exc)
        return f"GitHub answered {exc.response.status_code}" + (f": {text}" if text else "")
    return posting.classify(exc).error or type(exc).__name__
