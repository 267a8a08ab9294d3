"""Every GitHub call the admin pages make, with the App's OAuth credentials: who signed in, and whether they own
the org, at sign-in (with the OAuth code) and again later (with the user's token, kept sealed in the session record:
see app.admin.sessions). The clients are made as every other (app.github.client.new_client)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import current_app
from githubkit import GitHub, OAuthAppAuthStrategy, TokenAuthStrategy
from githubkit.exception import AuthExpiredError, GitHubException, RequestError, RequestFailed, RequestTimeout

from app.github.client import github_message, new_client
from app.models import Org

MEMBERSHIP_STEP = "read your membership of the organisation"
RECHECK_STEP = "check your role in the organisation again"


@dataclass
class GitHubTrouble(Exception):
    """GitHub could not tell who signed in, or their membership: the page to show instead."""

    status: int
    title: str
    explanation: str
    reason: str
    token_refused: bool = False  # GitHub answered 401: the user's token expired or was revoked


@dataclass
class Identity:
    login: str
    token: str  # the user's GitHub token, for checking the role again later
    membership: dict[str, str] | None  # {"role", "state"}; None where they are not a member


def _client(auth: Any) -> GitHub[Any]:
    config = current_app.config
    return new_client(auth, config["GITHUB_API_URL"], float(config.get("GITHUB_TIMEOUT_SECONDS") or 10))


def identity(code: str, github_org: str, callback_url: str) -> Identity:
    """Exchange the OAuth `code` for the user's token, then ask GitHub (with it) who they are and their membership
    of `github_org`. Raises GitHubTrouble."""
    config = current_app.config
    auth = OAuthAppAuthStrategy(config["GITHUB_CLIENT_ID"], config["GITHUB_CLIENT_SECRET"]).as_web_user(
        code, callback_url
    )
    step = "exchange the sign-in code for your GitHub identity"
    try:
        with _client(auth) as gh:
            # The first call made with the web-flow auth exchanges the code (POST .../login/oauth/access_token).
            user = gh.rest.users.get_authenticated().parsed_data
            step = MEMBERSHIP_STEP
            return Identity(user.login, auth.token, _membership(gh, github_org))
    except GitHubException as exc:
        raise trouble(exc, step) from exc
    except ValueError as exc:  # pydantic's ValidationError: an answer not shaped as GitHub documents it
        raise _not_understood(step) from exc


def membership(token: str, github_org: str) -> dict[str, str] | None:
    """The membership of `github_org` of the user whose token this is, asked again. Raises GitHubTrouble."""
    try:
        with _client(TokenAuthStrategy(token)) as gh:
            return _membership(gh, github_org)
    except GitHubException as exc:
        raise trouble(exc, RECHECK_STEP) from exc
    except ValueError as exc:
        raise _not_understood(RECHECK_STEP) from exc


def _membership(gh: GitHub[Any], github_org: str) -> dict[str, str] | None:
    """GET /user/memberships/orgs/{org}: {"role", "state"}, or None for a non-member (404)."""
    try:
        found = gh.rest.orgs.get_membership_for_authenticated_user(github_org).parsed_data
    except RequestFailed as exc:
        if exc.response.status_code == 404:
            return None
        raise
    return {"role": str(found.role), "state": str(found.state)}


def _not_understood(step: str) -> GitHubTrouble:
    return GitHubTrouble(
        502, "GitHub's answer was not understood", f"Could not {step}; try again.", "unparsable answer"
    )


def trouble(exc: GitHubException, step: str) -> GitHubTrouble:
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
        message = _said(exc)
        headers = exc.response.headers
        if status in (403, 429) and (headers.get("retry-after") or headers.get("x-ratelimit-remaining") == "0"):
            # A rate limit says nothing about the user's role: a moment later GitHub answers again.
            return GitHubTrouble(
                502,
                "GitHub asked us to wait",
                f"Could not {step}: GitHub's rate limit; try again shortly.",
                "rate limit",
            )
        if status == 401 and step == RECHECK_STEP:
            return GitHubTrouble(
                401,
                "GitHub no longer accepts your sign-in",
                f"GitHub said: {message}. Your GitHub authorisation expired or was revoked; sign in again.",
                f"http {status}",
                token_refused=True,
            )
        if status == 403 and step in (MEMBERSHIP_STEP, RECHECK_STEP):
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


def _said(exc: RequestFailed) -> str:
    return github_message(exc) or "no details"


def refusal(login: str, membership: dict[str, str] | None, org: Org) -> str | None:
    """Why `login` may not use `org`'s pages, or None for an active owner (role admin)."""
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
