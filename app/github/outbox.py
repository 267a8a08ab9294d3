"""The outbox: the outbox item posting a commit's aggregate state, stored in the same transaction as its scan."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa

from app import commits, locks, policy
from app.clock import database_now
from app.github import checks
from app.models import SEVERITIES, OutboxItem, utcnow
from app.web.urls import Urls

NO_APP = "no GitHub App configured"


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
    conn: sa.Connection,
    org: OrgLike,
    repo: str,
    sha: str,
    this: policy.ImageResult,
    judged: Sequence[commits.JudgedScan],
    block_action: str,
    urls: Urls,
    deliver: bool,
    tops: dict[int, list[dict[str, Any]]] | None = None,
    sections: dict[str, str] | None = None,
) -> NewItem | None:
    """Aggregate the commit's images into the outbox item posting them; None under block action `none` (post nothing,
    leave earlier posts as they are).

    `judged` holds the latest judged scan of each image as stored before this one; this scan replaces its
    image's entry. `tops` may hold the other images' top findings already read (by scan id), `sections` images'
    parts of the check run already rendered (by image ref: `checks.image_section`). With `deliver` false (no
    GitHub App configured) the row says why it will not be posted.
    """
    if block_action == "none":
        return None
    others = [r for r in judged if r.image_ref != this.image_ref]
    if tops is None:
        tops = commits.top_findings_many(conn, [r.id for r in others])
    images = [this] + [
        policy.ImageResult(r.image_ref, r.status, {s: getattr(r, s) for s in SEVERITIES}, r.fixable, r.id, tops[r.id])
        for r in others
    ]
    verdict = policy.commit_verdict(block_action, images)
    assert verdict is not None
    target = urls.commit(org.slug, repo, sha)
    row = {
        "org_id": org.id,
        "scan_run_id": this.scan_run_id,
        "repo_full_name": repo,
        "commit_sha": sha,
        "state": "pending" if deliver else "not_delivered",
        "commit_status": checks.commit_status(verdict, target),
        "check_run": checks.check_run(verdict, sha, target, external_id=f"{org.slug}:{repo}@{sha}", sections=sections),
        "attempts": 0,
        "last_error": None if deliver else NO_APP,
        "created_at": utcnow(),
    }
    params = {f"w_{k}": v for k, v in row.items()} | {"org": org.id, "repo": repo, "sha": sha}
    return NewItem(params, deliver)


def enqueue(
    conn: sa.Connection,
    org: OrgLike,
    repo: str,
    sha: str,
    this: policy.ImageResult,
    judged: Sequence[commits.JudgedScan],
    block_action: str,
    urls: Urls,
    deliver: bool,
    tops: dict[int, list[dict[str, Any]]] | None = None,
) -> dict[str, Any] | None:
    """Store the outbox item posting the commit's aggregate (see `item`); return the commit status asked, if any."""
    found = new_item(conn, org, repo, sha, this, judged, block_action, urls, deliver, tops)
    if found is None:
        return None
    for statement in found.statements:
        conn.execute(statement, found.params)
    return found.asked


def repost(conn: sa.Connection, org: OrgLike, repo: str, sha: str, urls: Urls, deliver: bool) -> dict[str, Any] | None:
    """Store an outbox item posting a commit's current aggregate again (check run re-requested); return the status
    asked.

    Rebuilt from the latest judged scan of each image, each with its stored verdict, under the org's current
    block action: nothing under `none` or a disabled policy, nor for a commit with no judged scan.
    """
    # The locks ingest takes first (a concurrent upload's item stays the newest), and the policy with them.
    pol = locks.commit_and_policy(conn, org.id, repo, sha)
    if not pol.enabled or pol.block_action == "none":
        return None
    judged = commits.latest_judged_rows(conn, org.id, repo, sha)
    if not judged:
        return None
    newest = max(judged, key=lambda r: r.id)
    tops = commits.top_findings_many(conn, [r.id for r in judged])  # every image's in one query
    this = policy.ImageResult(
        newest.image_ref,
        newest.status,
        {s: getattr(newest, s) for s in SEVERITIES},
        newest.fixable,
        newest.id,
        tops[newest.id],
    )
    return enqueue(conn, org, repo, sha, this, judged, pol.block_action, urls, deliver, tops)


def top_of(findings: list[dict[str, Any]], limit: int = 5) -> list[dict[str, Any]]:
    """The most severe findings of an upload, for its summary."""
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    return heapq.nsmallest(limit, findings, key=lambda f: (rank[f["severity"]], f["package"], f["cve_id"]))


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
    elif item.state == "pending" and item.last_error and item.status_posted:
        detail = f"posted; {item.last_error}"  # e.g. checking for a late check run
    shown = item.shown_before
    if shown is not None:
        doing = "retrying" if item.state == "pending" else detail
        if item.state == "pending" and item.attempts:
            doing = detail
        detail = f"GitHub shows an older state: {shown}; {doing}"
    return {"state": item.state, "detail": detail, "attempts": item.attempts, "github_shows_older": shown}
