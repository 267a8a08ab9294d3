"""Thin views of the chain API: the verification verdict and signed checkpoints of an org's chain."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, current_app

from app import db
from app.chain import checkpoints
from app.db import write_transaction
from app.models import utcnow
from app.web import auth, bodies
from app.web.errors import ApiError

log = logging.getLogger(__name__)
bp = Blueprint("audit_api", __name__, url_prefix="/api/v1/orgs/<slug>/audit")


@bp.get("/verify")
def verify_chain(slug: str) -> dict[str, Any]:
    """The same verdict as `flask chain verify SLUG`, for settings:write tokens."""
    org = auth.for_request(slug, "settings:write").org
    return _verdict(slug, org.id, [])


@bp.post("/verify")
def verify_against(slug: str) -> dict[str, Any]:
    """The verdict of `chain verify SLUG --checkpoint FILE`: the body is the checkpoint file's content."""
    org = auth.for_request(slug, "settings:write").org
    try:
        docs = checkpoints.parse(bodies.request_body(bodies.DOCUMENT_BODY_BYTES).decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(422, "validation_failed", f"The body is not a checkpoint file: {exc}.") from None
    return _verdict(slug, org.id, docs)


@bp.get("/checkpoint")
def checkpoint(slug: str) -> dict[str, Any]:
    """A signed statement of the chain's size and head hash now (the previous one when nothing was added)."""
    org = auth.for_request(slug, *auth.SCOPES).org  # any token of the org: a checkpoint reveals no finding
    session = db.session()
    # The key is made here only for the deployment's first checkpoint: once one is signed, a host without the key
    # file is one not given the deployment's, and a key of its own would sign what no other host can check.
    key = _key(create=checkpoints.deployment_key_id(session) is None)
    try:
        with write_transaction(session):
            return checkpoints.issue(session, key, org.id, slug, utcnow())
    except checkpoints.Inconsistent as exc:
        raise ApiError(409, "checkpoint_inconsistent", f"No checkpoint signed: {exc}.") from None
    except checkpoints.KeyChanged as exc:  # fails closed: a host without the deployment's key signs nothing
        log.error("checkpoint.key_changed org=%s: %s", slug, exc)
        raise ApiError(
            409,
            "checkpoint_key_changed",
            f"No checkpoint signed: {exc}. Every host must use the same FREMFORGE_CHECKPOINT_KEY_FILE; after "
            "replacing the key on purpose, sign the first checkpoint with the new one by: flask --app wsgi chain "
            "checkpoint SLUG --new-key.",
        ) from None


def _key(create: bool) -> checkpoints.Key:
    try:
        return checkpoints.key_of(current_app, create)
    except checkpoints.KeyUnavailable as exc:  # the operator's log names the file; an org's token learns no path
        log.error("checkpoint.key_unavailable: %s", exc)
        raise ApiError(
            503, "checkpoint_key_unavailable", "The service's checkpoint key cannot be read; its log says why."
        ) from None


def _verdict(slug: str, org_id: int, docs: list[dict[str, Any]]) -> dict[str, Any]:
    db.session().rollback()  # the verification reads in a snapshot of its own
    key = _key(create=False) if docs else None
    verdict = checkpoints.verify_with(db.database().engine, org_id, slug, key, docs)
    return {"org": slug, **verdict.as_dict(), "message": verdict.describe(slug)}
