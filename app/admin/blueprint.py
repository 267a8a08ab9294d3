"""The admin blueprint that app.admin.signin and app.admin.views add their routes to, and the headers its pages send."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, current_app, request

from app.github.client import web_base_url

bp = Blueprint(
    "admin",
    __name__,
    url_prefix="/admin",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

PREFIX = "/admin"
# Spec section 6: every admin page (the sign-in pages and error pages under /admin too) is never framed, never
# sniffed, leaks no URL in a Referer and is kept in no cache. Scripts, styles and images come from this site only;
# forms post to it (and the sign-in form's redirect goes on to GitHub's authorize page).
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; object-src 'none'; frame-ancestors 'none'; form-action 'self'{github}"
)


@bp.before_request
def refuse_nul_in_form() -> None:
    """A posted form with a NUL character is refused before any page reads it: no field can hold one (PostgreSQL
    text cannot), and a form shown again with the values sent must not echo it."""
    if request.method == "POST" and any("\x00" in k or "\x00" in v for k, v in request.form.items(multi=True)):
        abort(400, description="The form contains a NUL character (%00).")


def security_headers(response: Response) -> Response:
    """After every request under /admin (whatever answered it: a page, a redirect, an error, a 404)."""
    path = request.path
    if path != PREFIX and not path.startswith(PREFIX + "/"):
        return response
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    response.headers["Content-Security-Policy"] = CSP.format(github=_github_origin())
    if request.endpoint != "admin.static" or response.status_code >= 400:  # a file served may be cached, no error
        response.headers["Cache-Control"] = "no-store"
    return response


def _github_origin() -> str:
    """GitHub's web host, where the OAuth sign-in form's redirect goes (form-action covers redirects too)."""
    parts = urlsplit(web_base_url(str(current_app.config.get("GITHUB_API_URL") or "https://api.github.com")))
    return f" {parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") and parts.netloc else ""
