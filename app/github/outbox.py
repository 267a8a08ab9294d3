"""The outbox: the wish to post a commit's aggregate state, stored in the same transaction as its scan."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import sqlalchemy as sa

from app import policy
from app.findings import queries
from app.github import checks
from app.models import SEVERITIES, ChainHead, OrgSettings, OutboxItem, utcnow

NO_APP = "no GitHub App configured"


class OrgLike(Protocol):
    """What the outbox needs of an org: an ORM Org, or a handler's Core row (handlers.common.OrgRef)."""

    @property
    def id(self) -> int: ...

    @property
    def slug(self) -> str: ...


@dataclass(frozen=True)
class Links:
    """Builds the admin page URLs that GitHub links back to."""

    base_url: str

    def section(self, slug: str) -> str:
        return f"{self.base_url}/admin/orgs/{quote(slug)}/code-security/image-scanning"

    def scan(self, slug: str, scan_id: int) -> str:
        return f"{self.section(slug)}/scans/{scan_id}"

    def commit(self, slug: str, repo: str, sha: str) -> str:
        return f"{self.section(slug)}/commits/{sha}?repo={quote(repo, safe='')}"


def enqueue(
    conn: sa.Connection,
    org: OrgLike,
    repo: str,
    sha: str,
    this: policy.ImageResult,
    judged: Sequence[sa.Row[Any]],
    block_action: str,
    links: Links,
    deliver: bool,
) -> dict[str, Any] | None:
    """Aggregate the commit's images, store the wish to post it, supersede older wishes; return the status asked.

    `judged` holds the latest judged scan of each image as stored before this one; this scan replaces its
    image's entry. With `deliver` false (no GitHub App configured) the row says why it will not be posted.
    """
    if block_action == "none":  # post nothing, leave earlier posts as they are
        return None
    others = [r for r in judged if r.image_ref != this.image_ref]
    tops = queries.top_findings_many(conn, [r.id for r in others])
    images = [this] + [
        policy.ImageResult(r.image_ref, r.status, {s: getattr(r, s) for s in SEVERITIES}, r.fixable, r.id, tops[r.id])
        for r in others
    ]
    verdict = policy.commit_verdict(block_action, images)
    assert verdict is not None
    target = links.commit(org.slug, repo, sha)
    status_body = checks.commit_status(verdict, target)
    check_body = checks.check_run(verdict, sha, target, external_id=f"{org.slug}:{repo}@{sha}")
    if deliver:
        conn.execute(SUPERSEDE, {"org": org.id, "repo": repo, "sha": sha})
    conn.execute(
        INSERT,
        {
            "org_id": org.id,
            "scan_run_id": this.scan_run_id,
            "repo_full_name": repo,
            "commit_sha": sha,
            "state": "pending" if deliver else "not_delivered",
            "commit_status": status_body,
            "check_run": check_body,
            "attempts": 0,
            "next_attempt_at": utcnow() if deliver else None,
            "last_error": None if deliver else NO_APP,
            "created_at": utcnow(),
        },
    )
    return {"context": status_body["context"], "state": status_body["state"], "description": status_body["description"]}


def repost(
    conn: sa.Connection, org: OrgLike, repo: str, sha: str, links: Links, deliver: bool
) -> dict[str, Any] | None:
    """Store the wish to post a commit's current aggregate again (check run re-requested); return the status asked.

    Rebuilt from the latest judged scan of each image, each with its stored verdict, under the org's current
    block action: nothing under `none` or a disabled policy, nor for a commit with no judged scan.
    """
    conn.execute(LOCK_HEAD, {"org": org.id})  # the lock ingest holds: a concurrent upload's wish stays the newest
    settings = conn.execute(SETTINGS, {"org": org.id}).one_or_none()
    enabled, block_action = settings if settings is not None else (True, "warn")
    if not enabled or block_action == "none":
        return None
    judged = queries.latest_judged_rows(conn, org.id, repo, sha)
    if not judged:
        return None
    newest = max(judged, key=lambda r: r.id)
    this = policy.ImageResult(
        newest.image_ref,
        newest.status,
        {s: getattr(newest, s) for s in SEVERITIES},
        newest.fixable,
        newest.id,
        queries.top_findings(conn, newest.id),
    )
    return enqueue(conn, org, repo, sha, this, judged, block_action, links, deliver)


def top_of(findings: list[dict[str, Any]], limit: int = 5) -> list[dict[str, Any]]:
    """The most severe findings of an upload, for its summary."""
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    return heapq.nsmallest(limit, findings, key=lambda f: (rank[f["severity"]], f["package"], f["cve_id"]))


_outbox = OutboxItem.__table__
INSERT = sa.insert(_outbox)
LOCK_HEAD = sa.select(ChainHead.seq).where(ChainHead.org_id == sa.bindparam("org")).with_for_update()
SETTINGS = sa.select(OrgSettings.enabled, OrgSettings.block_action).where(OrgSettings.org_id == sa.bindparam("org"))
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
    """How the wish fared, for the API and the admin page: state plus a human sentence."""
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
    return {"state": item.state, "detail": detail, "attempts": item.attempts}
