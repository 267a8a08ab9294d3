"""The outbox: the wish to post a commit's aggregate state, stored in the same transaction as its scan."""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.orm import Session

from app import policy
from app.findings import queries
from app.github import checks
from app.models import SEVERITIES, Org, OutboxItem, ScanRun, utcnow

NO_APP = "no GitHub App configured"


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


def enqueue(session: Session, org: Org, scan: ScanRun, block_action: str, findings: list[dict[str, Any]],
            links: Links) -> dict[str, Any] | None:
    """Aggregate the commit's images, store the wish to post it, supersede older wishes; return the status asked."""
    images = []
    for s in queries.latest_judged_per_image(session, org.id, scan.repo_full_name, scan.commit_sha):
        top = _top_in_memory(findings) if s.id == scan.id else queries.top_findings(session, s.id)
        images.append(policy.ImageResult(s.image_ref, s.status, s.severity_counts, s.fixable, s.id, top))
    verdict = policy.commit_verdict(block_action, images)
    if verdict is None:  # block action none: post nothing, leave earlier posts as they are
        return None
    target = links.commit(org.slug, scan.repo_full_name, scan.commit_sha)
    status_body = checks.commit_status(verdict, target)
    check_body = checks.check_run(verdict, scan.commit_sha, target,
                                  external_id=f"{org.slug}:{scan.repo_full_name}@{scan.commit_sha}")
    session.execute(
        sa.update(OutboxItem)
        .where(OutboxItem.org_id == org.id, OutboxItem.repo_full_name == scan.repo_full_name,
               OutboxItem.commit_sha == scan.commit_sha, OutboxItem.state == "pending")
        .values(state="superseded")
    )
    configured = current_app.config["GITHUB_APP_CONFIGURED"]
    session.add(OutboxItem(
        org_id=org.id, scan_run_id=scan.id, repo_full_name=scan.repo_full_name, commit_sha=scan.commit_sha,
        state="pending" if configured else "not_delivered", commit_status=status_body, check_run=check_body,
        next_attempt_at=utcnow() if configured else None, last_error=None if configured else NO_APP,
    ))
    return {"context": status_body["context"], "state": status_body["state"],
            "description": status_body["description"]}


def _top_in_memory(findings: list[dict[str, Any]], limit: int = 5) -> list[dict[str, Any]]:
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    return heapq.nsmallest(limit, findings, key=lambda f: (rank[f["severity"]], f["package"], f["cve_id"]))


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
