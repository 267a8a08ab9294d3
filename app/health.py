"""Liveness (/healthz: the process answers) and readiness (/readyz: the database answers)."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from flask import Blueprint

from app import db, migrate

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)


@bp.get("/healthz")
def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@bp.get("/readyz")
def readyz() -> tuple[dict[str, Any], int]:
    try:
        revision = migrate.revision_of(db.session().connection())
    except sa.exc.SQLAlchemyError as exc:
        log.warning("health.database_unreachable error=%s", type(exc).__name__)
        return {"status": "unavailable", "database": "unreachable"}, 503
    if revision != migrate.head():
        return {
            "status": "unavailable",
            "database": "not migrated: run `flask --app wsgi db upgrade`",
            "revision": revision,
            "expected": migrate.head(),
        }, 503
    return {"status": "ok", "database": "ok", "revision": revision}, 200
