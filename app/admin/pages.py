"""Shared by every admin page: the section's URL, the org (and its policy) of a page, page numbers, the app's
public URL, error pages, and the templates' helpers."""

from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask import abort, current_app, render_template, request
from flask.typing import ResponseReturnValue
from gunicorn.http.errors import ParseException
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import (
    BadRequest,
    HTTPException,
    InternalServerError,
    ServiceUnavailable,
    UnprocessableEntity,
    default_exceptions,
)

from app import db, migrate, orgs
from app.admin.blueprint import bp
from app.github.client import web_base_url
from app.models import (
    SEVERITIES,
    Org,
    OrgSettings,
)
from app.web import urls
from app.web.errors import DATABASE_UNAVAILABLE, UNREADABLE_BODY, ApiError, note_database_unavailable

log = logging.getLogger(__name__)


SECTION = "/orgs/<slug>/code-security/image-scanning"


WHOLE_NUMBER = re.compile(r"[0-9]{1,9}")


@bp.errorhandler(HTTPException)
def error_page(err: HTTPException) -> ResponseReturnValue:
    """Errors of the admin pages as a page in their frame, not Werkzeug's bare one (nor the API's JSON)."""
    if err.code is None or err.code < 400:
        return err
    return render_template("admin/error.html", error=err), err.code


@bp.errorhandler(Exception)
def unexpected_error_page(err: Exception) -> ResponseReturnValue:
    """Anything else as a page too; the app's own client errors (a NUL in the URL...) keep their status."""
    if isinstance(err, ApiError):
        return error_page(default_exceptions.get(err.status, BadRequest)(err.message))
    if isinstance(err, ParseException):  # gunicorn found the body's chunked framing broken as the form was read
        log.warning("admin.unreadable_body path=%s error=%s", request.path, type(err).__name__)
        return error_page(BadRequest(UNREADABLE_BODY))
    if isinstance(err, sa_exc.DataError):
        log.warning("admin.unstorable_value path=%s error=%s", request.path, type(err.orig).__name__)
        return error_page(UnprocessableEntity("A value cannot be stored (too long or malformed)."))
    if db.unavailable(err):  # an outage, or a lock held past its budget: 503, try again shortly
        headers = note_database_unavailable(err)
        return render_template("admin/error.html", error=ServiceUnavailable(DATABASE_UNAVAILABLE)), 503, headers
    if isinstance(err, sa_exc.SQLAlchemyError) and migrate.behind(current_app):  # an operator's step, not a bug
        db.discard_session()
        log.error("admin.database_not_migrated path=%s error=%s", request.path, type(err).__name__)
        return render_template("admin/error.html", error=ServiceUnavailable(migrate.NOT_MIGRATED)), 503
    log.exception("admin.unhandled_error path=%s", request.path)
    return error_page(InternalServerError("Something went wrong on our side; it was logged. Try again later."))


def org_of(slug: str) -> Org:
    org = orgs.by_slug(db.session(), slug)
    if org is None:
        abort(404, description=f"There is no organisation {slug}.")
    return org


def org_and_settings(slug: str) -> tuple[Org, OrgSettings]:
    """The org and its policy in one query; the defaults for an org whose settings row is missing."""
    row = (
        db.session()
        .execute(
            sa.select(Org, OrgSettings).outerjoin(OrgSettings, OrgSettings.org_id == Org.id).where(Org.slug == slug)
        )
        .one_or_none()
    )
    if row is None:
        abort(404, description=f"There is no organisation {slug}.")
    org, found = row
    if found is None:
        found = OrgSettings.defaults(org.id)
    return org, found


def page_number(text: str | None) -> int:
    if text and WHOLE_NUMBER.fullmatch(text) and 1 <= int(text) <= 100_000:
        return int(text)
    return 1


@bp.app_template_global("public_url")
def public_url() -> str:
    """This service's address in commands shown to copy: FREMFORGE_PUBLIC_URL, else where `make run` serves; never
    the request's Host header (a command to copy must not carry what a request supplied)."""
    return urls.configured().base_url


@bp.app_template_global("public_url_set")
def public_url_set() -> bool:
    return bool(current_app.config.get("PUBLIC_URL"))


@bp.app_template_global("github_web_url")
def github_web_url() -> str:
    """github.com, or a GitHub Enterprise host's web root (its API is at /api/v3)."""
    return web_base_url(str(current_app.config.get("GITHUB_API_URL") or "https://api.github.com"))


@bp.app_template_filter("utc")
def utc_filter(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    return "—" if value is None else f"{value:{fmt}} UTC"


@bp.context_processor
def _admin_helpers() -> dict[str, Any]:
    return {"severities": SEVERITIES}
