"""The front page at /: names the service and points to the admin sign-in and the API document."""

from __future__ import annotations

from flask import Blueprint, Response, render_template

bp = Blueprint("home", __name__)

# A page of links: nothing to frame, sniff or script; the stylesheet is the admin pages' own.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",  # as every page of the service (spec section 6)
}


@bp.get("/")
def index() -> Response:
    response = Response(render_template("home.html"), mimetype="text/html")
    response.headers.update(HEADERS)
    return response
