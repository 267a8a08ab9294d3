"""Liveness (/healthz: the process answers) and readiness (/readyz: the database answers and, with a GitHub App,
an outbox worker is alive)."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, current_app

from app import db, migrate, worker

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)


@bp.get("/healthz")
def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@bp.get("/readyz")
def readyz() -> tuple[dict[str, Any], int, dict[str, str]] | tuple[dict[str, Any], int]:
    try:
        conn = db.session().connection()
        revision = migrate.revision_of(conn)
        worker_alive = worker.alive(conn) if revision == migrate.head() else False
    except sa.exc.SQLAlchemyError as exc:
        log.warning("health.database_unreachable error=%s", type(exc).__name__)
        db.discard_session()
        return {"status": "unavailable", "database": "unreachable"}, 503, {"Retry-After": "5"}
    if revision != migrate.head():
        return {
            "status": "unavailable",
            "database": "not migrated: run `flask --app wsgi db upgrade`",
            "revision": revision,
            "expected": migrate.head(),
        }, 503
    if current_app.config["GITHUB_APP_CONFIGURED"] and not worker_alive:
        # Uploads would get 202 while nothing posts their statuses: the gate would be silently open.
        return {
            "status": "unavailable",
            "database": "ok",
            "revision": revision,
            "worker": "no outbox worker alive in the last minute: start `flask --app wsgi worker`",
        }, 503
    return {
        "status": "ok",
        "database": "ok",
        "revision": revision,
        "worker": "alive" if worker_alive else "none (no GitHub App configured: nothing to deliver)",
    }, 200
