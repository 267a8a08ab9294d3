"""Authentication and authorisation of the API (spec section 2): 401 for a missing, malformed, unknown, expired
or revoked token (with WWW-Authenticate: Bearer), 403 for another org's token or a missing scope, 404 for an
unknown org; every refusal a JSON error that stores nothing. Then how tokens are kept: only a SHA-256, an
`ffis_` prefix, and a last-use time.

Failure modes first.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from app import db, tokens
from app.db import Base
from app.models import ApiToken, utcnow
from app.web import auth
from tests.factories import census, make_org, make_token, seed

BASE = "/api/v1/orgs/{slug}/image-scans"

# Every authenticated route, with a valid request body where it takes one, and the scopes that may call it.
ENDPOINTS: dict[str, tuple[str, str, Any]] = {
    "upload": ("POST", "/findings", seed()),
    "list": ("GET", "", None),
    "scan": ("GET", "/{scan_id}", None),
    "settings-get": ("GET", "/settings", None),
    "settings-put": ("PUT", "/settings", {"block_action": "warn"}),
}
ALLOWED = {
    "upload": {"findings:write"},
    "list": {"findings:read"},
    "scan": {"findings:read"},
    "settings-get": {"findings:read", "settings:write"},
    "settings-put": {"settings:write"},
}
SUCCESS = {"upload": 202, "list": 200, "scan": 200, "settings-get": 200, "settings-put": 200}


def call(client: Any, endpoint: str, authorization: str | None, slug: str = "acme", scan_id: int = 1) -> Any:
    method, path, body = ENDPOINTS[endpoint]
    headers = {} if authorization is None else {"Authorization": authorization}
    url = BASE.format(slug=slug) + path.format(scan_id=scan_id)
    return client.open(url, method=method, json=body, headers=headers)


def assert_error(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code != 500, r.get_data()[:2000]
    assert r.status_code == status, (r.status_code, r.get_data()[:2000])
    assert r.mimetype == "application/json"
    body = r.get_json()
    assert set(body) == {"error", "message", "details"}, body
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"].strip()
    assert isinstance(body["details"], list)
    return body


def assert_401(r: Any, secret: str | None = None) -> None:
    assert_error(r, 401, "unauthorized")
    challenge = r.headers.get("WWW-Authenticate", "")
    assert challenge.split(" ", 1)[0] == "Bearer", r.headers
    if secret:
        assert secret not in r.get_data(as_text=True)  # a refusal never echoes the token


def record_of(app: Flask, secret: str) -> ApiToken:
    with app.app_context():
        found = db.session().scalars(sa.select(ApiToken).where(ApiToken.token_hash == tokens.hash_token(secret))).one()
        db.session().expunge(found)
        return found


def expire(app: Flask, secret: str) -> None:
    """Move the token's expiry into the past, directly in the database."""
    engine = app.extensions["fremforge.db"].engine
    with engine.begin() as conn:
        conn.execute(
            sa.update(ApiToken)
            .where(ApiToken.token_hash == tokens.hash_token(secret))
            .values(expires_at=utcnow() - timedelta(minutes=1))
        )


def revoke_with_cli(app: Flask, runner: Any, secret: str) -> None:
    result = runner.invoke(args=["tokens", "revoke", str(record_of(app, secret).id)])
    assert result.exit_code == 0, result.output
    assert '"revoked"' in result.output


def revoke_with_api(app: Flask, runner: Any, secret: str) -> None:
    with app.app_context():
        session = db.session()
        with db.write_transaction(session):
            tokens.revoke(session, record_of(app, secret).id, actor="test")


@pytest.fixture
def acme(app: Flask) -> str:
    """Orgs acme and other; a token of acme with every scope."""
    make_org(app, "acme")
    make_org(app, "other")
    return make_token(app, "acme")


# ---------------------------------------------------------------- 401


