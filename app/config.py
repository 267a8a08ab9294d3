"""The one place that reads the environment: FREMFORGE_* variables into typed settings, failing closed."""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import re
import secrets
import stat
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import sqlalchemy as sa
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

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
    "MAX_FINDINGS": 100_000,  # findings in one upload; past it a 413 (too_many_findings)
    "GITHUB_TIMEOUT_SECONDS": 10,  # per GitHub call made by the worker
    "CHECKPOINT_KEY_FILE": None,  # None: checkpoint_ed25519.pem in the instance folder, made when absent
    "LOG_FORMAT": "text",  # text (one line a record, as before) or json (one JSON object a line): app.logs
    "METRICS_TOKEN": None,  # None: GET /metrics is open (keep it on loopback); else it needs this bearer token
    "RATE_LIMIT": None,  # requests per token, e.g. "600/minute" (second, minute or hour); None: no limit
}
ENVIRONMENTS = ("development", "production")
LOG_FORMATS = ("text", "json")
SESSION_LIFETIME = timedelta(hours=12)  # an admin session's cookie; the server-side record decides (app.admin.sessions)
PREFIX = "FREMFORGE_"
# In production FREMFORGE_SECRET_KEY must carry at least 32 random bytes' worth (spec section 8), and be none of
# the values found in examples, tests and tutorials.
SECRET_KEY_BITS = 256
IN_ORDER = 8  # characters in a row each next to the last (abcdefgh): in no random key
WEAK_SECRET_KEYS = {
    "dev",
    "development",
    "prod",
    "production",
    "secret",
    "secret-key",
    "secret_key",
    "secretkey",
    "changeme",
    "change-me",
    "change_me",
    "password",
    "test",
    "test-secret",
    "testing",
    "default",
    "s",
    "x",
    "s" * 48,
}
PLACEHOLDER_WORDS = ("change", "replace", "example", "secret", "password", "insecure", "default", "fremforge")
GENERATE_KEY = "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
EXIT_STATUS = 3  # gunicorn's "worker failed to boot": its master then stops too, instead of starting workers forever


