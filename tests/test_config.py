"""Configuration: FREMFORGE_* variables as strings, sensible defaults, failing closed in production."""

from __future__ import annotations

import base64
import logging
import os
import re
import secrets
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask

from app import create_app, db, migrate
from app.config import ConfigError, secret_key_weakness
from app.models import OutboxItem
from tests.factories import make_org, make_token, post, seed

STRONG_KEY = "kV3q9Zt2-Lw8xYb_Rm4NcH7pJ0sEfUa6DgT1iOyQhWn5XrBzCvKe"  # 52 characters of token_urlsafe's alphabet
PEM = (  # a GitHub App's private key, as GitHub gives it: RSA in PEM
    rsa.generate_private_key(public_exponent=65537, key_size=2048)
    .private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    .decode()
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("FREMFORGE_"):
            monkeypatch.delenv(key)


def test_defaults_use_sqlite_in_instance_folder_and_a_generated_key(tmp_path, monkeypatch):
    app = create_app()
    assert app.config["DATABASE_URL"].startswith("sqlite:///") and app.config["DATABASE_URL"].endswith(
        "instance/fremforge.db"
    )
    assert app.config["MAX_UPLOAD_BYTES"] == 64 * 1024 * 1024
    assert app.config["GITHUB_API_URL"] == "https://api.github.com"
    assert len(app.config["SECRET_KEY"]) >= 32
    assert create_app().config["SECRET_KEY"] == app.config["SECRET_KEY"]  # kept in the instance folder


def test_values_are_read_as_strings(monkeypatch):
    monkeypatch.setenv("FREMFORGE_PUBLIC_URL", "https://fremforge.example.com")  # a configured App needs it
    monkeypatch.setenv("FREMFORGE_GITHUB_APP_ID", "1e5")
    monkeypatch.setenv("FREMFORGE_GITHUB_PRIVATE_KEY", PEM)
    monkeypatch.setenv("FREMFORGE_GITHUB_WEBHOOK_SECRET", "w")
    monkeypatch.setenv("FREMFORGE_GITHUB_CLIENT_ID", "0012")
    monkeypatch.setenv("FREMFORGE_GITHUB_CLIENT_SECRET", "c")
    monkeypatch.setenv("FREMFORGE_SECRET_KEY", "s")
    monkeypatch.setenv("FREMFORGE_MAX_UPLOAD_MB", "2")
    app = create_app()
    assert app.config["GITHUB_APP_ID"] == "1e5"
    assert app.config["GITHUB_CLIENT_ID"] == "0012"
    assert app.config["MAX_UPLOAD_BYTES"] == 2 * 1024 * 1024


def test_postgres_urls_use_psycopg(monkeypatch):
    monkeypatch.setenv("FREMFORGE_DATABASE_URL", "postgresql://u@127.0.0.1:5432/db")
    app = create_app()
    assert app.config["DATABASE_URL"] == "postgresql+psycopg://u@127.0.0.1:5432/db"


@pytest.mark.parametrize(
    "env",
    [
        {"FREMFORGE_ENV": "production"},
        {"FREMFORGE_ENV": "production", "FREMFORGE_GITHUB_APP_ID": "123", "FREMFORGE_GITHUB_PRIVATE_KEY": PEM},
    ],
)
def test_production_without_secret_key_refuses_to_start(monkeypatch, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match="FREMFORGE_SECRET_KEY"):
        create_app()


@pytest.mark.parametrize("value", ["lots", "0", "-1", "99999", "1e-9", "0.5", "nan", "inf"])
def test_bad_upload_limit_is_refused(monkeypatch, value):
    monkeypatch.setenv("FREMFORGE_MAX_UPLOAD_MB", value)
    with pytest.raises(ConfigError, match="MAX_UPLOAD_MB"):
        create_app()


def test_private_key_file_is_read(monkeypatch, tmp_path):
    monkeypatch.setenv("FREMFORGE_PUBLIC_URL", "https://fremforge.example.com")  # a configured App needs it
    key = tmp_path / "app.pem"
    key.write_text(PEM)
    monkeypatch.setenv("FREMFORGE_GITHUB_PRIVATE_KEY_FILE", str(key))
    monkeypatch.setenv("FREMFORGE_GITHUB_APP_ID", "7")
    monkeypatch.setenv("FREMFORGE_SECRET_KEY", "s")
    monkeypatch.setenv("FREMFORGE_GITHUB_WEBHOOK_SECRET", "w")
    app = create_app()
    assert app.config["GITHUB_PRIVATE_KEY"] == PEM and app.config["GITHUB_APP_CONFIGURED"]
    monkeypatch.setenv("FREMFORGE_GITHUB_PRIVATE_KEY_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="cannot be read"):
        create_app()


def test_github_app_without_webhook_secret_refuses_to_start_in_production(monkeypatch):
    monkeypatch.setenv("FREMFORGE_PUBLIC_URL", "https://fremforge.example.com")  # a configured App needs it
    monkeypatch.setenv("FREMFORGE_GITHUB_APP_ID", "7")
    monkeypatch.setenv("FREMFORGE_GITHUB_PRIVATE_KEY", PEM)
    monkeypatch.setenv("FREMFORGE_ENV", "production")
    monkeypatch.setenv("FREMFORGE_SECRET_KEY", STRONG_KEY)
    with pytest.raises(ConfigError, match="FREMFORGE_GITHUB_WEBHOOK_SECRET"):
        create_app()
    monkeypatch.setenv("FREMFORGE_GITHUB_WEBHOOK_SECRET", "w")
    assert create_app().config["GITHUB_WEBHOOK_SECRET"] == "w"
    # Without a GitHub App the secret is optional: webhooks are then refused with 503 (fail closed).
    monkeypatch.delenv("FREMFORGE_GITHUB_APP_ID")
    monkeypatch.delenv("FREMFORGE_GITHUB_PRIVATE_KEY")
    monkeypatch.delenv("FREMFORGE_GITHUB_WEBHOOK_SECRET")
    assert not create_app().config["GITHUB_APP_CONFIGURED"]


def test_flask_keys_cannot_be_set_from_the_environment(monkeypatch):
    monkeypatch.setenv("FREMFORGE_ENV", "Production")
    monkeypatch.setenv("FREMFORGE_TESTING", "0")  # must not switch off the production check
    monkeypatch.setenv("FREMFORGE_DEBUG", "false")
    with pytest.raises(ConfigError, match="FREMFORGE_SECRET_KEY"):
        create_app()
    monkeypatch.setenv("FREMFORGE_SECRET_KEY", STRONG_KEY)
    app = create_app()
    assert app.config["ENV"] == "production" and not app.debug and not app.testing


def test_unknown_environment_name_is_refused(monkeypatch):
    monkeypatch.setenv("FREMFORGE_ENV", "prod")
    with pytest.raises(ConfigError, match="FREMFORGE_ENV"):
        create_app()


# -- production refuses what would be unsafe, in one line on stderr (spec section 8) ---------------------------------

ROOT = Path(__file__).resolve().parents[1]
WEAK_KEYS = [
    "dev",
    "secret",
    "changeme",
    "test",
    "test-secret",
    "s" * 48,
    "a" * 64,
    "0123456789" * 7,
    "Tr0ub4dor&3",  # short
    str(uuid.UUID(int=0x5D41402ABC4B2A76B9719D911017C592)),  # 122 random bits at most
    "kV3q9Zt2Lw8xYb4Rm",  # 17 random-looking characters
    "9f1c2b7e4a6d8053c1e2f4a7b9d0e3c5",  # 16 random bytes in hex: half of what is needed
    "change-me-to-a-long-random-string-of-many-characters-42",
    "replace_this_with_your_own_production_secret_value_2024",
]


@pytest.mark.parametrize("key", WEAK_KEYS)
def test_weak_secret_keys_are_named_weak(key):
    assert secret_key_weakness(key)


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("short", "5 characters of this kind carry about 23 bits, not 256"),  # its length, not its variety
        ("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ", "it runs through characters in order"),
        ("zyxwvutsrqponmlkjihgfedcba9876543210ZYXWVUTSRQ", "it runs through characters in order"),
        ("kV3q9Zt2Lw8xYb4RmNcH7pJ0s-Qe6Ud1Gi5Fo_abcdefgh", "it runs through characters in order"),
        ("a" * 64, "it repeats a few characters"),
    ],
)
def test_a_weak_secret_key_is_refused_for_what_makes_it_weak(key, why):
    assert (secret_key_weakness(key) or "").startswith(why)


