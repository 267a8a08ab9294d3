"""`Idempotency-Key` on uploads (spec section 11): the same key and body within 24 hours get the first answer again
and store nothing twice; another body is a 422; a key in flight a 409; a claim left past its lease is taken over; keys
age out after 24 hours; concurrent retries store one scan. Keys are per organisation. Failure modes first.

In-flight requests are held deterministically: by claiming the key through `app.web.idempotency` (a request that
died), or by holding ingest on an event in a thread. Times are moved in the database, never waited for.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from app import db, orgs
from app.chain import retention
from app.findings import service, store
from app.models import IdempotencyKey, OutboxItem, ScanRun, utcnow
from app.web import idempotency
from tests.conftest import MakeApp
from tests.factories import census, finding, make_org, make_token, post, seed, set_policy

KEY = "8e03978e-40d5-43e8-bc93-6894a57f9324"
FINDINGS = "/api/v1/orgs/{slug}/image-scans/findings"
WAIT = 30.0  # seconds any thread of a test may wait for another: a bound, never a means of synchronisation


@pytest.fixture
def acme(app: Flask) -> str:
    """Org acme and a token with every scope."""
    make_org(app, "acme")
    return make_token(app)


def keyed(key: str = KEY) -> dict[str, str]:
    return {idempotency.HEADER: key}


def assert_error(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.get_data(as_text=True)[:2000])
    assert r.mimetype == "application/json"
    body = r.get_json()
    assert set(body) == {"error", "message", "details"} and body["error"] == code, body
    return body


def keys(app: Flask) -> list[IdempotencyKey]:
    with app.app_context():
        return list(db.session().scalars(sa.select(IdempotencyKey).order_by(IdempotencyKey.idempotency_key)))


def scans(app: Flask) -> int:
    with app.app_context():
        return db.session().scalar(sa.select(sa.func.count()).select_from(ScanRun)) or 0


def claim_directly(app: Flask, key: str = KEY, body: dict[str, Any] | None = None) -> idempotency.Claim:
    """Claim `key` for `body` as an upload does before ingest, and leave it in flight (a request that died, or one
    still working)."""
    import json

    data = json.dumps(seed() if body is None else body).encode()
    with app.app_context():
        session = db.session()
        org = orgs.by_slug(session, "acme")
        assert org is not None
        held = idempotency.claim(session, org.id, key, idempotency.fingerprint(data, b""))
    assert isinstance(held, idempotency.Claim)
    return held


def move_back(app: Flask, column: str, by: timedelta, key: str = KEY) -> None:
    """Move a key's `column` (created_at, lease_until) back in the database, as if that much time had passed."""
    table = IdempotencyKey.__table__
    with app.app_context():
        session = db.session()
        current = session.scalar(sa.select(table.c[column]).where(table.c.idempotency_key == key))
        assert current is not None
        session.execute(sa.update(table).where(table.c.idempotency_key == key).values({column: current - by}))
        session.commit()


# ---------------------------------------------------------------- refused: malformed, reused, in flight


@pytest.mark.parametrize(
    ("key", "code"),
    [
        ("", "string_too_short"),
        ("k" * 256, "string_too_long"),
        ("two words", "string_pattern_mismatch"),
        ("tab\there", "string_pattern_mismatch"),
        ("bell\x07", "string_pattern_mismatch"),
        ("del\x7f", "string_pattern_mismatch"),
        ("caf\xe9", "string_pattern_mismatch"),  # not ASCII
    ],
    ids=["empty", "256-characters", "space", "tab", "control", "del", "latin-1"],
)
def test_a_malformed_key_is_a_422_naming_the_header(app, acme, key, code):
    before = census(app)
    body = assert_error(post(app.test_client(), acme, seed(), headers=keyed(key)), 422, "validation_failed")
    assert body["details"][0]["path"] == "Idempotency-Key" and body["details"][0]["in"] == "header"
    assert body["details"][0]["code"] == code
    assert "Idempotency-Key" in body["message"]
    assert census(app) == before  # nothing stored, not even a claim


