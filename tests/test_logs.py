"""FREMFORGE_LOG_FORMAT (spec section 11): text, or one JSON object a line with event, level, time, request_id and the
ids known; X-Request-Id taken or made, and returned; no secret in any line, traceback or gunicorn access line."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import os
import random
import re
import secrets
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app, logs
from app.chain import checkpoints
from app.config import ConfigError
from app.findings import service
from app.github.client import github_app
from app.worker import Loop
from tests import paths
from tests.conftest import INSTALLATION, ROOT, WEBHOOK_SECRET, Capture, MakeApp, app_with_github, org_with_installation
from tests.factories import finding, make_org, make_token, post, seed
from tests.fakes import FakeGitHub, github_app_config
from tests.test_metrics import call, gunicorn, served_env

REPO = "acme/api"


def json_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    lines = buffer.getvalue().splitlines()
    assert lines, "nothing was logged"
    return [json.loads(line) for line in lines]  # every line one JSON object


def signed_delivery(client: FlaskClient, secret: str, delivery: str, event: str = "ping") -> Any:
    body = (paths.FIXTURES / "github-webhooks" / "ping.json").read_bytes()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
    }
    return client.post("/webhooks/github", data=body, headers=headers)


# ---------------------------------------------------------------- the setting


@pytest.mark.parametrize("value", ["xml", "JSONL", "1", "text json"])
def test_a_bad_log_format_is_refused(make_app: MakeApp, value: str) -> None:
    with pytest.raises(ConfigError, match="FREMFORGE_LOG_FORMAT must be one of text, json"):
        make_app(LOG_FORMAT=value)


@pytest.mark.parametrize(("value", "chosen"), [(None, "text"), ("", "text"), ("TEXT", "text"), (" Json ", "json")])
def test_the_log_format_defaults_to_text(make_app: MakeApp, value: str | None, chosen: str) -> None:
    overrides = {} if value is None else {"LOG_FORMAT": value}
    assert make_app(**overrides).config["LOG_FORMAT"] == chosen


@pytest.mark.parametrize(
    "command",
    [
        ("-c", "import wsgi"),
        ("-m", "flask", "--app", "wsgi", "db", "upgrade"),
        ("-m", "gunicorn", "--workers", "2", "--preload", "--bind", "127.0.0.1:0", "--no-control-socket", "wsgi:app"),
    ],
    ids=["python-import", "flask-cli", "gunicorn"],
)
def test_a_bad_log_format_stops_the_start_with_one_line(tmp_path: Path, command: tuple[str, ...]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FREMFORGE_")}
    env.update(FREMFORGE_DATABASE_URL=f"sqlite:///{tmp_path / 'start.db'}", FREMFORGE_LOG_FORMAT="yaml")
    done = subprocess.run(
        [sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 3
    assert done.stderr.strip().splitlines() == [
        "fremforge cannot start: FREMFORGE_LOG_FORMAT must be one of text, json, not 'yaml'"
    ]
    assert "Traceback" not in done.stderr + done.stdout


# ---------------------------------------------------------------- the request id


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("3f2a9c1e-77b0-4b1e-9d2a-6a8e5c0b1f24", True),
        ("ci.run_42-attempt.1", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("has space", False),
        ("semi;colon", False),
        ("", False),
        (None, False),
    ],
)
def test_the_request_id_is_taken_when_sane_else_made_and_always_returned(
    client: FlaskClient, given: str | None, kept: bool
) -> None:
    headers = {} if given is None else {"X-Request-Id": given}
    for method, path in [("GET", "/healthz"), ("GET", "/metrics"), ("GET", "/nowhere"), ("POST", "/healthz")]:
        r = client.open(path, method=method, headers=headers)
        returned = r.headers.get("X-Request-Id")
        assert returned, (method, path, r.status_code)
        if kept:
            assert returned == given
        else:
            assert re.fullmatch(r"[0-9a-f]{32}", returned)


def test_every_answer_has_a_request_id_errors_too(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_org(app)
    token = make_token(app)
    assert post(client, None, seed()).headers["X-Request-Id"]  # 401
    assert post(client, token, {"findings": 1}).headers["X-Request-Id"]  # 422
    assert client.get("/api/v1/orgs/acme/image-scans?x=%00").headers["X-Request-Id"]  # 400 from a before_request

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(service, "ingest", broken)
    r = post(client, token, seed(), headers={"X-Request-Id": "abc"})
    assert r.status_code == 500 and r.headers["X-Request-Id"] == "abc"
    made = [client.get("/healthz").headers["X-Request-Id"] for _ in range(3)]
    assert len(set(made)) == 3


# ---------------------------------------------------------------- JSON lines


def test_json_lines_carry_event_level_time_request_id_org_and_scan(make_app: MakeApp, capture: Capture) -> None:
    app = make_app(LOG_FORMAT="json")
    buffer = capture(app.config["LOG_FORMAT"])
    make_org(app)
    token = make_token(app)
    client = app.test_client()
    r = post(client, token, seed([finding()]), headers={"X-Request-Id": "ci-run-7"})
    assert r.status_code == 202
    refused = post(client, token, {"image_ref": 1})
    lines = json_lines(buffer)
    uploaded = next(line for line in lines if line["event"] == "findings.uploaded")
    assert uploaded["level"] == "info" and uploaded["logger"] == "app.metrics"
    assert datetime.fromisoformat(uploaded["time"].replace("Z", "+00:00")).tzinfo is not None
    assert uploaded["request_id"] == "ci-run-7" == r.headers["X-Request-Id"]
    assert uploaded["org"] == "acme"
    assert uploaded["scan_run_id"] == r.json["scan_run_id"]
    assert uploaded["status"] == "success" and uploaded["accepted"] == 1 and isinstance(uploaded["seconds"], float)
    assert uploaded["message"].startswith("findings.uploaded status=success accepted=1 ")
    no = next(line for line in lines if line["event"] == "findings.upload_refused")
    assert no["request_id"] == refused.headers["X-Request-Id"] and no["http_status"] == 422 and "scan_run_id" not in no
    assert no["error"] == "validation_failed"


def test_a_webhooks_lines_carry_its_delivery_id(make_app: MakeApp, capture: Capture) -> None:
    app = make_app(LOG_FORMAT="json", GITHUB_WEBHOOK_SECRET=WEBHOOK_SECRET)
    buffer = capture("json")
    client = app.test_client()
    delivery = str(uuid.uuid4())
    assert signed_delivery(client, WEBHOOK_SECRET, delivery).status_code == 200
    assert signed_delivery(client, "not-the-secret", "d-2").status_code == 401
    lines = json_lines(buffer)
    handled = next(line for line in lines if line["event"] == "github.webhook.handled")
    assert handled["delivery_id"] == delivery and handled["github_event"] == "ping"
    assert handled["request_id"]
    refused = next(line for line in lines if line["event"] == "github.webhook.bad_signature")
    assert refused["delivery_id"] == "d-2" and refused["level"] == "warning"


def test_the_workers_posting_lines_carry_the_outbox_item_scan_and_org(
    make_app: MakeApp, fake_github: FakeGitHub, capture: Capture
) -> None:
    app = app_with_github(make_app, fake_github, [REPO], LOG_FORMAT="json")
    token = org_with_installation(app)
    scan = post(app.test_client(), token, seed([finding()])).json["scan_run_id"]
    buffer = capture("json")
    with app.app_context():
        gh = github_app()
        assert gh is not None
        assert Loop(gh, once=True).run() == 1
    logging.getLogger("app.test").info("test.after_the_worker")
    lines = json_lines(buffer)
    delivered = next(line for line in lines if line["event"] == "github.posting.delivered")
    assert delivered["scan_run_id"] == scan and delivered["org"] == "acme" and isinstance(delivered["outbox_id"], int)
    assert delivered["commit"] == seed()["commit_sha"]
    after = next(line for line in lines if line["event"] == "test.after_the_worker")
    assert not {"outbox_id", "scan_run_id", "org"} & after.keys()  # the item in hand is forgotten once recorded


def test_parsing_a_line_into_event_and_fields() -> None:
    event, pairs = logs.parse("github.webhook.bad_payload delivery='d-1' event=push action=None: no head sha")
    assert event == "github.webhook.bad_payload"
    assert pairs == {"delivery": "d-1", "event": "push", "action": None}
    assert logs.parse("retention.skipped: another process is applying it") == ("retention.skipped", {})
    assert logs.parse("Booting worker with pid: 42") == (None, {})
    assert logs.parse("github.posting.retry outbox=12 attempt=3 in=4s error='could not reach GitHub'")[1] == {
        "outbox": 12,
        "attempt": 3,
        "in": "4s",
        "error": "could not reach GitHub",  # a value with spaces is logged quoted (%r), and read whole
    }
    said = 'it\'s "quoted" \\ twice'
    assert logs.parse(f"admin.signed_out reason={said!r} org=acme")[1] == {"reason": said, "org": "acme"}


# ---------------------------------------------------------------- never a secret


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer abcdefghijklmnop",
        "token ffis_Ab3dEf6hIj9kLm2oPq5sTu8wXy1zAb4dEf7hIj0k",
        "ghs_16C7e42F292c6912E7710c838347Ae178B4a and github_pat_11ABCDEFG0123456789_abcdefghij",
        "jwt eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiI0MjQyNDIifQ.c2lnbmF0dXJlLWJ5dGVz",
        "GET /api/v1/orgs/acme/image-scans?access_token=s3cr3tvalue&limit=5",
        "postgresql://fremforge:hunter2hunter2@db.internal/fremforge",
        "POST /admin/login/link/Zk9w3t1-one-time-link-token HTTP/1.1",
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIAbCdEfGhIjKlMnOpQrStUv+/abcd\n-----END PRIVATE KEY-----",
    ],
)
def test_credentials_are_redacted_by_their_shape(text: str) -> None:
    cleaned = logs.redact(text)
    assert "[redacted" in cleaned
    fragments = r"abcdefghijklmnop|Ab3dEf6h|16C7e42F|ABCDEFG01|eyJpc3Mi|s3cr3t|hunter2|Zk9w3t1|MC4CAQ"
    for secret in re.findall(fragments, text):
        assert secret not in cleaned


def every_shape_searched(text: str) -> str:
    """redact as it was before its substring tests: every credential shape searched for in every line."""
    pattern = logs._secrets_pattern
    if pattern is not None:
        text = pattern.sub(logs.REDACTED, text)
    for shape, replacement, _needles in logs._PATTERNS:
        text = shape.sub(replacement, text)
    return text


# Pieces of lines: each shape's parts in both cases, look-alikes outside ASCII that a case-insensitive search takes
# for ASCII letters (the Kelvin sign, the long s, the dotted and dotless i), and the separators the shapes need.
_PIECES = [
    *("-----BEGIN RSA PRIVATE KEY-----", "-----END RSA PRIVATE KEY-----", "-----begin private key-----"),
    *("Authorization", "AUTHORIZATION", "author\u0131zation", "author\u0130zation", ": ", "=", "'", '"', " "),
    *("Bearer ", "bEaReR\t", "token ", "basic ", "abcdefghij", "Ab3dEf6h", "xyz/+=.-~"),
    *("ffis_", "FFIS_", "ghp_", "GHS_", "github_pat_", "0123456789abcdefXYZ"),
    *("eyJ", "EYJ", "abcdefg.", "hijklmn.", "sig"),
    *("?", "&", ";", "access_token=", "ToKeN=", "toKen=", "code=", "state=", "\u017ftate=", "secret=", "passwd="),
    *("key=", "API_KEY=", "sig=", "signature=", "value", "#frag"),
    *("https://", "postgresql://", "user:", "hunter2", "@", "/admin/login/link/", "Zk9w3t1", "/x?y"),
    *("\n", "é", "✓", "INFO app.metrics findings.uploaded status=success accepted=50"),
]


def test_redaction_finds_what_searching_every_shape_finds() -> None:
    rng = random.Random(20261206)
    logs.register_secrets(["configured-secret-value"])
    texts = [
        "".join(rng.choice([*_PIECES, "configured-secret-value"]) for _ in range(rng.randint(1, 12)))
        for _ in range(20_000)
    ]
    texts += ["Authorization: Bearer abcdefghijklmnop", "x?\u017ftate=abc", "u\u017fer://a:b@c", "Bearer\u212aabcdefgh"]
    for text in texts:
        assert logs.redact(text) == every_shape_searched(text), text


def secret_values(app: Flask, token: str, key_file: Path) -> list[str]:
    """Everything no line may show: the API token, the webhook secret, the App's private key (and each line of it),
    its OAuth client secret, the metrics token, the secret key and the checkpoint key (each line of it)."""
    config = app.config
    found = [token, config["GITHUB_WEBHOOK_SECRET"], config["GITHUB_CLIENT_SECRET"], config["METRICS_TOKEN"]]
    found.append(config["SECRET_KEY"])
    for pem in (config["GITHUB_PRIVATE_KEY"], key_file.read_text()):
        found.append(pem.strip())
        found += [line for line in pem.splitlines() if len(line) >= 16 and not line.startswith("-----")]
    return found


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_secret_reaches_a_log_line(
    make_app: MakeApp,
    fake_github: FakeGitHub,
    capture: Capture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    log_format: str,
) -> None:
    key_file = tmp_path / "checkpoint_ed25519.pem"
    checkpoints.load_or_create(key_file)
    webhook_secret = secrets.token_urlsafe(24)
    app = make_app(
        **{
            **github_app_config(fake_github),  # the fake's App: its private key and OAuth client secret
            "LOG_FORMAT": log_format,
            "GITHUB_WEBHOOK_SECRET": webhook_secret,
            "METRICS_TOKEN": secrets.token_urlsafe(24),
            "SECRET_KEY": secrets.token_urlsafe(48),
            "CHECKPOINT_KEY_FILE": str(key_file),
        }
    )
    fake_github.add_installation(INSTALLATION, "acme", [REPO])
    buffer = capture(log_format)
    token = org_with_installation(app)
    client = app.test_client()
    bearer = {"Authorization": f"Bearer {token}"}
    assert post(client, token, seed([finding()])).status_code == 202
    assert post(client, token, seed(), query={"token": token, "access_token": token}).status_code == 202
    assert client.get(f"/api/v1/orgs/acme/image-scans?token={token}").status_code == 401  # no header: refused
    assert client.get("/api/v1/orgs/acme/audit/checkpoint", headers=bearer).status_code == 200  # signs with the key
    assert signed_delivery(client, webhook_secret, str(uuid.uuid4())).status_code == 200
    assert signed_delivery(client, webhook_secret[:-1], str(uuid.uuid4())).status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    with app.app_context():  # the worker: JWT, installation token, posts
        gh = github_app()
        assert gh is not None
        Loop(gh, once=True).run()
    everything = secret_values(app, token, key_file)

    def leaking(*_args: Any, **_kwargs: Any) -> None:  # the worst case: an error quoting every secret, logged
        raise RuntimeError("cannot ingest: " + " | ".join(everything) + f" Authorization: Bearer {token}")

    monkeypatch.setattr(service, "ingest", leaking)
    assert post(client, token, seed()).status_code == 500

    text = buffer.getvalue()
    assert "request.unhandled_error" in text and "Traceback" in text and "RuntimeError: cannot ingest" in text
    assert "[redacted" in text
    for secret in everything:
        assert secret not in text, f"a secret reached the log: {secret[:6]}..."
    if log_format == "json":
        lines = json_lines(buffer)
        assert any(line["event"] == "github.posting.delivered" for line in lines)
        error = next(line for line in lines if line["event"] == "request.unhandled_error")
        assert error["level"] == "error" and error["exc_type"] == "RuntimeError" and "Traceback" in error["exc"]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_gunicorn_lines_keep_secrets_out_and_json_lines_parse(
    make_app: MakeApp, database_url: str, tmp_path: Path, log_format: str
) -> None:
    """Served as `make run` serves it (gunicorn with an access log), every line of the output, gunicorn's included,
    keeps the token (sent in the header and in the query) and the webhook secret out; in JSON each line parses."""
    app = make_app()
    make_org(app)
    token = make_token(app)
    webhook_secret = secrets.token_urlsafe(24)
    env = served_env(
        database_url,
        tmp_path,
        FREMFORGE_LOG_FORMAT=log_format,
        FREMFORGE_GITHUB_WEBHOOK_SECRET=webhook_secret,
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prometheus"),
    )
    log = tmp_path / "gunicorn.log"
    body = json.dumps(seed([finding()])).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", "X-Request-Id": "ci-1"}
    ping = (paths.FIXTURES / "github-webhooks" / "ping.json").read_bytes()
    hook = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "ping",
        "X-GitHub-Delivery": "7c3b1f0e-delivery",
        "X-Hub-Signature-256": "sha256=" + hmac.new(webhook_secret.encode(), ping, hashlib.sha256).hexdigest(),
    }
    with gunicorn(env, log, "--access-logfile", "-", "--preload") as port:
        path = f"/api/v1/orgs/acme/image-scans/findings?token={token}&access_token={token}"
        status, answered, _ = call(port, "POST", path, body, headers)
        assert status == 202 and answered["X-Request-Id"] == "ci-1"
        assert call(port, "GET", f"/api/v1/orgs/acme/image-scans?token={token}")[0] == 401
        assert call(port, "POST", "/webhooks/github", ping, hook)[0] == 200
    output = log.read_text()
    for secret in (token, webhook_secret, env["FREMFORGE_SECRET_KEY"]):
        assert secret not in output
    assert "http.request method=POST path=/api/v1/orgs/acme/image-scans/findings status=202" in output
    if log_format == "json":
        lines = [json.loads(line) for line in output.splitlines()]  # every line, gunicorn's too
        access = [line for line in lines if line["event"] == "http.request"]
        assert {line["path"] for line in access} >= {"/api/v1/orgs/acme/image-scans/findings", "/webhooks/github"}
        upload = next(line for line in access if line["method"] == "POST" and line["status"] == 202)
        assert upload["request_id"] == "ci-1" and upload["logger"] == "gunicorn.access"
        uploaded = next(line for line in lines if line["event"] == "findings.uploaded")
        assert uploaded["request_id"] == "ci-1" and uploaded["org"] == "acme"
        handled = next(line for line in lines if line["event"] == "github.webhook.handled")
        assert handled["delivery_id"] == "7c3b1f0e-delivery"
        assert any(line["logger"] == "gunicorn.error" for line in lines)
        assert all({"time", "level", "event", "message"} <= line.keys() for line in lines)


def test_secrets_of_the_configuration_are_registered(tmp_path: Path) -> None:
    key_file = tmp_path / "checkpoint.pem"
    checkpoints.load_or_create(key_file)
    config = {
        "SECRET_KEY": "k" * 10,
        "DATABASE_URL": "postgresql+psycopg://fremforge:db-password-1@db/fremforge",
        "CHECKPOINT_KEY_FILE": str(key_file),
        "GITHUB_WEBHOOK_SECRET": "short",  # under 8 characters: not searched for (it would blank ordinary words)
    }
    logs.register_secrets(logs.secrets_of(config))
    body = next(line for line in key_file.read_text().splitlines() if not line.startswith("-----"))
    line = f"kkkkkkkkkk db-password-1 {body} short"
    assert logs.redact(line) == "[redacted] [redacted] [redacted] short"


def test_create_app_installs_the_format_when_nothing_else_configured_logging(tmp_path: Path) -> None:
    """As under gunicorn or the flask CLI: the root logger has no handler until create_app puts the app's there (once,
    in the format of the app made last)."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    for handler in saved:  # pytest's, put back below
        root.removeHandler(handler)
    made: list[Flask] = []
    try:
        for log_format, kind in (("json", logs.JsonFormatter), ("text", logs.TextFormatter)):
            config = {"TESTING": True, "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "LOG_FORMAT": log_format}
            made.append(create_app(config))
            assert len(root.handlers) == 1 and isinstance(root.handlers[0].formatter, kind)
            assert root.level == logging.INFO
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in saved:
            root.addHandler(handler)
        root.setLevel(level)
        for app in made:
            app.extensions["fremforge.db"].engine.dispose()


def test_json_lines_keep_an_error_with_spaces_whole_and_name_the_org(
    make_app: MakeApp, fake_github: FakeGitHub, capture: Capture
) -> None:
    """A reason with spaces is one field (it was cut at its first word); a webhook delivery of a known org's
    installation names the org; retention's line names the org as `org`, its counts by what they are."""
    app = app_with_github(make_app, fake_github, [REPO], LOG_FORMAT="json")
    token = org_with_installation(app)
    client = app.test_client()
    assert post(client, token, seed([finding()])).status_code == 202
    buffer = capture("json")
    fake_github.fail("POST", r"/statuses/", status=503)
    with app.app_context():
        gh = github_app()
        assert gh is not None
        Loop(gh, once=True).run()
    doc = {"action": "rerequested", "check_run": {"name": "fremforge/image-scan", "head_sha": seed()["commit_sha"]}}
    doc |= {"repository": {"full_name": REPO, "owner": {"login": "acme"}}, "installation": {"id": INSTALLATION}}
    body = json.dumps(doc).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "check_run",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": "sha256=" + hmac.new(b"webhook-secret", body, hashlib.sha256).hexdigest(),
    }
    assert client.post("/webhooks/github", data=body, headers=headers).status_code in (200, 202)
    assert app.test_cli_runner().invoke(args=["retention", "run"]).exit_code == 0
    lines = json_lines(buffer)
    retry = next(line for line in lines if line["event"] == "github.posting.retry")
    assert retry["error"].startswith("GitHub answered 503") and " " in retry["error"], retry
    hook = next(line for line in lines if line["event"] in ("github.webhook.handled", "github.webhook.queued"))
    assert hook["org"] == "acme", hook
    kept = next(line for line in lines if line["event"] == "retention.org")
    assert kept["org"] == "acme" and "slug" not in kept and "outbox_id" not in kept, kept
    assert kept["outbox_rows_trimmed"] == 0


