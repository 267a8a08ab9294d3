"""Ingest: store one validated upload, its chain entries, its verdict and its outbox wish in one transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app import chain, policy
from app.db import write_transaction
from app.findings.schemas import Upload
from app.github import outbox
from app.models import Finding, Org, OrgSettings, ScanRun, utcnow



@dataclass
class IngestResult:
    scan: ScanRun
    commit_status: dict[str, Any] | None

    def body(self, url: str) -> dict[str, Any]:
        return {
            "scan_run_id": self.scan.id,
            "accepted": self.scan.accepted,
            "duplicates": self.scan.duplicates,
            "status": self.scan.status,
            "severity_counts": self.scan.severity_counts,
            "fixable": self.scan.fixable,
            "commit_status": self.commit_status,
            "url": url,
        }


def ingest(session: Session, org: Org, settings: OrgSettings, upload: Upload, links: outbox.Links) -> IngestResult:
    """Store the scan with its findings appended to the org's chain, and the wish to post its commit's state."""
    pol = policy.Policy.from_settings(settings)
    synthetic = policy.signature_findings(pol, upload.signature, upload.image_ref)
    findings = upload.findings + synthetic
    counts, fixable = policy.count(findings)
    status = policy.scan_status(pol, counts)

    with write_transaction(session):
        head = chain.lock_head(session, org.id)
        now = utcnow()
        scan = ScanRun(
            org_id=org.id, image_ref=upload.image_ref, commit_sha=upload.commit_sha,
            repo_full_name=upload.repo_full_name, signature_status=upload.signature.status,
            signature_issuer=upload.signature.issuer, signature_subject=upload.signature.subject,
            pr_number=_known_pr(session, org.id, upload), status=status, block_action=pol.block_action,
            fixable=fixable, accepted=len(upload.findings), duplicates=upload.duplicates, created_at=now, **counts,
        )
        session.add(scan)
        session.flush()
        _append_findings(session, head, org.id, scan.id, now, findings)
        commit_status = outbox.enqueue(session, org, scan, pol.block_action, findings, links)
    return IngestResult(scan, commit_status)


def _append_findings(session: Session, head: Any, org_id: int, scan_id: int, now: Any,
                     findings: list[dict[str, Any]]) -> None:
    if not findings:
        return
    stamp = chain.timestamp(now)
    entries = chain.extend(head, "finding", (chain.finding_payload(org_id, scan_id, stamp, f) for f in findings))
    rows = [
        {"org_id": org_id, "scan_run_id": scan_id, "seq": seq, "payload_hash": ph, "chain_hash": ch,
         "created_at": now, **f}
        for (seq, ph, ch), f in zip(entries, findings, strict=True)
    ]
    session.execute(sa.insert(Finding.__table__), rows)


def _known_pr(session: Session, org_id: int, upload: Upload) -> int | None:
    """A PR already linked to this commit (by an earlier scan or a pull_request webhook), if any."""
    return session.scalar(
        sa.select(ScanRun.pr_number)
        .where(ScanRun.org_id == org_id, ScanRun.repo_full_name == upload.repo_full_name,
               ScanRun.commit_sha == upload.commit_sha, ScanRun.pr_number.is_not(None))
        .limit(1)
    )
