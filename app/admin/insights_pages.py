"""The insights pages of Admin → Code security → Image scanning: the advisory search, the images now (each image's
latest scan) and one image with its trend. Thin views over app.insights; a fixed number of queries per page."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import abort, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from markupsafe import Markup

from app import db, fields
from app.admin.auth import admin_required
from app.admin.blueprint import bp
from app.admin.pages import SECTION, org_of
from app.insights import advisories, chart, images, trend
from app.models import Org, utcnow
from app.web import cursors

IMAGES_PER_PAGE = 50
HITS_PER_PAGE = 50  # the cap on one page of a search: a prefix such as CVE-2024-* pages on from there


@dataclass(frozen=True)
class Trend:
    """The trend as a page shows it: the days (the table's rows) and the chart drawn from the same days."""

    days: list[trend.Day]
    svg: Markup
    element_id: str
    caption: str


def trend_of(session: Any, org: Org, image: images.ImageNow | None = None) -> Trend:
    """The last trend.DAYS days of the org's images (or of one image), for the partial admin/_trend.html: one query."""
    key = (image.repo_full_name, image.image_name) if image is not None else None
    days = trend.trend(session, org.id, utcnow().date(), key)
    if image is None:
        subject, element_id = f"every image of {org.slug}", "trend-org"
    else:
        subject, element_id = f"{image.image_name} in {image.repo_full_name}", "trend-image"
    caption = f"Findings by severity per day in the latest scans of {subject}, newest day first"
    return Trend(days, chart.svg(days, subject, element_id), element_id, caption)


T = TypeVar("T")
BAD_LINK = "That page link is not valid; start again from the first page."


def _cursor(decode: Callable[[str], T], text: str | None) -> tuple[T | None, str | None]:
    """Where a page link says to go on (`decode` reads its cursor), or the error to show beside the list (a link
    this app did not give out)."""
    if not text:
        return None, None
    try:
        return decode(text), None
    except cursors.BadCursor:
        return None, BAD_LINK


@bp.get("/orgs/<slug>/advisories", endpoint="advisories_short")
@admin_required
def advisories_short(slug: str) -> ResponseReturnValue:
    """The short address of the advisory search (…/advisories?q=CVE-2021-44228): to the search, its query kept."""
    # Typed as url_for's **values (Any): mypy would match a dict[str, str] against its keyword-only _external too.
    kept: dict[str, Any] = {k: request.args[k] for k in ("q", "cursor") if k in request.args}
    return redirect(url_for("admin.advisories", slug=slug, **kept))


@bp.get(SECTION + "/advisories", endpoint="advisories")
@admin_required
def advisories_page(slug: str) -> ResponseReturnValue:
    """Every image whose latest scan has an advisory (its id or a vendor id), or an id prefix; keyset paging."""
    org = org_of(slug)
    q = (request.args.get("q") or "").strip()
    errors: dict[str, str] = {}
    query = None
    if q:
        try:
            query = advisories.parse(q)
        except advisories.BadQuery as exc:
            errors["q"] = f"The search {exc}."
    after, bad = _cursor(advisories.decode_cursor, request.args.get("cursor"))
    if bad:
        errors["cursor"] = bad
    hits: list[advisories.Hit] = []
    more = None
    if query is not None and not errors:
        hits, more = advisories.search(db.session(), org.id, query, after, HITS_PER_PAGE)
    older = url_for("admin.advisories", slug=slug, q=q, cursor=advisories.encode_cursor(more)) if more else None
    return render_template(
        "admin/advisories.html",
        org=org,
        nav="advisories",
        q=q,
        query=query if not errors else None,
        errors=errors,
        hits=hits,
        images_hit=len({h.image_id for h in hits}),
        paged=after is not None,
        older=older,
        per_page=HITS_PER_PAGE,
        min_prefix=advisories.MIN_PREFIX,
    ), (400 if errors else 200)


@bp.get(SECTION + "/images", endpoint="images")
@admin_required
def images_page(slug: str) -> ResponseReturnValue:
    """Each image the org builds (per repo and image name) with its latest scan, in the order first seen."""
    org = org_of(slug)
    repo = (request.args.get("repo") or "").strip()
    errors: dict[str, str] = {}
    if repo and not fields.is_repo_full_name(repo):
        errors["repo"] = "Enter a repository as owner/name, as GitHub names them."
    after, bad = _cursor(functools.partial(cursors.decode, images.CURSOR), request.args.get("cursor"))
    if bad:
        errors["cursor"] = bad
    rows: list[images.ImageNow] = []
    more = None
    if not errors:
        rows, more = images.images_now(db.session(), org.id, after, IMAGES_PER_PAGE, repo or None)
    filters: dict[str, Any] = {"repo": repo} if repo else {}
    older = url_for("admin.images", slug=slug, **filters, cursor=cursors.encode(images.CURSOR, more)) if more else None
    return render_template(
        "admin/images.html",
        org=org,
        nav="images",
        rows=rows,
        repo=repo,
        filters=filters,
        errors=errors,
        paged=after is not None,
        older=older,
    ), (400 if errors else 200)


@bp.get(SECTION + "/images/<int:image_id>", endpoint="image")
@admin_required
def image_page(slug: str, image_id: int) -> ResponseReturnValue:
    """One image: its latest scan, its trend, and the way to its scans."""
    org = org_of(slug)
    session = db.session()
    found = images.image(session, org.id, image_id) if image_id <= fields.MAX_INT32 else None
    if found is None:
        abort(404, description=f"There is no image {image_id} in {slug}: the Images page lists every image.")
    return render_template("admin/image.html", org=org, nav="images", image=found, trend=trend_of(session, org, found))