@pytest.mark.parametrize(
    "make",
    [
        lambda: secrets.token_urlsafe(32),
        lambda: secrets.token_urlsafe(48),
        lambda: secrets.token_hex(32),
        lambda: base64.b64encode(secrets.token_bytes(32)).decode(),  # openssl rand -base64 32
    ],
    ids=["token_urlsafe-32", "token_urlsafe-48", "token_hex-32", "base64-32"],
)
def test_keys_of_32_random_bytes_are_strong(make):
    weak = [(key, why) for key in (make() for _ in range(300)) if (why := secret_key_weakness(key))]
    assert weak == []


def test_production_refuses_a_weak_secret_key(monkeypatch, tmp_path):
    monkeypatch.setenv("FREMFORGE_ENV", "production")
    monkeypatch.setenv("FREMFORGE_DATABASE_URL", f"sqlite:///{tmp_path / 'p.db'}")
    monkeypatch.setenv("FREMFORGE_SECRET_KEY", "changeme")
    with pytest.raises(ConfigError, match="FREMFORGE_SECRET_KEY is too weak"):
        create_app()
    monkeypatch.setenv("FREMFORGE_SECRET_KEY", STRONG_KEY)
    assert create_app().config["SECRET_KEY"] == STRONG_KEY
    monkeypatch.setenv("FREMFORGE_ENV", "development")  # a development server may use what it likes
    monkeypatch.setenv("FREMFORGE_SECRET_KEY", "dev")
    assert create_app().config["SECRET_KEY"] == "dev"