class ConfigError(SystemExit):
    """The configuration cannot be used; the message says which variable to set.

    A SystemExit (status 3): wherever it is raised at start-up (gunicorn, `flask --app wsgi ...`, `python -c`) the
    process ends without a traceback. create_app writes the message to stderr, one line, before raising it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(EXIT_STATUS)
        self.message = " ".join(message.split())  # one line, whatever the message was built from

    def __str__(self) -> str:
        return self.message


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
    if not 1 <= max_mb <= 4096:  # (not NaN either)
        raise ConfigError("FREMFORGE_MAX_UPLOAD_MB must be between 1 and 4096")
    config["MAX_UPLOAD_MB"] = max_mb
    config["MAX_UPLOAD_BYTES"] = int(max_mb * 1024 * 1024)
    # Compressed bodies are held to the same limit as what they decompress to.
    config["MAX_CONTENT_LENGTH"] = config["MAX_UPLOAD_BYTES"]
    try:
        max_findings = int(str(config["MAX_FINDINGS"]).strip())
    except ValueError:
        raise ConfigError("FREMFORGE_MAX_FINDINGS must be a whole number of findings") from None
    if not 1 <= max_findings <= 10_000_000:
        raise ConfigError("FREMFORGE_MAX_FINDINGS must be between 1 and 10000000")
    config["MAX_FINDINGS"] = max_findings
    # (requests, seconds) of the per-token limit (app.web.ratelimit), or None
    config["RATE_LIMIT_RULE"] = parse_rate_limit(config.get("RATE_LIMIT"))

    if config.get("DATABASE_URL"):
        config["DATABASE_URL"] = normalise_database_url(config["DATABASE_URL"])
        check_database_url(config["DATABASE_URL"])
    else:  # the instance folder is made when the database is first opened
        config["DATABASE_URL"] = f"sqlite:///{Path(instance_path) / 'fremforge.db'}"

    if config.get("GITHUB_PRIVATE_KEY_FILE") and not config.get("GITHUB_PRIVATE_KEY"):
        try:
            config["GITHUB_PRIVATE_KEY"] = Path(config["GITHUB_PRIVATE_KEY_FILE"]).read_text()
        except OSError as exc:
            raise ConfigError(f"FREMFORGE_GITHUB_PRIVATE_KEY_FILE cannot be read: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError("FREMFORGE_GITHUB_PRIVATE_KEY_FILE is not a PEM text file") from None
        if not config["GITHUB_PRIVATE_KEY"].strip():
            raise ConfigError("FREMFORGE_GITHUB_PRIVATE_KEY_FILE is empty: it must hold the App's private key (PEM)")
    if config.get("GITHUB_PRIVATE_KEY"):
        check_private_key(str(config["GITHUB_PRIVATE_KEY"]))
        if not str(config.get("GITHUB_APP_ID") or "").strip():  # the other half: "no App configured", said nowhere
            raise ConfigError(
                "The App's private key is set without FREMFORGE_GITHUB_APP_ID: set the App's id (its settings "
                'page, "App ID") too, or unset the key'
            )
    elif str(config.get("GITHUB_APP_ID") or "").strip():  # half an App: nothing would be posted, and nothing said
        raise ConfigError(
            "FREMFORGE_GITHUB_APP_ID is set without the App's private key: set FREMFORGE_GITHUB_PRIVATE_KEY_FILE "
            "(or FREMFORGE_GITHUB_PRIVATE_KEY) too, or unset the App id"
        )
    config["GITHUB_APP_CONFIGURED"] = bool(config.get("GITHUB_APP_ID") and config.get("GITHUB_PRIVATE_KEY"))
    oauth = {name: str(config.get(name) or "").strip() for name in ("GITHUB_CLIENT_ID", "GITHUB_CLIENT_SECRET")}
    if any(oauth.values()) and not all(oauth.values()):  # half of it: "Sign in with GitHub" would be missing, unsaid
        given, missing = sorted(oauth, key=lambda name: not oauth[name])
        raise ConfigError(
            f"FREMFORGE_{given} is set without FREMFORGE_{missing}: set both (the GitHub App's client ID and a client "
            'secret, for "Sign in with GitHub"), or neither'
        )
    if config.get("GITHUB_WEBHOOK_SECRET") and not str(config["GITHUB_WEBHOOK_SECRET"]).strip():  # spaces only
        raise ConfigError(
            "FREMFORGE_GITHUB_WEBHOOK_SECRET is blank: set the webhook secret entered on GitHub, or unset it"
        )
    if config.get("CHECKPOINT_KEY_FILE"):
        check_checkpoint_key_file(Path(str(config["CHECKPOINT_KEY_FILE"])))
    if config.get("PUBLIC_URL"):
        config["PUBLIC_URL"] = str(config["PUBLIC_URL"]).strip().rstrip("/")
        check_public_url(config["PUBLIC_URL"])
    # The admin session cookie: out of reach of scripts, not sent on cross-site POSTs, HTTPS-only when served so.
    # It holds the session's random id (and the CSRF token); who is signed in is kept in the database.
    config["SESSION_COOKIE_HTTPONLY"] = True
    config["SESSION_COOKIE_SAMESITE"] = "Lax"
    config["SESSION_COOKIE_SECURE"] = str(config.get("PUBLIC_URL") or "").startswith("https://")
    config["PERMANENT_SESSION_LIFETIME"] = SESSION_LIFETIME
    config["SESSION_REFRESH_EACH_REQUEST"] = False  # the cookie expires 12 h after sign-in, as its record does

    config["LOG_FORMAT"] = str(config.get("LOG_FORMAT") or "text").strip().lower()
    if config["LOG_FORMAT"] not in LOG_FORMATS:
        raise ConfigError(
            f"FREMFORGE_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, not {str(config['LOG_FORMAT'])[:50]!r}"
        )
    config["METRICS_TOKEN"] = str(config.get("METRICS_TOKEN") or "").strip() or None

    config["ENV"] = str(config["ENV"]).strip().lower()
    if config["ENV"] not in ENVIRONMENTS:
        raise ConfigError(f"FREMFORGE_ENV must be one of {', '.join(ENVIRONMENTS)}, not {config['ENV']!r}")
    try:
        config["GITHUB_TIMEOUT_SECONDS"] = float(config["GITHUB_TIMEOUT_SECONDS"])
    except (TypeError, ValueError):
        raise ConfigError("FREMFORGE_GITHUB_TIMEOUT_SECONDS must be a number of seconds") from None
    if not 0.1 <= config["GITHUB_TIMEOUT_SECONDS"] <= 300:  # (not NaN either): a call must end, and not at once
        raise ConfigError("FREMFORGE_GITHUB_TIMEOUT_SECONDS must be between 0.1 and 300 seconds")
    config["GITHUB_API_URL"] = str(config.get("GITHUB_API_URL") or DEFAULTS["GITHUB_API_URL"]).strip().rstrip("/")
    check_github_api_url(config["GITHUB_API_URL"])
    production = config["ENV"] == "production"
    if not config.get("SECRET_KEY"):
        if production and not config.get("TESTING"):
            raise ConfigError(
                "FREMFORGE_SECRET_KEY is not set. It is required in production (FREMFORGE_ENV=production); "
                "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        config["SECRET_KEY"] = _instance_secret_key(Path(instance_path))
    elif production:
        weakness = secret_key_weakness(str(config["SECRET_KEY"]))
        if weakness:
            raise ConfigError(
                f"FREMFORGE_SECRET_KEY is too weak for production ({weakness}); it needs at least 32 random bytes' "
                f"worth. Generate one with: {GENERATE_KEY}"
            )
    # In development a GitHub App may be tried without these: webhooks are then refused (503, fail closed), and the
    # links posted to GitHub name where `make run` serves (app.web.urls), never a request's Host header.
    strict = production and config["GITHUB_APP_CONFIGURED"] and not config.get("TESTING")
    if strict and not config.get("GITHUB_WEBHOOK_SECRET"):
        # Without it every webhook would be refused (fail closed): installations and PRs would go unseen.
        raise ConfigError(
            "FREMFORGE_GITHUB_WEBHOOK_SECRET is not set. A configured GitHub App needs its webhook secret "
            "(the one entered in the app's settings on GitHub) to verify webhook deliveries."
        )
    if strict and not config.get("PUBLIC_URL"):
        raise ConfigError(
            "FREMFORGE_PUBLIC_URL is not set. A configured GitHub App needs it in production: the links posted to "
            "GitHub are built from it, never from a request's Host header. Set it to the address people reach this "
            "service at, e.g. https://fremforge.example.com"
        )


RATE_LIMIT_UNITS = {"second": 1, "minute": 60, "hour": 3600}
RATE_LIMIT_FORMAT = re.compile(r"(\d{1,10})\s*/\s*(second|minute|hour)s?", re.ASCII | re.IGNORECASE)
MAX_RATE_LIMIT = 1_000_000_000  # requests per window (the count is a 32-bit column)


def parse_rate_limit(value: Any) -> tuple[int, int] | None:
    """`FREMFORGE_RATE_LIMIT` ("600/minute": a whole number of requests per second, minute or hour) as (requests,
    window seconds); None when unset or empty (no limit). Anything else is a ConfigError."""
    text = "" if value is None else str(value).strip()
    if not text:
        return None
    match = RATE_LIMIT_FORMAT.fullmatch(text)
    if match is None or not 1 <= int(match[1]) <= MAX_RATE_LIMIT:
        raise ConfigError(
            "FREMFORGE_RATE_LIMIT must be a whole number of requests (1 to 1000000000) per second, minute or hour, "
            f"such as 600/minute, not {text[:100]!r}"
        )
    return int(match[1]), RATE_LIMIT_UNITS[match[2].lower()]


def is_http_address(url: str) -> bool:
    """An absolute http(s) address, a path allowed: a host without white space or characters no host name has, a
    port (if any) from 0 to 65535, no query or fragment."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (a port that is no number from 0 to 65535 raises)
    except ValueError:
        return False
    host_ok = bool(parts.hostname) and not any(ch.isspace() or ch in '\\"<>^`{|}' for ch in parts.hostname or "")
    return parts.scheme in ("http", "https") and host_ok and not parts.query and not parts.fragment