def test_the_delivery_that_makes_an_org_names_it_and_worker_errors_keep_their_detail(
    make_app: MakeApp, capture: Capture
) -> None:
    app = make_app(LOG_FORMAT="json", GITHUB_WEBHOOK_SECRET=WEBHOOK_SECRET)
    buffer = capture("json")
    body = (paths.FIXTURES / "github-webhooks" / "installation.created.json").read_bytes()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "installation",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest(),
    }
    assert app.test_client().post("/webhooks/github", data=body, headers=headers).status_code == 200
    loop = Loop(None)  # a running worker logs the error it backs off from (with --once the command says it)
    loop.stop.set()  # its back-off ends at once
    with app.app_context():
        loop.recover(RuntimeError("the disk is full: no space left on device"))
    lines = json_lines(buffer)
    handled = next(line for line in lines if line["event"] == "github.webhook.handled")
    assert handled["org"] == "Codertocat", handled
    failed = next(line for line in lines if line["event"] == "worker.error")
    assert failed["error"] == "RuntimeError" and failed["detail"] == "the disk is full: no space left on device"


# ---------------------------------------------------------------- the worker command, a service


def run_worker_once(env: dict[str, str]) -> tuple[int, list[dict[str, Any]]]:
    """`flask --app wsgi worker --once` as systemd runs it: its exit status, and every line of its standard output
    and error read as JSON (a line that is not fails the test)."""
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "worker", "--once"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    lines = (done.stdout + done.stderr).splitlines()
    assert lines, "the worker said nothing"
    return done.returncode, [json.loads(line) for line in lines]


