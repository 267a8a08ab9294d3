"""Liveness (/healthz: the process answers) and readiness (/readyz: the database answers and, with a GitHub App,
an outbox worker posting as that App is alive; without one, none posting as an App: this process lost its settings)."""

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
        apps = worker.apps_alive(conn) if not migrate.is_older(revision) else set()
    except sa.exc.SQLAlchemyError as exc:
        log.warning("health.database_unreachable error=%s", type(exc).__name__)
        db.discard_session()
        return {"status": "unavailable", "database": "unreachable"}, 503, {"Retry-After": "5"}
    if migrate.is_older(revision):  # a newer release's schema (a rolling upgrade migrates first) is served on
        return {
            "status": "unavailable",
            "database": "not migrated: run `flask --app wsgi db upgrade`",
            "revision": revision,
            "expected": migrate.head(),
        }, 503
    mine = str(current_app.config["GITHUB_APP_ID"]) if current_app.config["GITHUB_APP_CONFIGURED"] else None
    problem = worker_problem(mine, apps)
    if problem is not None:
        # Uploads would get 202 while nothing posts their statuses as this process expects: the gate silently open.
        return {"status": "unavailable", "database": "ok", "revision": revision, "worker": problem}, 503
    return {
        "status": "ok",
        "database": "ok",
        "revision": revision,
        "worker": "alive" if apps else "none (no GitHub App configured: nothing to deliver)",
    }, 200


def worker_problem(mine: str | None, apps: set[str | None]) -> str | None:
    """Why this process is not ready, given the GitHub App it is configured with (None: none) and those the outbox
    workers alive post as (`worker.apps_alive`); None when they agree.

    With an App, a worker posting as that App must be alive. Without one, this process stores every upload's state
    as not delivered: a worker alive that posts as an App says this process lost the settings the others have. A
    worker of an earlier release (mid-upgrade) names no App: it is taken for whichever this process has.
    """
    named = {a for a in apps if a is not None and a != worker.UNKNOWN_APP}
    if mine is not None and mine not in apps and worker.UNKNOWN_APP not in apps:
        if not named:
            return "no outbox worker alive in the last minute: start `flask --app wsgi worker`"
        others = ", ".join(sorted(named))
        return (
            f"no outbox worker of GitHub App {mine} alive in the last minute (the workers alive post as App "
            f"{others}): give this process and the workers the same FREMFORGE_GITHUB_APP_ID (the App's id in both, "
            "not its client id in one)"
        )
    if mine is None and named:
        others = ", ".join(sorted(named))
        return (
            f"this process has no GitHub App configured, but the outbox workers post as App {others}: its uploads "
            "would be stored as not delivered; give it the workers' FREMFORGE_GITHUB_APP_ID and "
            "FREMFORGE_GITHUB_PRIVATE_KEY"
        )
    return None