def check_github_api_url(url: str) -> None:
    """GITHUB_API_URL must be an absolute http(s) address: github.com's API, or a GitHub Enterprise Server's
    (`https://github.example.com/api/v3`)."""
    if not is_http_address(url):
        raise ConfigError(
            "FREMFORGE_GITHUB_API_URL must be an absolute http(s) address such as https://api.github.com (or a "
            f"GitHub Enterprise Server's https://HOST/api/v3), not {url[:100]!r}"
        )


def check_public_url(url: str) -> None:
    """PUBLIC_URL must be an absolute http(s) address (a path is allowed, for a service under a prefix)."""
    if not is_http_address(url):
        raise ConfigError(
            f"FREMFORGE_PUBLIC_URL must be an absolute http(s) address such as https://fremforge.example.com, "
            f"not {url[:100]!r}"
        )


def secret_key_weakness(key: str) -> str | None:
    """Why `key` is no production secret (a well-known value, too short, too little variety); None when it will do.

    Its strength is estimated from its length and the kinds of character in it: hex digits give 4 bits each, a
    mix of letters, digits and symbols up to about 6.6; 256 bits are needed (token_urlsafe(32), `openssl rand
    -base64 32` and `openssl rand -hex 32` make it). A key that repeats a short pattern, or uses few distinct
    characters, is refused whatever its length.
    """
    folded = key.strip().lower()
    if folded in WEAK_SECRET_KEYS or any(word in folded for word in PLACEHOLDER_WORDS):
        return "a well-known or placeholder value"
    bits = len(key) * math.log2(_alphabet(key))
    # A little slack: a random key need not use every kind of character its generator could have chosen (one
    # token_urlsafe(32) in some 7,000 has no digit and no - or _, and would count 245 bits).
    if bits < SECRET_KEY_BITS - 16:
        return f"{len(key)} characters of this kind carry about {int(bits)} bits, not {SECRET_KEY_BITS}"
    if len(set(key)) < 12 or _periodic(key):
        return "it repeats a few characters"
    if _in_order(key):
        return "it runs through characters in order (0123…, abcd…)"
    return None


