"""Ingest: store one validated upload, its chain entries, its verdict and its outbox wish in one transaction."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.orm import Session

from app import chain, locks, policy
from app.db import write_transaction
from app.findings import queries, store
from app.findings.schemas import Upload
from app.github import checks, outbox
from app.models import GENESIS_HASH, SEVERITIES, ChainHead, Org, ScanRun, utcnow

_heads = ChainHead.__table__
_scans = ScanRun.__table__
# Statements built once; the per-request path stays below the ORM.
LOCK_HEAD = sa.select(_heads.c.seq, _heads.c.head_hash).where(_heads.c.org_id == sa.bindparam("org")).with_for_update()
_SCAN_COLUMNS = (
    "id",
    "org_id",
    "image_ref",
    "commit_sha",
    "repo_full_name",
    "signature_status",
    "signature_issuer",
    "signature_subject",
    "status",
    "block_action",
    "fixable",
    "accepted",
    "duplicates",
    "created_at",
    *SEVERITIES,
)
INSERT_SCAN = sa.insert(_scans).values(
    {
        **{c: sa.bindparam(f"s_{c}", type_=_scans.c[c].type) for c in _SCAN_COLUMNS},
        "pr_number": sa.func.coalesce(
            queries.PR_OF_COMMIT.scalar_subquery(), sa.bindparam("earlier_pr", type_=sa.Integer)
        ),
    }
)


# The id the next scan gets, read before it is stored: PostgreSQL's sequence; on SQLite, whose one writer at a time
# holds the database, the id SQLite itself would give (one past the largest).
NEXT_SCAN_ID = {
    "postgresql": sa.func.nextval(sa.func.pg_get_serial_sequence("scan_runs", "id")).label("scan"),
    "sqlite": sa.select(sa.func.coalesce(sa.func.max(_scans.c.id), 0) + 1).scalar_subquery().label("scan"),
}


@functools.cache
def _one_statement(dml: tuple[sa.Executable, ...]) -> sa.Select[Any]:
    """LOCK_HEAD with `dml` run first in the same statement, as PostgreSQL's data-modifying WITH queries."""
    return LOCK_HEAD.add_cte(*(statement.cte(f"w{i}") for i, statement in enumerate(dml)))  # type: ignore[attr-defined]


@dataclass(frozen=True)
class IngestResult:
    scan_run_id: int
    accepted: int
    duplicates: int
    status: str
    severity_counts: dict[str, int]
    fixable: int
    commit_status: dict[str, Any] | None

    def body(self, url: str) -> dict[str, Any]:
        return {
            "scan_run_id": self.scan_run_id,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "status": self.status,
            "severity_counts": self.severity_counts,
            "fixable": self.fixable,
            "commit_status": self.commit_status,
            "url": url,
        }


@dataclass(frozen=True)
class Assessment:
    """An upload judged under a policy: what ingest stores and posts, made before any lock is taken."""

    findings: list[dict[str, Any]]  # the upload's, and the synthetic one of an unsigned image where signing counts
    counts: dict[str, int]
    fixable: int
    status: str
    image: policy.ImageResult  # without its scan id, which the database gives
    section: str  # the image's part of the check run (checks.image_section)


def assess(upload: Upload, pol: policy.Policy) -> Assessment:
    findings = upload.findings + policy.signature_findings(pol, upload.signature, upload.image_ref)
    counts, fixable = policy.count(findings)
    status = policy.scan_status(pol, counts)
    image = policy.ImageResult(upload.image_ref, status, counts, fixable, None, outbox.top_of(findings))
    return Assessment(findings, counts, fixable, status, image, checks.image_section(image))


