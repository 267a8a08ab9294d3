"""The outbox: the outbox item posting a commit's aggregate state, stored in the same transaction as its scan."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app import commits, locks, policy, reposts, revival
from app.clock import database_now
from app.db import write_transaction
from app.github import checks, posting
from app.models import OutboxItem, utcnow
from app.web.urls import Urls

NO_APP = "no GitHub App configured"
log = logging.getLogger(__name__)


class OrgLike(Protocol):
    """What the outbox needs of an org: an ORM Org, or a handler's Core row (handlers.common.OrgRef)."""

    @property
    def id(self) -> int: ...

    @property
    def slug(self) -> str: ...


@dataclass(frozen=True)
class NewItem:
    """A new outbox item, posting a commit's aggregate: its row's values, and whether older pending items of the commit
    are superseded (when it will be delivered)."""

    params: dict[str, Any]  # the bind parameters of `statements`
    deliver: bool

    @property
    def statements(self) -> tuple[sa.Executable, ...]:
        """What stores it: older pending items of the commit superseded, this one inserted (due now when delivered)."""
        return (SUPERSEDE, INSERT_DUE) if self.deliver else (INSERT,)

    @property
    def asked(self) -> dict[str, Any]:
        """The commit status asked, as the upload's answer shows it."""
        body = self.params["w_commit_status"]
        return {"context": body["context"], "state": body["state"], "description": body["description"]}


def new_item(
    org: OrgLike,
    repo: str,
    sha: str,
    scan_run_id: int,
    images: Sequence[policy.ImageResult],
    pol: policy.Policy,
    urls: Urls,
    deliver: bool,
    sections: dict[str, str] | None = None,
) -> NewItem | None:
    """The outbox item posting a commit's aggregate of `images` (the latest scan of each, judged under `pol`, the
    current policy); None under block action `none` (post nothing, leave earlier posts as they are).

    `scan_run_id` is the scan that asked (the newest). `sections` may hold images' parts of the check run already
    rendered (by image ref: `checks.image_section`). With `deliver` false (no GitHub App configured) the row says
    why it will not be posted.
    """
    verdict = policy.commit_verdict(pol.block_action, images, pol.block_on)
    if verdict is None:
        return None
    target = urls.commit(org.slug, repo, sha)
    row = {
        "org_id": org.id,
        "scan_run_id": scan_run_id,
        "repo_full_name": repo,
        "commit_sha": sha,
        "state": "pending" if deliver else "not_delivered",
        "commit_status": checks.commit_status(verdict, target),
        "check_run": checks.check_run(
            verdict,
            sha,
            target,
            external_id=f"{org.slug}:{repo}@{sha}",
            sections=sections,
            search=functools.partial(urls.advisory_search, org.slug),
        ),
        "attempts": 0,
        "last_error": None if deliver else NO_APP,
        "created_at": utcnow(),
    }
    params = {f"w_{k}": v for k, v in row.items()} | {"org": org.id, "repo": repo, "sha": sha}
    return NewItem(params, deliver)


def repost(conn: sa.Connection, org: OrgLike, repo: str, sha: str, urls: Urls, deliver: bool) -> dict[str, Any] | None:
    """Store an outbox item posting a commit's aggregate as it is now (check run re-requested, the policy changed,
    a pull request's base learnt); return the commit status asked.

    The latest scan of each image judged under the org's current policy (`commits.evaluate`): nothing under `none`
    or a disabled policy, nor for a commit with no scan.
    """
    # The locks ingest takes first (a concurrent upload's item stays the newest), and the policy with them.
    pol = locks.commit_and_policy(conn, org.id, repo, sha)
    if not pol.enabled or pol.block_action == "none":
        return None
    scans = commits.latest_scans(conn, org.id, repo, sha)
    if not scans:
        return None
    images = commits.evaluate(conn, pol, org.id, repo, sha, scans)
    found = new_item(org, repo, sha, max(s.id for s in scans), images, pol, urls, deliver)
    if found is None:
        return None
    for statement in found.statements:
        conn.execute(statement, found.params)
    return found.asked


def repost_asked(
    session: Session, deliver: bool, limit: int = reposts.BATCH, stopping: Callable[[], bool] | None = None
) -> int:
    """Store the outbox item of each commit asked to be posted again (`app.reposts`), a batch at a time; the commits
    handled. Rows left (the worker stopping, an error, half the lease gone by: never past it, where another worker
    could take them too) are leased again once their lease ends."""
    handled = 0
    leased = reposts.claim(session, limit)
    until = time.monotonic() + reposts.LEASE.total_seconds() / 2
    for row in leased:
        if (stopping is not None and stopping()) or (handled and time.monotonic() > until):
            break
        with write_transaction(session):
            conn = session.connection()
            org = _Org(row.org_id, row.slug)
            repost(conn, org, row.repo_full_name, row.commit_sha, Urls(row.base_url), deliver)
            conn.execute(
                reposts.DONE,
                {"org": row.org_id, "repo": row.repo_full_name, "sha": row.commit_sha, "version": row.version},
            )
        handled += 1
    if handled:
        log.info("reposts.stored commits=%s", handled)
    return handled


class _Org(NamedTuple):
    id: int
    slug: str


_outbox = OutboxItem.__table__
_ITEM = {
    c: sa.bindparam(f"w_{c}", type_=_outbox.c[c].type)
    for c in (
        "org_id",
        "scan_run_id",
        "repo_full_name",
        "commit_sha",
        "state",
        "commit_status",
        "check_run",
        "attempts",
        "last_error",
        "created_at",
    )
}
INSERT = sa.insert(_outbox).values({**_ITEM, "next_attempt_at": None})
# Due now on the clock the worker reads.
INSERT_DUE = sa.insert(_outbox).values({**_ITEM, "next_attempt_at": database_now()})
SUPERSEDE = (
    sa.update(_outbox)
    .where(
        _outbox.c.org_id == sa.bindparam("org"),
        _outbox.c.repo_full_name == sa.bindparam("repo"),
        _outbox.c.commit_sha == sa.bindparam("sha"),
        _outbox.c.state == "pending",
    )
    .values(state="superseded")
)


def delivery_state(item: OutboxItem | None) -> dict[str, Any] | None:
    """How the outbox item fared, for the API and the admin page: state plus a human sentence."""
    if item is None:
        return None
    detail = {
        "pending": "waiting to be delivered",
        "delivered": f"delivered {item.delivered_at:%Y-%m-%d %H:%M} UTC" if item.delivered_at else "delivered",
        "superseded": "superseded by a newer scan of the same commit",
        "not_delivered": f"not delivered: {item.last_error or NO_APP}",
        "failed": f"failed: {item.last_error}",
    }.get(item.state, item.state)
    if item.state == "pending" and item.attempts:
        detail = f"retrying: {item.last_error}"
    elif item.state == "pending" and item.last_error == posting.REVIVED:  # put back after an outage, not tried yet
        detail = posting.REVIVED
    elif item.state == "pending" and item.last_error and item.status_posted:
        detail = f"posted; {item.last_error}"  # e.g. checking for a late check run
    elif revival.revivable(item):  # given up on during an outage: the worker puts it back once GitHub answers
        detail = f"retrying after outage ({item.last_error}): delivered once GitHub answers again"
    shown = item.shown_before
    if shown is not None:
        doing = "retrying" if item.state == "pending" else detail
        if item.state == "pending" and item.attempts:
            doing = detail
        detail = f"GitHub shows an older state: {shown}; {doing}"
    return {"state": item.state, "detail": detail, "attempts": item.attempts, "github_shows_older": shown}