@pytest.mark.parametrize("with_app", [False, True], ids=["no-github-app", "github-app"])
def test_the_worker_commands_every_line_is_json(
    make_app: MakeApp, database_url: str, fake_github: FakeGitHub, tmp_path: Path, with_app: bool
) -> None:
    """Review: with FREMFORGE_LOG_FORMAT=json the worker still printed plain lines ("no GitHub App configured ...:
    nothing to deliver", "handled 0 deliveries"), which a log shipper reading its journal could not parse."""
    app = app_with_github(make_app, fake_github, [REPO]) if with_app else make_app()
    token = org_with_installation(app)
    assert post(app.test_client(), token, seed([finding()])).status_code == 202
    github = {f"FREMFORGE_{k}": v for k, v in github_app_config(fake_github).items()} if with_app else {}
    status, lines = run_worker_once(served_env(database_url, tmp_path, FREMFORGE_LOG_FORMAT="json", **github))
    assert status == 0, lines
    events = [line["event"] for line in lines]
    assert ("worker.no_github_app" in events) is not with_app, events
    [stopped] = [line for line in lines if line["event"] == "worker.stopped"]
    assert stopped["deliveries"] == (1 if with_app else 0) and stopped["level"] == "info"
    if with_app:
        assert "github.posting.delivered" in events, events


def test_the_worker_commands_end_on_a_database_not_migrated_is_json_too(tmp_path: Path) -> None:
    env = served_env(f"sqlite:///{tmp_path / 'never-migrated.db'}", tmp_path, FREMFORGE_LOG_FORMAT="json")
    status, lines = run_worker_once(env)
    assert status == 1
    [failed] = [line for line in lines if line["event"] == "worker.failed"]
    assert failed["level"] == "error" and failed["reason"].startswith("the database is not migrated"), failed