def test_the_longest_key_and_every_visible_character_are_accepted(app, acme):
    client = app.test_client()
    assert post(client, acme, seed(), headers=keyed("k" * 255)).status_code == 202
    visible = "".join(chr(c) for c in range(0x21, 0x7F))
    assert post(client, acme, seed(image_ref="ghcr.io/acme/api:2"), headers=keyed(visible)).status_code == 202
    assert sorted(k.idempotency_key for k in keys(app)) == sorted(["k" * 255, visible])


def test_the_same_key_with_another_body_is_422_reused(app, acme):
    client = app.test_client()
    first = post(client, acme, seed(), headers=keyed())
    assert first.status_code == 202
    before = census(app)
    other_body = post(client, acme, seed(findings=[finding("CVE-2024-9999")]), headers=keyed())
    body = assert_error(other_body, 422, "idempotency_key_reused")
    assert body["details"][0]["path"] == "Idempotency-Key"
    other_query = post(client, acme, seed(), headers=keyed(), query={"ref": "refs/heads/main"})
    assert_error(other_query, 422, "idempotency_key_reused")  # the query string is part of the request's identity
    assert census(app) == before
    assert post(client, acme, seed(), headers=keyed()).get_json() == first.get_json()  # the key still holds


def test_a_key_in_flight_is_409_with_retry_after(app, acme):
    claim_directly(app)
    before = census(app)
    r = post(app.test_client(), acme, seed(), headers=keyed())
    assert_error(r, 409, "idempotency_key_in_flight")
    assert r.headers["Retry-After"].isdigit() and int(r.headers["Retry-After"]) >= 1
    assert census(app) == before
    # another body is told the key was used with another, in flight or not
    assert_error(post(app.test_client(), acme, seed(image_ref="x:1"), headers=keyed()), 422, "idempotency_key_reused")


