"""fremforge image scanning: a GitHub App that stores Trivy findings per image scan and gates merges on them."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask

from app import config


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app: defaults, then FREMFORGE_* environment, then test overrides; then checked."""
    app = Flask(__name__, instance_relative_config=True)
    app.config.update(config.DEFAULTS)
    app.config.update(config.from_environment())
    if test_config:
        app.config.update(test_config)
    config.finalize(app.config, app.instance_path)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.ensure_ascii = False  # type: ignore[attr-defined]

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if app.config["GITHUB_APP_CONFIGURED"] and not app.config.get("PUBLIC_URL"):
        logging.getLogger(__name__).warning(
            "config.no_public_url: set FREMFORGE_PUBLIC_URL; links posted to GitHub now follow each request's Host"
        )

    from app import admin, audit_api, cli, db, errors, health, openapi
    from app.findings import api as findings_api
    from app.github import client as github_client
    from app.github import webhooks as github_webhooks
    from app.settings import api as settings_api

    db.init_app(app)
    github_client.init_app(app)
    errors.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(settings_api.bp)
    app.register_blueprint(findings_api.bp)
    app.register_blueprint(github_webhooks.bp)
    app.register_blueprint(audit_api.bp)
    admin.init_app(app)
    cli.init_app(app)
    return app
