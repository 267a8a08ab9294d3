"""The one place that reads the environment: FREMFORGE_* variables into typed settings, failing closed."""

from __future__ import annotations

import os
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

# Every setting the app reads, with its default. Values from the environment arrive as strings
# (Flask's own from_prefixed_env would turn an app id such as "1e5" into a float).
DEFAULTS: dict[str, Any] = {
    "ENV": "development",
    "DATABASE_URL": None,  # None: a SQLite file in the instance folder
    "SECRET_KEY": None,
    "PUBLIC_URL": None,  # None: taken from each request's host
    "GITHUB_API_URL": "https://api.github.com",
    "GITHUB_APP_ID": None,
    "GITHUB_PRIVATE_KEY": None,
    "GITHUB_PRIVATE_KEY_FILE": None,
    "GITHUB_WEBHOOK_SECRET": None,
    "GITHUB_CLIENT_ID": None,
    "GITHUB_CLIENT_SECRET": None,
    "MAX_UPLOAD_MB": 64,
    "GITHUB_TIMEOUT_SECONDS": 10,  # per GitHub call made by the worker
    "CHECKPOINT_KEY_FILE": None,  # None: checkpoint_ed25519.pem in the instance folder, made when absent
}
ENVIRONMENTS = ("development", "production")
SESSION_LIFETIME = timedelta(hours=12)  # an admin session lapses after this long without a request
PREFIX = "FREMFORGE_"


class ConfigError(RuntimeError):
    """The configuration cannot be used; the message says which variable to set."""


def from_environment(environ: os._Environ[str] | dict[str, str] | None = None) -> dict[str, Any]:
    """The documented FREMFORGE_* settings found in the environment, as strings, without the prefix.

    Only those: Flask's own keys (TESTING, DEBUG...) cannot be switched from the environment, so no
    variable such as FREMFORGE_TESTING=0 can loosen the production checks.
    """
    environ = os.environ if environ is None else environ
    return {
        key[len(PREFIX) :]: value
        for key, value in environ.items()
        if key.startswith(PREFIX) and key[len(PREFIX) :] in DEFAULTS
    }


def finalize(config: dict[str, Any], instance_path: str) -> None:
    """Check and complete the merged configuration in place; raise ConfigError when it is unusable."""
    try:
        max_mb = float(config["MAX_UPLOAD_MB"])
    except (TypeError, ValueError):
        raise ConfigError("FREMFORGE_MAX_UPLOAD_MB must be a number of megabytes") from None
    if not 0 < max_mb <= 4096:
        raise ConfigError("FREMFORGE_MAX_UPLOAD_MB must be between 0 and 4096")
    config["MAX_UPLOAD_MB"] = max_mb
    config["MAX_UPLOAD_BYTES"] = int(max_mb * 1024 * 1024)
    # Compressed bodies are held to the same limit as what they decompress to.
    config["MAX_CONTENT_LENGTH"] = config["MAX_UPLOAD_BYTES"]

    if not config.get("DATABASE_URL"):
        config["DATABASE_URL"] = f"sqlite:///{Path(instance_path) / 'fremforge.db'}"
    config["DATABASE_URL"] = normalise_database_url(config["DATABASE_URL"])

    if config.get("GITHUB_PRIVATE_KEY_FILE") and not config.get("GITHUB_PRIVATE_KEY"):
        try:
            config["GITHUB_PRIVATE_KEY"] = Path(config["GITHUB_PRIVATE_KEY_FILE"]).read_text()
        except OSError as exc:
            raise ConfigError(f"FREMFORGE_GITHUB_PRIVATE_KEY_FILE cannot be read: {exc.strerror}") from None
    config["GITHUB_APP_CONFIGURED"] = bool(config.get("GITHUB_APP_ID") and config.get("GITHUB_PRIVATE_KEY"))
    if config.get("PUBLIC_URL"):
        config["PUBLIC_URL"] = str(config["PUBLIC_URL"]).rstrip("/")
    # The admin session cookie: out of reach of scripts, not sent on cross-site POSTs, HTTPS-only when served so.
    config["SESSION_COOKIE_HTTPONLY"] = True
    config["SESSION_COOKIE_SAMESITE"] = "Lax"
    config["SESSION_COOKIE_SECURE"] = str(config.get("PUBLIC_URL") or "").startswith("https://")
    config["PERMANENT_SESSION_LIFETIME"] = SESSION_LIFETIME

    config["ENV"] = str(config["ENV"]).strip().lower()
    if config["ENV"] not in ENVIRONMENTS:
        raise ConfigError(f"FREMFORGE_ENV must be one of {', '.join(ENVIRONMENTS)}, not {config['ENV']!r}")
    try:
        config["GITHUB_TIMEOUT_SECONDS"] = float(config["GITHUB_TIMEOUT_SECONDS"])
    except (TypeError, ValueError):
        raise ConfigError("FREMFORGE_GITHUB_TIMEOUT_SECONDS must be a number of seconds") from None
    production = config["ENV"] == "production" or config["GITHUB_APP_CONFIGURED"]
    if not config.get("SECRET_KEY"):
        if production and not config.get("TESTING"):
            raise ConfigError(
                "FREMFORGE_SECRET_KEY is not set. It is required in production (FREMFORGE_ENV=production "
                "or a GitHub App configured); generate one with: python -c 'import secrets; "
                "print(secrets.token_urlsafe(48))'"
            )
        config["SECRET_KEY"] = _instance_secret_key(Path(instance_path))
    if config["GITHUB_APP_CONFIGURED"] and not config.get("GITHUB_WEBHOOK_SECRET") and not config.get("TESTING"):
        # Without it every webhook would be refused (fail closed): installations and PRs would go unseen.
        raise ConfigError(
            "FREMFORGE_GITHUB_WEBHOOK_SECRET is not set. A configured GitHub App needs its webhook secret "
            "(the one entered in the app's settings on GitHub) to verify webhook deliveries."
        )


def normalise_database_url(url: str) -> str:
    """Map plain postgres URLs onto the psycopg 3 driver, the one the app ships with."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


def _instance_secret_key(instance: Path) -> str:
    """A random key kept in the instance folder, for local use without FREMFORGE_SECRET_KEY."""
    path = instance / "secret_key"
    if not path.exists():
        instance.mkdir(parents=True, exist_ok=True)
        # Written aside then linked into place, so concurrent workers all read the same whole key.
        tmp = instance / f".secret_key.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()
