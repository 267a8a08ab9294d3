"""Configuration: FREMFORGE_* variables as strings, sensible defaults, failing closed in production."""

from __future__ import annotations

import pytest

from app import create_app
from app.config import ConfigError


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
    monkeypatch.setenv("FREMFORGE_GITHUB_APP_ID", "1e5")
    monkeypatch.setenv("FREMFORGE_GITHUB_CLIENT_ID", "0012")
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
        {"FREMFORGE_GITHUB_APP_ID": "123", "FREMFORGE_GITHUB_PRIVATE_KEY": "-----BEGIN RSA PRIVATE KEY-----"},
    ],
)
def test_production_without_secret_key_refuses_to_start(monkeypatch, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match="FREMFORGE_SECRET_KEY"):
        create_app()


@pytest.mark.parametrize("value", ["lots", "0", "-1", "99999"])
def test_bad_upload_limit_is_refused(monkeypatch, value):
    monkeypatch.setenv("FREMFORGE_MAX_UPLOAD_MB", value)
    with pytest.raises(ConfigError, match="MAX_UPLOAD_MB"):
        create_app()


def test_private_key_file_is_read(monkeypatch, tmp_path):
    key = tmp_path / "app.pem"
    key.write_text("PEM")
    monkeypatch.setenv("FREMFORGE_GITHUB_PRIVATE_KEY_FILE", str(key))
    monkeypatch.setenv("FREMFORGE_GITHUB_APP_ID", "7")
    monkeypatch.setenv("FREMFORGE_SECRET_KEY", "s")
    monkeypatch.setenv("FREMFORGE_GITHUB_WEBHOOK_SECRET", "w")
    app = create_app()
    assert app.config["GITHUB_PRIVATE_KEY"] == "PEM" and app.config["GITHUB_APP_CONFIGURED"]
    monkeypatch.setenv("FREMFORGE_GITHUB_PRIVATE_KEY_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="cannot be read"):
        create_app()


def test_github_app_without_webhook_secret_refuses_to_start(monkeypatch):
    monkeypatch.setenv("FREMFORGE_GITHUB_APP_ID", "7")
    monkeypatch.setenv("FREMFORGE_GITHUB_PRIVATE_KEY", "-----BEGIN RSA PRIVATE KEY-----")
    monkeypatch.setenv("FREMFORGE_SECRET_KEY", "s")
    with pytest.raises(ConfigError, match="FREMFORGE_GITHUB_WEBHOOK_SECRET"):
        create_app()
    monkeypatch.setenv("FREMFORGE_GITHUB_WEBHOOK_SECRET", "w")
    assert create_app().config["GITHUB_WEBHOOK_SECRET"] == "w"
    # Without a GitHub App the secret is optional: webhooks are then refused with 503 (fail closed).
    monkeypatch.delenv("FREMFORGE_GITHUB_APP_ID")
    monkeypatch.delenv("FREMFORGE_GITHUB_WEBHOOK_SECRET")
    assert not create_app().config["GITHUB_APP_CONFIGURED"]


def test_flask_keys_cannot_be_set_from_the_environment(monkeypatch):
    monkeypatch.setenv("FREMFORGE_ENV", "Production")
    monkeypatch.setenv("FREMFORGE_TESTING", "0")  # must not switch off the production check
    monkeypatch.setenv("FREMFORGE_DEBUG", "false")
    with pytest.raises(ConfigError, match="FREMFORGE_SECRET_KEY"):
        create_app()
    monkeypatch.setenv("FREMFORGE_SECRET_KEY", "s" * 48)
    app = create_app()
    assert app.config["ENV"] == "production" and not app.debug and not app.testing


def test_unknown_environment_name_is_refused(monkeypatch):
    monkeypatch.setenv("FREMFORGE_ENV", "prod")
    with pytest.raises(ConfigError, match="FREMFORGE_ENV"):
        create_app()
