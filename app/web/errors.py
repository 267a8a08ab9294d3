"""The API's one error type and the handlers that turn every failure into a JSON body."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, current_app, jsonify, request
from gunicorn.http.errors import ParseException
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import BadRequest, HTTPException

from app import db, migrate

log = logging.getLogger(__name__)

# Seconds a client is asked to wait (Retry-After) when the database is unavailable or locked past its budget
# (app.db.DATABASE_BUSY_SECONDS): a restart or failover usually takes a few seconds.
RETRY_AFTER_SECONDS = 5
UNREADABLE_BODY = "The body could not be read: its chunked transfer encoding is malformed."
DATABASE_UNAVAILABLE = "The database is unavailable or busy; try again in a few seconds."


class ApiError(Exception):
    """A client error with an HTTP status, a stable code, a human sentence and optional per-path details."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, "details": self.details}


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="fremforge"'})


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def validation_failed(details: list[dict[str, Any]], message: str | None = None) -> ApiError:
    """422 naming each bad JSON path; the first MAX_DETAILS of them, so a huge bad body gets a small answer."""
    if message is None:
        first = details[0]
        where = f" at {first['path']}" if first.get("path") else ""
        more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
        message = f"The request is not valid{where}: {first['message']}{more}."
    return ApiError(422, "validation_failed", message, details[:MAX_DETAILS])


MAX_DETAILS = 100


# Werkzeug's own errors, renamed into stable codes for API clients.
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


# An error page outside the API and the admin pages (which send their own): nothing to frame, sniff, script or keep.
ERROR_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _wants_json() -> bool:
    return request.path.startswith(("/api/", "/webhooks/", "/healthz", "/readyz"))


def refuse_nul_in_url() -> None:
    """PostgreSQL text cannot hold NUL: refuse it in the path or query before any view runs."""
    if "\x00" in request.path or any("\x00" in k or "\x00" in v for k, v in request.args.items(multi=True)):
        raise ApiError(400, "bad_request", "The URL contains a NUL character (%00).")


_MIGRATED = "fremforge.migrated"  # app.extensions: the database was seen at this app's schema (never asked again)
# What needs no table of this version: liveness, readiness (which names the revision itself), the scrape (its outbox
# gauges left out when they cannot be read), the API's document and the admin pages' static files.
_NEEDS_NO_SCHEMA = frozenset(
    ("health.healthz", "health.readyz", "metrics.scrape", "openapi.openapi_json", "admin.static", "static")
)


def refuse_unmigrated() -> Response | None:
    """A 503 database_not_migrated for every request while the database is at an older schema than this app's (or
    none), rather than answers made from tables that lack what this version writes; asked once a request until the
    database is seen migrated, then never again in this process."""
    if current_app.extensions.get(_MIGRATED) or request.endpoint in _NEEDS_NO_SCHEMA:
        return None
    try:
        older = migrate.older(current_app)
    except sa_exc.SQLAlchemyError:  # unreachable: the request's own statements answer that (503 with Retry-After)
        return None
    if older:
        return database_not_migrated(RuntimeError("the database is at an older revision"))
    current_app.extensions[_MIGRATED] = True
    return None


