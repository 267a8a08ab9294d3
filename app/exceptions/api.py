"""Thin views of the exceptions API (spec section 10): list, create, revoke, import."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from flask import Blueprint, current_app, request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from app import db, exceptions
from app.db import write_transaction
from app.exceptions import imports
from app.fields import MAX_INT32
from app.models import utcnow
from app.web import auth, bodies, cursors, urls
from app.web.errors import ApiError, not_found, validation_failed

bp = Blueprint("exceptions_api", __name__, url_prefix="/api/v1/orgs/<slug>/exceptions")


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    state: Literal["active", "expired", "revoked"] | None = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 100
    cursor: Annotated[str, StringConstraints(max_length=200)] | None = None


class ImportQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    format: Literal["openvex", "trivyignore"]
    reason: Annotated[str, StringConstraints(max_length=exceptions.REASON_LIMIT)] | None = None
    expires_at: Annotated[str, StringConstraints(max_length=100)] | None = None


def _repost() -> urls.Urls | None:
    """Where re-posted links point, when something is posted at all (a GitHub App is configured)."""
    return urls.for_request() if current_app.config["GITHUB_APP_CONFIGURED"] else None


@bp.get("")
def index(slug: str) -> dict[str, Any]:
    org, _, _ = auth.for_request(slug, "findings:read")
    q = bodies.validate_query(ListQuery)
    try:
        before = exceptions.decode_cursor(q.cursor) if q.cursor else None
    except cursors.BadCursor:
        raise cursors.bad_cursor() from None
    session = db.session()
    rows, next_id = exceptions.page(session, org.id, q.state, before, q.limit)
    now = utcnow()
    return {
        "items": [exceptions.as_dict(e, now) for e in rows],
        "next_cursor": exceptions.encode_cursor(next_id) if next_id is not None else None,
    }


@bp.post("")
def create(slug: str) -> tuple[dict[str, Any], int]:
    org, token, _ = auth.for_request(slug, "settings:write")
    doc = bodies.read_json(bodies.SMALL_BODY_BYTES)
    try:
        body = exceptions.validate(doc, utcnow(), org.github_login)
    except ValidationError as exc:
        raise validation_failed([bodies.error_detail(e) for e in exc.errors(include_url=False)]) from None
    session = db.session()
    with write_transaction(session):
        [row] = exceptions.create_many(session, org.id, [body], auth.actor(token), "api", _repost())
    return exceptions.as_dict(row, utcnow()), 201


@bp.delete("/<int:exception_id>")
def revoke(slug: str, exception_id: int) -> dict[str, Any]:
    org, token, _ = auth.for_request(slug, "settings:write")
    row = None
    if exception_id <= MAX_INT32:  # ids are 32-bit: a larger one names none (and cannot be bound on PostgreSQL)
        session = db.session()
        with write_transaction(session):
            row = exceptions.revoke(session, org.id, exception_id, auth.actor(token), _repost())
    if row is None:
        raise not_found(f"There is no exception {exception_id} in {slug}.")
    return exceptions.as_dict(row, utcnow())


@bp.post("/import")
def import_(slug: str) -> tuple[dict[str, Any], int]:
    """Import an OpenVEX document's not_affected statements or a .trivyignore file: all or nothing."""
    org, token, _ = auth.for_request(slug, "settings:write")
    q = bodies.validate_query(ImportQuery)
    if q.format == "openvex":
        document: Any = bodies.read_json(bodies.DOCUMENT_BODY_BYTES)
    else:
        document = _text_body()
    now = utcnow()
    try:
        items = imports.parse(q.format, document, reason=q.reason, expires_at=q.expires_at)
    except imports.BadDocument as exc:
        raise validation_failed([{"path": exc.where, "code": "bad_document", "message": exc.message}]) from None
    items, skipped = imports.lapsed(items, now)
    found, details = [], []
    for item in items:
        try:
            found.append(exceptions.validate(item.doc, now, org.github_login))
        except ValidationError as exc:
            details += [bodies.error_detail(e, prefix=item.where) for e in exc.errors(include_url=False)]
    for d in details:  # a reason or expiry the entry does not give, and neither does the query
        field = d["path"].rsplit(".", 1)[-1]
        if d["code"] == "missing" and field in ("reason", "expires_at") and getattr(q, field) is None:
            d["message"] = (
                f"is required: this entry gives none, and neither does the query parameter {field} (the one for "
                "every entry that gives none)"
            )
    if details:  # one statement's several exceptions (one per product) would repeat its faults
        raise validation_failed(list({(d["path"], d["message"]): d for d in details}.values()))
    session = db.session()
    with write_transaction(session):
        rows = exceptions.create_many(session, org.id, found, auth.actor(token), q.format, _repost())
    now = utcnow()
    return {"imported": len(rows), "items": [exceptions.as_dict(e, now) for e in rows], "skipped": skipped}, 201


def _text_body() -> str:
    """A .trivyignore as sent: text/plain (or no type, or octet-stream), UTF-8."""
    mimetype = (request.content_type or "").split(";", 1)[0].strip().lower()
    if mimetype not in ("", "text/plain", "application/octet-stream"):
        raise ApiError(
            415, "unsupported_media_type", f"Send a .trivyignore file as Content-Type: text/plain, not {mimetype}."
        )
    encoding = (request.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding not in ("gzip", "x-gzip", "identity", ""):
        raise ApiError(
            415, "unsupported_media_type", f"Content-Encoding {encoding!r} is not supported; send gzip or none."
        )
    limit = min(bodies.DOCUMENT_BODY_BYTES, int(current_app.config["MAX_UPLOAD_BYTES"]))
    data = bodies.request_body(limit)
    if encoding in ("gzip", "x-gzip"):
        data = bytes(bodies.gunzip(data, limit))
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ApiError(400, "malformed_text", "The .trivyignore file is not UTF-8 text.") from None
