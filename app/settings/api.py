"""Thin views of the settings API: read and change the org's policy."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, request

from app import db, orgs
from app.api_common import actor, authenticate, request_body
from app.db import write_transaction
from app.errors import validation_failed
from app.findings.schemas import error_detail, read_json
from app.settings import service

bp = Blueprint("settings_api", __name__, url_prefix="/api/v1/orgs/<slug>/image-scans/settings")


@bp.get("")
def show(slug: str) -> dict[str, Any]:
    return service.as_dict(authenticate(slug, "findings:read", "settings:write").settings)


@bp.put("")
def change(slug: str) -> dict[str, Any]:
    org, token, _ = authenticate(slug, "settings:write")
    doc = read_json(
        request.content_type,
        request.headers.get("Content-Encoding"),
        request_body,
        current_app.config["MAX_UPLOAD_BYTES"],
    )
    try:
        changes = service.parse_change(doc)
    except service.ValidationError as exc:
        raise validation_failed([error_detail(e) for e in exc.errors(include_url=False)]) from None
    session = db.session()
    with write_transaction(session):
        settings = orgs.settings_for_update(session, org.id)
        service.apply(session, settings, changes, actor(token))
    return service.as_dict(settings)