BAD_HEADERS: list[Any] = [
    pytest.param(lambda t: None, id="missing"),
    pytest.param(lambda t: "", id="empty"),
    pytest.param(lambda t: "Basic dXNlcjpwYXNzd29yZA==", id="basic-scheme"),
    pytest.param(lambda t: f"Basic {t}", id="basic-scheme-with-real-token"),
    pytest.param(lambda t: f"Token {t}", id="token-scheme"),
    pytest.param(lambda t: t, id="no-scheme"),
    pytest.param(lambda t: "Bearer", id="bearer-alone"),
    pytest.param(lambda t: "Bearer ", id="bearer-space"),
    pytest.param(lambda t: "Bearer     ", id="bearer-spaces"),
    pytest.param(lambda t: "Bearer ffis_" + "x" * 40, id="unknown-token"),
    pytest.param(lambda t: "Bearer not-a-token", id="garbage-token"),
    pytest.param(lambda t: f"Bearer {t[:-1]}", id="truncated-token"),
    pytest.param(lambda t: f"Bearer {t}x", id="token-with-extra-char"),
    pytest.param(lambda t: f"Bearer {t.upper()}", id="token-in-upper-case"),
    pytest.param(lambda t: f"Bearer {t} {t}", id="token-twice"),
    pytest.param(lambda t: f"Bearer {hashlib.sha256(t.encode()).hexdigest()}", id="the-stored-hash-itself"),
    pytest.param(lambda t: "Bearer ffis_\u00e9\u00e9", id="latin1-token"),
    pytest.param(lambda t: "Bearer " + "a" * 8000, id="very-long-token"),
]


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
@pytest.mark.parametrize("header", BAD_HEADERS)
def test_missing_or_malformed_or_unknown_token_is_401(
    app: Flask, client: Any, acme: str, endpoint: str, header: Callable[[str], str | None]
) -> None:
    before = census(app)
    r = call(client, endpoint, header(acme))
    assert_401(r, acme)
    assert census(app) == before


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda app, runner, secret: expire(app, secret), id="expired"),
        pytest.param(revoke_with_cli, id="revoked-by-cli"),
        pytest.param(revoke_with_api, id="revoked-by-api"),
    ],
)
def test_expired_or_revoked_token_is_401(
    app: Flask, client: Any, runner: Any, acme: str, endpoint: str, spoil: Callable[..., None]
) -> None:
    secret = make_token(app, "acme", expires_days=1)
    assert call(client, "settings-get", f"Bearer {secret}").status_code == 200  # it worked until now
    spoil(app, runner, secret)
    before = census(app)
    r = call(client, endpoint, f"Bearer {secret}")
    assert_401(r, secret)
    assert r.get_json()["message"] in ("The token is expired.", "The token is revoked.")
    assert census(app) == before


def test_unauthenticated_request_to_an_unknown_org_is_401_not_404(app: Flask, client: Any, acme: str) -> None:
    """Without a valid token, the API does not tell which orgs exist."""
    for endpoint in ENDPOINTS:
        assert_401(call(client, endpoint, None, slug="nope"))
        assert_401(call(client, endpoint, "Bearer ffis_" + "x" * 40, slug="nope"))


# ---------------------------------------------------------------- 403 and 404


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_token_of_another_org_is_403(app: Flask, client: Any, acme: str, endpoint: str) -> None:
    other = make_token(app, "other")  # every scope, but of org "other"
    before = census(app)
    r = call(client, endpoint, f"Bearer {other}")
    body = assert_error(r, 403, "forbidden")
    assert "another organisation" in body["message"]
    assert census(app) == before


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_valid_token_for_an_unknown_org_is_404(app: Flask, client: Any, acme: str, endpoint: str) -> None:
    before = census(app)
    assert_error(call(client, endpoint, f"Bearer {acme}", slug="nope"), 404, "not_found")
    assert census(app) == before


SCOPE_CASES = [
    pytest.param(endpoint, scope, id=f"{endpoint}-with-{scope}") for endpoint in ENDPOINTS for scope in tokens.SCOPES
]


@pytest.mark.parametrize("endpoint,scope", SCOPE_CASES)
def test_each_route_needs_its_scope(app: Flask, client: Any, acme: str, endpoint: str, scope: str) -> None:
    scan = call(client, "upload", f"Bearer {acme}")  # a scan to read
    assert scan.status_code == 202, scan.json
    secret = make_token(app, "acme", [scope])
    before = census(app)
    r = call(client, endpoint, f"Bearer {secret}", scan_id=scan.json["scan_run_id"])
    if scope in ALLOWED[endpoint]:
        assert r.status_code == SUCCESS[endpoint], r.get_data()[:1000]
    else:
        body = assert_error(r, 403, "forbidden")
        assert "scope" in body["message"]
        assert census(app) == before


def test_findings_read_can_get_settings_but_not_put_them(app: Flask, client: Any, acme: str) -> None:
    read = make_token(app, "acme", ["findings:read"])
    r = call(client, "settings-get", f"Bearer {read}")
    assert r.status_code == 200
    assert r.json["block_action"] == "warn"
    assert_error(call(client, "settings-put", f"Bearer {read}"), 403, "forbidden")
    write = make_token(app, "acme", ["findings:write"])
    assert_error(call(client, "settings-get", f"Bearer {write}"), 403, "forbidden")
    assert_error(call(client, "list", f"Bearer {write}"), 403, "forbidden")


