"""Signing in to the admin pages: GitHub OAuth through the App, one-time login links, signing out."""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import current_app, flash, g, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from githubkit import GitHub, OAuthAppAuthStrategy
from githubkit.exception import AuthExpiredError, GitHubException, RequestError, RequestFailed, RequestTimeout
from sqlalchemy.orm import Session

from app import audit, db, orgs
from app.admin import links
from app.admin.auth import check_csrf, current_admin, sign_in, sign_out
from app.admin.blueprint import bp
from app.db import write_transaction
from app.github.client import tls_context
from app.models import Org

log = logging.getLogger(__name__)

OAUTH_KEY = "oauth"  # session: the authorization under way, {"state", "org", "next", "started"}
OAUTH_PENDING_SECONDS = 600  # as long as GitHub's codes live
SCOPE = "read:org"  # what an OAuth app would need; a GitHub App's user token gets the App's "members: read" instead
ORG_IN_PATH = re.compile(r"/admin/orgs/([A-Za-z0-9-]+)(?:[/?#]|$)")
LINK_COMMAND = "flask --app wsgi admin login-url {slug}"
MEMBERSHIP_STEP = "read your membership of the organisation"


# -- helpers ----------------------------------------------------------------------------------------------------------


def web_base_url(api_url: str) -> str:
    """Where GitHub's web pages (the OAuth authorize page and token endpoint) are, from its REST API base URL.

    https://api.github.com -> https://github.com; GitHub Enterprise Server's https://HOST/api/v3 -> https://HOST;
    anything else (a test double) serves both from the same base. githubkit derives the token endpoint the same way.
    """
    api = api_url.rstrip("/")
    if re.fullmatch(r"https://api\.github\.com", api, re.IGNORECASE):
        return "https://github.com"
    return api.removesuffix("/api/v3")


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


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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


@dataclass
class Action:
    """A link offered on a message page."""

    url: str
    label: str


def _message(
    status: int, title: str, *paragraphs: str, command: str | None = None, action: Action | None = None
) -> ResponseReturnValue:
    """A page explaining why signing in did not work (and what to do), with its HTTP status."""
    return (
        render_template(
            "admin/message.html", status=status, title=title, paragraphs=paragraphs, command=command, action=action
        ),
        status,
    )


def _start_again(slug: str | None, next_path: str | None = None) -> Action:
    query = {k: v for k, v in (("org", slug), ("next", next_path)) if v}
    return Action(url_for("admin.sign_in_page", **query), "Sign in again")


def _sign_in_form(error: str | None, org: str, next_path: str | None, status: int = 200) -> ResponseReturnValue:
    g.admin = current_admin()  # the page's frame then shows who is signed in, and "Sign out"
    page = render_template(
        "admin/sign_in.html",
        oauth=_oauth_configured(),
        org=org,
        next=next_path,
        error=error,
        link_command=LINK_COMMAND.format(slug=org or "SLUG"),
        link_minutes=links.DEFAULT_MINUTES,
    )
    return page, status


def _record_sign_in(s: Session, org: Org, user: str, via: str, details: dict[str, Any]) -> None:
    """The sign-in as an event of the org's audit chain, in the caller's write transaction."""
    audit.record(s, org.id, "admin.signed_in", f"{via}:{user}", {"via": via, "user": user, **details})


def _start_session(org: Org, user: str, via: str) -> None:
    sign_in(org.slug, user, via, _now())
    log.info("admin.signed_in org=%s user=%s via=%s", org.slug, user, via)


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
            command=LINK_COMMAND.format(slug=slug or "SLUG"),
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
        log.info("admin.oauth.not_authorised org=%s error=%s", slug, request.args["error"][:100])
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
        login, membership = _github_membership(code, org.github_login)
    except GitHubTrouble as trouble:
        log.warning("admin.oauth.github_error org=%s status=%s reason=%s", slug, trouble.status, trouble.reason)
        return _message(trouble.status, trouble.title, trouble.explanation, action=_start_again(slug, next_path))

    refused = _refusal(login, membership, org)
    if refused is not None:
        log.info("admin.oauth.refused org=%s user=%s membership=%s", slug, login, membership)
        return _message(403, "You cannot sign in to this organisation", refused, action=_start_again(None))

    s = db.session()
    with write_transaction(s):
        _record_sign_in(s, org, login, "oauth", {})
    _start_session(org, login, "oauth")
    if next_path and org_in(next_path) == org.slug:
        return redirect(next_path)
    return redirect(_home(org.slug))


@dataclass
class GitHubTrouble(Exception):
    """GitHub could not tell who signed in, or their membership: the page to show instead."""

    status: int
    title: str
    explanation: str
    reason: str


