"""The front page at /: names the service and points to the admin sign-in and the API document."""

from __future__ import annotations

from flask import Blueprint, Response, render_template

from app.web.errors import ERROR_PAGE_HEADERS

bp = Blueprint("home", __name__)

# A page of links: nothing to frame, sniff or script; sent as the service's other pages are, but for its stylesheet
# (the admin pages' own).
HEADERS = {
    **ERROR_PAGE_HEADERS,
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; base-uri 'none'; frame-ancestors 'none'",
}


@bp.get("/")
def index() -> Response:
    response = Response(render_template("home.html"), mimetype="text/html")
    response.headers.update(HEADERS)
    return response
