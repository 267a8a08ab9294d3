"""The per-token rate limit (`FREMFORGE_RATE_LIMIT`, spec section 11): the request past the limit in a window is a 429
`rate_limited` with Retry-After; other tokens, webhooks, health checks, the OpenAPI document and the admin pages are
not limited; the window rolls over; two app instances on one database share the count; a bad value refuses to
start. Windows are moved in the database, never waited for.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from app import create_app, db
from app.config import ConfigError, parse_rate_limit
from app.findings import store
from app.models import RateLimitWindow
from tests.conftest import WEBHOOK_SECRET, MakeApp, admin_login
from tests.factories import census, make_org, make_token, post, seed

SCANS = "/api/v1/orgs/{slug}/image-scans"
ROOT = Path(__file__).resolve().parent.parent
WAIT = 30.0  # seconds a thread of a test may wait for another: a bound, never a means of synchronisation


def get(app: Flask, token: str, path: str = SCANS, slug: str = "acme") -> Any:
    return app.test_client().get(path.format(slug=slug), headers={"Authorization": f"Bearer {token}"})


def assert_limited(r: Any, window_seconds: int) -> int:
    """A 429 rate_limited answer; its Retry-After, in seconds."""
    assert r.status_code == 429, (r.status_code, r.get_data(as_text=True)[:1000])
    body = r.get_json()
    assert set(body) == {"error", "message", "details"} and body["error"] == "rate_limited", body
    retry_after = int(r.headers["Retry-After"])
    assert 1 <= retry_after <= window_seconds
    return retry_after


def windows(app: Flask) -> dict[int, int]:
    """Each token's count in its current window."""
    with app.app_context():
        rows = db.session().execute(sa.select(RateLimitWindow.token_id, RateLimitWindow.count)).all()
        return {token_id: count for token_id, count in rows}


def move_windows_back(app: Flask, seconds: int) -> None:
    """Every window started `seconds` earlier, as if that much time had passed."""
    table = RateLimitWindow.__table__
    with app.app_context():
        session = db.session()
        session.execute(sa.update(table).values(window_start=table.c.window_start - seconds * 1000))
        session.commit()


@pytest.fixture
def limited(make_app: MakeApp) -> Flask:
    """An app allowing 3 requests an hour per token, with org acme."""
    app = make_app(RATE_LIMIT="3/hour", GITHUB_WEBHOOK_SECRET=WEBHOOK_SECRET)
    make_org(app, "acme")
    return app


# ---------------------------------------------------------------- refused


def test_the_request_past_the_limit_is_429_with_retry_after(limited):
    token = make_token(limited)
    assert [get(limited, token).status_code for _ in range(3)] == [200, 200, 200]
    before = census(limited)
    retry_after = assert_limited(get(limited, token), 3600)
    assert retry_after > 3500  # the window opened a moment ago: nearly an hour to its end
    assert_limited(post(limited.test_client(), token, seed()), 3600)  # an upload too, and nothing is stored
    assert census(limited) == before


def test_every_route_a_token_authenticates_counts(make_app):
    app = make_app(RATE_LIMIT="5/hour")
    make_org(app, "acme")
    make_org(app, "beta")
    token = make_token(app)
    client = app.test_client()
    auth = {"Authorization": f"Bearer {token}"}
    assert post(client, token, seed()).status_code == 202
    assert client.get("/api/v1/orgs/acme/image-scans/settings", headers=auth).status_code == 200
    assert client.get("/api/v1/orgs/acme/exceptions", headers=auth).status_code == 200
    assert client.get("/api/v1/orgs/acme/audit/verify", headers=auth).status_code == 200
    assert client.get("/api/v1/orgs/beta/image-scans", headers=auth).status_code == 403  # refused, yet counted
    assert_limited(client.get("/api/v1/orgs/acme/audit/checkpoint", headers=auth), 3600)
    assert_limited(client.put("/api/v1/orgs/acme/image-scans/settings", headers=auth, json={"enabled": True}), 3600)


def test_another_token_is_not_affected(limited):
    first, second = make_token(limited), make_token(limited)
    for _ in range(3):
        get(limited, first)
    assert_limited(get(limited, first), 3600)
    assert [get(limited, second).status_code for _ in range(3)] == [200, 200, 200]
    assert sorted(windows(limited).values()) == [3, 4]  # each token its own row


def test_unknown_tokens_and_requests_without_one_are_not_counted(limited):
    for _ in range(5):
        assert get(limited, "ffis_not-a-token").status_code == 401
        assert limited.test_client().get(SCANS.format(slug="acme")).status_code == 401
    assert windows(limited) == {}


def signed_ping() -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
    signature = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return body, {
        "Content-Type": "application/json",
        "X-GitHub-Event": "ping",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": signature,
    }


def test_webhooks_health_the_document_and_the_admin_pages_are_not_limited(limited):
    token = make_token(limited)
    for _ in range(4):
        get(limited, token)
    assert_limited(get(limited, token), 3600)
    client = limited.test_client()
    for _ in range(5):
        body, headers = signed_ping()
        assert client.post("/webhooks/github", data=body, headers=headers).status_code < 400
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code in (200, 503)  # no worker: ready or not, never 429
        assert client.get("/api/v1/openapi.json").status_code == 200
        assert client.get("/metrics").status_code != 429
    admin = limited.test_client()
    admin_login(limited, admin)
    for _ in range(5):
        assert admin.get("/admin/orgs/acme/code-security/image-scanning").status_code == 200
    assert list(windows(limited).values()) == [5]  # only the token's own requests were counted


