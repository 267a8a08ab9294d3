"""The API tokens page: list, create (the secret shown once), revoke."""

from __future__ import annotations

from typing import Any

from flask import abort, flash, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.datastructures import MultiDict

from app import db, fields, tokens
from app.admin import auth as admin_auth
from app.admin.auth import admin_required
from app.admin.blueprint import bp
from app.admin.pages import SECTION, WHOLE_NUMBER, org_of, public_url
from app.db import write_transaction
from app.models import (
    ApiToken,
    Org,
)
from app.web import auth

MAX_DAYS = 3650  # a token's longest expiry (tokens.create checks it too)


SCOPE_HELP = {
    "findings:write": "upload scan results (what a CI workflow needs)",
    "findings:read": "list scans and read their findings",
    "settings:write": "read and change this policy through the API",
}


@bp.get(SECTION + "/tokens")
@admin_required
def token_list(slug: str) -> ResponseReturnValue:
    return _tokens_page(org_of(slug), {"name": "", "scopes": ["findings:write"], "expires_days": "365"}, {})


@bp.post(SECTION + "/tokens")
@admin_required
def token_create(slug: str) -> ResponseReturnValue:
    org = org_of(slug)
    form, errors = _parse_token_form(request.form)
    if errors:
        return _tokens_page(org, form, errors, 422)
    session = db.session()
    try:
        with write_transaction(session):
            new = tokens.create(
                session,
                org,
                form["scopes"],
                form["name"],
                int(form["expires_days"]) if form["expires_days"] else None,
                actor=g.admin.actor,
            )
    except ValueError as exc:  # the service's own checks, should the form's ever fall behind them
        return _tokens_page(org, form, {"name": str(exc)}, 422)
    html = render_template(
        "admin/token_created.html",
        org=org,
        nav="tokens",
        token=new.record,
        secret=new.secret,
        api_url=public_url(),
    )
    # The secret is on this page only: never keep it in a cache or the browser's history.
    return html, 201, {"Cache-Control": "no-store", "Pragma": "no-cache"}


@bp.post(SECTION + "/tokens/<int:token_id>/revoke")
@admin_required
def token_revoke(slug: str, token_id: int) -> ResponseReturnValue:
    org = org_of(slug)
    session = db.session()
    with write_transaction(session):
        record = session.get(ApiToken, token_id) if token_id <= fields.MAX_INT32 else None
        if record is None or record.org_id != org.id:
            abort(404, description=f"There is no token {token_id} in {slug}.")
        already = record.revoked_at is not None
        tokens.revoke(session, record.id, actor=g.admin.actor)
    if already:
        flash(f"The token “{record.name}” was revoked already.", "info")
    else:
        flash(f"Revoked the token “{record.name}” ({record.prefix}…). It stops working at once.", "success")
    return redirect(url_for("admin.token_list", slug=slug))


def _parse_token_form(form: MultiDict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    shown: dict[str, Any] = {
        "name": form.get("name", "").strip(),
        "scopes": [s for s in form.getlist("scopes") if s in auth.SCOPES],
        "expires_days": form.get("expires_days", "").strip(),
    }
    errors: dict[str, str] = {}
    if not 1 <= len(shown["name"]) <= 100:
        errors["name"] = "Give the token a name of 1 to 100 characters, such as the repository that will use it."
    if not shown["scopes"] or len(shown["scopes"]) != len(form.getlist("scopes")):
        errors["scopes"] = "Choose at least one scope."
    days = shown["expires_days"]
    if days and not (WHOLE_NUMBER.fullmatch(days) and 1 <= int(days) <= MAX_DAYS):
        errors["expires_days"] = f"Enter a number of days from 1 to {MAX_DAYS}, or leave it empty for no expiry."
    return shown, errors


def _tokens_page(org: Org, form: dict[str, Any], errors: dict[str, str], status: int = 200) -> ResponseReturnValue:
    now = admin_auth.database_time()  # as requests judge a token: on the database's clock (read with the session)
    records = sorted(tokens.list_for(db.session(), org.id), key=lambda t: t.id, reverse=True)
    return render_template(
        "admin/tokens.html",
        org=org,
        nav="tokens",
        tokens=[(t, auth.state(t, now)) for t in records],
        form=form,
        errors=errors,
        scopes=SCOPE_HELP,
        max_days=MAX_DAYS,
    ), status
