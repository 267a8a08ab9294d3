"""Admin → Code security → Image scanning: server-rendered pages for org owners."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    from app.admin import (  # noqa: F401  (they add their routes)
        audit_page,
        exceptions_page,
        insights_pages,
        scan_pages,
        settings_page,
        signin,
        tokens_page,
    )
    from app.admin.auth import CookieSessions, csrf_token
    from app.admin.blueprint import bp, security_headers

    app.session_interface = CookieSessions()
    app.register_blueprint(bp)
    app.after_request(security_headers)
    app.jinja_env.globals["csrf_token"] = csrf_token
