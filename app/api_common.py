"""Helpers the API views share: authentication of the request, query validation, links and JSON shapes."""

from __future__ import annotations

from typing import TypeVar

from flask import current_app, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from app import db, tokens
from app.errors import validation_failed
from app.findings.schemas import error_detail
from app.github.outbox import Links
from app.models import ApiToken

MAX_INT32 = 2**31 - 1
M = TypeVar("M", bound=BaseModel)


def authenticate(slug: str, *scopes: str) -> tokens.Principal:
    return tokens.authenticate(db.session(), request.headers.get("Authorization"), slug, scopes)


def request_body() -> bytes:
    """The raw body, never silently cut: Werkzeug stops a body without Content-Length (chunked, which
    gunicorn passes through) at MAX_CONTENT_LENGTH without an error, so a body that reaches it is a 413."""
    data = request.get_data(cache=False)
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if request.content_length is None and limit is not None and len(data) >= limit:
        raise RequestEntityTooLarge()
    return data


def links() -> Links:
    base = current_app.config.get("PUBLIC_URL") or request.host_url.rstrip("/")
    return Links(base)


def validate_query(model: type[M]) -> M:
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise validation_failed([error_detail(e, where="query") for e in exc.errors(include_url=False)]) from None


def actor(token: ApiToken) -> str:
    return f"token:{token.id} ({token.name})"