APP_ENV = {
    "FREMFORGE_GITHUB_APP_ID": "7",
    "FREMFORGE_GITHUB_PRIVATE_KEY": PEM,
    "FREMFORGE_GITHUB_WEBHOOK_SECRET": "w" * 40,
}


def test_a_github_app_without_public_url_is_refused_in_production(monkeypatch, tmp_path):
    """HEAD before: an upload's Host header chose where the status posted to GitHub linked to (a phishing host, from
    any CI token)."""
    monkeypatch.setenv("FREMFORGE_DATABASE_URL", f"sqlite:///{tmp_path / 'p.db'}")
    monkeypatch.setenv("FREMFORGE_SECRET_KEY", STRONG_KEY)
    monkeypatch.setenv("FREMFORGE_ENV", "production")
    for key, value in APP_ENV.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match="FREMFORGE_PUBLIC_URL is not set"):
        create_app()
    monkeypatch.setenv("FREMFORGE_PUBLIC_URL", "https://fremforge.example.com/")
    assert create_app().config["PUBLIC_URL"] == "https://fremforge.example.com"
    for key in APP_ENV:  # without a GitHub App nothing is posted to GitHub: no PUBLIC_URL needed
        monkeypatch.delenv(key)
    monkeypatch.delenv("FREMFORGE_PUBLIC_URL")
    assert not create_app().config["GITHUB_APP_CONFIGURED"]


def test_a_github_app_in_development_starts_without_key_public_url_or_webhook_secret(monkeypatch, tmp_path):
    """Spec §8: only production refuses to start without them (HEAD before: a configured App was taken for
    production, so trying one in development against a test GitHub needed all three). The secret key is the
    instance's own; webhooks are refused (503, fail closed); the links an upload asks to post name where `make run`
    serves, never the upload's Host header."""
    monkeypatch.setenv("FREMFORGE_DATABASE_URL", f"sqlite:///{tmp_path / 'p.db'}")
    monkeypatch.setenv("FREMFORGE_ENV", "development")
    for key, value in APP_ENV.items():
        if key != "FREMFORGE_GITHUB_WEBHOOK_SECRET":
            monkeypatch.setenv(key, value)
    app = create_app()
    assert app.config["GITHUB_APP_CONFIGURED"] and len(app.config["SECRET_KEY"]) >= 32
    migrate.upgrade(app)
    make_org(app, "acme")
    token = make_token(app, "acme")
    client = app.test_client()
    r = post(client, token, seed(), headers={"Host": "phish.example"})
    assert r.status_code == 202, r.json
    with app.app_context():
        [row] = db.session().scalars(sa.select(OutboxItem)).all()
        assert row.commit_status["target_url"].startswith("http://127.0.0.1:8000/admin/orgs/acme/")
    hook = client.post("/webhooks/github", data=b"{}", headers={"X-GitHub-Event": "ping"})
    assert hook.status_code == 503 and hook.json["error"] == "webhooks_not_configured"


