"""Signing in to the admin pages: GitHub OAuth through the App, one-time login links, signing out."""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import current_app, flash, g, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session

from app import db, orgs
from app.admin import login_links, sessions
from app.admin.auth import Action, check_csrf, current_admin, end_session, message_page, sign_in
from app.admin.blueprint import bp
from app.chain import audit
from app.db import write_transaction
from app.github import oauth
from app.github.client import web_base_url
from app.models import Org

log = logging.getLogger(__name__)

OAUTH_KEY = "oauth"  # session: the authorization under way, {"state", "org", "next", "started"}
OAUTH_PENDING_SECONDS = 600  # as long as GitHub's codes live
SCOPE = "read:org"  # what an OAuth app would need; a GitHub App's user token gets the App's "members: read" instead
ORG_IN_PATH = re.compile(r"/admin/orgs/([A-Za-z0-9-]+)(?:[/?#]|$)")
LINK_COMMAND = "flask --app wsgi admin login-url {slug}"


# -- helpers ----------------------------------------------------------------------------------------------------------


def safe_next(value: str | None) -> str | None:
    """`value` when it is a path of this site's admin pages to come back to after signing in; else None.

    Only relative paths under /admin/: no scheme, no host (not even "//host" or "/\\host"), no control
    characters, so a crafted sign-in link cannot send anyone elsewhere.
    """
    if not value or len(value) > 2000 or any(c == "\\" or ord(c) < 32 or ord(c) == 127 for c in value):
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith("/admin/") or "/../" in parts.path + "/":
        return None
    if parts.path.startswith(("/admin/login", "/admin/logout", "/admin/oauth/")):
        return None  # back to the sign-in pages themselves: no use
    return value.removesuffix("?")


def org_in(path: str | None) -> str | None:
    """The org slug of an admin page's path, e.g. acme of /admin/orgs/acme/code-security/image-scanning."""
    found = ORG_IN_PATH.match(path or "")
    return found.group(1) if found else None


def _oauth_configured() -> bool:
    return bool(current_app.config.get("GITHUB_CLIENT_ID") and current_app.config.get("GITHUB_CLIENT_SECRET"))


def _callback_url() -> str:
    """The redirect_uri: the App's registered callback URL, <PUBLIC_URL>/admin/oauth/callback."""
    public = current_app.config.get("PUBLIC_URL")
    if public:
        return public + url_for("admin.oauth_callback")
    return url_for("admin.oauth_callback", _external=True)


def _home(slug: str) -> str:
    return url_for("admin.scans", slug=slug)


def _message(
    status: int, title: str, *paragraphs: str, command: str | None = None, action: Action | None = None
) -> ResponseReturnValue:
    """A page explaining why signing in did not work (and what to do), with its HTTP status."""
    return message_page(status, title, *paragraphs, command=command, action=action)


def _known_org(slug: str | None) -> Org | None:
    return orgs.by_slug(db.session(), slug) if slug and orgs.SLUG.fullmatch(slug) else None


def _link_command(org: Org | None) -> str:
    """The command that makes a one-time link: for an org that exists here (its slug as stored), else for SLUG.

    Nothing the request supplied goes into it: a command to copy and paste into a shell on the server must not
    carry text from a link someone else crafted (an unknown slug, a query string).
    """
    slug = org.slug if org is not None and orgs.SLUG.fullmatch(org.slug) else "SLUG"
    return LINK_COMMAND.format(slug=slug)


def _start_again(slug: str | None, next_path: str | None = None) -> Action:
    # Typed as url_for's **values (Any): mypy would match a dict[str, str] against its keyword-only _external too.
    query: dict[str, Any] = {k: v for k, v in (("org", slug), ("next", next_path)) if v}
    return Action(url_for("admin.sign_in_page", **query), "Sign in again")


def _sign_in_form(error: str | None, org: str, next_path: str | None, status: int = 200) -> ResponseReturnValue:
    g.admin = current_admin()  # the page's frame then shows who is signed in, and "Sign out"
    known = _known_org(org)
    page = render_template(
        "admin/sign_in.html",
        oauth=_oauth_configured(),
        org=org,
        next=next_path,
        error=error,
        unknown_org=bool(org) and known is None and error is None,
        link_command=_link_command(known),
        link_minutes=login_links.DEFAULT_MINUTES,
    )
    return page, status


def _record_sign_in(s: Session, org: Org, user: str, via: str, details: dict[str, Any]) -> None:
    """The sign-in as an event of the org's audit chain, in the caller's write transaction."""
    audit.record(s, org.id, audit.Action.SIGNED_IN, f"{via}:{user}", {"via": via, "user": user, **details})


def _start_session(new: sessions.NewSession, org: Org) -> None:
    end_session("replaced")  # a session this browser had before (this org's or another's) ends here
    sign_in(new)
    log.info("admin.signed_in org=%s user=%s via=%s", org.slug, new.record.login, new.record.via)


# -- the sign-in page -------------------------------------------------------------------------------------------------


@bp.get("/login")
def sign_in_page() -> ResponseReturnValue:
    next_path = safe_next(request.args.get("next"))
    org = (request.args.get("org") or org_in(next_path) or "").strip()[:100]
    return _sign_in_form(None, org, next_path)


# -- GitHub OAuth (the web flow, with the App's client id and secret) -------------------------------------------------


