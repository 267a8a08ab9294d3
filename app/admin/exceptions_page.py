"""The exceptions page (spec sections 6 and 10): the org's accepted risks by state, a form to create one (prefilled
from a finding's row on the scan page), and revoking one."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import abort, current_app, flash, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from werkzeug.datastructures import MultiDict

from app import db, exceptions, fields
from app.admin.auth import admin_required
from app.admin.blueprint import bp
from app.admin.pages import SECTION, WHOLE_NUMBER, org_of
from app.clock import now_of
from app.db import write_transaction
from app.models import Org, PolicyException, utcnow
from app.web import urls

EXCEPTIONS_PER_PAGE = 50
STATES = ("active", "expired", "revoked")
FIELDS = ("advisory_id", "package_name", "repo_full_name", "image", "reason", "ticket_url", "expires_at")
# The form's labels, in its order (the error summary names fields by them).
LABELS = {
    "advisory_id": "Advisory",
    "package_name": "Package",
    "repo_full_name": "Repository",
    "image": "Image",
    "reason": "Reason",
    "ticket_url": "Ticket",
    "expires_at": "Expires",
}
PREFILLED = ("advisory_id", "package_name", "repo_full_name", "image")  # what a finding's row can fill in
PREFILL_LIMIT = 2048  # longer query values are not shown (the fields' own limits are lower)


@bp.get(SECTION + "/exceptions")
@admin_required
def exceptions_list(slug: str) -> ResponseReturnValue:
    """The list of one state (active by default), newest first; the create form, prefilled by the query string
    (a finding's "Accept this risk" link): showing it changes nothing."""
    org = org_of(slug)
    form = dict.fromkeys(FIELDS, "")
    for name in PREFILLED:
        value = (request.args.get(name) or "").strip()
        if len(value) <= PREFILL_LIMIT:
            form[name] = value
    scan_id = _scan_id(request.args.get("scan"))
    return _page(org, form, {}, scan_id)


@bp.post(SECTION + "/exceptions")
@admin_required
def exception_create(slug: str) -> ResponseReturnValue:
    org = org_of(slug)
    form, doc = _form_of(request.form)
    scan_id = _scan_id(request.form.get("scan"))
    try:
        body = exceptions.validate(doc, utcnow(), org.github_login)
    except ValidationError as exc:
        errors: dict[str, str] = {}
        for e in exc.errors(include_url=False):
            field, message = _field_error(e)
            errors.setdefault(field, message)
        errors = {k: errors[k] for k in sorted(errors, key=lambda k: list(LABELS).index(k) if k in LABELS else 99)}
        return _page(org, form, errors, scan_id, 422)
    session = db.session()
    repost = urls.for_request() if current_app.config["GITHUB_APP_CONFIGURED"] else None
    with write_transaction(session):
        [row] = exceptions.create_many(session, org.id, [body], g.admin.actor, "admin", repost)
    flash(f"Created exception {row.id}: {_what(row)}, until {row.expires_at:%Y-%m-%d %H:%M} UTC.", "success")
    if scan_id is not None:  # made from a finding's row: back to that scan, where the finding now shows excepted
        return redirect(url_for("admin.scan", slug=slug, scan_id=scan_id), 303)
    return redirect(url_for("admin.exceptions_list", slug=slug), 303)


@bp.post(SECTION + "/exceptions/<int:exception_id>/revoke")
@admin_required
def exception_revoke(slug: str, exception_id: int) -> ResponseReturnValue:
    org = org_of(slug)
    if exception_id > fields.MAX_INT32:
        abort(404, description=f"There is no exception {exception_id} in {slug}.")
    session = db.session()
    repost = urls.for_request() if current_app.config["GITHUB_APP_CONFIGURED"] else None
    with write_transaction(session):
        found = session.execute(
            sa.select(PolicyException.id, PolicyException.revoked_at).where(
                PolicyException.org_id == org.id, PolicyException.id == exception_id
            )
        ).one_or_none()
        already = found is not None and found.revoked_at is not None
        row = exceptions.revoke(session, org.id, exception_id, g.admin.actor, repost)
    if row is None:
        abort(404, description=f"There is no exception {exception_id} in {slug}.")
    if already:
        flash(f"Exception {row.id} ({_what(row)}) was revoked already.", "info")
    else:
        flash(
            f"Revoked exception {row.id}: {_what(row)} blocks again where the policy says so. "
            "It stays listed under Revoked.",
            "success",
        )
    return redirect(url_for("admin.exceptions_list", slug=slug), 303)


def _what(row: PolicyException) -> str:
    scope = [f"in {row.package_name}"] if row.package_name else []
    scope += [f"in {row.repo_full_name}"] if row.repo_full_name else []
    scope += [f"for {row.image}"] if row.image else []
    return " ".join([row.advisory_id, *scope])


def _scan_id(text: str | None) -> int | None:
    """The scan a form was opened from (a finding's row), to go back to; anything else is ignored."""
    if text and WHOLE_NUMBER.fullmatch(text) and 1 <= int(text) <= fields.MAX_INT32:
        return int(text)
    return None


def _form_of(form: MultiDict[str, str]) -> tuple[dict[str, str], dict[str, Any]]:
    """The form as typed (to show again) and the document to validate: blank optional fields left out."""
    shown = {name: form.get(name, "") for name in FIELDS}
    shown = {name: value if name == "reason" else value.strip() for name, value in shown.items()}
    doc: dict[str, Any] = {k: shown[k] for k in ("advisory_id", "reason", "expires_at")}
    doc |= {k: shown[k] for k in ("package_name", "repo_full_name", "image", "ticket_url") if shown[k]}
    return shown, doc


def _field_error(e: ErrorDetails) -> tuple[str, str]:
    """One pydantic error of ExceptionBody as (form field, a sentence for beside that field)."""
    field = str((e.get("loc") or ("",))[0])
    kind = e.get("type", "")
    detail = str(e.get("msg", "")).removeprefix("Value error, ")
    if field == "advisory_id":
        if kind in ("missing", "string_too_short"):
            return field, "Enter the advisory id, such as CVE-2024-3094 or GHSA-xxxx-xxxx-xxxx."
        if "synthetic" in detail:
            return field, (
                "FREMFORGE- ids are the app's own signing findings: no exception covers them (signing has its "
                "own allowlist in Settings)."
            )
        if "white space" in detail:
            return field, "An advisory id has no spaces: enter one id, such as CVE-2024-3094."
        return field, "An advisory id is at most 1024 characters."
    if field == "package_name":
        return field, "A package name is at most 1024 characters; leave it empty for any package."
    if field == "repo_full_name":
        return field, "Enter a repository as owner/name, as GitHub names them, or leave it empty for any repository."
    if field == "image":
        return field, (
            "Enter an image name such as ghcr.io/acme/api, or a pattern such as ghcr.io/acme/* (without a tag or "
            "digest), or leave it empty for any image."
        )
    if field == "reason":
        if kind == "string_too_long":
            return field, f"A reason is at most {exceptions.REASON_LIMIT:,} characters."
        return field, "Say why this risk is accepted (for whoever reads the check run or the audit log)."
    if field == "ticket_url":
        return field, "Enter an https:// link to the ticket, or leave it empty."
    if field == "expires_at":
        if "future" in detail:
            return field, "Choose a date in the future: an exception that has expired covers nothing."
        if "days ahead" in detail:
            return field, f"Choose a date at most {exceptions.MAX_DAYS} days ahead: accepted risks are reviewed yearly."
        return field, "Enter the date it expires, such as 2027-01-04 (00:00 UTC that day)."
    return field or "advisory_id", detail or "is not valid"


def _before(text: str | None) -> int | None:
    if not text:
        return None
    if not WHOLE_NUMBER.fullmatch(text) or int(text) > fields.MAX_INT32 + 1:
        abort(400, description="That page link is not valid; start again from the newest exceptions.")
    return int(text)


def state_counts(org_id: int, now: datetime) -> dict[str, int]:
    """How many of the org's exceptions are in each state: one query."""
    e = PolicyException
    revoked = e.revoked_at.is_not(None)
    expired = sa.and_(e.revoked_at.is_(None), e.expires_at <= now)
    active = sa.and_(e.revoked_at.is_(None), e.expires_at > now)
    row = (
        db.session()
        .execute(
            sa.select(
                *(sa.func.coalesce(sa.func.sum(sa.case((cond, 1), else_=0)), 0) for cond in (active, expired, revoked))
            ).where(e.org_id == org_id)
        )
        .one()
    )
    return dict(zip(STATES, (int(n) for n in row), strict=True))


def _page(
    org: Org, form: dict[str, str], errors: dict[str, str], scan_id: int | None, status: int = 200
) -> ResponseReturnValue:
    state = request.args.get("state") or "active"
    if state not in STATES:
        state = "active"
    before = _before(request.args.get("before"))
    session = db.session()
    rows, next_id = exceptions.page(session, org.id, state, before, EXCEPTIONS_PER_PAGE)
    now = now_of(session.connection())
    counts = state_counts(org.id, now)
    older = url_for("admin.exceptions_list", slug=org.slug, state=state, before=next_id) if next_id else None
    today = now.date()
    return render_template(
        "admin/exceptions.html",
        org=org,
        nav="exceptions",
        state=state,
        counts=counts,
        rows=[(e, exceptions.state_of(e, now)) for e in rows],
        older=older,
        paged=before is not None,
        form=form,
        errors=errors,
        labels=LABELS,
        scan_id=scan_id,
        prefilled=any(form[name] for name in PREFILLED) and not errors,
        min_date=(today + timedelta(days=1)).isoformat(),
        max_date=(today + timedelta(days=exceptions.MAX_DAYS - 1)).isoformat(),
        max_days=exceptions.MAX_DAYS,
        reason_limit=exceptions.REASON_LIMIT,
    ), status


def ticket_link(url: str | None) -> str | None:
    """A ticket URL fit for an href: https only (what validation lets in; checked again for rows made otherwise)."""
    return url if url and url.lower().startswith("https://") and not any(ch.isspace() for ch in url) else None


@bp.app_template_global("exception_url")
def exception_url(slug: str, exception_id: int, state: str) -> str:
    """Where one exception is on the list: its state's page starting with it."""
    return url_for(
        "admin.exceptions_list", slug=slug, state=state, before=exception_id + 1, _anchor=f"exception-{exception_id}"
    )


@bp.app_template_global("ticket_href")
def _ticket_href(url: str | None) -> str | None:
    return ticket_link(url)