@pytest.mark.parametrize(
    "url",
    [
        "fremforge.example.com",
        "ftp://fremforge.example.com",
        "https://",
        "https://x/?a=1",
        "https://x.example:99999",  # review: every link would have been built from these
        "https://x.example:abc",
        "https://x example.com",
    ],
)
def test_a_public_url_that_is_no_http_address_is_refused(monkeypatch, url):
    monkeypatch.setenv("FREMFORGE_PUBLIC_URL", url)
    with pytest.raises(ConfigError, match="FREMFORGE_PUBLIC_URL must be an absolute http"):
        create_app()


@pytest.mark.parametrize(
    "url",
    [
        "notaurl",
        "api.github.com",
        "ftp://api.github.com",
        "https://",
        "https://x/?a=1",
        "https://ghe.example:99999/api/v3",
    ],
)
def test_a_github_api_url_that_is_no_http_address_is_refused(monkeypatch, url):
    """Else the worker would start and fail every post, saying GitHub could not be reached."""
    monkeypatch.setenv("FREMFORGE_GITHUB_API_URL", url)
    with pytest.raises(ConfigError, match="FREMFORGE_GITHUB_API_URL must be an absolute http"):
        create_app()


def test_github_api_url_defaults_to_github_com_and_loses_a_trailing_slash(monkeypatch):
    monkeypatch.setenv("FREMFORGE_GITHUB_API_URL", "")
    assert create_app().config["GITHUB_API_URL"] == "https://api.github.com"
    monkeypatch.setenv("FREMFORGE_GITHUB_API_URL", "https://github.example.com/api/v3/")
    assert create_app().config["GITHUB_API_URL"] == "https://github.example.com/api/v3"


@pytest.mark.parametrize("value", ["soon", "-1", "0", "nan", "inf", "301"])
def test_a_bad_github_timeout_is_refused(monkeypatch, value):
    monkeypatch.setenv("FREMFORGE_GITHUB_TIMEOUT_SECONDS", value)
    with pytest.raises(ConfigError, match="FREMFORGE_GITHUB_TIMEOUT_SECONDS must be"):
        create_app()


