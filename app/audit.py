"""Audit events: who changed what, appended to the org's chain in the caller's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from app import chain
from app.models import AuditEvent, utcnow


def record(
    session: Session, org_id: int, action: str, actor: str, details: dict[str, Any], at: datetime | None = None
) -> AuditEvent:
    """Append one audit event; the caller's write transaction commits it together with the change."""
    head = chain.lock_head(session, org_id)
    at = at or utcnow()
    payload = chain.audit_payload(org_id, chain.timestamp(at), action, actor, details)
    [(seq, payload_hash, chain_hash)], head.seq, head.head_hash = chain.extend(
        head.seq, head.head_hash, "audit", [payload]
    )
    event = AuditEvent(
        org_id=org_id,
        seq=seq,
        payload_hash=payload_hash,
        chain_hash=chain_hash,
        created_at=at,
        action=action,
        actor=actor,
        details=details,
    )
    session.add(event)
    return event
