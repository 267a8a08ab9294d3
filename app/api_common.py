"""Helpers the API views share: authentication of the request, query validation, links and JSON shapes."""

from __future__ import annotations

from typing import Any, TypeVar

from flask import current_app, request
from pydantic import BaseModel, ValidationError

from app import db, tokens
from app.errors import validation_failed
from app.findings.schemas import error_detail
from app.github.outbox import Links
from app.models import ApiToken, Org

MAX_INT32 = 2**31 - 1
M = TypeVar("M", bound=BaseModel)


def authenticate(slug: str, *scopes: str) -> tuple[Org, ApiToken]:
    return tokens.authenticate(db.session(), request.headers.get("Authorization"), slug, scopes)


def links() -> Links:
    base = current_app.config.get("PUBLIC_URL") or request.host_url.rstrip("/")
    return Links(base)


def validate_query(model: type[M]) -> M:
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise validation_failed([error_detail(e, where="query") for e in exc.errors(include_url=False)]) from None


def validate_body(model: type[M], doc: Any) -> M:
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise validation_failed([error_detail(e) for e in exc.errors(include_url=False)]) from None


def actor(token: ApiToken) -> str:
    return f"token:{token.id} ({token.name})"