@bp.get("/oauth/start")
def oauth_start() -> ResponseReturnValue:
    """Send the browser to GitHub to authorise the App; a random `state` in the session ties the answer to it."""
    next_path = safe_next(request.args.get("next"))
    slug = (request.args.get("org") or "").strip()[:100]
    if not _oauth_configured():
        return _message(
            404,
            "Sign-in with GitHub is not configured",
            "Set FREMFORGE_GITHUB_CLIENT_ID and FREMFORGE_GITHUB_CLIENT_SECRET (from the GitHub App's settings), "
            "or make a one-time sign-in link on the server:",
            command=_link_command(_known_org(slug)),
        )
    if not slug:
        return _sign_in_form("Enter the organisation to sign in to.", slug, next_path, 400)
    org = orgs.by_slug(db.session(), slug)
    if org is None:
        return _sign_in_form(f"There is no organisation {slug!r} here; check its name.", slug, next_path, 404)
    state = secrets.token_urlsafe(32)
    session[OAUTH_KEY] = {"state": state, "org": org.slug, "next": next_path, "started": int(time.time())}
    query = {
        "client_id": current_app.config["GITHUB_CLIENT_ID"],
        "redirect_uri": _callback_url(),
        "state": state,
        "scope": SCOPE,
        "allow_signup": "false",
    }
    base = web_base_url(current_app.config["GITHUB_API_URL"])
    return redirect(f"{base}/login/oauth/authorize?{urlencode(query)}")


@bp.get("/oauth/callback")
def oauth_callback() -> ResponseReturnValue:
    """GitHub sends the browser back here with a code: exchange it, then ask GitHub for the user's org role."""
    pending = session.pop(OAUTH_KEY, None)  # one answer per authorization, whatever happens below
    sent = request.args.get("state", "")
    expected = pending.get("state", "") if isinstance(pending, dict) else ""
    if not sent or not expected or not hmac.compare_digest(sent.encode(), str(expected).encode()):
        log.warning("admin.oauth.state_mismatch pending=%s", bool(expected))
        return _message(
            400,
            "This sign-in cannot be completed",
            "GitHub's answer does not belong to a sign-in started in this browser, or it was used already.",
            action=_start_again(None),
        )
    assert isinstance(pending, dict)
    slug, next_path = str(pending.get("org", "")), safe_next(pending.get("next"))
    if time.time() - float(pending.get("started", 0)) > OAUTH_PENDING_SECONDS:
        return _message(400, "This sign-in took too long", "Start it again.", action=_start_again(slug, next_path))
    if request.args.get("error"):
        reason = request.args.get("error_description") or request.args["error"]
        log.info("admin.oauth.not_authorised org=%s error=%r", slug, request.args["error"][:100])
        return _message(
            403,
            "GitHub did not authorise the sign-in",
            f"GitHub said: {reason[:300]}",
            action=_start_again(slug, next_path),
        )
    code = request.args.get("code", "")
    if not code or len(code) > 200:
        return _message(400, "GitHub's answer has no code", "Start again.", action=_start_again(slug, next_path))
    org = orgs.by_slug(db.session(), slug)
    if org is None:
        return _message(404, "No such organisation", f"There is no organisation {slug!r} here any more.")

    try:
        who = oauth.identity(code, org.github_login, _callback_url())
    except oauth.GitHubTrouble as trouble:
        log.warning("admin.oauth.github_error org=%s status=%s reason=%r", slug, trouble.status, trouble.reason)
        return _message(trouble.status, trouble.title, trouble.explanation, action=_start_again(slug, next_path))

    refused = oauth.refusal(who.login, who.membership, org)
    if refused is not None:
        log.info("admin.oauth.refused org=%s user=%s membership=%s", slug, who.login, who.membership)
        return _message(403, "You cannot sign in to this organisation", refused, action=_start_again(None))

    s = db.session()
    with write_transaction(s):
        _record_sign_in(s, org, who.login, sessions.VIA_OAUTH, {})
        new = sessions.start(s, org, who.login, sessions.VIA_OAUTH, github_token=who.token)
    _start_session(new, org)
    if next_path and org_in(next_path) == org.slug:
        return redirect(next_path)
    return redirect(_home(org.slug))


# -- one-time login links (made by `flask --app wsgi admin login-url SLUG`) -------------------------------------------


LINK_REFUSED = "This link was used or has expired; make a new one on the server:"


@bp.route("/login/link/<token>", methods=["GET", "POST"])
def login_link(token: str) -> ResponseReturnValue:
    """A one-time link: its GET (and HEAD, and a chat app's link preview) shows a button and spends nothing; the
    button's POST, carrying the page's CSRF token, spends the link and signs this browser in to its org, once."""
    if request.method != "POST":
        pending = login_links.find(db.session(), token)
        if pending is None:
            log.info("admin.login_link.refused method=%s", request.method)
            return _link_page(_refused_link())
        return _link_page(render_template("admin/login_link.html", org=pending[0], link=pending[1], token=token))
    check_csrf()
    s = db.session()
    with write_transaction(s):
        spent = login_links.spend(s, token)
        if spent is not None:
            org, link = spent
            _record_sign_in(s, org, sessions.LINK_USER, sessions.VIA_LINK, {"link_id": link.id})
            new = sessions.start(s, org, sessions.LINK_USER, sessions.VIA_LINK)
    if spent is None:
        log.info("admin.login_link.refused method=POST")
        return _link_page(_refused_link())
    _start_session(new, spent[0])
    return _link_page(redirect(_home(spent[0].slug), 303))


def _refused_link() -> ResponseReturnValue:
    return _message(403, "This link cannot sign you in", LINK_REFUSED, command=LINK_COMMAND.format(slug="SLUG"))


def _link_page(answer: ResponseReturnValue) -> Any:
    response = current_app.make_response(answer)
    # The token is in this URL: keep it out of caches and of the Referer of whatever is loaded next.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


# -- signing out ------------------------------------------------------------------------------------------------------


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    check_csrf()
    end_session("signed_out")
    flash("You are signed out.", "info")
    return redirect(url_for("admin.sign_in_page"))
