"""Thin views of the settings API: read and change the org's policy."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app

from app import db, orgs
from app.db import write_transaction
from app.policy import settings as policy_settings
from app.web import auth, bodies, urls
from app.web.errors import validation_failed

bp = Blueprint("settings_api", __name__, url_prefix="/api/v1/orgs/<slug>/image-scans/settings")


@bp.get("")
def show(slug: str) -> dict[str, Any]:
    return policy_settings.as_dict(auth.for_request(slug, "findings:read", "settings:write").settings)


@bp.put("")
def change(slug: str) -> dict[str, Any]:
    org, token, _ = auth.for_request(slug, "settings:write")
    doc = bodies.read_json(bodies.SMALL_BODY_BYTES)
    try:
        changes = policy_settings.parse_change(doc)
    except policy_settings.ValidationError as exc:
        raise validation_failed([bodies.error_detail(e) for e in exc.errors(include_url=False)]) from None
    session = db.session()
    with write_transaction(session):
        settings = orgs.settings_for_update(session, org.id)
        repost = urls.for_request() if current_app.config["GITHUB_APP_CONFIGURED"] else None
        policy_settings.apply(session, settings, changes, auth.actor(token), repost)
    return policy_settings.as_dict(settings)