def _github_membership(code: str, github_org: str) -> tuple[str, dict[str, str] | None]:
    """(the user's login, their membership of `github_org` as {"role", "state"} or None where they are not a member),
    asked with the user token that `code` is exchanged for. Raises GitHubTrouble."""
    config = current_app.config
    auth = OAuthAppAuthStrategy(config["GITHUB_CLIENT_ID"], config["GITHUB_CLIENT_SECRET"]).as_web_user(
        code, _callback_url()
    )
    client = GitHub(
        auth,
        base_url=config["GITHUB_API_URL"],
        timeout=float(config.get("GITHUB_TIMEOUT_SECONDS") or 10),
        auto_retry=False,
        http_cache=False,
        ssl_verify=tls_context(),
    )
    step = "exchange the sign-in code for your GitHub identity"
    try:
        with client as gh:
            # The first call made with the web-flow auth exchanges the code (POST .../login/oauth/access_token).
            user = gh.rest.users.get_authenticated().parsed_data
            step = MEMBERSHIP_STEP
            try:
                found = gh.rest.orgs.get_membership_for_authenticated_user(github_org).parsed_data
            except RequestFailed as exc:
                if exc.response.status_code == 404:
                    return user.login, None
                raise
            return user.login, {"role": str(found.role), "state": str(found.state)}
    except GitHubException as exc:
        raise _trouble(exc, step) from exc
    except ValueError as exc:  # pydantic's ValidationError: an answer not shaped as GitHub documents it
        raise GitHubTrouble(
            502, "GitHub's answer was not understood", f"Could not {step}; try again.", "unparsable answer"
        ) from exc


def _trouble(exc: GitHubException, step: str) -> GitHubTrouble:
    """What a githubkit failure means for the person signing in."""
    # A failure inside the code exchange (httpx's auth flow) arrives wrapped in a plain RequestError.
    if type(exc) is RequestError and isinstance(exc.exc, GitHubException):
        exc = exc.exc
    if isinstance(exc, AuthExpiredError):  # the token endpoint answered 200 with {"error": ...}
        answer = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
        error = str(answer.get("error", "unknown"))[:100]
        described = str(answer.get("error_description") or error)[:300]
        return GitHubTrouble(502, "GitHub did not accept the sign-in", f"GitHub said: {described}", error)
    if isinstance(exc, RequestFailed):
        status = exc.response.status_code
        message = _github_message(exc)
        if status == 403 and step == MEMBERSHIP_STEP:
            # E.g. an organisation that requires SAML SSO, or one that restricts which apps may see it.
            return GitHubTrouble(
                403, "GitHub refused to show your membership", f"GitHub said: {message}", f"http {status}"
            )
        return GitHubTrouble(
            502,
            "GitHub answered with an error",
            f"Could not {step}: GitHub answered {status} ({message}).",
            f"http {status}",
        )
    if isinstance(exc, RequestTimeout):
        return GitHubTrouble(
            502, "GitHub did not answer", f"Could not {step}: GitHub did not answer in time.", "timeout"
        )
    return GitHubTrouble(502, "GitHub could not be reached", f"Could not {step}; try again.", type(exc).__name__)


def _github_message(exc: RequestFailed) -> str:
    try:
        body = exc.response.json()
    except ValueError:
        return "no details"
    return str(body.get("message") if isinstance(body, dict) else "no details")[:300]


def _refusal(login: str, membership: dict[str, str] | None, org: Org) -> str | None:
    """Why `login` may not sign in to `org`'s pages, or None for an active owner (role admin)."""
    if membership is None:
        return (
            f"GitHub says {login} is not a member of {org.github_login} (or this app is not installed on it, "
            "so cannot see the membership). Only the organisation's owners can sign in."
        )
    if membership["state"] != "active":
        return f"{login}'s invitation to {org.github_login} is {membership['state']}: accept it on GitHub first."
    if membership["role"] != "admin":
        return (
            f"{login} is a {membership['role']} of {org.github_login} on GitHub, not an owner. "
            "Only the organisation's owners can change its image scanning; ask one of them."
        )
    return None


# -- one-time login links (made by `flask --app wsgi admin login-url SLUG`) -------------------------------------------


@bp.get("/login/link/<token>")
def login_link(token: str) -> ResponseReturnValue:
    """Spend a one-time link: a session for its org, once; a used or expired link is refused."""
    s = db.session()
    with write_transaction(s):
        spent = links.spend(s, token)
        if spent is not None:
            _record_sign_in(s, spent[0], "login-link", "link", {"link_id": spent[1].id})
    if spent is None:
        log.info("admin.login_link.refused")
        response = current_app.make_response(
            _message(
                403,
                "This link cannot sign you in",
                "This link was used or has expired; make a new one on the server:",
                command=LINK_COMMAND.format(slug="SLUG"),
            )
        )
    else:
        _start_session(spent[0], "login-link", "link")
        response = current_app.make_response(redirect(_home(spent[0].slug)))
    # The token is in this URL: keep it out of caches and of the Referer of whatever is loaded next.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


# -- signing out ------------------------------------------------------------------------------------------------------


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    check_csrf()
    sign_out()
    flash("You are signed out.", "info")
    return redirect(url_for("admin.sign_in_page"))
