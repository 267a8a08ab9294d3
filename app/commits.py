"""A commit's aggregate as stored: the latest judged scan of each of its images, and their most severe findings.

What ingest, a re-post and the commit page all read to say a commit's state (app.policy.commit_verdict judges it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa

from app.models import FINDING_PAYLOAD_COLUMNS, SEVERITIES, Finding, PullRequestLink, ScanRun

SEVERITY_ORDER = sa.case({s: i for i, s in enumerate(SEVERITIES)}, value=Finding.severity, else_=len(SEVERITIES))
FINDING_COLUMNS = FINDING_PAYLOAD_COLUMNS


_LATEST_JUDGED_IDS = (
    sa.select(sa.func.max(ScanRun.id))
    .where(
        ScanRun.org_id == sa.bindparam("org"),
        ScanRun.repo_full_name == sa.bindparam("repo"),
        ScanRun.commit_sha == sa.bindparam("sha"),
        ScanRun.status != "skipped",
    )
    .group_by(ScanRun.image_ref)
)
LATEST_JUDGED = (
    sa.select(
        ScanRun.id,
        ScanRun.image_ref,
        ScanRun.status,
        ScanRun.fixable,
        ScanRun.pr_number,
        *(getattr(ScanRun, s) for s in SEVERITIES),
    )
    .where(ScanRun.id.in_(_LATEST_JUDGED_IDS))
    .order_by(ScanRun.image_ref)
)


def _top_findings_statement() -> sa.Select[Any]:
    rank = sa.func.row_number().over(
        partition_by=Finding.scan_run_id, order_by=(SEVERITY_ORDER, Finding.package, Finding.cve_id)
    )
    ranked = (
        sa.select(Finding.scan_run_id, *(getattr(Finding, c) for c in FINDING_COLUMNS), rank.label("rank"))
        .where(Finding.scan_run_id.in_(sa.bindparam("ids", expanding=True)), Finding.cve_id.is_not(None))
        .subquery()
    )
    return sa.select(ranked).where(ranked.c.rank <= sa.bindparam("limit")).order_by(ranked.c.rank)


# Built once: building this subquery took about a millisecond a call, more than running it.
TOP_FINDINGS = _top_findings_statement()


def top_findings_many(conn: sa.Connection, scan_ids: Sequence[int], limit: int = 5) -> dict[int, list[dict[str, Any]]]:
    """The most severe findings of each of several scans, in one query."""
    if not scan_ids:
        return {}
    found: dict[int, list[dict[str, Any]]] = {i: [] for i in scan_ids}
    for row in conn.execute(TOP_FINDINGS, {"ids": list(scan_ids), "limit": limit}).mappings():
        found[row["scan_run_id"]].append({c: row[c] for c in FINDING_COLUMNS})
    return found


class JudgedScan(NamedTuple):
    """The latest judged scan of one image of a commit, as the commit's aggregate uses it."""

    id: int
    image_ref: str
    status: str
    fixable: int
    pr_number: int | None
    critical: int
    high: int
    medium: int
    low: int
    unknown: int


def latest_judged_rows(conn: sa.Connection, org_id: int, repo: str, sha: str) -> list[JudgedScan]:
    """The latest scan of each image of a commit that was judged (not skipped under block action none)."""
    return [JudgedScan(*row) for row in conn.execute(LATEST_JUDGED, {"org": org_id, "repo": repo, "sha": sha})]


# The same as one JSON array (PostgreSQL), for a statement that reads it beside other things: `judged_from_json`.
_judged = LATEST_JUDGED.subquery("judged")
LATEST_JUDGED_JSON = sa.select(
    sa.func.coalesce(
        sa.func.json_agg(sa.func.json_build_array(*(_judged.c[f] for f in JudgedScan._fields))),
        sa.literal_column("'[]'::json"),
    )
).scalar_subquery()


def judged_from_json(value: list[list[Any]]) -> list[JudgedScan]:
    return [JudgedScan(*row) for row in value]


# ---------------------------------------------------------------- baselines (spec section 3)

_BY_BRANCH = (
    sa.select(ScanRun.id)
    .where(
        ScanRun.org_id == sa.bindparam("org"),
        ScanRun.repo_full_name == sa.bindparam("repo"),
        ScanRun.image_name == sa.bindparam("name"),
        ScanRun.ref == sa.bindparam("ref"),
    )
    .order_by(ScanRun.id.desc())
    .limit(1)
)
_BY_COMMIT = (
    sa.select(ScanRun.id)
    .where(
        ScanRun.org_id == sa.bindparam("org"),
        ScanRun.repo_full_name == sa.bindparam("repo"),
        ScanRun.commit_sha == sa.bindparam("sha"),
        ScanRun.image_name == sa.bindparam("name"),
    )
    .order_by(ScanRun.id.desc())
    .limit(1)
)
_PR_BASE = (
    sa.select(PullRequestLink.base_ref, PullRequestLink.base_sha)
    .where(
        PullRequestLink.org_id == sa.bindparam("org"),
        PullRequestLink.repo_full_name == sa.bindparam("repo"),
        PullRequestLink.head_sha == sa.bindparam("sha"),
        PullRequestLink.state == "open",
    )
    .order_by(PullRequestLink.number.desc())
    .limit(1)
)
_KEYS = sa.select(Finding.cve_id, Finding.package).where(
    Finding.scan_run_id == sa.bindparam("scan"), Finding.cve_id.is_not(None)
)


def pr_base(conn: sa.Connection, org_id: int, repo: str, sha: str) -> tuple[str | None, str | None] | None:
    """The base (refs/heads/<branch>, commit) of the open pull request whose head is this commit; None: no PR known."""
    row = conn.execute(_PR_BASE, {"org": org_id, "repo": repo, "sha": sha}).one_or_none()
    return None if row is None else (row.base_ref, row.base_sha)


def baseline(
    conn: sa.Connection, org_id: int, repo: str, image_name: str, base_ref: str | None, base_sha: str | None
) -> int | None:
    """The baseline of a scan of `image_name` in `repo`: the newest scan of that image name built from the pull
    request's base branch, else the newest of it at the base commit. None: no baseline, every finding is new."""
    params = {"org": org_id, "repo": repo, "name": image_name}
    if base_ref is not None:
        found = conn.execute(_BY_BRANCH, {**params, "ref": base_ref}).scalar()
        if found is not None:
            return int(found)
    if base_sha is not None:
        found = conn.execute(_BY_COMMIT, {**params, "sha": base_sha}).scalar()
        if found is not None:
            return int(found)
    return None


def baseline_keys(conn: sa.Connection, scan_id: int) -> set[tuple[str, str]]:
    """What a finding is the same as in a baseline by: (advisory id, package). A finding emptied by retention has
    none, so what it was counts as new (fails closed)."""
    return {(row.cve_id, row.package) for row in conn.execute(_KEYS, {"scan": scan_id})}