def start_up(tmp_path: Path, env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    """Run a start-up command from the repository root with only these FREMFORGE_* variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FREMFORGE_")}
    clean["FREMFORGE_DATABASE_URL"] = f"sqlite:///{tmp_path / 'start.db'}"
    return subprocess.run(
        list(command), cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=120, check=False
    )


PYTHON_IMPORT = (sys.executable, "-c", "import wsgi")
FLASK_CLI = (sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade")


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"FREMFORGE_SECRET_KEY": "changeme"}, "FREMFORGE_SECRET_KEY is too weak for production"),
        ({"FREMFORGE_SECRET_KEY": "kV3q9Zt2Lw8xYb4RmNcH7pJ0s"}, "FREMFORGE_SECRET_KEY is too weak for production"),
        ({}, "FREMFORGE_SECRET_KEY is not set"),
        ({"FREMFORGE_SECRET_KEY": STRONG_KEY, **APP_ENV}, "FREMFORGE_PUBLIC_URL is not set"),
        ({"FREMFORGE_SECRET_KEY": STRONG_KEY, "FREMFORGE_DATABASE_URL": "garbage"}, "is not a database URL"),
        ({"FREMFORGE_SECRET_KEY": STRONG_KEY, "FREMFORGE_DATABASE_URL": "mysql://u:pw@db/x"}, "not 'mysql'"),
        (
            {"FREMFORGE_SECRET_KEY": STRONG_KEY, **APP_ENV, "FREMFORGE_GITHUB_PRIVATE_KEY": "not a key"},
            "is not a private key in PEM",
        ),
    ],
    ids=["well-known-key", "short-key", "no-key", "app-without-public-url", "url", "mysql", "private-key"],
)
@pytest.mark.parametrize("command", [PYTHON_IMPORT, FLASK_CLI], ids=["python-import", "flask-cli"])
def test_production_refuses_to_start_with_one_line_and_no_traceback(tmp_path, env, says, command):
    done = start_up(tmp_path, {"FREMFORGE_ENV": "production", **env}, *command)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("fremforge cannot start: ") and says in lines[0]
    assert "Traceback" not in done.stderr + done.stdout
    key = env.get("FREMFORGE_SECRET_KEY", "")
    if len(key) > 10:
        assert key not in done.stderr  # the refused key is not printed
    assert not (tmp_path / "start.db").exists() or (tmp_path / "start.db").stat().st_size == 0  # nothing migrated


@pytest.mark.parametrize(
    "url,says",
    [
        ("garbage", "FREMFORGE_DATABASE_URL is not a database URL"),
        ("mysql://fremforge:hunter2@db/fremforge", "not 'mysql'"),
        ("postgresql+asyncpg://fremforge:hunter2@db/fremforge", "not 'postgresql+asyncpg'"),
    ],
)
def test_a_database_url_of_no_shipped_backend_is_refused_without_showing_it(monkeypatch, url, says):
    monkeypatch.setenv("FREMFORGE_DATABASE_URL", url)
    with pytest.raises(ConfigError, match=re.escape(says)) as refused:
        create_app()
    assert "hunter2" not in str(refused.value) and "sqlite:///PATH or postgresql://" in str(refused.value)


def test_a_github_app_key_that_is_no_rsa_pem_is_refused_without_showing_it(monkeypatch):
    monkeypatch.setenv("FREMFORGE_PUBLIC_URL", "https://fremforge.example.com")  # a configured App needs it
    monkeypatch.setenv("FREMFORGE_GITHUB_APP_ID", "7")
    monkeypatch.setenv("FREMFORGE_GITHUB_WEBHOOK_SECRET", "w")
    monkeypatch.setenv("FREMFORGE_SECRET_KEY", STRONG_KEY)
    monkeypatch.setenv("FREMFORGE_GITHUB_PRIVATE_KEY", PEM.replace("A", "B"))  # a PEM whose contents are not a key
    with pytest.raises(ConfigError, match="is not a private key in PEM") as refused:
        create_app()
    assert "BEGIN" not in str(refused.value)
    elliptic = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    monkeypatch.setenv("FREMFORGE_GITHUB_PRIVATE_KEY", elliptic.decode())
    with pytest.raises(ConfigError, match="is not an RSA key"):
        create_app()
    monkeypatch.setenv("FREMFORGE_GITHUB_PRIVATE_KEY", PEM)
    assert create_app().config["GITHUB_APP_CONFIGURED"]


@pytest.mark.parametrize(
    "url,says",
    [
        ("postgresql://fremforge:hunter2@db:notaport/fremforge", "is not a database URL"),
        ("postgresql://fremforge:hunter2@db:99999/fremforge", "is not a database URL"),
        ("postgresql://fremforge:hunter2@db/fremforge?foo=bar", "options PostgreSQL does not know: 'foo'"),
        ("sqlite:////nonexistent/folder/fremforge.db", "a folder that does not exist: /nonexistent/folder"),
    ],
    ids=["port", "port-range", "option", "folder"],
)
def test_a_database_url_that_cannot_work_is_refused_at_start(monkeypatch, url, says):
    monkeypatch.setenv("FREMFORGE_DATABASE_URL", url)
    with pytest.raises(ConfigError, match=re.escape(says)) as refused:
        create_app()
    assert "hunter2" not in str(refused.value)


def test_postgresql_options_libpq_knows_are_taken(monkeypatch):
    monkeypatch.setenv("FREMFORGE_DATABASE_URL", "postgresql://u@127.0.0.1/db?sslmode=prefer&connect_timeout=3")
    assert create_app().config["DATABASE_URL"].endswith("?sslmode=prefer&connect_timeout=3")


@pytest.mark.parametrize("given", ["GITHUB_CLIENT_ID", "GITHUB_CLIENT_SECRET"])
def test_half_of_the_oauth_credentials_is_refused(monkeypatch, given):
    """A client id without its secret (or the other way round) would leave the admin pages without "Sign in with
    GitHub", the reason told to nobody at start."""
    monkeypatch.setenv(f"FREMFORGE_{given}", "Iv1.0123456789abcdef")
    missing = ({"GITHUB_CLIENT_ID", "GITHUB_CLIENT_SECRET"} - {given}).pop()
    monkeypatch.setenv(f"FREMFORGE_{missing}", "  ")
    with pytest.raises(ConfigError, match=f"FREMFORGE_{given} is set without FREMFORGE_{missing}"):
        create_app()
    monkeypatch.setenv(f"FREMFORGE_{missing}", "the-other-half")
    assert create_app().config[given] == "Iv1.0123456789abcdef"


def test_half_a_github_app_is_refused(monkeypatch, tmp_path):
    """An App id whose key is missing, empty or not text would leave the app posting nothing, silently."""
    monkeypatch.setenv("FREMFORGE_PUBLIC_URL", "https://fremforge.example.com")  # a configured App needs it
    monkeypatch.setenv("FREMFORGE_GITHUB_APP_ID", "7")
    monkeypatch.setenv("FREMFORGE_GITHUB_WEBHOOK_SECRET", "w")
    monkeypatch.setenv("FREMFORGE_SECRET_KEY", STRONG_KEY)
    with pytest.raises(ConfigError, match="FREMFORGE_GITHUB_APP_ID is set without the App's private key"):
        create_app()
    key = tmp_path / "app.pem"
    monkeypatch.setenv("FREMFORGE_GITHUB_PRIVATE_KEY_FILE", str(key))
    key.write_text("\n")
    with pytest.raises(ConfigError, match="FREMFORGE_GITHUB_PRIVATE_KEY_FILE is empty"):
        create_app()
    key.write_bytes(b"\xff\xfe-----BEGIN")
    with pytest.raises(ConfigError, match="is not a PEM text file"):
        create_app()
    key.write_text(PEM)
    assert create_app().config["GITHUB_APP_CONFIGURED"]
    monkeypatch.delenv("FREMFORGE_GITHUB_APP_ID")  # review: the other half started as "no App configured"
    with pytest.raises(ConfigError, match="private key is set without FREMFORGE_GITHUB_APP_ID"):
        create_app()


def test_production_starts_with_a_strong_key_and_a_public_url(tmp_path):
    env = {"FREMFORGE_ENV": "production", "FREMFORGE_SECRET_KEY": STRONG_KEY, **APP_ENV}
    env["FREMFORGE_PUBLIC_URL"] = "https://fremforge.example.com"
    done = start_up(tmp_path, env, *PYTHON_IMPORT)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "options",
    [("--workers", "2", "--preload"), ("--workers", "1")],
    ids=["preloaded", "one-worker"],
)
def test_gunicorn_stops_with_the_reason_in_one_line(tmp_path, options):
    """The master stops (status 3: "worker failed to boot", not endless restarts), having printed our line only.

    (Several workers loading the app each print it, and gunicorn 27's master may then trip over its own halt with a
    traceback of its own; loaded once in the master, with --preload, the line is the only output.)"""
    env = {"FREMFORGE_ENV": "production", "FREMFORGE_SECRET_KEY": "changeme"}
    command = (sys.executable, "-m", "gunicorn", *options, "--bind", "127.0.0.1:0", "wsgi:app")
    done = start_up(tmp_path, env, *command)
    assert done.returncode == 3, done.stderr
    reasons = [line for line in done.stderr.splitlines() if line.startswith("fremforge cannot start: ")]
    assert len(reasons) == 1 and "FREMFORGE_SECRET_KEY is too weak for production" in reasons[0], done.stderr
    assert "Traceback" not in done.stderr
    if "--preload" in options:
        assert done.stderr.strip() == reasons[0]


