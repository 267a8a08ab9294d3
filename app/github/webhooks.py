"""POST /webhooks/github: verify GitHub's signature over the raw body, then dedupe and dispatch by (event, action).

The order is fixed and fails closed: secret configured? -> signature present? -> body within GitHub's 25 MiB cap
(by its Content-Length, before a byte is read) -> HMAC-SHA256 of the raw bytes, compared in constant time -> only
then parse -> delivery seen before? -> dispatch. Handlers only write to the database (work for GitHub goes to the
outbox), so the answer is fast. Neither the secret nor a signature is ever logged; log keys are stable
(`github.webhook.*`) and carry the delivery id. Every delivery is counted, by event and outcome, from its answer
(app.metrics).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson
from flask import Blueprint, current_app, g, request
from githubkit import webhooks
from sqlalchemy.orm import Session

from app import db
from app.db import write_transaction
from app.github.handlers import router
from app.github.handlers.common import upsert_for
from app.github.router import BadPayload, Context
from app.models import WebhookDelivery
from app.web import urls
from app.web.errors import ApiError

log = logging.getLogger(__name__)
bp = Blueprint("github_webhooks", __name__, url_prefix="/webhooks")

SIGNATURE = re.compile(r"sha256=[0-9a-f]{64}")  # SHA-256 only: githubkit's verify would take sha1= as well
DELIVERY_ID = re.compile(r"[0-9A-Za-z._:-]{1,100}")  # GitHub sends a UUID
EVENT = re.compile(r"[a-z_]{1,50}")
# GitHub caps a delivery's payload at 25 MB (and sends none larger): a bigger body is not GitHub's, and is refused
# before it is read or hashed. Independent of FREMFORGE_MAX_UPLOAD_MB; deploy/fremforge-nginx.conf holds the same cap.
MAX_BODY_BYTES = 25 * 1024 * 1024
_READ_SIZE = 64 * 1024
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
    body = _read_body(shown)
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
    g.webhook_event = event  # signed by GitHub: fremforge_webhook_deliveries_total counts it by name (app.metrics)
    action = payload.get("action") if isinstance(payload.get("action"), str) else None
    if action is not None and "\x00" in action:  # stored with the delivery: refused as a handler refuses a field
        log.warning("github.webhook.bad_payload delivery=%s event=%s: action contains a NUL character", delivery, event)
        raise ApiError(400, "bad_payload", f"The {event} payload cannot be handled: action contains a NUL character.")

    handler = router.handler_for(event, action)
    session = db.session()
    try:
        with write_transaction(session):
            # Recorded in the handler's transaction: a handler that fails leaves the delivery unseen.
            if not _claim(session, delivery, event, action):
                log.info("github.webhook.duplicate delivery=%s event=%s action=%s", delivery, event, action)
                return {"status": "duplicate"}, 200
            ctx = Context(urls.for_request(), current_app.config["GITHUB_APP_CONFIGURED"])
            outcome = handler(session, payload, ctx) if handler is not None else "ignored"
    except BadPayload as exc:
        log.warning("github.webhook.bad_payload delivery=%s event=%s action=%s: %s", delivery, event, action, exc)
        raise ApiError(400, "bad_payload", f"The {event} payload cannot be handled: {exc}.") from None
    log.info("github.webhook.%s delivery=%s event=%s action=%s", outcome or "handled", delivery, event, action)
    if outcome is None:
        return {"status": "ok"}, 200
    return {"status": outcome}, 202


def _read_body(shown: str) -> bytes:
    """The raw body, refused with a JSON 413 as soon as it is known to be over MAX_BODY_BYTES: by its Content-Length
    before a byte is read, and a chunked body (no Content-Length) once its bytes pass the cap, so no more than
    the cap and one read are ever held."""
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise _too_large(shown, length)
    # This route's limit, not the upload limit (FREMFORGE_MAX_UPLOAD_MB may be lower), set before the stream is made:
    # one byte past the cap, so that the loop below sees an over-cap body itself (Werkzeug's stream raises on a read
    # at its limit, even at the end of a body of exactly that size).
    request.max_content_length = MAX_BODY_BYTES + 1
    stream = request.stream
    body = bytearray()
    while len(body) <= MAX_BODY_BYTES:
        chunk = stream.read(min(_READ_SIZE, MAX_BODY_BYTES + 1 - len(body)))
        if not chunk:
            return bytes(body)
        body += chunk
    raise _too_large(shown, length)


def _too_large(shown: str, length: int | None) -> ApiError:
    log.warning("github.webhook.too_large delivery=%r content_length=%s", shown, length)
    return ApiError(
        413, "payload_too_large", f"The body is over GitHub's webhook payload cap of {MAX_BODY_BYTES // 2**20} MiB."
    )


def _claim(session: Session, delivery: str, event: str, action: str | None) -> bool:
    """Record the delivery; False when it was recorded before (on PostgreSQL a concurrent twin waits for ours)."""
    conn = session.connection()
    result = conn.execute(
        _CLAIM[conn.dialect.name], {"delivery_id": delivery, "event": event, "action": action[:50] if action else None}
    )
    return result.first() is not None
