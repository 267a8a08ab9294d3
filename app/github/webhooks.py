"""POST /webhooks/github: verify GitHub's signature over the raw body, then dedupe and dispatch by (event, action).

The order is fixed and fails closed: secret configured? -> signature present? -> HMAC-SHA256 of the raw bytes,
compared in constant time -> only then parse -> delivery seen before? -> dispatch. Handlers only write to the
database (work for GitHub goes to the outbox), so the answer is fast. Neither the secret nor a signature is
ever logged; log keys are stable (`github.webhook.*`) and carry the delivery id.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson
from flask import Blueprint, current_app, request
from githubkit import webhooks
from sqlalchemy.orm import Session

from app import db
from app.api_common import request_body
from app.db import write_transaction
from app.errors import ApiError
from app.github.handlers import router
from app.github.handlers.common import upsert_for
from app.github.router import BadPayload
from app.models import WebhookDelivery

log = logging.getLogger(__name__)
bp = Blueprint("github_webhooks", __name__, url_prefix="/webhooks")

SIGNATURE = re.compile(r"sha256=[0-9a-f]{64}")  # SHA-256 only: githubkit's verify would take sha1= as well
DELIVERY_ID = re.compile(r"[0-9A-Za-z._:-]{1,100}")  # GitHub sends a UUID
EVENT = re.compile(r"[a-z_]{1,50}")
_deliveries = WebhookDelivery.__table__
# INSERT ... ON CONFLICT DO NOTHING RETURNING, built once per dialect (the values come with each execution).
_CLAIM = {
    dialect: upsert_for(dialect, _deliveries)
    .on_conflict_do_nothing(index_elements=["delivery_id"])
    .returning(_deliveries.c.delivery_id)
    for dialect in ("postgresql", "sqlite")
}


@bp.post("/github")
def receive() -> tuple[dict[str, Any], int]:
    delivery = request.headers.get("X-GitHub-Delivery", "")
    shown = delivery[:100]  # unverified input: logged with %r, so it cannot forge log lines
    secret = current_app.config.get("GITHUB_WEBHOOK_SECRET")
    if not secret:
        log.error("github.webhook.no_secret delivery=%r", shown)
        raise ApiError(
            503, "webhooks_not_configured", "Webhooks are refused: FREMFORGE_GITHUB_WEBHOOK_SECRET is not set."
        )
    signature = request.headers.get("X-Hub-Signature-256")
    if not signature:
        log.warning("github.webhook.missing_signature delivery=%r", shown)
        raise ApiError(401, "missing_signature", "The X-Hub-Signature-256 header is missing.")
    body = request_body()
    if not SIGNATURE.fullmatch(signature) or not webhooks.verify(str(secret), body, signature):
        log.warning("github.webhook.bad_signature delivery=%r", shown)
        raise ApiError(401, "bad_signature", "The X-Hub-Signature-256 signature does not match the body.")

    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict):
        log.warning("github.webhook.not_json delivery=%r", shown)
        raise ApiError(400, "bad_request", "The body is not a JSON object.")
    event = request.headers.get("X-GitHub-Event", "")
    if not DELIVERY_ID.fullmatch(delivery) or not EVENT.fullmatch(event):
        log.warning("github.webhook.bad_headers delivery=%r event=%r", shown, event[:50])
        raise ApiError(400, "bad_request", "X-GitHub-Delivery and X-GitHub-Event must name the delivery and event.")
    action = payload.get("action") if isinstance(payload.get("action"), str) else None

    handler = router.handler_for(event, action)
    session = db.session()
    try:
        with write_transaction(session):
            # Recorded in the handler's transaction: a handler that fails leaves the delivery unseen.
            if not _claim(session, delivery, event, action):
                log.info("github.webhook.duplicate delivery=%s event=%s action=%s", delivery, event, action)
                return {"status": "duplicate"}, 200
            outcome = handler(session, payload) if handler is not None else "ignored"
    except BadPayload as exc:
        log.warning("github.webhook.bad_payload delivery=%s event=%s action=%s: %s", delivery, event, action, exc)
        raise ApiError(400, "bad_payload", f"The {event} payload cannot be handled: {exc}.") from None
    log.info("github.webhook.%s delivery=%s event=%s action=%s", outcome or "handled", delivery, event, action)
    if outcome is None:
        return {"status": "ok"}, 200
    return {"status": outcome}, 202


def _claim(session: Session, delivery: str, event: str, action: str | None) -> bool:
    """Record the delivery; False when it was recorded before (on PostgreSQL a concurrent twin waits for ours)."""
    conn = session.connection()
    result = conn.execute(
        _CLAIM[conn.dialect.name], {"delivery_id": delivery, "event": event, "action": action[:50] if action else None}
    )
    return result.first() is not None
