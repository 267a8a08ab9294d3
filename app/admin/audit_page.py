"""The audit page: the org's audit events, newest first."""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from flask import abort, render_template, request, url_for
from flask.typing import ResponseReturnValue

from app import db
from app.admin.auth import admin_required
from app.admin.blueprint import bp
from app.admin.pages import SECTION, org_of
from app.admin.settings_page import SETTING_LABELS, setting_text
from app.chain.audit import label as audit_label
from app.models import (
    AuditEvent,
)

EVENTS_PER_PAGE = 50
# An exception's event details (app.exceptions), named as its form names them; empty ones (any package...) left out.
EXCEPTION_LABELS = {
    "exception_id": "Exception",
    "advisory_id": "Advisory",
    "package_name": "Package",
    "repo_full_name": "Repository",
    "image": "Image",
    "reason": "Reason",
    "ticket_url": "Ticket",
    "expires_at": "Expires",
    "source": "Source",
}


@bp.get(SECTION + "/audit")
@admin_required
def audit(slug: str) -> ResponseReturnValue:
    """The org's audit events, newest first, paged by chain sequence number."""
    org = org_of(slug)
    before = request.args.get("before", "")
    q = sa.select(AuditEvent).where(AuditEvent.org_id == org.id)
    if before:
        if not re.fullmatch(r"[0-9]{1,18}", before):
            abort(400, description="That page link is not valid; start again from the newest events.")
        q = q.where(AuditEvent.seq < int(before))
    events = list(db.session().scalars(q.order_by(AuditEvent.seq.desc()).limit(EVENTS_PER_PAGE + 1)))
    older = None
    if len(events) > EVENTS_PER_PAGE:
        events = events[:EVENTS_PER_PAGE]
        older = url_for("admin.audit", slug=slug, before=events[-1].seq)
    return render_template(
        "admin/audit.html",
        org=org,
        nav="audit",
        events=[event_view(e) for e in events],
        older=older,
        paged=bool(before),
    )


def event_view(e: AuditEvent) -> dict[str, Any]:
    """An audit event for the page: what happened in words, and its details as (label, old, new) or (label, value)."""
    details = e.details or {}
    rows: list[tuple[str, str, str | None]] = []
    if e.action == "settings.changed":
        for key, diff in (details.get("changes") or {}).items():
            rows.append((SETTING_LABELS.get(key, key), setting_text(diff.get("old")), setting_text(diff.get("new"))))
    elif (e.action or "").startswith("exception."):
        for key, value in details.items():
            if value is not None:
                rows.append((EXCEPTION_LABELS.get(key, key.replace("_", " ")), setting_text(value), None))
    else:
        for key, value in details.items():
            rows.append((key.replace("_", " "), setting_text(value), None))
    return {
        "event": e,
        "label": audit_label(e.action),
        "rows": rows,
        "redacted": e.redacted_at is not None,
    }
