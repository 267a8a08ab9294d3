"""fremforge image scanning: a GitHub App that stores Trivy findings per image scan and gates merges on them."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import orjson
from flask import Flask, Response
from flask.json.provider import DefaultJSONProvider

from app import config, invisible, logs


class JSONProvider(DefaultJSONProvider):
    """Answers in JSON by orjson (UTF-8, keys in the order given), several times faster than json for every answer.
    Times are formatted by the views themselves; anything orjson does not know goes to Flask's default."""

    sort_keys = False
    ensure_ascii = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        option = orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if kwargs.get("indent") else 0)
        return orjson.dumps(obj, default=self.default, option=option).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app: defaults, then FREMFORGE_* environment, then test overrides; then checked.

    A configuration that cannot be used is reported on stderr in one line, then config.ConfigError (a SystemExit)
    ends the process without a traceback: gunicorn, `flask --app wsgi ...` and `python -c` alike.
    """
    app = Flask(__name__, instance_relative_config=True)
    # Every {{ ... }} of every page goes through finalize before it is escaped: an invisible format character in an
    # uploaded string (a bidi override reversing an image ref) is shown as a marker, "[U+202E]", never passed on.
    app.jinja_options = {**app.jinja_options, "finalize": invisible.show}
    app.config.update(config.DEFAULTS)
    app.config.update(config.from_environment())
    if test_config:
        app.config.update(test_config)
    try:
        config.finalize(app.config, app.instance_path)
    except config.ConfigError as exc:
        print(f"fremforge cannot start: {exc}", file=sys.stderr, flush=True)
        raise
    app.json = JSONProvider(app)

    # First: the log format (and the secrets kept out of every line), and each request's id before any other hook.
    logs.init_app(app)

    from app import admin, cli, db, health, home, metrics, openapi
    from app.chain import api as chain_api
    from app.exceptions import api as exceptions_api
    from app.findings import api as findings_api
    from app.github import client as github_client
    from app.github import webhooks as github_webhooks
    from app.insights import api as insights_api
    from app.policy import api as policy_api
    from app.web import bodies, errors

    db.init_app(app)
    _private_files(app)
    github_client.init_app(app)
    errors.init_app(app)
    metrics.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(home.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(policy_api.bp)
    app.register_blueprint(findings_api.bp)
    app.register_blueprint(github_webhooks.bp)
    app.register_blueprint(chain_api.bp)
    app.register_blueprint(exceptions_api.bp)
    app.register_blueprint(insights_api.bp)
    admin.init_app(app)
    cli.init_app(app)
    app.after_request(_nosniff)
    app.wsgi_app = bodies.WholeBodies(app.wsgi_app)  # type: ignore[method-assign]
    return app


def _nosniff(response: Response) -> Response:
    """Every answer is what its Content-Type says (JSON holding an upload's strings is never sniffed as HTML)."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


def _private_files(app: Flask) -> None:
    """The instance folder (secret key, checkpoint key, the default SQLite database) readable by this user alone
    (0700), and a SQLite database file (with its -wal and -shm files) 0600, made so before SQLite opens it. Ones that
    exist already open to others are narrowed to that, with a warning (`config.narrow_private`); one that cannot be
    made now is reported by whatever needs it later."""
    from app import sqlite_writers

    with contextlib.suppress(OSError):
        config.make_private_dir(Path(app.instance_path))
    config.narrow_private(Path(app.instance_path), 0o700)
    database = sqlite_writers.database_file(app.extensions["fremforge.db"].engine)
    if database is not None and Path(database).parent.is_dir():
        with contextlib.suppress(OSError):
            config.make_private_file(Path(database))
        for path in (Path(database), Path(f"{database}-wal"), Path(f"{database}-shm")):
            config.narrow_private(path, 0o600)