def test_several_scopes_and_a_lower_case_scheme_work(app: Flask, client: Any, acme: str) -> None:
    both = make_token(app, "acme", ["findings:read", "findings:write"])
    assert call(client, "upload", f"Bearer {both}").status_code == 202
    assert call(client, "list", f"bearer {both}").status_code == 200
    assert call(client, "list", f"BEARER  {both}  ").status_code == 200


# ---------------------------------------------------------------- how tokens are kept


def all_text(app: Flask) -> list[str]:
    """Every stored value of every row of every table, as text."""
    with app.app_context():
        session = db.session()
        return [str(v) for t in Base.metadata.sorted_tables for row in session.execute(sa.select(t)) for v in row]


def test_token_is_stored_only_as_a_hash(app: Flask, client: Any, acme: str) -> None:
    assert re.fullmatch(r"ffis_[A-Za-z0-9]{40}", acme), acme
    record = record_of(app, acme)
    assert record.token_hash == hashlib.sha256(acme.encode()).hexdigest()
    assert record.prefix == acme[:11] and len(record.prefix) < len(acme) // 2
    with app.app_context():
        row = db.session().execute(sa.select(ApiToken.__table__).where(ApiToken.id == record.id)).one()
    for value in row:
        assert acme not in str(value) and acme[5:] not in str(value), value
    assert call(client, "upload", f"Bearer {acme}").status_code == 202
    for value in all_text(app):  # nor anywhere else: audit events, scans, findings
        assert acme[5:] not in value


def test_tokens_differ(app: Flask, acme: str) -> None:
    secrets = {make_token(app, "acme") for _ in range(5)} | {acme}
    assert len(secrets) == 6
    assert all(s.startswith("ffis_") for s in secrets)


def test_cli_token_prints_the_secret_once_and_keeps_its_hash(app: Flask, client: Any, runner: Any, acme: str) -> None:
    result = runner.invoke(
        args=["tokens", "create", "--org", "acme", "--scope", "findings:write", "--name", "ci", "--expires-days", "30"]
    )
    assert result.exit_code == 0, result.output
    secret = result.output.strip().splitlines()[-1]
    assert re.fullmatch(r"ffis_[A-Za-z0-9]{40}", secret), result.output
    assert call(client, "upload", f"Bearer {secret}").status_code == 202
    listed = runner.invoke(args=["tokens", "list", "--org", "acme"])
    assert listed.exit_code == 0 and secret[5:] not in listed.output
    for value in all_text(app):
        assert secret[5:] not in value


def test_last_used_at_is_set_on_use(app: Flask, client: Any, acme: str) -> None:
    secret = make_token(app, "acme", ["findings:read"])
    assert record_of(app, secret).last_used_at is None
    start = utcnow() - timedelta(seconds=1)
    assert call(client, "list", f"Bearer {secret}").status_code == 200
    used = record_of(app, secret).last_used_at
    assert used is not None and start <= used <= utcnow() + timedelta(seconds=1)


def test_unknown_token_does_not_touch_any_token(app: Flask, client: Any, acme: str) -> None:
    assert_401(call(client, "list", "Bearer ffis_" + "x" * 40))
    assert record_of(app, acme).last_used_at is None


def test_a_tokens_expiry_is_set_and_judged_on_the_databases_clock(
    app: Flask, client: Any, acme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two hosts whose clocks disagree judge a token alike (review: a token made on a host two days behind with
    --expires-days 1 was stored already expired, and a host behind took an expired token): the expiry is made and
    compared on the database's clock, like leases and rate limits."""
    behind = lambda: utcnow() - timedelta(days=2)  # noqa: E731  (this host's clock, two days behind)
    monkeypatch.setattr(tokens, "utcnow", behind)
    monkeypatch.setattr(auth, "utcnow", behind, raising=False)
    secret = make_token(app, "acme", expires_days=1)
    assert call(client, "settings-get", f"Bearer {secret}").status_code == 200  # not made expired
    expire(app, secret)  # expires_at one second ago by the database
    assert_401(call(client, "settings-get", f"Bearer {secret}"), secret)  # not live on the host behind
    listed = app.test_cli_runner().invoke(args=["tokens", "list", "--org", "acme"])
    assert listed.exit_code == 0 and {t["prefix"]: t["state"] for t in json.loads(listed.output)}[secret[:11]] == (
        "expired"
    )  # as requests judge it (the listing judged by the host's clock said active)