# ---------------------------------------------------------------- windows


def test_the_window_rolls_over(limited):
    token = make_token(limited)
    for _ in range(3):
        get(limited, token)
    assert_limited(get(limited, token), 3600)
    move_windows_back(limited, 3599)  # one second of the window left
    assert assert_limited(get(limited, token), 3600) == 1
    move_windows_back(limited, 1)  # the window has ended: the next request opens a new one
    assert [get(limited, token).status_code for _ in range(3)] == [200, 200, 200]
    assert list(windows(limited).values()) == [3]
    assert_limited(get(limited, token), 3600)


def test_two_app_instances_share_the_count(make_app):
    """Two create_app on one database, as two gunicorn workers or hosts: the count is the database's."""
    one, two = make_app(RATE_LIMIT="4/hour"), make_app(RATE_LIMIT="4/hour")
    make_org(one, "acme")
    token = make_token(one)
    assert [get(app, token).status_code for app in (one, two, one, two)] == [200, 200, 200, 200]
    assert_limited(get(two, token), 3600)
    assert_limited(get(one, token), 3600)


def test_concurrent_requests_of_one_token_are_each_counted_once(make_app):
    app = make_app(RATE_LIMIT="10/hour")
    make_org(app, "acme")
    token = make_token(app)
    n = 16
    start = threading.Barrier(n, timeout=WAIT)
    statuses: list[int] = [0] * n

    def send(i: int) -> None:
        start.wait()
        statuses[i] = get(app, token).status_code

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert sorted(statuses) == [200] * 10 + [429] * 6
    assert list(windows(app).values()) == [16]


def test_the_check_does_not_wait_for_another_tokens_upload(make_app, dialect, monkeypatch):
    """An upload holding ingest's locks (its org's chain head, its commit) does not hold up another token: on
    PostgreSQL the other token's request is answered while the upload still holds them. (SQLite's writers take turns
    whatever they write: there it is answered once the upload commits.)"""
    app = make_app(RATE_LIMIT="100/minute")
    make_org(app, "acme")
    uploader, reader = make_token(app), make_token(app)
    holding, go = threading.Event(), threading.Event()
    real = store.insert

    def held(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        holding.set()  # the rows are in, the head moved, nothing committed: every lock of ingest held
        assert go.wait(WAIT)

    monkeypatch.setattr(store, "insert", held)
    answers: dict[str, int] = {}
    upload = threading.Thread(
        target=lambda: answers.update(upload=post(app.test_client(), uploader, seed()).status_code)
    )
    upload.start()
    try:
        assert holding.wait(WAIT)
        if dialect == "postgresql":
            answers["read"] = get(app, reader).status_code
            assert not go.is_set() and upload.is_alive()  # answered while the upload held its locks
        else:
            read = threading.Thread(target=lambda: answers.update(read=get(app, reader).status_code))
            read.start()
    finally:
        go.set()
        upload.join(WAIT)
    if dialect != "postgresql":
        read.join(WAIT)
    assert answers == {"upload": 202, "read": 200}


# ---------------------------------------------------------------- what it costs


def statements(app: Flask, send: Callable[[], Any]) -> list[str]:
    engine = app.extensions["fremforge.db"].engine
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.startswith("BEGIN"):
            seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        assert send().status_code == 200
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    return seen


def test_the_limit_is_one_statement_and_none_without_it(make_app):
    free, limited = make_app(), make_app(RATE_LIMIT="600/minute")
    make_org(free, "acme")
    token = make_token(free)
    for app in (free, limited):
        get(app, token)  # last use written, caches warm
    plain = statements(free, lambda: get(free, token))
    counted = statements(limited, lambda: get(limited, token))
    assert not any("rate_limits" in s for s in plain)
    assert len(counted) == len(plain) + 1
    assert next(s for s in counted if "rate_limits" in s).lstrip().startswith("INSERT INTO rate_limits")


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("600/minute", (600, 60)),
        ("10/second", (10, 1)),
        (" 5 / Hours ", (5, 3600)),
        ("1/minutes", (1, 60)),
        ("", None),
        (None, None),
    ],
)
def test_rate_limits_are_read(value, expected):
    assert parse_rate_limit(value) == expected


BAD_VALUES = [
    "lots",
    "600",
    "600/day",
    "0/minute",
    "-1/minute",
    "1.5/minute",
    "600/minute/x",
    "/minute",
    "\u0661\u0660/minute",
]  # the last: digits, but not ASCII


@pytest.mark.parametrize("value", BAD_VALUES)
def test_a_bad_rate_limit_refuses_to_start(monkeypatch, value):
    monkeypatch.setenv("FREMFORGE_RATE_LIMIT", value)
    with pytest.raises(ConfigError, match="FREMFORGE_RATE_LIMIT must be"):
        create_app({"TESTING": True, "SECRET_KEY": "x"})


def test_a_bad_rate_limit_is_one_line_on_stderr(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FREMFORGE_")}
    env |= {"FREMFORGE_RATE_LIMIT": "600/fortnight", "FREMFORGE_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    done = subprocess.run(
        [sys.executable, "-c", "import wsgi"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "fremforge cannot start: FREMFORGE_RATE_LIMIT must be a whole number of requests (1 to 1000000000) per "
        "second, minute or hour, such as 600/minute, not '600/fortnight'"
    ]
