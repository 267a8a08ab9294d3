"""Ingest: store one validated upload, its chain entries, its verdict and its outbox wish in one transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.orm import Session

from app import chain, policy
from app.db import write_transaction
from app.findings import queries, store
from app.findings.schemas import Upload
from app.github import outbox
from app.models import GENESIS_HASH, ChainHead, Org, OrgSettings, ScanRun, utcnow

_heads = ChainHead.__table__
_scans = ScanRun.__table__
# Statements built once; the per-request path stays below the ORM.
_settings = OrgSettings.__table__
LOCK_HEAD = (
    sa.select(
        _heads.c.seq,
        _heads.c.head_hash,
        _settings.c.enabled,
        _settings.c.block_action,
        _settings.c.require_signed,
        _settings.c.allowed_issuers,
        _settings.c.retention_days,
    )
    .select_from(_heads.outerjoin(_settings, _settings.c.org_id == _heads.c.org_id))
    .where(_heads.c.org_id == sa.bindparam("org"))
    .with_for_update(of=_heads)
)
MOVE_HEAD = (
    sa.update(_heads)
    .where(_heads.c.org_id == sa.bindparam("org"))
    .values(seq=sa.bindparam("new_seq"), head_hash=sa.bindparam("new_hash"))
)
INSERT_SCAN = (
    sa.insert(_scans)
    .values(
        pr_number=sa.func.coalesce(queries.PR_OF_COMMIT.scalar_subquery(), sa.bindparam("earlier_pr", type_=sa.Integer))
    )
    .returning(_scans.c.id)
)


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


def ingest(session: Session, org: Org, upload: Upload, links: outbox.Links, deliver: bool) -> IngestResult | None:
    """Store the scan with its findings appended to the org's chain, and the wish to post its commit's state.

    The org's chain head is locked first and the policy read with it, so a concurrent settings change
    applies wholly before or after this upload. None when the policy is disabled (nothing stored).
    """
    now = utcnow()
    with write_transaction(session):
        conn = session.connection()
        head, pol = _lock_head(conn, org.id)
        if not pol.enabled:
            return None
        findings = upload.findings + policy.signature_findings(pol, upload.signature, upload.image_ref)
        counts, fixable = policy.count(findings)
        status = policy.scan_status(pol, counts)
        judged = queries.latest_judged_rows(conn, org.id, upload.repo_full_name, upload.commit_sha)
        scan_id = conn.execute(
            INSERT_SCAN,
            {
                "org_id": org.id,
                "image_ref": upload.image_ref,
                "commit_sha": upload.commit_sha,
                "repo_full_name": upload.repo_full_name,
                "signature_status": upload.signature.status,
                "signature_issuer": upload.signature.issuer,
                "signature_subject": upload.signature.subject,
                "pr_org": org.id,
                "pr_repo": upload.repo_full_name,
                "pr_sha": upload.commit_sha,
                "earlier_pr": next((r.pr_number for r in judged if r.pr_number), None),
                "status": status,
                "block_action": pol.block_action,
                "fixable": fixable,
                "accepted": len(upload.findings),
                "duplicates": upload.duplicates,
                "created_at": now,
                **counts,
            },
        ).scalar_one()
        new_seq, new_hash = _append_findings(conn, org.id, scan_id, now, head, findings)
        if new_seq != head[0]:
            conn.execute(MOVE_HEAD, {"org": org.id, "new_seq": new_seq, "new_hash": new_hash})
        this = policy.ImageResult(upload.image_ref, status, counts, fixable, scan_id, outbox.top_of(findings))
        commit_status = outbox.enqueue(
            conn, org, upload.repo_full_name, upload.commit_sha, this, judged, pol.block_action, links, deliver
        )
    return IngestResult(scan_id, len(upload.findings), upload.duplicates, status, counts, fixable, commit_status)


def _lock_head(conn: sa.Connection, org_id: int) -> tuple[tuple[int, str], policy.Policy]:
    """Lock the org's chain head and read its policy in the same statement."""
    row = conn.execute(LOCK_HEAD, {"org": org_id}).one_or_none()
    if row is None:  # an org made by hand, without its chain head
        conn.execute(sa.insert(_heads).values(org_id=org_id, seq=0, head_hash=GENESIS_HASH))
        return (0, GENESIS_HASH), policy.Policy()
    pol = policy.Policy.from_settings(row) if row.enabled is not None else policy.Policy()
    return (row.seq, row.head_hash), pol


def _append_findings(
    conn: sa.Connection, org_id: int, scan_id: int, now: Any, head: tuple[int, str], findings: list[dict[str, Any]]
) -> tuple[int, str]:
    stamp = chain.timestamp(now)
    entries, new_seq, new_hash = chain.extend(
        head[0], head[1], "finding", (chain.finding_payload(org_id, scan_id, stamp, f) for f in findings)
    )
    created = store.sqlite_datetime(now) if conn.dialect.name == "sqlite" else now
    dumps = orjson.dumps
    store.insert(  # rows made as they are written, not all held at once
        conn,
        (
            (
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
            for (seq, ph, ch), f in zip(entries, findings, strict=True)
        ),
    )
    return new_seq, new_hash