def init_app(app: Flask) -> None:
    app.before_request(refuse_nul_in_url)
    app.before_request(refuse_unmigrated)

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError):  # type: ignore[no-untyped-def]
        return jsonify(err.body()), err.status, err.headers

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):  # type: ignore[no-untyped-def]
        if not _wants_json():  # Werkzeug's short page, sent as every page of the service is (spec section 6)
            response = err.get_response()
            for name, value in ERROR_PAGE_HEADERS.items():
                response.headers.setdefault(name, value)
            return response
        status = err.code or 500
        if status == 413:
            limit = app.config["MAX_UPLOAD_MB"]
            message = f"The body is over the upload limit of {limit:g} MiB."
        else:
            message = err.description or err.name
        body = {"error": _HTTP_CODES.get(status, err.name.lower().replace(" ", "_")), "message": message, "details": []}
        headers = dict(err.get_headers())
        headers.pop("Content-Type", None)
        return jsonify(body), status, headers

    @app.errorhandler(ParseException)
    def _unreadable_body(err: ParseException):  # type: ignore[no-untyped-def]
        # gunicorn found the body's framing broken while a view read it (a chunk size that is no number...)
        log.warning("request.unreadable_body path=%s error=%s", request.path, type(err).__name__)
        return _http_error(BadRequest(UNREADABLE_BODY))

    @app.errorhandler(sa_exc.DataError)
    def _data_error(err: sa_exc.DataError):  # type: ignore[no-untyped-def]
        # Validation should refuse such values first; this keeps a missed case a 4xx, not a 500.
        log.warning("request.unstorable_value path=%s error=%s", request.path, type(err.orig).__name__)
        body = {
            "error": "validation_failed",
            "message": "A value cannot be stored (too long or malformed).",
            "details": [],
        }
        return jsonify(body), 422

    # Flask picks the handler of the nearest class in the exception's MRO: DataError (a DBAPIError) keeps its own
    # handler above; every other SQLAlchemy error comes here, and only an outage is a 503.
    @app.errorhandler(sa_exc.SQLAlchemyError)
    def _database_error(err: sa_exc.SQLAlchemyError):  # type: ignore[no-untyped-def]
        if db.unavailable(err):
            return database_unavailable(err)
        if migrate.behind(current_app):
            return database_not_migrated(err)
        return _unexpected(err)

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):  # type: ignore[no-untyped-def]
        log.exception("request.unhandled_error path=%s", request.path)
        body = {"error": "internal_error", "message": "An unexpected error happened; it was logged.", "details": []}
        return jsonify(body), 500


def database_unavailable(err: BaseException) -> Response:
    """A 503 with Retry-After for a database that is unavailable or locked past its budget (see db.unavailable):
    JSON for API clients, a short page otherwise (the admin pages render their own, see note_database_unavailable).
    """
    headers = note_database_unavailable(err)
    if _wants_json():
        response = jsonify({"error": "database_unavailable", "message": DATABASE_UNAVAILABLE, "details": []})
    else:
        page = f"<!doctype html><title>Service unavailable</title><h1>Service unavailable</h1><p>{DATABASE_UNAVAILABLE}"
        response = Response(page, mimetype="text/html", headers=ERROR_PAGE_HEADERS)
    response.status_code = 503
    response.headers.update(headers)
    return response


def database_not_migrated(err: BaseException) -> Response:
    """A 503 for a database this version of the app has not migrated (`migrate.behind`): an operator's step, not a
    bug nor an outage; JSON for API clients, a short page otherwise. One line logged, the error's class only."""
    db.discard_session()
    log.error("request.database_not_migrated path=%s error=%s", request.path, type(getattr(err, "orig", err)).__name__)
    if _wants_json():
        response = jsonify({"error": "database_not_migrated", "message": migrate.NOT_MIGRATED, "details": []})
    else:
        page = f"<!doctype html><title>Service unavailable</title><h1>Service unavailable</h1><p>{migrate.NOT_MIGRATED}"
        response = Response(page, mimetype="text/html", headers=ERROR_PAGE_HEADERS)
    response.status_code = 503
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)  # as for an outage: the fix is one command away
    return response


def note_database_unavailable(err: BaseException) -> dict[str, str]:
    """Close this request's session (so the next request starts on a good connection), log one line, and give
    the headers of the 503. The line names the error's class and code, never its message (which may name the
    server) nor the database URL.
    """
    db.discard_session()
    orig = getattr(err, "orig", None) or err
    code = getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None) or "-"
    log.warning("request.database_unavailable path=%s error=%s code=%s", request.path, type(orig).__name__, code)
    return {"Retry-After": str(RETRY_AFTER_SECONDS)}