# -- the instance folder and the SQLite database are this user's alone ------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_instance_folder_is_made_0700_and_the_database_0600(monkeypatch, tmp_path):
    instance = tmp_path / "instance"
    monkeypatch.setattr(Flask, "auto_find_instance_path", lambda self: str(instance))
    old_umask = os.umask(0o022)  # the usual umask, which leaves new files readable by everyone
    try:
        app = create_app()  # the defaults: SQLite and a generated secret key, both in the instance folder
        try:
            migrate.upgrade(app)
            make_org(app, "acme")  # a write: the writers' lock file beside the database
        finally:
            app.extensions["fremforge.db"].engine.dispose()
    finally:
        os.umask(old_umask)
    assert app.instance_path == str(instance)
    assert mode(instance) == 0o700
    assert mode(instance / "fremforge.db") == 0o600
    assert mode(instance / "secret_key") == 0o600
    for journal in instance.glob("fremforge.db-*"):  # -wal, -shm: SQLite gives them the database's mode
        assert mode(journal) == 0o600, journal
    lock = instance / "fremforge.db.write-lock"
    assert lock.exists() and mode(lock) & 0o022 == 0  # no one else may write it


def test_an_instance_folder_and_database_open_to_others_are_narrowed(monkeypatch, tmp_path, caplog):
    """HEAD: a folder and files that existed (from an earlier release, a restore, a chmod) were left 0755 and 0644."""
    instance = tmp_path / "instance"
    monkeypatch.setattr(Flask, "auto_find_instance_path", lambda self: str(instance))
    app = create_app()
    try:
        migrate.upgrade(app)
        make_org(app, "acme")
    finally:
        app.extensions["fremforge.db"].engine.dispose()
    files = [instance / "fremforge.db", *instance.glob("fremforge.db-*")]
    instance.chmod(0o755)
    for path in files:
        path.chmod(0o644)
    caplog.set_level(logging.WARNING, logger="app.config")
    create_app().extensions["fremforge.db"].engine.dispose()
    assert mode(instance) == 0o700
    assert {path.name: mode(path) for path in files} == {path.name: 0o600 for path in files}
    assert "config.narrowed" in caplog.text and "was=755" in caplog.text and "was=644" in caplog.text