@pytest.fixture
def held_ingest(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """Ingest waits, once it is called, until `go` is set (`started` says it is waiting): an upload in flight."""
    started, go = threading.Event(), threading.Event()
    real = service.ingest

    def waiting(*args: Any, **kwargs: Any) -> Any:
        started.set()
        assert go.wait(WAIT), "the test never let the held upload go on"
        return real(*args, **kwargs)

    monkeypatch.setattr(service, "ingest", waiting)
    yield started, go
    go.set()


def test_a_retry_while_the_first_upload_is_in_flight_is_409_then_gets_its_answer(app, acme, held_ingest):
    started, go = held_ingest
    answers: list[Any] = []
    first = threading.Thread(target=lambda: answers.append(post(app.test_client(), acme, seed(), headers=keyed())))
    first.start()
    try:
        assert started.wait(WAIT)
        r = post(app.test_client(), acme, seed(), headers=keyed())
        assert_error(r, 409, "idempotency_key_in_flight")
        assert "Retry-After" in r.headers
    finally:
        go.set()
        first.join(WAIT)
    assert answers[0].status_code == 202
    again = post(app.test_client(), acme, seed(), headers=keyed())
    assert (again.status_code, again.get_json()) == (202, answers[0].get_json())
    assert scans(app) == 1


# ---------------------------------------------------------------- the first answer again


def test_a_retry_gets_the_first_answer_and_nothing_is_stored_twice(app, acme):
    client = app.test_client()
    first = post(client, acme, seed(), headers=keyed())
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    before = census(app)
    for gz in (False, True):  # the body's identity is what it decompresses to
        again = post(client, acme, seed(), headers=keyed(), gz=gz)
        assert again.status_code == 202
        assert again.get_data() == first.get_data()  # the same JSON, byte for byte: same scan_run_id, same url
        assert again.headers["Idempotent-Replayed"] == "true"
    assert census(app) == before
    other_token = make_token(app, "acme", ["findings:write"])  # keys are per org: any token of it gets the answer
    before = census(app)
    assert post(client, other_token, seed(), headers=keyed()).get_json() == first.get_json()
    assert census(app) == before


def test_keys_are_per_org(app, acme):
    make_org(app, "beta")
    beta = make_token(app, "beta")
    a = post(app.test_client(), acme, seed(), headers=keyed())
    b = post(app.test_client(), beta, seed(repo="beta/api"), slug="beta", headers=keyed())
    assert (a.status_code, b.status_code) == (202, 202)
    assert a.get_json()["scan_run_id"] != b.get_json()["scan_run_id"]
    assert scans(app) == 2


def test_a_failed_upload_frees_its_key(app, acme):
    client = app.test_client()
    bad = post(client, acme, seed(findings=[finding(severity="severe")]), headers=keyed())
    assert_error(bad, 422, "validation_failed")
    outside = post(client, acme, seed(repo="someone-else/api"), headers=keyed())
    assert_error(outside, 403, "forbidden")
    assert keys(app) == []
    good = post(client, acme, seed(), headers=keyed())  # another body, but the key was never answered
    assert good.status_code == 202
    assert post(client, acme, seed(), headers=keyed()).get_json() == good.get_json()


def test_an_upload_that_fails_in_ingest_frees_its_key(app, acme, monkeypatch):
    real = store.insert

    def failing(*args: Any, **kwargs: Any) -> None:
        raise sa.exc.OperationalError("INSERT", {}, Exception("the disk is full"))

    monkeypatch.setattr(store, "insert", failing)
    before = census(app)
    r = post(app.test_client(), acme, seed(), headers=keyed())
    assert r.status_code >= 500
    assert census(app) == before  # the claim was deleted again, and nothing else was stored
    monkeypatch.setattr(store, "insert", real)
    assert post(app.test_client(), acme, seed(), headers=keyed()).status_code == 202


@pytest.mark.parametrize("case", ["deliver", "policy-none", "disabled", "copy"])
def test_the_answer_is_stored_with_every_kind_of_upload(make_app: MakeApp, fake_github_config, case):
    """Delivered (the outbox item's two statements), none (no outbox item), disabled (nothing stored: the answer
    alone), and more findings than one statement takes (COPY on PostgreSQL)."""
    app = make_app(**fake_github_config) if case == "deliver" else make_app()
    make_org(app, "acme", **({"block_action": "none"} if case == "policy-none" else {}))
    if case == "disabled":
        set_policy(app, "acme", enabled=False)
    token = make_token(app)
    many = [finding(f"CVE-2024-{i:05d}") for i in range(store.ONE_STATEMENT_ROWS + 1)]
    body = seed(findings=many) if case == "copy" else seed()
    first = post(app.test_client(), token, body, headers=keyed())
    assert first.status_code == 202, first.get_json()
    before = census(app)
    again = post(app.test_client(), token, body, headers=keyed())
    assert (again.status_code, again.get_data()) == (202, first.get_data())
    assert census(app) == before
    [row] = keys(app)
    assert (row.status_code, row.response is not None) == (202, True)
    if case == "deliver":
        with app.app_context():
            item = db.session().scalars(sa.select(OutboxItem)).one()
        assert (item.state, item.status_posted, item.next_attempt_at is not None) == ("pending", False, True)


# ---------------------------------------------------------------- leases and age, on the database's clock


def test_a_claim_left_in_flight_past_its_lease_is_taken_over(app, acme):
    dead = claim_directly(app)  # a request that claimed the key, then died before it was answered
    assert_error(post(app.test_client(), acme, seed(), headers=keyed()), 409, "idempotency_key_in_flight")
    move_back(app, "lease_until", idempotency.LEASE + timedelta(seconds=1))
    taken = post(app.test_client(), acme, seed(), headers=keyed())
    assert taken.status_code == 202 and "Idempotent-Replayed" not in taken.headers
    [row] = keys(app)
    assert row.claim != dead.token and row.status_code == 202
    # the dead request's claim can no longer store an answer or free the key
    with app.app_context():
        session = db.session()
        idempotency.finish(session, dead, 202, {"accepted": 0, "status": "disabled"})
        idempotency.release(session, dead)
    again = post(app.test_client(), acme, seed(), headers=keyed())
    assert (again.status_code, again.get_data()) == (202, taken.get_data())
    assert scans(app) == 1


def test_a_lease_not_yet_ended_is_not_taken_over(app, acme):
    claim_directly(app)
    move_back(app, "lease_until", idempotency.LEASE - timedelta(seconds=10))
    assert_error(post(app.test_client(), acme, seed(), headers=keyed()), 409, "idempotency_key_in_flight")


def test_keys_age_out_after_24_hours(app, acme):
    client = app.test_client()
    first = post(client, acme, seed(), headers=keyed())
    move_back(app, "created_at", idempotency.KEEP - timedelta(minutes=1))
    assert post(client, acme, seed(), headers=keyed()).get_json() == first.get_json()  # 23h59m: still the answer
    move_back(app, "created_at", timedelta(minutes=2))  # now 24h01m old
    fresh = post(client, acme, seed(), headers=keyed())
    assert fresh.status_code == 202 and "Idempotent-Replayed" not in fresh.headers
    assert fresh.get_json()["scan_run_id"] != first.get_json()["scan_run_id"]
    move_back(app, "created_at", idempotency.KEEP + timedelta(minutes=1))
    other = post(client, acme, seed(image_ref="ghcr.io/acme/api:2"), headers=keyed())  # aged out: any body may use it
    assert other.status_code == 202
    assert scans(app) == 3


def test_the_daily_retention_run_deletes_keys_past_24_hours(app, acme):
    client = app.test_client()
    assert post(client, acme, seed(), headers=keyed("old")).status_code == 202
    assert post(client, acme, seed(), headers=keyed("new")).status_code == 202
    move_back(app, "created_at", idempotency.KEEP + timedelta(seconds=1), key="old")
    with app.app_context():
        retention.run(db.session(), utcnow())
    assert [k.idempotency_key for k in keys(app)] == ["new"]


# ---------------------------------------------------------------- concurrent retries


def test_concurrent_retries_of_one_key_store_one_scan(app, acme):
    """Eight clients send the same upload with the same key at once: one scan, every answer the first or a 409."""
    n = 8
    start = threading.Barrier(n, timeout=WAIT)
    answers: list[Any] = [None] * n

    def send(i: int) -> None:
        client = app.test_client()
        start.wait()
        answers[i] = post(client, acme, seed(), headers=keyed())

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    statuses = sorted(a.status_code for a in answers)
    assert set(statuses) <= {202, 409}, statuses
    accepted = {a.get_data() for a in answers if a.status_code == 202}
    assert len(accepted) == 1, "every 202 is the same answer"
    assert scans(app) == 1
    final = post(app.test_client(), acme, seed(), headers=keyed())
    assert final.get_data() in accepted
    for a in answers:
        if a.status_code == 409:
            assert a.get_json()["error"] == "idempotency_key_in_flight" and a.headers["Retry-After"].isdigit()


# ---------------------------------------------------------------- what it costs


def statements_of(app: Flask, send: Callable[[], Any]) -> list[str]:
    """The statements an upload runs (SQLite's BEGIN left out: SQLite runs in process, so only PostgreSQL's statements
    are round trips, and there a transaction begins with its first statement)."""
    engine = app.extensions["fremforge.db"].engine
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.startswith("BEGIN"):
            seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        assert send().status_code == 202
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    return seen


def test_a_key_adds_one_statement_to_an_upload(app, acme, dialect):
    """Without the header nothing changes; with it the claim is the one statement added on PostgreSQL, where the
    answer rides in ingest's own statement. SQLite runs the answer as a statement of its own in ingest's transaction
    (in process: no round trip, no commit of its own)."""
    client = app.test_client()
    assert post(client, acme, seed(image_ref="ghcr.io/acme/warm:1")).status_code == 202  # caches warm
    assert post(client, acme, seed(image_ref="ghcr.io/acme/warm:2"), headers=keyed("warm")).status_code == 202

    def upload(tag: str, headers: dict[str, str] | None = None) -> Callable[[], Any]:
        return lambda: post(client, acme, seed(image_ref=f"ghcr.io/acme/{tag}:1", sha=f"{tag:0>40}"), headers=headers)

    plain = statements_of(app, upload("a"))
    with_key = statements_of(app, upload("b", keyed("b")))
    assert not any("idempotency_keys" in s for s in plain)
    claims = [s for s in with_key if s.lstrip().upper().startswith("INSERT INTO IDEMPOTENCY_KEYS")]
    assert len(claims) == 1
    if dialect == "postgresql":
        assert len(with_key) == len(plain) + 1
        [stored] = [s for s in with_key if "UPDATE idempotency_keys" in s]
        assert "INSERT INTO findings" in stored  # the answer is stored by ingest's one statement
    else:
        assert len(with_key) == len(plain) + 2  # the claim; the answer's UPDATE in ingest's transaction
    replay = statements_of(app, upload("b", keyed("b")))
    assert len(replay) < len(plain)  # a replay does no ingest
