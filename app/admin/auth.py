"""Who is signed in to the admin pages, and the guards every admin view uses (session, org, CSRF).

The session (Flask's signed cookie: HttpOnly, SameSite=Lax, Secure behind an https PUBLIC_URL, lapsing after
PERMANENT_SESSION_LIFETIME without use; see app.config) holds
`session["admin"] = {"org": slug, "user": login, "via": "link" | "oauth", "at": ISO-8601 UTC}`: one org per session.
Every state change is a POST carrying `csrf_token`.
"""

from __future__ import annotations

import functools
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Request, abort, g, redirect, request, session, url_for
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface

SESSION_KEY = "admin"
CSRF_KEY = "csrf"


@dataclass(frozen=True)
class Admin:
    org: str  # the slug this session may act on
    user: str  # GitHub login, or "link" for a one-time login link
    via: str

    @property
    def actor(self) -> str:
        """How audit events name this person."""
        return f"{self.via}:{self.user}"


class CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, without the signing set-up for a request that carries no session cookie.

    Uploads, webhooks and the API never carry one, yet Flask would build a signing serializer for each of them;
    such a request gets the same empty session Flask would have given it.
    """

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if app.secret_key and not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)


def current_admin() -> Admin | None:
    data = session.get(SESSION_KEY)
    if not isinstance(data, dict) or not data.get("org"):
        return None
    return Admin(data["org"], data.get("user", "?"), data.get("via", "?"))


def sign_in(org: str, user: str, via: str, at: str) -> None:
    """Start a session for `org`; whatever the session held before (another org, a pending OAuth state) goes."""
    session.clear()
    session.permanent = True  # the cookie then expires with PERMANENT_SESSION_LIFETIME, not "never"
    session[SESSION_KEY] = {"org": org, "user": user, "via": via, "at": at}
    session[CSRF_KEY] = secrets.token_urlsafe(32)


def sign_out() -> None:
    session.clear()


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


def admin_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """For views under /admin/orgs/<slug>/...: signed in for that org, and POSTs carry the CSRF token."""

    @functools.wraps(view)
    def guarded(slug: str, *args: Any, **kwargs: Any) -> Any:
        admin = current_admin()
        if admin is None:
            # full_path ends in a bare "?" when there is no query string.
            return redirect(url_for("admin.sign_in_page", next=request.full_path.removesuffix("?")))
        if admin.org != slug:
            abort(403, description="You are signed in for another organisation.")
        if request.method == "POST":
            check_csrf()
        g.admin = admin
        return view(slug, *args, **kwargs)

    return guarded
