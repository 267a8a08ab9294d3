"""Who is signed in to the admin pages, and the guards every admin view uses (session, org, owner role, CSRF).

A session is a record in the database (app.admin.sessions); the browser's session cookie (Flask's signed cookie:
HttpOnly, SameSite=Lax, Secure behind an https PUBLIC_URL) holds only its random id, `session["sid"]`, and the CSRF
token, `session["csrf"]` (plus a pending OAuth sign-in and flashed messages, while there are any). One org per
session. Every state change is a POST carrying `csrf_token`.

Before a page of an org is shown the session must live (not signed out, not past its 12 hours) and be for that org;
a GitHub session's owner role is checked with GitHub again when 15 minutes have passed since the last check, and
before any POST (creating a token, changing settings...). Someone GitHub no longer shows as an active owner is
signed out there and then.
"""

from __future__ import annotations

import functools
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import Flask, Request, abort, flash, g, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask.typing import ResponseReturnValue
from sqlalchemy.orm.attributes import set_committed_value

from app import db
from app.admin import sessions
from app.chain import audit
from app.db import write_transaction
from app.github import oauth

log = logging.getLogger(__name__)

SESSION_KEY = "sid"
CSRF_KEY = "csrf"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
RETRY_ROLE_CHECK_SECONDS = 60
ENDED = {
    "expired": "Your session ended: a session lasts 12 hours from signing in. Sign in again.",
    "signed_out": "That session was signed out. Sign in again.",
}
ENDED_OTHERWISE = "That session was ended. Sign in again."


@dataclass(frozen=True)
class Admin:
    org: str  # the slug this session may act on
    user: str  # GitHub login, or "login-link" for a one-time login link
    via: str
    session_id: int = 0  # the session record's id

    @property
    def actor(self) -> str:
        """How audit events name this person."""
        return f"{self.via}:{self.user}"


@dataclass
class Action:
    """A link offered on a message page."""

    url: str
    label: str


class CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, without the signing set-up for a request that carries no session cookie.

    Uploads, webhooks and the API never carry one, yet Flask would build a signing serializer for each of them;
    such a request gets the same empty session Flask would have given it.
    """

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if app.secret_key and not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)


def message_page(
    status: int,
    title: str,
    *paragraphs: str,
    command: str | None = None,
    action: Action | None = None,
    headers: dict[str, str] | None = None,
) -> ResponseReturnValue:
    """A page explaining why something did not work (and what to do), with its HTTP status."""
    page = render_template(
        "admin/message.html", status=status, title=title, paragraphs=paragraphs, command=command, action=action
    )
    return page, status, headers or {}


# -- the session of this request ----------------------------------------------------------------------------------


def database_time() -> datetime:
    """The database's time, read with this request's session (a signed-in page's): no statement of its own."""
    found = _found()
    assert found is not None  # admin_required let the request in
    return found.database_time


def _found() -> sessions.Found | None:
    """The record of this request's session cookie, live or ended (looked up once per request)."""
    if "admin_found" not in g:
        raw = session.get(SESSION_KEY)
        found = sessions.find(db.session(), raw) if isinstance(raw, str) and raw else None
        if raw and (found is None or found.ended):
            session.pop(SESSION_KEY, None)  # a dead id: the browser's cookie forgets it
        g.admin_found = found
    return g.admin_found


def current_admin() -> Admin | None:
    found = _found()
    if found is None or found.ended:
        return None
    return Admin(found.org.slug, found.record.login, found.record.via, found.record.id)


def sign_in(new: sessions.NewSession) -> None:
    """Give this browser the new session; whatever its cookie held before (another org, a pending OAuth) goes."""
    session.clear()
    session.permanent = True  # the cookie then expires with PERMANENT_SESSION_LIFETIME (12 h), not "never"
    session[SESSION_KEY] = new.raw_id
    session[CSRF_KEY] = secrets.token_urlsafe(32)
    g.pop("admin_found", None)


def end_session(reason: str) -> None:
    """Revoke this browser's session (a copy of its cookie is refused from now on) and clear the cookie."""
    found = _found()
    if found is not None and not found.ended:
        record = found.record
        s = db.session()
        with write_transaction(s):
            if sessions.revoke(s, record.id, reason):
                audit.record(
                    s,
                    found.org.id,
                    audit.Action.SIGNED_OUT,
                    f"{record.via}:{record.login}",
                    {"via": record.via, "user": record.login, "reason": reason},
                )
        log.info("admin.signed_out org=%s user=%s via=%s reason=%r", found.org.slug, record.login, record.via, reason)
    session.clear()
    g.pop("admin_found", None)


def csrf_token() -> str:
    token = session.get(CSRF_KEY)
    if not token:
        token = session[CSRF_KEY] = secrets.token_urlsafe(32)
    return token


def check_csrf() -> None:
    sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    expected = session.get(CSRF_KEY) or ""
    if not expected or not hmac.compare_digest(sent, expected):
        abort(400, description="The form's CSRF token is missing or wrong; reload the page and try again.")


def _sign_in_again(next_path: str | None = None) -> Action:
    # Typed as url_for's **values (Any): mypy would match a dict[str, str] against its keyword-only _external too.
    query: dict[str, Any] = {"next": next_path} if next_path and request.method in SAFE_METHODS else {}
    return Action(url_for("admin.sign_in_page", **query), "Sign in again")


def check_role(found: sessions.Found, changing: bool) -> ResponseReturnValue | None:
    """For a GitHub session whose role check is due (or before a change): ask GitHub again. None when the owner
    role is confirmed (or there is none to check); else the page to answer with, the session ended where the role
    is gone. GitHub not answering ends nothing, but nothing is shown or changed until it answers (fail closed)."""
    record, org = found.record, found.org
    at = found.at
    if record.via != sessions.VIA_OAUTH or not (changing or sessions.role_check_due(record, at)):
        return None
    here = request.full_path.removesuffix("?")
    token = sessions.unseal(str(session.get(SESSION_KEY) or ""), record.github_token)
    if token is None:  # a record made before tokens were kept, or a cookie not of this record
        end_session("github_token_missing")
        flash("Your role has to be checked with GitHub again: sign in again.", "info")
        return redirect(_sign_in_again(here).url)
    try:
        membership = oauth.membership(token, org.github_login)
    except oauth.GitHubTrouble as trouble:
        log.warning("admin.role_check.github_error org=%s user=%s reason=%r", org.slug, record.login, trouble.reason)
        if trouble.token_refused or trouble.status == 403:
            end_session("github_token_refused" if trouble.token_refused else "github_refused")
            return message_page(
                403, trouble.title, trouble.explanation, "You are signed out.", action=_sign_in_again(here)
            )
        return message_page(
            503,
            "Your role cannot be checked with GitHub",
            trouble.explanation,
            "These pages are shown only to owners whose role GitHub confirmed in the last 15 minutes (and just "
            "before any change). Your session is kept: try again in a minute.",
            headers={"Retry-After": str(RETRY_ROLE_CHECK_SECONDS)},
        )
    refused = oauth.refusal(record.login, membership, org)
    if refused is not None:
        end_session("role_lost")
        log.info("admin.role_check.refused org=%s user=%s membership=%s", org.slug, record.login, membership)
        return message_page(
            403,
            "You are signed out: you are no longer an owner",
            refused,
            "GitHub no longer shows you as an active owner of the organisation, so your session has been ended.",
            action=_sign_in_again(),
        )
    s = db.session()
    with write_transaction(s):
        sessions.role_confirmed(s, record.id, at)
    set_committed_value(record, "role_checked_at", at)  # as stored; nothing left for a later flush to write
    return None


def admin_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """For views under /admin/orgs/<slug>/...: a live session for that org, the owner role confirmed where due, and
    POSTs carrying the CSRF token."""

    @functools.wraps(view)
    def guarded(slug: str, *args: Any, **kwargs: Any) -> Any:
        found = _found()
        if found is None or found.ended:
            if found is not None and found.ended:
                flash(ENDED.get(found.ended, ENDED_OTHERWISE), "info")
            # full_path ends in a bare "?" when there is no query string.
            return redirect(url_for("admin.sign_in_page", next=request.full_path.removesuffix("?")))
        admin = current_admin()
        assert admin is not None
        if admin.org != slug:
            abort(403, description="You are signed in for another organisation.")
        changing = request.method not in SAFE_METHODS
        if changing:
            check_csrf()
        refused = check_role(found, changing)
        if refused is not None:
            return refused
        g.admin = admin
        return view(slug, *args, **kwargs)

    return guarded
