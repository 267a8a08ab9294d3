"""Audit events: who changed what, appended to the org's chain in the caller's transaction."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session

from app import chain
from app.models import AuditEvent, utcnow


class Action(StrEnum):
    """Every kind of audit event the app records (stored as its value), with how the audit page names it."""

    SETTINGS_CHANGED = "settings.changed"
    TOKEN_CREATED = "token.created"
    TOKEN_REVOKED = "token.revoked"
    SIGNED_IN = "admin.signed_in"
    SIGNED_OUT = "admin.signed_out"
    LOGIN_LINK_CREATED = "admin.login_link_created"
    RETENTION_STARTED = "retention.started"  # before a run's first removal: its cut-off, should the run be cut short
    RETENTION_RUN = "retention.run"
    EXCEPTION_CREATED = "exception.created"
    EXCEPTION_REVOKED = "exception.revoked"
    EXCEPTION_EXPIRED = "exception.expired"

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {
    Action.SETTINGS_CHANGED: "Settings changed",
    Action.TOKEN_CREATED: "Token created",
    Action.TOKEN_REVOKED: "Token revoked",
    Action.SIGNED_IN: "Signed in",
    Action.SIGNED_OUT: "Signed out",
    Action.LOGIN_LINK_CREATED: "Login link created",
    Action.RETENTION_STARTED: "Retention run started",
    Action.RETENTION_RUN: "Retention run",
    Action.EXCEPTION_CREATED: "Exception created",
    Action.EXCEPTION_REVOKED: "Exception revoked",
    Action.EXCEPTION_EXPIRED: "Exception expired",
}


def label(action: str | None) -> str:
    """How the audit page names a stored action: its label, the stored text if unknown, or what retention left."""
    if action is None:
        return "(removed by retention)"
    return Action(action).label if action in Action._value2member_map_ else action


def record(
    session: Session, org_id: int, action: Action, actor: str, details: dict[str, Any], at: datetime | None = None
) -> AuditEvent:
    """Append one audit event; the caller's write transaction commits it together with the change."""
    action = Action(action)
    head = chain.lock_head(session, org_id)
    at = at or utcnow()
    payload = chain.audit_payload(org_id, chain.timestamp(at), action.value, actor, details)
    [(seq, payload_hash, chain_hash)], head.seq, head.head_hash = chain.extend(
        head.seq, head.head_hash, "audit", [payload]
    )
    event = AuditEvent(
        org_id=org_id,
        seq=seq,
        payload_hash=payload_hash,
        chain_hash=chain_hash,
        created_at=at,
        action=action.value,
        actor=actor,
        details=details,
    )
    session.add(event)
    return event
