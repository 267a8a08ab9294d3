"""Thin views of the insights API (issue 17): the org's images as they are now, where an advisory is, and the trend."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from flask import Blueprint
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic_core import PydanticCustomError

from app import db, fields
from app.insights import advisories, images, trend
from app.models import utcnow
from app.policy.exceptions import ActiveException
from app.web import auth, bodies, cursors, urls
from app.web.errors import ApiError, not_found

bp = Blueprint("insights_api", __name__, url_prefix="/api/v1/orgs/<slug>")


def _repo(value: str) -> str:
    """owner/name by GitHub's rules, as app.findings.schemas checks an upload's (not imported: app.findings stores
    the images through this package), else a pattern error naming the rules."""
    if not fields.is_repo_full_name(value):
        raise PydanticCustomError("string_pattern_mismatch", fields.REPO_RULE_TEXT)
    return value


class ImagesQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    repo: Annotated[str, AfterValidator(_repo)] | None = None  # GitHub's naming rules: any other name is a 422
    limit: Annotated[int, Field(ge=1, le=1000)] = 50
    cursor: Annotated[str, StringConstraints(max_length=200)] | None = None


class PageQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    limit: Annotated[int, Field(ge=1, le=1000)] = 50
    cursor: Annotated[str, StringConstraints(max_length=200)] | None = None


@bp.get("/images")
def list_images(slug: str) -> dict[str, Any]:
    """Each image (repo and image name) with its latest scan, in the order first seen."""
    org, _, _ = auth.for_request(slug, "findings:read")
    q = bodies.validate_query(ImagesQuery)
    try:
        after = cursors.decode(images.CURSOR, q.cursor) if q.cursor else None
    except cursors.BadCursor:
        raise cursors.bad_cursor() from None
    rows, next_id = images.images_now(db.session(), org.id, after=after, limit=q.limit, repo=q.repo)
    links = urls.for_request()
    return {
        "items": [image_json(links, org.slug, r) for r in rows],
        "next_cursor": cursors.encode(images.CURSOR, next_id) if next_id is not None else None,
    }


@bp.get("/images/<int:image_id>")
def get_image(slug: str, image_id: int) -> dict[str, Any]:
    org, _, _ = auth.for_request(slug, "findings:read")
    return image_json(urls.for_request(), org.slug, _image(org.id, slug, image_id))


@bp.get("/images/<int:image_id>/trend")
def image_trend(slug: str, image_id: int) -> dict[str, Any]:
    """One image's critical/high/medium/low counts per day over the last 90 days, oldest first."""
    org, _, _ = auth.for_request(slug, "findings:read")
    found = _image(org.id, slug, image_id)
    days = trend.trend(db.session(), org.id, utcnow().date(), image=(found.repo_full_name, found.image_name))
    return trend_json(days)


@bp.get("/trend")
def org_trend(slug: str) -> dict[str, Any]:
    """The org's images' critical/high/medium/low counts per day over the last 90 days, oldest first."""
    org, _, _ = auth.for_request(slug, "findings:read")
    return trend_json(trend.trend(db.session(), org.id, utcnow().date()))


@bp.get("/advisories/<path:advisory_id>/images")
def search_advisory(slug: str, advisory_id: str) -> dict[str, Any]:
    """Every finding of the org's images' latest scans that has the advisory (as its id or a vendor id), newest
    first; `CVE-2024-*` for ids starting so."""
    org, _, _ = auth.for_request(slug, "findings:read")
    try:
        query = advisories.parse(advisory_id)
    except advisories.BadQuery as exc:
        raise bad_advisory_id(str(exc)) from None
    if advisory_id != advisory_id.strip():  # parse forgives it; the path, as documented, does not
        raise bad_advisory_id("has white space around it")
    q = bodies.validate_query(PageQuery)
    try:
        after = advisories.decode_cursor(q.cursor) if q.cursor else None
    except cursors.BadCursor:
        raise cursors.bad_cursor() from None
    hits, next_id = advisories.search(db.session(), org.id, query, after=after, limit=q.limit)
    links = urls.for_request()
    return {
        "advisory_id": query.shown,
        "prefix": query.prefix,
        "items": [hit_json(links, org.slug, h) for h in hits],
        "next_cursor": advisories.encode_cursor(next_id) if next_id is not None else None,
    }


def _image(org_id: int, slug: str, image_id: int) -> images.ImageNow:
    """The org's image `image_id`, or 404 (ids are 32-bit: a larger one names none)."""
    found = images.image(db.session(), org_id, image_id) if image_id <= fields.MAX_INT32 else None
    if found is None:
        raise not_found(f"There is no image {image_id} in {slug!r}.")
    return found


def bad_advisory_id(message: str) -> ApiError:
    """422 for an advisory id (or prefix) the search cannot take; `message` says why."""
    return ApiError(
        422,
        "validation_failed",
        f"The advisory id {message}.",
        [{"path": "advisory_id", "in": "path", "code": "advisory_id", "message": message}],
    )


def _time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def image_json(links: urls.Urls, slug: str, image: images.ImageNow) -> dict[str, Any]:
    s = image.scan
    return {
        "image_id": image.id,
        "repo_full_name": image.repo_full_name,
        "image_name": image.image_name,
        "image_ref": s.image_ref,
        "ref": s.ref,
        "commit_sha": s.commit_sha,
        "pr": s.pr_number,
        "severity_counts": s.severity_counts,
        "fixable": s.fixable,
        "verdict": s.status,
        "scan_run_id": s.id,
        "scanned_at": _time(s.created_at),
        "url": links.scan(slug, s.id),
    }


def exception_json(e: ActiveException) -> dict[str, Any]:
    return {
        "id": e.id,
        "advisory_id": e.advisory_id,
        "package_name": e.package_name,
        "repo_full_name": e.repo_full_name,
        "image": e.image,
        "reason": e.reason,
        "expires_at": _time(e.expires_at),
    }


def hit_json(links: urls.Urls, slug: str, h: advisories.Hit) -> dict[str, Any]:
    return {
        "image_id": h.image_id,
        "repo_full_name": h.repo_full_name,
        "image_name": h.image_name,
        "image_ref": h.image_ref,
        "ref": h.ref,
        "commit_sha": h.commit_sha,
        "pr": h.pr_number,
        "scan_run_id": h.scan_run_id,
        "scanned_at": _time(h.scanned_at),
        "url": links.scan(slug, h.scan_run_id),
        "cve_id": h.cve_id,
        "vendor_ids": h.vendor_ids,
        "matched_as": h.matched_as,
        "package_name": h.package,
        "installed_version": h.installed_version,
        "fixed_version": h.fixed_version,
        "fixable": bool(h.fixed_version),
        "severity": h.severity,
        "excepted": h.exception is not None,
        "exception": exception_json(h.exception) if h.exception is not None else None,
    }


def trend_json(days: list[trend.Day]) -> dict[str, Any]:
    return {
        "days": [
            {"day": d.day.isoformat(), "critical": d.critical, "high": d.high, "medium": d.medium, "low": d.low}
            for d in days
        ]
    }
