"""Signing in to the admin pages: GitHub OAuth through the App, one-time login links, signing out."""

from __future__ import annotations

from flask import render_template_string

from app.admin.blueprint import bp


@bp.get("/login")
def sign_in_page() -> str:
    return render_template_string("<p>Sign-in is being built.</p>")