def test_a_sqlite_database_elsewhere_is_made_0600_too(tmp_path):
    old_umask = os.umask(0o022)
    try:
        app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'elsewhere.db'}", "SECRET_KEY": "x"})
        try:
            migrate.upgrade(app)
        finally:
            app.extensions["fremforge.db"].engine.dispose()
    finally:
        os.umask(old_umask)
    assert mode(tmp_path / "elsewhere.db") == 0o600


def test_a_webhook_secret_of_spaces_only_is_refused(monkeypatch):
    """Every delivery would be checked against a key of blanks: a typo in an env file, not a secret."""
    monkeypatch.setenv("FREMFORGE_GITHUB_WEBHOOK_SECRET", "  ")
    with pytest.raises(ConfigError, match="FREMFORGE_GITHUB_WEBHOOK_SECRET is blank"):
        create_app()


def test_a_checkpoint_key_file_that_is_no_ed25519_key_is_refused_at_start(monkeypatch, tmp_path):
    """Else the app started, and every checkpoint answered 503 naming the server's file to any org token."""
    key = tmp_path / "checkpoint.pem"
    monkeypatch.setenv("FREMFORGE_CHECKPOINT_KEY_FILE", str(tmp_path))
    with pytest.raises(ConfigError, match="names a folder"):
        create_app()
    monkeypatch.setenv("FREMFORGE_CHECKPOINT_KEY_FILE", str(key))
    key.write_text("not a key\n")
    with pytest.raises(ConfigError, match="does not hold a PEM private key"):
        create_app()
    key.write_text(PEM)  # an RSA key
    with pytest.raises(ConfigError, match="another kind of key than Ed25519"):
        create_app()
    key.unlink()  # absent: made on first use, in a folder of its own made private
    monkeypatch.setenv("FREMFORGE_CHECKPOINT_KEY_FILE", str(tmp_path / "keys" / "checkpoint.pem"))
    app = create_app()
    from app.chain import checkpoints

    checkpoints.key_of(app)
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700
    assert create_app().config["CHECKPOINT_KEY_FILE"]  # the key made is taken at the next start