def ingest(
    session: Session,
    org: Org,
    upload: Upload,
    links: outbox.Links,
    deliver: bool,
    expected: policy.Policy | None = None,
) -> IngestResult | None:
    """Store the scan with its findings appended to the org's chain, and the wish to post its commit's state.

    Locks in the order of `app.locks`: the commit (its aggregate) with the policy (shared), and last the org's
    chain head, held only for the statement that writes the findings and moves it. The upload is assessed before
    any lock under the `expected` policy (as the request read it), and again only if the locked policy differs.
    None when the policy is disabled (nothing stored). On PostgreSQL, four statements and the commit.
    """
    now = utcnow()
    repo, sha = upload.repo_full_name, upload.commit_sha
    assessed = assess(upload, expected) if expected is not None and expected.enabled else None
    with write_transaction(session):
        conn = session.connection()
        pol, row = locks.lock_commit_and_read(conn, org.id, repo, sha, NEXT_SCAN_ID[conn.dialect.name])
        if not pol.enabled:
            return None
        if assessed is None or pol != expected:
            assessed = assess(upload, pol)
        scan_id, findings, stamp = row.scan, assessed.findings, chain.timestamp(now)
        hashes = chain.payload_hashes("finding", (chain.finding_payload(org.id, scan_id, stamp, f) for f in findings))
        judged = queries.latest_judged_rows(conn, org.id, repo, sha)
        this = dataclasses.replace(assessed.image, scan_run_id=scan_id)
        sections = {upload.image_ref: assessed.section}
        wish = outbox.wish(conn, org, repo, sha, this, judged, pol.block_action, links, deliver, sections=sections)
        scan = {
            "s_id": scan_id,
            "s_org_id": org.id,
            "s_image_ref": upload.image_ref,
            "s_commit_sha": sha,
            "s_repo_full_name": repo,
            "s_signature_status": upload.signature.status,
            "s_signature_issuer": upload.signature.issuer,
            "s_signature_subject": upload.signature.subject,
            "s_status": assessed.status,
            "s_block_action": pol.block_action,
            "s_fixable": assessed.fixable,
            "s_accepted": len(upload.findings),
            "s_duplicates": upload.duplicates,
            "s_created_at": now,
            **{f"s_{k}": v for k, v in assessed.counts.items()},
            "pr_org": org.id,
            "pr_repo": repo,
            "pr_sha": sha,
            "earlier_pr": next((r.pr_number for r in judged if r.pr_number), None),
        }
        seq, head_hash = _store_scan_and_lock_head(conn, org.id, scan, wish)
        # The org's chain is held from here to the commit: the rows' links, then one statement.
        entries, new_seq, new_hash = chain.link(seq, head_hash, hashes)
        moved = store.Head(org.id, new_seq, new_hash) if new_seq != seq else None
        store.insert(conn, _finding_rows(conn, org.id, scan_id, now, entries, findings), len(findings), moved)
    a = assessed
    asked = wish.asked if wish is not None else None
    return IngestResult(scan_id, len(upload.findings), upload.duplicates, a.status, a.counts, a.fixable, asked)


def _store_scan_and_lock_head(
    conn: sa.Connection, org_id: int, scan: dict[str, Any], wish: outbox.Wish | None
) -> tuple[int, str]:
    """Insert the scan and its wish (superseding older ones), then lock the org's chain head and read it (seq, hash).

    One statement on PostgreSQL; on SQLite, where its one writer holds everything, one after another.
    """
    dml = (INSERT_SCAN, *(wish.statements if wish is not None else ()))
    params = scan | (wish.params if wish is not None else {}) | {"org": org_id}
    if conn.dialect.name == "postgresql":
        row = conn.execute(_one_statement(dml), params).one_or_none()
    else:
        for statement in dml:
            conn.execute(statement, params)
        row = conn.execute(LOCK_HEAD, params).one_or_none()
    if row is None:  # an org made by hand, without its chain head
        conn.execute(sa.insert(_heads).values(org_id=org_id, seq=0, head_hash=GENESIS_HASH))
        return 0, GENESIS_HASH
    return row.seq, row.head_hash


def _finding_rows(
    conn: sa.Connection,
    org_id: int,
    scan_id: int,
    now: Any,
    entries: list[tuple[int, str, str]],
    findings: list[dict[str, Any]],
) -> Iterator[tuple[Any, ...]]:
    """The findings as rows in store.COLUMNS order, made as they are written, not all held at once."""
    created = store.sqlite_datetime(now) if conn.dialect.name == "sqlite" else now
    dumps = orjson.dumps
    for (seq, ph, ch), f in zip(entries, findings, strict=True):
        yield (
            org_id,
            scan_id,
            seq,
            ph,
            ch,
            created,
            f["cve_id"],
            f["severity"],
            f["package"],
            f["installed_version"],
            f["fixed_version"],
            f["target"],
            f["title"],
            f["primary_url"],
            dumps(f["references"]).decode(),
            dumps(f["vendor_ids"]).decode(),
            f["synthetic"],
            f.get("truncated") or None,  # NULL unless cut, as for findings stored before the column
        )