def _in_order(key: str) -> bool:
    """Whether the key holds a run of IN_ORDER characters each next to the last (01234567, hgfedcba): one in a
    random hex key of 64 is a chance of about one in four million."""
    run, step = 1, 0
    for a, b in itertools.pairwise(key):
        d = ord(b) - ord(a)
        run, step = (run + 1, d) if abs(d) == 1 and (run == 1 or d == step) else (2 if abs(d) == 1 else 1, d)
        if run >= IN_ORDER:
            return True
    return False


def _periodic(key: str) -> bool:
    """Whether `key` is a shorter piece repeated (abcabcabc...)."""
    return any(key == (key[:p] * (len(key) // p + 1))[: len(key)] for p in range(1, len(key) // 2 + 1))


def _alphabet(key: str) -> int:
    """How many characters each of the key's characters could have been, going by the kinds it uses."""
    if all(c in "0123456789abcdef" for c in key) or all(c in "0123456789ABCDEF" for c in key):
        return 16
    size = 0
    size += 26 if any(c.islower() and c.isascii() for c in key) else 0
    size += 26 if any(c.isupper() and c.isascii() for c in key) else 0
    size += 10 if any(c.isdigit() and c.isascii() for c in key) else 0
    size += 33 if any(not c.isalnum() and c.isascii() for c in key) else 0
    size += 128 if any(not c.isascii() for c in key) else 0
    return max(size, 2)


def normalise_database_url(url: str) -> str:
    """Map plain postgres URLs onto the psycopg 3 driver, the one the app ships with."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


DATABASE_DRIVERS = ("sqlite", "sqlite+pysqlite", "postgresql+psycopg")
DATABASE_URL_FORMS = "sqlite:///PATH or postgresql://USER@HOST:PORT/DATABASE"


def check_checkpoint_key_file(path: Path) -> None:
    """CHECKPOINT_KEY_FILE, when this process can read it, must hold an Ed25519 private key (PEM); when it does not
    exist, its folder is where the key is made on first use. One this process may not read (a command run as another
    user) is left to the processes that sign, which say so when they do."""
    try:
        if path.is_dir():
            raise ConfigError(f"FREMFORGE_CHECKPOINT_KEY_FILE names a folder, not a key file: {path}")
        pem = path.read_bytes()
    except OSError:  # absent, or not ours to read
        return
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(
            f"FREMFORGE_CHECKPOINT_KEY_FILE does not hold a PEM private key (unencrypted): {path}"
        ) from None
    if not isinstance(private, Ed25519PrivateKey):
        raise ConfigError(f"FREMFORGE_CHECKPOINT_KEY_FILE holds another kind of key than Ed25519: {path}")


def check_database_url(url: str) -> None:
    """Refuse a FREMFORGE_DATABASE_URL that is no URL, or not of SQLite or PostgreSQL (the backends the app ships
    with), in one line that never repeats the URL (it may hold a password)."""
    try:
        parsed = sa.engine.make_url(url)
        if parsed.port is not None and not 1 <= parsed.port <= 65535:
            raise ValueError("no such port")
    except (sa.exc.ArgumentError, ValueError):
        raise ConfigError(f"FREMFORGE_DATABASE_URL is not a database URL: use {DATABASE_URL_FORMS}") from None
    driver = parsed.drivername
    if driver not in DATABASE_DRIVERS:
        shown = driver[:30] if driver.isascii() and driver.isprintable() else "another"
        raise ConfigError(
            f"FREMFORGE_DATABASE_URL must be a SQLite or PostgreSQL URL ({DATABASE_URL_FORMS}), not {shown!r}"
        )
    if driver.startswith("postgresql"):
        known = {option.keyword.decode() for option in psycopg.pq.Conninfo.get_defaults()}
        unknown = sorted(key for key in parsed.query if key not in known)
        if unknown:
            shown = ", ".join(repr(k[:30]) for k in unknown[:3])
            raise ConfigError(f"FREMFORGE_DATABASE_URL has options PostgreSQL does not know: {shown}")
    elif parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
        folder = Path(parsed.database).parent
        if not folder.is_dir():
            raise ConfigError(f"FREMFORGE_DATABASE_URL names a SQLite file in a folder that does not exist: {folder}")


def check_private_key(pem: str) -> None:
    """Refuse a GitHub App private key that is not an RSA key in PEM (what GitHub gives an App), in one line that
    never shows the key: without it no call to GitHub could be made, and the worker would retry for ever."""
    where = "FREMFORGE_GITHUB_PRIVATE_KEY (or the file FREMFORGE_GITHUB_PRIVATE_KEY_FILE names)"
    try:
        key = serialization.load_pem_private_key(pem.strip().encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(
            f"{where} is not a private key in PEM: use the .pem file GitHub generated for the App "
            "(the App's settings, Private keys)"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"{where} is not an RSA key: GitHub Apps sign with the RSA key GitHub generated")


def _instance_secret_key(instance: Path) -> str:
    """A random key kept in the instance folder, for local use without FREMFORGE_SECRET_KEY."""
    path = instance / "secret_key"
    if not path.exists():
        make_private_dir(instance)
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


def make_private_dir(path: Path) -> None:
    """Create `path` (and missing parents) readable by this user alone (0700); an existing folder is left as it is."""
    if path.is_dir():
        return
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        path.chmod(0o700)  # mkdir's mode is narrowed by the umask, never widened; this makes it exact


def narrow_private(path: Path, mode: int) -> None:
    """A folder or file of this user's that others may read or enter (permissions wider than `mode`, such as 0755 or
    0644 from an earlier release, a backup restored or a chmod) narrowed to `mode`, with a warning naming both modes;
    its setgid and sticky bits stay. Left as it is when absent, a symbolic link (its target may be shared) or another
    user's (a chmod would fail there)."""
    try:
        st = path.lstat()
    except OSError:
        return
    old = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode) or old & 0o777 & ~mode == 0 or st.st_uid != os.getuid():
        return
    new = old & (mode | 0o7000)
    try:
        path.chmod(new)
    except OSError:
        return
    logging.getLogger(__name__).warning(
        "config.narrowed path=%s mode=%o was=%o: readable by this user alone, as the app makes it", path, new, old
    )


def make_private_file(path: Path) -> bool:
    """Create an empty file at `path` readable and writable by this user alone (0600) unless it exists; True when
    made. Used for the SQLite database before SQLite opens it (SQLite would create it 0644, and its -wal and -shm
    files take the database file's mode)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    return True
