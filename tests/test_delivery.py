"""Delivery to GitHub through the one fake GitHub: what is posted, retries, leases and ordering."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from flask import Flask
from githubkit import UnauthAuthStrategy
from githubkit.exception import RequestTimeout

from app import db, revival
from app.github import posting
from app.github.client import github_app, new_client
from app.models import CheckRunRecord, Org, OutboxItem, utcnow
from tests.conftest import INSTALLATION, MakeApp, admin_login, app_with_github, org_with_installation
from tests.factories import SHA, SHA2, finding, make_org, make_token, post, seed
from tests.fakes import FakeGitHub

CONTEXT = "fremforge/image-scan"


@pytest.fixture
def app(make_app: MakeApp, fake_github: FakeGitHub, request: pytest.FixtureRequest) -> Flask:
    """The app with a GitHub App configured against the fake; its client timeout the app's default (10 s), or the
    `github_timeout` marker's for the tests that make the fake slow (a short one keeps them quick; elsewhere it
    would turn a loaded machine's slow answer into a retry)."""
    marker = request.node.get_closest_marker("github_timeout")
    timeout = str(marker.args[0]) if marker is not None else "10"
    return app_with_github(make_app, fake_github, ["acme/api", "acme/web"], GITHUB_TIMEOUT_SECONDS=timeout)


@pytest.fixture
def token(app: Flask) -> str:
    return org_with_installation(app)


class Clock:
    """Simulated time for the worker: retries, leases and backoff without sleeping."""

    def __init__(self) -> None:
        self.now = utcnow() + timedelta(minutes=1)  # ahead of the rows' real-time due dates

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def run(app: Flask, clock: Clock, worker: str = "w1", rng: random.Random | None = None, parallel: int = 1) -> int:
    with app.app_context():
        gh = github_app()
        assert gh is not None
        return posting.run_once(
            db.session(), gh, now=clock.now, rng=rng or random.Random(7), worker=worker, parallel=parallel
        )


def drain(app: Flask, clock: Clock, step: float = 5.0, limit_seconds: float = 3600, parallel: int = 1) -> None:
    """Run the worker, advancing simulated time, until nothing is pending."""
    for _ in range(int(limit_seconds / step)):
        run(app, clock, parallel=parallel)
        if not rows(app, state="pending"):
            return
        clock.advance(step)
    raise AssertionError(f"still pending after {limit_seconds} s: {rows(app, state='pending')}")


def rows(app: Flask, **where: Any) -> list[OutboxItem]:
    with app.app_context():
        q = sa.select(OutboxItem).order_by(OutboxItem.id)
        for k, v in where.items():
            q = q.where(getattr(OutboxItem, k) == v)
        return list(db.session().scalars(q))


def upload(
    client: Any,
    token: str,
    *,
    image: str = "ghcr.io/acme/api:1",
    sha: str = SHA,
    severity: str = "high",
    repo: str = "acme/api",
) -> dict:
    r = post(client, token, seed([finding(severity=severity)], image_ref=image, sha=sha, repo=repo))
    assert r.status_code == 202, r.json
    return r.json


def posted_states(fake: Any, sha: str = SHA) -> list[str]:
    return [s["state"] for s in fake.statuses if s["sha"] == sha and s["context"] == CONTEXT]


# ---------------------------------------------------------------- what is posted


def test_status_and_check_run_are_posted_once_with_links(app, client, token, fake_github):
    clock = Clock()
    body = upload(client, token)
    assert rows(app)[0].state == "pending"
    assert run(app, clock) == 1
    [status] = [s for s in fake_github.statuses if s["sha"] == SHA]
    assert status["state"] == "failure" and status["context"] == CONTEXT
    assert status["description"] == body["commit_status"]["description"] == "1 image · 1 high · blocking"
    assert status["target_url"].startswith("http://fremforge.test/admin/orgs/acme/code-security/image-scanning/")
    [check] = fake_github.check_runs.values()
    assert check["name"] == CONTEXT and check["head_sha"] == SHA and check["conclusion"] == "failure"
    assert check["details_url"] == status["target_url"] and check["external_id"]
    assert "CVE-2023-1234" in check["output"]["summary"]
    [row] = rows(app)
    assert row.state == "delivered" and row.status_posted and row.check_posted and row.lease_until is None
    detail = client.get(
        f"/api/v1/orgs/acme/image-scans/{body['scan_run_id']}", headers={"Authorization": f"Bearer {token}"}
    ).json["commit_status"]["delivery"]
    assert detail["state"] == "delivered" and detail["detail"].startswith("delivered ")
    assert run(app, clock) == 0  # nothing left
    assert fake_github.invalid_requests == []


@pytest.mark.parametrize(
    "action,severity,expected",
    [
        ("warn", "critical", ["success"]),
        ("block_pull", "critical", ["failure"]),
        ("block_pull", "low", ["success"]),
        ("none", "critical", []),
    ],
)
def test_each_block_action(app, client, token, fake_github, runner, action, severity, expected):
    assert runner.invoke(args=["policy", "set", "acme", "--block-action", action]).exit_code == 0
    upload(client, token, severity=severity)
    drain(app, Clock())
    assert posted_states(fake_github) == expected
    assert len(fake_github.check_runs) == len(expected)


def test_images_aggregate_and_one_check_run_is_updated_in_place(app, client, token, fake_github):
    clock = Clock()
    upload(client, token, image="img-a", severity="critical")  # A fails
    drain(app, clock)
    upload(client, token, image="img-b", severity="low")  # B passes: the commit stays red
    drain(app, clock)
    upload(client, token, image="img-a", severity="low")  # A fixed: green
    drain(app, clock)
    assert posted_states(fake_github) == ["failure", "failure", "success"]
    assert fake_github.latest_status("acme", "api", SHA)["description"].startswith("2 images")
    [check] = fake_github.check_runs.values()
    assert [h.get("conclusion") for h in check["history"]] == ["failure", "failure", "success"]
    assert len(fake_github.calls_to("POST", r"/check-runs$")) == 1
    assert len(fake_github.calls_to("PATCH", r"/check-runs/\d+$")) == 2


def test_installation_is_looked_up_with_the_app_jwt_when_unknown(app, client, fake_github):
    make_org(app)
    token = make_token(app)
    upload(client, token)
    drain(app, Clock())
    assert fake_github.calls_to("GET", r"^/repos/acme/api/installation$")
    with app.app_context():
        assert db.session().scalars(sa.select(Org.installation_id)).one() == INSTALLATION
    assert posted_states(fake_github) == ["success"]


def test_an_installation_another_org_holds_is_used_but_not_remembered(app, client, fake_github):
    """An installation is one org's (app.github.handlers.installation): the lookup does not link it to a second."""
    make_org(app, "holder", github_login="holder")
    with app.app_context():
        s = db.session()
        s.execute(sa.update(Org).where(Org.slug == "holder").values(installation_id=INSTALLATION))
        s.commit()
    make_org(app)
    token = make_token(app)
    upload(client, token)
    drain(app, Clock())
    assert posted_states(fake_github) == ["success"]  # GitHub's answer for the repo is still the one to post with
    with app.app_context():
        held = {slug: found for slug, found in db.session().execute(sa.select(Org.slug, Org.installation_id))}
    assert held == {"holder": INSTALLATION, "acme": None}


def test_app_not_installed_is_a_permanent_failure(app, client, fake_github):
    make_org(app, "other", github_login="other")
    token = make_token(app, "other")
    r = post(client, token, seed(repo="other/api"), slug="other")
    assert r.status_code == 202
    clock = Clock()
    for _ in range(posting.REFUSAL_TRIES):
        run(app, clock)
        clock.advance(300)
    [row] = rows(app)
    assert row.state == "failed" and "not installed" in row.last_error
    assert len(fake_github.calls_to("GET", r"/installation$")) == posting.REFUSAL_TRIES


# ---------------------------------------------------------------- tokens


def test_many_posts_need_one_token_exchange_and_an_expired_token_is_renewed(app, client, token, fake_github):
    clock = Clock()
    for i in range(5):
        upload(client, token, sha=f"{i:040x}")
    drain(app, clock)
    assert fake_github.token_exchanges[INSTALLATION] == 1
    fake_github.expire_tokens()
    upload(client, token, sha=SHA2)
    drain(app, clock)
    assert fake_github.token_exchanges[INSTALLATION] == 2
    assert posted_states(fake_github, SHA2) == ["failure"]
    assert [r.state for r in rows(app)] == ["delivered"] * 6


# ---------------------------------------------------------------- failures


def test_server_errors_retry_with_backoff(app, client, token, fake_github):
    clock = Clock()
    upload(client, token)
    fake_github.fail("POST", r"/statuses/", status=503, times=3)
    waits = []
    for _ in range(3):
        run(app, clock)
        [row] = rows(app)
        assert row.state == "pending" and row.last_status_code == 503 and "503" in row.last_error
        waits.append((row.next_attempt_at - clock.now).total_seconds())
        clock.now = row.next_attempt_at
    assert 0.5 < waits[0] < 1.5 and 1.5 < waits[1] < 2.5 and 3 < waits[2] < 5  # about 1 s, then doubling
    run(app, clock)
    assert rows(app)[0].state == "delivered" and posted_states(fake_github) == ["failure"]


def test_a_gateway_error_on_a_post_keeps_the_commit_in_flight_for_a_late_landing(app, client, token, fake_github):
    clock = Clock()
    upload(client, token)
    fake_github.fail("POST", r"/statuses/", status=502, times=1)
    run(app, clock)
    [row] = rows(app)
    assert row.state == "pending" and row.lease_until == row.next_attempt_at
    assert row.next_attempt_at - clock.now >= posting.LATE_LANDING - timedelta(seconds=1)


def test_backoff_is_capped_at_five_minutes():
    rng = random.Random(1)
    assert all(posting.backoff(n, rng) <= timedelta(minutes=5) for n in range(1, 40))
    assert posting.backoff(20, rng) >= timedelta(minutes=4)


def test_rate_limit_waits_for_retry_after_without_counting_an_attempt(app, client, token, fake_github):
    clock = Clock()
    upload(client, token)
    fake_github.rate_limit("POST", r"/statuses/", retry_after=120)
    run(app, clock)
    [row] = rows(app)
    assert row.state == "pending" and row.attempts == 0
    assert timedelta(seconds=119) <= row.next_attempt_at - clock.now <= timedelta(seconds=121)
    clock.advance(60)
    assert run(app, clock) == 0  # not before Retry-After
    clock.advance(61)
    run(app, clock)
    assert rows(app)[0].state == "delivered"


def test_rate_limit_without_retry_after_waits_until_reset(app, client, token, fake_github):
    clock = Clock()
    upload(client, token)
    reset = int(datetime.now().timestamp()) + 300
    fake_github.rate_limit("POST", r"/statuses/", retry_after=None, reset_at=reset)
    run(app, clock)
    [row] = rows(app)
    assert timedelta(seconds=250) <= row.next_attempt_at - clock.now <= timedelta(seconds=301)


def test_a_secondary_rate_limit_without_headers_waits_a_minute_and_is_no_failure(app, client, token, fake_github):
    clock = Clock()
    upload(client, token)
    fake_github.rate_limit("POST", r"/statuses/", retry_after=None)  # GitHub: "wait at least one minute"
    run(app, clock)
    [row] = rows(app)
    assert row.state == "pending" and row.attempts == 0 and row.last_status_code == 403
    assert timedelta(seconds=59) <= row.next_attempt_at - clock.now <= timedelta(seconds=61)
    clock.advance(61)
    run(app, clock)
    assert rows(app)[0].state == "delivered"
    assert fake_github.latest_status("acme", "api", SHA)["state"] == "failure"


def test_a_429_with_requests_left_waits_until_its_reset(app, client, token, fake_github):
    clock = Clock()
    upload(client, token)
    reset = int(datetime.now().timestamp()) + 300
    fake_github.rate_limit("POST", r"/statuses/", retry_after=None, reset_at=reset, status=429, remaining=12)
    run(app, clock)
    [row] = rows(app)
    assert row.state == "pending" and row.attempts == 0
    assert timedelta(seconds=250) <= row.next_attempt_at - clock.now <= timedelta(seconds=301)


GITHUB_DATE = "Sun, 06 Dec 2026 10:00:00 GMT"  # GitHub's clock in its answer, whatever ours says
AT_GITHUB_DATE = 1796551200  # the same instant, in epoch seconds


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "120"}, 120),
        ({"retry-after": "Sun, 06 Dec 2026 10:02:00 GMT", "date": GITHUB_DATE}, 120),
        ({"x-ratelimit-reset": str(AT_GITHUB_DATE + 300), "date": GITHUB_DATE}, 300),  # on GitHub's clock
        ({"x-ratelimit-reset": str(AT_GITHUB_DATE - 5), "date": GITHUB_DATE}, 60),  # already past: a minute
        ({"x-ratelimit-reset": str(AT_GITHUB_DATE + 30 * 86400), "date": GITHUB_DATE}, 3600),  # a wrong clock
        ({"x-ratelimit-reset": "253402300799", "date": GITHUB_DATE}, 3600),
        ({"x-ratelimit-reset": "soon"}, 60),
        ({"retry-after": "0"}, 60),
        ({}, 60),
    ],
    ids=[
        "retry-after",
        "retry-after-date",
        "reset",
        "reset-past",
        "reset-month-ahead",
        "reset-year-9999",
        "unreadable",
        "retry-after-zero",
        "no-header",
    ],
)
def test_a_rate_limit_waits_what_github_says_within_an_hour(headers, seconds):
    assert posting.rate_limit_wait(httpx.Headers(headers)) == timedelta(seconds=seconds)


def test_abuse_detection_is_a_rate_limit_and_a_permission_403_is_not(app, client, token, fake_github):
    clock = Clock()
    upload(client, token)
    abuse = "You have triggered an abuse detection mechanism. Please wait a few minutes before you try again."
    fake_github.fail("POST", r"/statuses/", status=403, json={"message": abuse})
    run(app, clock)
    [row] = rows(app)
    assert row.state == "pending" and row.attempts == 0
    clock.advance(61)
    fake_github.fail("POST", r"/statuses/", status=403, json={"message": "Resource not accessible by integration"})
    run(app, clock)
    [row] = rows(app)
    assert row.state == "pending" and row.refusals == 1  # a refusal: retried a few times, as 404 and 422 are
    assert row.last_error == "GitHub answered 403: Resource not accessible by integration"


@pytest.mark.parametrize("status", [404, 422, 400, 403, 409, 410])
def test_refusals_are_retried_a_few_times_over_minutes_then_recorded_as_failed(app, client, token, fake_github, status):
    clock = Clock()
    upload(client, token)
    message = "Validation Failed" if status == 422 else "Not Found"
    fake_github.fail("POST", r"/statuses/", status=status, times=None, json={"message": message})
    run(app, clock)
    [row] = rows(app)
    assert row.state == "pending" and row.refusals == 1  # a one-off answer must not leave an older state standing
    assert timedelta(seconds=20) <= row.next_attempt_at - clock.now <= timedelta(seconds=40)
    waits = []
    for _ in range(posting.REFUSAL_TRIES - 1):
        waits.append((rows(app)[0].next_attempt_at - clock.now).total_seconds())
        clock.now = rows(app)[0].next_attempt_at
        run(app, clock)
    [row] = rows(app)
    assert row.state == "failed" and row.last_status_code == status
    assert row.last_error == f"GitHub answered {status}: {message}"
    assert waits[1] > waits[0] and sum(waits) >= 150  # over minutes, not seconds
    clock.advance(3600)
    assert run(app, clock) == 0
    assert len(fake_github.calls_to("POST", r"/statuses/")) == posting.REFUSAL_TRIES


@pytest.mark.parametrize("status", [404, 422])
def test_a_one_off_refusal_of_the_newer_failing_state_does_not_leave_the_older_green(
    app, client, token, fake_github, status
):
    clock = Clock()
    upload(client, token, severity="low")
    drain(app, clock)
    assert fake_github.latest_status("acme", "api", SHA)["state"] == "success"
    upload(client, token, severity="critical")
    fake_github.fail("POST", r"/statuses/", status=status, times=1)
    fake_github.fail("PATCH", r"/check-runs/", status=status, times=1)
    drain(app, clock)
    assert fake_github.latest_status("acme", "api", SHA)["state"] == "failure"
    assert {r["conclusion"] for r in fake_github.runs_of("acme", "api", SHA)} == {"failure"}


def test_retries_are_bounded_and_the_final_failure_is_visible(app, client, token, fake_github):
    clock = Clock()
    body = upload(client, token)
    fake_github.fail("POST", r"/statuses/", status=503, times=None)
    for _ in range(posting.MAX_ATTEMPTS + 5):
        run(app, clock)
        clock.advance(posting.MAX_DELAY * 1.3)
    [row] = rows(app)
    assert row.state == "failed" and row.attempts == posting.MAX_ATTEMPTS
    assert len(fake_github.calls_to("POST", r"/statuses/")) == posting.MAX_ATTEMPTS
    detail = client.get(
        f"/api/v1/orgs/acme/image-scans/{body['scan_run_id']}", headers={"Authorization": f"Bearer {token}"}
    ).json["commit_status"]["delivery"]
    assert detail["state"] == "failed" and "503" in detail["detail"]


def test_401_mints_a_new_token_once(app, client, token, fake_github):
    clock = Clock()
    upload(client, token, sha=SHA2)
    drain(app, clock)  # a token is cached
    upload(client, token)
    fake_github.unauthorized("POST", r"/statuses/", times=1)
    run(app, clock)
    assert rows(app)[-1].state == "delivered"
    assert fake_github.token_exchanges[INSTALLATION] == 2


@pytest.mark.github_timeout(0.5)
def test_a_timed_out_check_run_create_is_found_not_duplicated(app, client, token, fake_github):
    clock = Clock()
    upload(client, token)
    fake_github.timeout("POST", r"/check-runs$", times=1, seconds=1.5)
    run(app, clock)
    [row] = rows(app)
    assert row.state == "pending" and row.status_posted and not row.check_posted
    wait_until(lambda: len(fake_github.runs_of("acme", "api", SHA)) == 1)  # the timed-out create lands
    clock.now = row.next_attempt_at
    drain(app, clock)
    assert len(fake_github.check_runs) == 1
    with app.app_context():
        record = db.session().scalars(sa.select(CheckRunRecord)).one()
    assert record.github_id in fake_github.check_runs
    assert len(posted_states(fake_github)) == 1  # the status half was not posted again


@pytest.mark.github_timeout(0.5)
def test_an_answer_that_trickles_in_ends_the_call_at_the_timeout(app, client, token, fake_github):
    """GitHub (or a proxy) applies a status post and sends its answer a byte at a time, each byte well inside the
    per-read timeout: the call still ends at the timeout, as a timeout (the post in doubt, retried; the circuit
    opens and the round ends), and GitHub ends up showing both commits blocked. (Before, the call lasted as long as
    the answer took, here 20 s, while the commit's check run stayed as it was and the other commit waited.)"""
    clock = Clock()
    upload(client, token, severity="critical")
    upload(client, token, sha=SHA2, severity="critical")
    fake_github.trickle("POST", rf"/statuses/{SHA}$", seconds=20)
    run(app, clock)
    first, second = rows(app)
    assert first.state == "pending" and not first.status_posted and first.last_error == "GitHub did not answer in time"
    assert second.state == "pending"
    drain(app, clock)
    for sha in (SHA, SHA2):
        assert fake_github.latest_status("acme", "api", sha)["state"] == "failure"
        assert fake_github.runs_of("acme", "api", sha)[-1]["conclusion"] == "failure"


def test_an_answer_whose_headers_trickle_in_ends_the_call_at_the_timeout():
    """Below the fake (whose server sends an answer's head at once): a server sending its status line and headers a
    byte every 0.1 s. A client the app makes (new_client) gives up at its timeout, as githubkit's RequestTimeout the
    worker treats as one; before, it waited the 8 s the head took."""
    stop = threading.Event()
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}":
                if stop.wait(0.1):  # the server's pace; set when the test is over
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    gh = new_client(UnauthAuthStrategy(), f"http://127.0.0.1:{server.getsockname()[1]}", 0.5)
    try:
        with pytest.raises(RequestTimeout):
            gh.request("GET", "/")
    finally:
        stop.set()
        thread.join(5)
        server.close()


# ---------------------------------------------------------------- ordering, crashes, several workers


@pytest.mark.parametrize("parallel", [1, 4])
def test_outage_of_minutes_during_100_uploads_loses_nothing(app, client, token, fake_github, parallel):
    clock = Clock()
    fake_github.outage(True)
    shas = [f"{i:040x}" for i in range(50)]
    for i in range(100):  # 50 commits, two images each; half the images get fixed later
        sha = shas[i % 50]
        upload(client, token, sha=sha, image=f"img-{i // 50}", severity="critical" if i % 3 else "low")
        if i % 10 == 0:
            run(app, clock, parallel=parallel)
            clock.advance(20)
    for _ in range(30):  # about ten minutes of outage
        run(app, clock, parallel=parallel)
        clock.advance(20)
    fake_github.outage(False)
    drain(app, clock, step=30, parallel=parallel)
    ok_posts = Counter(s["sha"] for s in fake_github.statuses)
    for sha in shas:
        assert ok_posts[sha] == 1, sha  # its final state, exactly once
        latest = rows(app, commit_sha=sha)[-1]
        assert latest.state == "delivered"
        assert fake_github.latest_status("acme", "api", sha)["state"] == latest.commit_status["state"]
    assert all(r.state in ("delivered", "superseded") for r in rows(app))


def test_a_stale_state_never_lands_after_a_newer_one(app, client, token, fake_github):
    clock = Clock()
    upload(client, token, severity="critical")  # wish 1: failure
    with app.app_context():
        s, gh = db.session(), github_app()
        [first] = posting.claim(s, clock.now, "slow-worker")  # wish 1 in flight
    upload(client, token, severity="low")  # wish 2: success, supersedes 1
    assert run(app, clock, worker="fast-worker") == 0  # the commit is in flight: wish 2 waits
    with app.app_context():
        s = db.session()
        outcome = posting.deliver(s, gh, first, clock.now, "slow-worker")
        posting.record(s, first, outcome, clock.now, random.Random(1), "slow-worker")
    drain(app, clock)
    assert posted_states(fake_github) == ["success"]  # the superseded wish was not posted at all
    assert [r.state for r in rows(app)] == ["superseded", "delivered"]


def test_a_retry_of_an_old_wish_is_dropped_once_a_newer_one_exists(app, client, token, fake_github):
    clock = Clock()
    upload(client, token, severity="critical")
    fake_github.fail("POST", r"/statuses/", status=503, times=1)
    run(app, clock)  # wish 1 waits for its retry
    upload(client, token, severity="low")  # wish 2
    clock.advance(10)
    drain(app, clock)
    assert posted_states(fake_github) == ["success"]


def test_a_worker_killed_mid_delivery_loses_nothing(app, client, token, fake_github):
    clock = Clock()
    upload(client, token)
    with app.app_context():
        assert posting.claim(db.session(), clock.now, "doomed") != []  # claimed, then the worker dies
    clock.advance(30)
    assert run(app, clock) == 0  # its lease still holds
    clock.advance(posting.LEASE.total_seconds())
    assert run(app, clock) == 1
    assert rows(app)[0].state == "delivered" and posted_states(fake_github) == ["failure"]


def test_two_workers_never_post_the_same_row_twice(app, client, token, fake_github):
    shas = [f"{i:040x}" for i in range(40)]
    for sha in shas:
        upload(client, token, sha=sha)
    clock = Clock()
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            start.wait()
            for _ in range(20):
                run(app, clock, worker=name)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert Counter(s["sha"] for s in fake_github.statuses) == Counter(shas)
    assert len(fake_github.check_runs) == len(shas)
    assert {r.state for r in rows(app)} == {"delivered"}


def test_worker_command_once(app, client, token, runner, fake_github, capture):
    upload(client, token)
    buffer = capture("text")
    result = runner.invoke(args=["worker", "--once"])
    assert result.exit_code == 0, result.output
    assert "worker.stopped deliveries=1" in buffer.getvalue()
    assert posted_states(fake_github) == ["failure"]


def test_worker_command_without_a_github_app(make_app, capture):
    app = make_app()
    buffer = capture("text")
    result = app.test_cli_runner().invoke(args=["worker", "--once"])
    assert result.exit_code == 0 and "worker.no_github_app: no GitHub App configured" in buffer.getvalue()


# ---------------------------------------------------------------- the circuit breaker


def test_an_outage_stops_the_batch_at_the_first_failure_until_the_circuit_half_opens(app, client, token, fake_github):
    clock = Clock()
    shas = [f"{i:040x}" for i in range(6)]
    for sha in shas:
        upload(client, token, sha=sha, severity="critical")
    upload(client, token, sha=shas[0], severity="low")  # newest wins: commit 0 ends green
    fake_github.outage(True)
    due = {r.id: r.next_attempt_at for r in rows(app, state="pending")}
    before = len(fake_github.calls)

    assert run(app, clock) == 1  # one attempt; the other rows of the batch are given back untried
    assert len(fake_github.calls) == before + 1
    pending = rows(app, state="pending")
    assert sorted(r.attempts for r in pending) == [0] * 5 + [1]
    for r in pending:
        assert r.lease_until is None and r.claimed_by is None
        if r.attempts == 0:
            assert r.next_attempt_at == due[r.id] and r.last_error is None
    assert run(app, clock) == 0 and len(fake_github.calls) == before + 1  # open: nothing is claimed
    clock.advance(0.55)
    assert run(app, clock) == 0 and len(fake_github.calls) == before + 1  # still open (0.6-0.8 s)

    clock.advance(0.3)  # half-open: one probe, which fails; open again for about twice as long
    assert run(app, clock) == 1 and len(fake_github.calls) == before + 2
    assert sum(r.attempts for r in rows(app, state="pending")) == 2
    clock.advance(1.0)
    assert run(app, clock) == 0 and len(fake_github.calls) == before + 2

    fake_github.outage(False)
    clock.advance(5)  # the probe gets through: the circuit closes and the rest goes in the same batch
    assert run(app, clock) == 6
    assert rows(app, state="pending") == []
    assert Counter(s["sha"] for s in fake_github.statuses) == Counter(shas)  # each commit exactly once
    assert posted_states(fake_github, shas[0]) == ["success"] and posted_states(fake_github, shas[1]) == ["failure"]
    assert len(fake_github.check_runs) == 6
    assert sum(r.attempts for r in rows(app)) == 2
    assert fake_github.invalid_requests == []


@pytest.mark.parametrize(
    "arm",
    [
        lambda fake: fake.fail("POST", r"/statuses/", status=422, times=1),
        lambda fake: fake.rate_limit("POST", r"/statuses/", retry_after=60, times=1),
        lambda fake: fake.unauthorized("POST", r"/statuses/", times=2),
    ],
    ids=["422", "rate-limit", "401"],
)
def test_answers_that_are_not_an_outage_leave_the_circuit_closed(app, client, token, fake_github, arm):
    clock = Clock()
    for i in range(3):
        upload(client, token, sha=f"{i:040x}")
    arm(fake_github)
    assert run(app, clock) == 3  # the whole batch is tried
    assert len(fake_github.calls_to("POST", r"/statuses/")) >= 3
    assert len(rows(app, state="delivered")) == 2


@pytest.mark.github_timeout(0.5)
def test_a_timeout_opens_the_circuit(app, client, token, fake_github):
    clock = Clock()
    for i in range(3):
        upload(client, token, sha=f"{i:040x}")
    fake_github.timeout("POST", r"/statuses/", times=1, seconds=1.5)
    assert run(app, clock) == 1
    assert sorted(r.attempts for r in rows(app)) == [0, 0, 1]
    clock.advance(1.0)
    drain(app, clock)
    assert {r.state for r in rows(app)} == {"delivered"}


def test_circuit_delay_doubles_to_a_cap_and_resets_on_success():
    circuit, rng, now = posting.Circuit(), random.Random(3), utcnow()
    down = posting.Outcome("retry", "could not reach GitHub", unreachable=True)
    delays = []
    for _ in range(12):
        assert circuit.allows(now)
        circuit.observe(down, now, rng)
        assert not circuit.allows(now) and circuit.probing
        delays.append((circuit.open_until - now).total_seconds())
        now = circuit.open_until
    for n, delay in enumerate(delays):  # shorter than the backoff of the n+1-th attempt of the row that failed
        base = min(posting.CIRCUIT_MAX_DELAY, posting.FIRST_DELAY * 2**n)
        assert 0.6 * base <= delay <= 0.8 * base
    assert delays[-1] <= posting.CIRCUIT_MAX_DELAY
    circuit.observe(posting.Outcome("superseded"), now, rng)  # GitHub was not asked: still half-open
    assert circuit.probing
    circuit.observe(posting.Outcome("delivered"), now, rng)
    assert circuit.allows(now) and not circuit.probing and circuit.failures == 0


def test_each_worker_process_keeps_its_own_circuit(app, client, token, fake_github):
    clock = Clock()
    for i in range(3):
        upload(client, token, sha=f"{i:040x}")
    fake_github.outage(True)
    with app.app_context():
        gh = github_app()
        assert gh is not None
        assert posting.run_once(db.session(), gh, now=clock.now, worker="w1") == 1
        assert gh.circuit is not None and gh.circuit.probing  # the process's circuit, kept on its GitHubApp
        other = posting.Circuit()  # another process: its own first attempt
        assert posting.run_once(db.session(), gh, now=clock.now, worker="w2", circuit=other) == 1
    assert sorted(r.attempts for r in rows(app)) == [0, 1, 1]


def test_parallel_delivery_posts_each_commit_once_with_one_token_exchange(app, client, token, fake_github):
    clock = Clock()
    shas = [f"{i:040x}" for i in range(30)]
    for sha in shas:
        upload(client, token, sha=sha)
    drain(app, clock, parallel=4)
    assert Counter(s["sha"] for s in fake_github.statuses) == Counter(shas)
    assert len(fake_github.check_runs) == len(shas)
    assert fake_github.token_exchanges[INSTALLATION] == 1  # the batch's first row, alone, got the token
    assert {r.state for r in rows(app)} == {"delivered"}


def test_parallel_delivery_stops_at_the_first_row_when_github_is_down(app, client, token, fake_github):
    clock = Clock()
    for i in range(10):
        upload(client, token, sha=f"{i:040x}")
    fake_github.outage(True)
    assert run(app, clock, parallel=4) == 1
    assert sorted(r.attempts for r in rows(app)) == [0] * 9 + [1]
    assert all(r.claimed_by is None for r in rows(app))


def test_a_posted_status_is_not_posted_again_when_its_check_run_is_retried(app, client, token, fake_github):
    clock = Clock()
    upload(client, token)
    fake_github.fail("POST", r"/check-runs$", status=502, times=1)
    with app.app_context():  # one session for both runs, as the worker command keeps
        gh = github_app()
        assert gh is not None
        posting.run_once(db.session(), gh, now=clock.now, rng=random.Random(7), worker="w1")
        [row] = rows(app)
        assert row.state == "pending" and row.status_posted and not row.check_posted
        for _ in range(20):  # a 502 may have made a run: GitHub's list is checked for a while before it is done
            clock.now = rows(app)[0].next_attempt_at
            posting.run_once(db.session(), gh, now=clock.now, rng=random.Random(7), worker="w1")
            if rows(app)[0].state != "pending":
                break
    assert posted_states(fake_github) == ["failure"]  # the status once, though the row was tried twice
    assert len(fake_github.check_runs) == 1 and rows(app)[0].state == "delivered"


def test_a_long_running_worker_updates_the_check_run_it_created(app, client, token, fake_github):
    clock = Clock()
    with app.app_context():  # one session across runs, as the worker command keeps
        gh = github_app()
        assert gh is not None
        upload(client, token, image="ghcr.io/acme/api:1")
        posting.run_once(db.session(), gh, now=clock.now, rng=random.Random(7), worker="w1")
        upload(client, token, image="ghcr.io/acme/web:1")
        clock.advance(5)
        posting.run_once(db.session(), gh, now=clock.now, rng=random.Random(7), worker="w1")
    assert len(fake_github.check_runs) == 1  # created once, then updated in place
    [run_id] = fake_github.check_runs
    assert len(fake_github.calls_to("PATCH", rf"/check-runs/{run_id}$")) == 1
    assert [r.state for r in rows(app)] == ["delivered", "delivered"]


# ---------------------------------------------------------------- faults: clocks, late creates, late posts


def test_a_worker_whose_clock_runs_fast_does_not_take_another_workers_lease(
    app, client, token, fake_github, monkeypatch
):
    upload(client, token)
    with app.app_context():
        [held] = posting.claim(db.session(), None, "steady-worker")  # on the database's clock
        fast = utcnow() + timedelta(minutes=2, seconds=30)
        monkeypatch.setattr(posting, "utcnow", lambda: fast)  # this process's clock, 2.5 minutes ahead
        gh = github_app()
        assert gh is not None
        assert posting.run_once(db.session(), gh, worker="fast-worker") == 0  # the lease still holds
    assert fake_github.calls_to("POST", r"/statuses/") == []
    [row] = rows(app)
    assert row.id == held and row.claimed_by == "steady-worker"


def test_a_web_process_whose_clock_runs_fast_does_not_delay_delivery(app, client, token, fake_github, monkeypatch):
    from app.findings import service
    from app.github import outbox

    ahead = utcnow() + timedelta(minutes=5)
    for module in (outbox, service):
        monkeypatch.setattr(module, "utcnow", lambda: ahead, raising=False)
    upload(client, token)
    with app.app_context():
        gh = github_app()
        assert gh is not None
        assert posting.run_once(db.session(), gh) == 1  # due now on the database's clock
    assert posted_states(fake_github) == ["failure"]


def test_the_app_jwt_is_issued_a_minute_in_the_past(app, client, token, fake_github):
    import jwt

    with app.app_context():
        s = db.session()
        s.execute(sa.update(Org).values(installation_id=None))  # the worker asks GitHub with the App's JWT
        s.commit()
    upload(client, token)
    before = datetime.now(UTC)
    drain(app, Clock())
    [call] = fake_github.calls_to("GET", r"/installation$")
    claims = jwt.decode(call.headers["authorization"].split()[1], options={"verify_signature": False})
    assert 55 <= call.at - claims["iat"] <= 70  # GitHub's advice for clock drift
    assert claims["iat"] >= before.timestamp() - 3600  # (a real timestamp, not a constant)


@pytest.mark.github_timeout(0.5)
def test_a_check_run_create_that_lands_after_its_retry_is_brought_to_the_newest_conclusion(
    app, client, token, fake_github
):
    clock = Clock()
    upload(client, token, severity="low")  # success
    fake_github.timeout("POST", r"/check-runs$", times=1, seconds=1.5)  # lands after the worker gave up on it
    run(app, clock)
    clock.now = rows(app)[0].next_attempt_at
    run(app, clock)  # the lost create is not listed yet: a second run is created
    assert len(fake_github.runs_of("acme", "api", SHA)) == 1
    [row] = rows(app)
    assert row.state == "pending" and row.status_posted  # posted, but it keeps looking for the late one
    assert "late check run" in delivery_detail(client, token, row.scan_run_id)
    wait_until(lambda: len(fake_github.runs_of("acme", "api", SHA)) == 2)  # the first create lands now
    upload(client, token, severity="critical")  # a newer, failing state
    drain(app, clock)
    runs = fake_github.runs_of("acme", "api", SHA)
    assert len(runs) == 2 and {r["conclusion"] for r in runs} == {"failure"}
    assert fake_github.latest_status("acme", "api", SHA)["state"] == "failure"


@pytest.mark.github_timeout(0.5)
def test_a_late_create_after_the_last_scan_is_still_brought_in_step(app, client, token, fake_github):
    clock = Clock()
    upload(client, token, severity="critical")
    fake_github.timeout("POST", r"/check-runs$", times=1, seconds=1.5)
    run(app, clock)
    clock.now = rows(app)[0].next_attempt_at
    run(app, clock)
    wait_until(lambda: len(fake_github.runs_of("acme", "api", SHA)) == 2)
    drain(app, clock)
    runs = fake_github.runs_of("acme", "api", SHA)
    assert [r["conclusion"] for r in runs] == ["failure", "failure"]
    assert rows(app)[0].state == "delivered"


def test_a_check_run_that_cannot_be_updated_is_replaced(app, client, token, fake_github):
    clock = Clock()
    upload(client, token, severity="low")
    drain(app, clock)
    [first] = fake_github.runs_of("acme", "api", SHA)
    upload(client, token, severity="critical")
    fake_github.fail("PATCH", rf"/check-runs/{first['id']}$", status=422, times=None)
    drain(app, clock)
    runs = fake_github.runs_of("acme", "api", SHA)
    assert len(runs) == 2 and runs[-1]["conclusion"] == "failure"  # the newest run of the check is red
    assert fake_github.latest_status("acme", "api", SHA)["state"] == "failure"
    upload(client, token, severity="high", image="ghcr.io/acme/web:1")
    drain(app, clock)  # later scans update the replacement
    assert len(fake_github.runs_of("acme", "api", SHA)) == 2


def test_a_worker_that_stalls_past_its_lease_mid_post_requeues_the_newest_state(
    app, client, token, fake_github, monkeypatch
):
    """Worker A's status post stalls (held by GitHub) past its lease; B delivers a newer state; A's post lands last."""
    monkeypatch.setattr(posting, "LEASE", timedelta(seconds=1))
    upload(client, token, severity="low")  # wish 1: success
    fake_github.timeout("POST", r"/statuses/", times=1, seconds=3.0)
    outcomes: list[posting.Outcome] = []

    def stalled_worker() -> None:
        with app.app_context():
            s, gh = db.session(), github_app()
            assert gh is not None
            gh.timeout = 10.0  # A waits for its answer (its installation client is made with this timeout)
            [first] = posting.claim(s, None, "stalled")  # on the database's clock
            outcomes.append(posting.deliver(s, gh, first, None, "stalled"))
            posting.record(s, first, outcomes[-1], None, random.Random(1), "stalled")

    a = threading.Thread(target=stalled_worker)
    a.start()
    try:
        wait_until(lambda: len(fake_github.calls_to("POST", r"/statuses/")) == 1)  # A is inside its post
        wait_until(lambda: lease_ran_out(app, rows(app)[0].id))
        upload(client, token, severity="critical")  # wish 2: failure
        with app.app_context():
            gh = github_app()
            assert gh is not None
            assert posting.run_once(db.session(), gh, worker="other") == 1  # B, while A still stalls
        b = rows(app)[-1]  # posted, not done: A's post is still out (its mark says so), and may land after it
        assert b.state == "pending" and b.status_posted and b.last_error == posting.VERIFYING
    finally:
        a.join(timeout=10)
    assert outcomes[0].state == "lost"
    assert fake_github.latest_status("acme", "api", SHA)["state"] == "success"  # A's late post landed last...
    newest = rows(app)[-1]
    assert newest.state == "pending" and not newest.status_posted  # ...so the newest wish is queued again
    detail = delivery_detail(client, token, newest.scan_run_id)
    assert detail.startswith("GitHub shows an older state: success;"), detail
    admin_login(app, client)
    page = client.get(f"/admin/orgs/acme/code-security/image-scanning/commits/{SHA}?repo=acme/api")
    assert page.status_code == 200 and "GitHub shows an older state: success" in page.get_data(as_text=True)
    drain(app, Clock())
    assert fake_github.latest_status("acme", "api", SHA)["state"] == "failure"
    assert {r["conclusion"] for r in fake_github.runs_of("acme", "api", SHA)} == {"failure"}
    assert rows(app)[-1].state == "delivered"


def lease_ran_out(app: Flask, row_id: int) -> bool:
    from app import clock

    with app.app_context():
        s = db.session()
        lease = s.get(OutboxItem, row_id).lease_until
        now = clock.now_of(s.connection())
        s.rollback()
        return lease is None or lease <= now


def test_a_row_in_hand_past_its_lease_is_fenced_at_its_first_post(app, client, token, fake_github):
    clock = Clock()
    upload(client, token, severity="low")
    with app.app_context():
        s, gh = db.session(), github_app()
        assert gh is not None
        [row_id] = posting.claim(s, clock.now, "slow")
        later = clock.advance(posting.LEASE.total_seconds() + 1)
        assert posting.deliver(s, gh, row_id, later, "slow").state == "lost"
    assert fake_github.calls_to("POST", r"/statuses/") == []  # nothing posted on a lease that ran out


def test_the_circuits_probe_takes_the_oldest_due_row(app, client, token, fake_github):
    clock = Clock()
    shas = [f"{i:040x}" for i in range(4)]
    for sha in shas:
        upload(client, token, sha=sha)
    fake_github.outage(True)
    run(app, clock)  # opens the circuit
    fake_github.outage(False)
    before = len(fake_github.calls_to("POST", r"/statuses/"))
    clock.advance(60)
    oldest = min(rows(app, state="pending"), key=lambda r: (r.next_attempt_at, r.id))
    assert oldest.commit_sha != shas[-1]
    with app.app_context():
        gh = github_app()
        assert gh is not None and gh.circuit is not None and gh.circuit.probing
        posting.run_once(db.session(), gh, now=clock.now, limit=1, rng=random.Random(7))
    probe = fake_github.calls_to("POST", r"/statuses/")[before]
    assert probe.path.endswith(oldest.commit_sha)  # the row that waited longest, not the newest


def delivery_detail(client: Any, token: str, scan_id: int) -> str:
    read = make_token_for_reading(client)
    r = client.get(f"/api/v1/orgs/acme/image-scans/{scan_id}", headers={"Authorization": f"Bearer {read}"})
    assert r.status_code == 200, r.json
    return r.json["commit_status"]["delivery"]["detail"]


def make_token_for_reading(client: Any) -> str:
    return make_token(client.application, scopes=["findings:read"])


def wait_until(condition: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


@pytest.mark.github_timeout(0.5)
def test_a_status_post_that_timed_out_and_lands_late_never_lands_after_a_newer_state(app, client, token, fake_github):
    clock = Clock()
    upload(client, token, severity="low")  # success
    fake_github.timeout("POST", r"/statuses/", times=1, seconds=1.5)  # the client gives up at 0.5 s
    run(app, clock)
    upload(client, token, severity="critical")  # failure, while the older post may still land
    clock.advance(5)
    assert run(app, clock) == 0  # the commit stays in flight until a late landing is past
    wait_until(lambda: fake_github.latest_status("acme", "api", SHA) is not None)  # it lands
    clock.advance(posting.LATE_LANDING.total_seconds())
    drain(app, clock)
    assert posted_states(fake_github) == ["success", "failure"]
    assert {r["conclusion"] for r in fake_github.runs_of("acme", "api", SHA)} == {"failure"}


@pytest.mark.github_timeout(0.5)
def test_an_older_post_that_lands_after_the_newer_state_is_posted_is_overwritten(app, client, token, fake_github):
    """A green status post times out; GitHub applies it only after the newer red state was posted (a proxy held it
    past LATE_LANDING): the worker, reading what GitHub shows until DOUBT_WINDOW is past, posts the red again."""
    clock = Clock()
    upload(client, token, severity="low")  # wish 1: success
    release = threading.Event()
    fake_github.hold_until("POST", r"/statuses/", release)
    try:
        run(app, clock)  # its status post times out: it may still land
        [older] = rows(app)
        assert older.doubt_until is not None and older.doubt_until >= clock.now + posting.DOUBT_WINDOW
        upload(client, token, severity="critical")  # wish 2: failure
        clock.advance(posting.LATE_LANDING.total_seconds() + 1)
        assert run(app, clock) == 1  # the newest state posted...
        assert fake_github.latest_status("acme", "api", SHA)["state"] == "failure"
        newest = rows(app)[-1]
        assert newest.state == "pending" and newest.last_error == posting.VERIFYING  # ...and looked at again
    finally:
        release.set()
    wait_until(lambda: all(c.status for c in fake_github.calls_to("POST", r"/statuses/")))
    assert fake_github.latest_status("acme", "api", SHA)["state"] == "success"  # the older post landed last
    clock.advance(posting.SETTLE_WAIT.total_seconds())
    drain(app, clock, step=posting.SETTLE_WAIT.total_seconds())
    assert fake_github.latest_status("acme", "api", SHA)["state"] == "failure"
    assert posted_states(fake_github) == ["failure", "success", "failure"]  # in the order GitHub applied them
    assert {r["conclusion"] for r in fake_github.runs_of("acme", "api", SHA)} == {"failure"}
    [delivered] = rows(app, state="delivered")
    assert delivered.id == newest.id and delivered.delivered_at >= older.doubt_until
    assert fake_github.invalid_requests == []


@pytest.mark.github_timeout(0.5)
def test_an_older_check_run_update_that_lands_late_is_overwritten(app, client, token, fake_github):
    """The same for the check run: a green PATCH times out and lands after the newer red one."""
    clock = Clock()
    upload(client, token, severity="critical")  # wish 0: failure, its run created
    drain(app, clock)
    upload(client, token, severity="low")  # wish 1: success
    release = threading.Event()
    fake_github.hold_until("PATCH", r"/check-runs/\d+$", release)
    try:
        run(app, clock)  # its status is posted, its run's update times out
        upload(client, token, severity="critical")  # wish 2: failure
        clock.advance(posting.LATE_LANDING.total_seconds() + 1)
        assert run(app, clock) == 1
        assert {r["conclusion"] for r in fake_github.runs_of("acme", "api", SHA)} == {"failure"}
    finally:
        release.set()
    wait_until(lambda: all(c.status for c in fake_github.calls_to("PATCH", r"/check-runs/")))
    assert {r["conclusion"] for r in fake_github.runs_of("acme", "api", SHA)} == {"success"}  # landed last
    clock.advance(posting.SETTLE_WAIT.total_seconds())
    drain(app, clock, step=posting.SETTLE_WAIT.total_seconds())
    assert {r["conclusion"] for r in fake_github.runs_of("acme", "api", SHA)} == {"failure"}
    assert fake_github.latest_status("acme", "api", SHA)["state"] == "failure"
    assert fake_github.invalid_requests == []


@pytest.mark.github_timeout(0.5)
def test_an_older_run_summary_with_the_same_title_that_lands_late_is_overwritten(app, client, token, fake_github):
    """Same counts, other findings: the title alone does not tell the older run's update from the newer one."""
    clock = Clock()
    upload_advisory(client, token, "CVE-2020-0001")
    drain(app, clock)
    upload_advisory(client, token, "CVE-2020-0002")  # wish 1: one high
    release = threading.Event()
    fake_github.hold_until("PATCH", r"/check-runs/\d+$", release)
    try:
        run(app, clock)
        upload_advisory(client, token, "CVE-2020-0003")  # wish 2: one high too, another advisory
        clock.advance(posting.LATE_LANDING.total_seconds() + 1)
        assert run(app, clock) == 1
    finally:
        release.set()
    wait_until(lambda: all(c.status for c in fake_github.calls_to("PATCH", r"/check-runs/")))
    assert "CVE-2020-0002" in fake_github.runs_of("acme", "api", SHA)[0]["output"]["summary"]  # landed last
    clock.advance(posting.SETTLE_WAIT.total_seconds())
    drain(app, clock, step=posting.SETTLE_WAIT.total_seconds())
    [shown] = fake_github.runs_of("acme", "api", SHA)
    assert "CVE-2020-0003" in shown["output"]["summary"] and "CVE-2020-0002" not in shown["output"]["summary"]


def test_a_worker_killed_mid_post_leaves_the_commit_in_doubt(app, client, token, fake_github):
    """A worker sent the green post and died before its answer (nothing recorded). Its post lands after the newer
    red one was posted by another worker: the red is checked until the dead post's doubt is past, and posted again."""
    clock = Clock()
    upload(client, token, severity="low")  # wish 1: success
    with app.app_context():
        s = db.session()
        [older] = posting.claim(s, clock.now, "dead-worker")
        item = s.connection().execute(posting.ITEM, {"item": older}).one()
        s.commit()
        posting.Fence(s, item, clock.now, "dead-worker").hold()  # its post is sent; then the process is killed
    assert rows(app)[0].posting_until == clock.now + posting.DOUBT_WINDOW
    upload(client, token, severity="critical")  # wish 2: failure
    clock.advance(posting.LEASE.total_seconds() + 1)  # the dead worker's lease runs out
    assert run(app, clock) == 1
    newest = rows(app)[-1]
    assert fake_github.latest_status("acme", "api", SHA)["state"] == "failure"
    assert newest.state == "pending" and newest.last_error == posting.VERIFYING
    with app.app_context():  # the dead worker's post lands now
        gh = github_app()
        assert gh is not None
        green = {k: v for k, v in item.commit_status.items()}
        posting._call(gh, INSTALLATION, lambda c: c.rest.repos.create_commit_status("acme", "api", SHA, data=green))
    assert fake_github.latest_status("acme", "api", SHA)["state"] == "success"
    clock.advance(posting.SETTLE_WAIT.total_seconds())
    drain(app, clock, step=posting.SETTLE_WAIT.total_seconds())
    assert fake_github.latest_status("acme", "api", SHA)["state"] == "failure"
    assert [r.posting_until for r in rows(app)] == [None, None]  # waited out: cleared


def test_a_post_answered_leaves_no_mark(app, client, token, fake_github):
    """The mark a post leaves while it is sent goes with its answer: the next wish of the commit is not read back."""
    clock = Clock()
    upload(client, token, severity="low")
    drain(app, clock)
    upload(client, token, severity="critical")
    drain(app, clock)
    assert [(r.posting_until, r.doubt_until) for r in rows(app)] == [(None, None), (None, None)]
    assert fake_github.calls_to("GET", r"/status$") == []


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(lambda fake: fake.fail("POST", r"/statuses/", status=422, times=1), id="refused"),
        pytest.param(lambda fake: fake.fail("POST", r"/statuses/", status=503, times=1), id="unavailable"),
        pytest.param(lambda fake: fake.rate_limit("POST", r"/statuses/", retry_after=60, times=1), id="rate-limited"),
    ],
)
def test_a_post_answered_with_an_error_leaves_no_mark(app, client, token, fake_github, answer):
    """GitHub answered (nothing more can land from that post): the next wish of the commit is done when posted."""
    clock = Clock()
    upload(client, token, severity="low")
    answer(fake_github)
    assert run(app, clock) == 1
    assert rows(app)[0].posting_until is None and rows(app)[0].doubt_until is None
    upload(client, token, severity="critical")
    clock.advance(posting.DOUBT_WINDOW.total_seconds())  # past any backoff
    run(app, clock)
    assert rows(app)[-1].state == "delivered" and fake_github.calls_to("GET", r"/status$") == []


def test_a_mark_made_on_a_whole_second_is_cleared(app, client, token, fake_github):
    """The mark is stored as every time of the table is (SQLite: text with microseconds), so its own clearing finds
    it whatever the clock says."""
    clock = Clock()
    clock.now = clock.now.replace(microsecond=0)
    upload(client, token)
    drain(app, clock)
    assert rows(app)[0].posting_until is None


def test_a_later_post_of_a_killed_worker_is_covered_from_its_own_time(app, client, token, fake_github):
    """An earlier pass's mark, long past, does not stand for a post sent now."""
    clock = Clock()
    upload(client, token, severity="low")
    fake_github.fail("POST", r"/statuses/", status=503, times=1)
    run(app, clock)
    clock.advance(posting.DOUBT_WINDOW.total_seconds() + 60)
    with app.app_context():
        s = db.session()
        [item_id] = posting.claim(s, clock.now, "w2/x")
        item = s.connection().execute(posting.ITEM, {"item": item_id}).one()
        s.commit()
        posting.Fence(s, item, clock.now, "w2/x").hold()  # the post is sent; the worker is killed
    assert rows(app)[0].posting_until == clock.now + posting.DOUBT_WINDOW


def upload_advisory(client: Any, token: str, cve_id: str) -> None:
    r = post(client, token, seed([finding(cve_id=cve_id, severity="high")]))
    assert r.status_code == 202, r.json


def test_without_a_doubtful_post_nothing_is_read_back(app, client, token, fake_github):
    """Checking what GitHub shows costs calls: only after a post that may land late."""
    upload(client, token)
    drain(app, Clock())
    assert fake_github.calls_to("GET", r"/status$") == []
    assert rows(app)[0].state == "delivered"


@pytest.mark.github_timeout(0.5)
def test_a_post_that_may_land_late_with_nothing_newer_is_not_read_back(app, client, token, fake_github):
    """A late landing of the row's own state changes nothing: it is posted again after LATE_LANDING, and done."""
    clock = Clock()
    upload(client, token)
    fake_github.timeout("POST", r"/statuses/", times=1, seconds=0.8)
    run(app, clock)
    started = clock.now
    clock.advance(posting.LATE_LANDING.total_seconds() + 1)
    drain(app, clock, step=posting.SETTLE_WAIT.total_seconds())
    [row] = rows(app)
    assert row.state == "delivered" and row.delivered_at - started < posting.DOUBT_WINDOW
    assert fake_github.calls_to("GET", r"/status$") == []


@pytest.mark.github_timeout(0.5)
def test_a_doubt_waited_out_is_cleared_and_later_wishes_are_not_read_back(app, client, token, fake_github):
    clock = Clock()
    upload(client, token, severity="low")
    fake_github.timeout("POST", r"/statuses/", times=1, seconds=0.8)
    run(app, clock)  # may land late
    upload(client, token, severity="critical")  # newer: in doubt until the window is past
    clock.advance(posting.LATE_LANDING.total_seconds() + 1)
    drain(app, clock, step=posting.SETTLE_WAIT.total_seconds())
    assert [r.doubt_until for r in rows(app)] == [None, None]  # waited out, checked after it: cleared
    read_back = len(fake_github.calls_to("GET", r"/status$"))
    assert read_back >= 1
    upload(client, token, severity="low")
    fake_github.fail("POST", r"/check-runs$", status=500, times=2)  # the check half retried: no read-back either
    drain(app, clock)
    assert len(fake_github.calls_to("GET", r"/status$")) == read_back
    assert fake_github.latest_status("acme", "api", SHA)["state"] == "success"


@pytest.mark.parametrize("skew_minutes", [5, -12])
def test_a_worker_whose_clock_is_off_by_minutes_still_gets_its_tokens(
    app, client, token, fake_github, monkeypatch, skew_minutes
):
    from app.github import client as github_client

    off = timedelta(minutes=skew_minutes)
    monkeypatch.setattr(github_client, "utcnow", lambda: datetime.now(UTC) + off)
    upload(client, token, sha=SHA)
    with app.app_context():
        s = db.session()
        s.execute(sa.update(Org).values(installation_id=None))  # the App's JWT is needed twice: lookup and exchange
        s.commit()
    drain(app, Clock())
    assert posted_states(fake_github) == ["failure"]
    refused = [c for c in fake_github.calls if c.status == 401]
    assert len(refused) == 1  # GitHub's clock is learnt from its first refusal, then every JWT is on it
    with app.app_context():
        gh = github_app()
        assert gh is not None
        assert abs(gh.clock_offset + off) < timedelta(seconds=5)


def test_after_an_error_a_worker_gives_back_the_rows_it_still_holds(app, client, token, fake_github):
    for sha in (SHA, SHA2):
        upload(client, token, sha=sha)
    with app.app_context():
        s = db.session()
        [mine] = posting.claim(s, None, posting.claim_token("host:1"), limit=1)
        [other] = posting.claim(s, None, posting.claim_token("host:12"), limit=1)
        assert posting.release_worker(s, "host:1") == 1  # not host:12's, whose name starts the same
    held = {r.id: r.claimed_by for r in rows(app)}
    assert held[mine] is None and held[other].startswith("host:12/")


def test_rows_given_back_after_an_error_are_in_doubt_only_when_their_post_may_still_land(
    app, client, token, fake_github, monkeypatch
):
    """An error ended the batch after both rows' posts were sent: one was answered, the other timed out. Both commits
    stay in flight for LATE_LANDING; only the one whose post may still land is in doubt (checked for DOUBT_WINDOW)."""
    monkeypatch.setattr(posting, "_unrecorded", {})
    monkeypatch.setattr(posting, "_uncertain", set())
    for sha in (SHA, SHA2):
        upload(client, token, sha=sha)
    with app.app_context():
        s = db.session()
        answered, timed_out = posting.claim(s, None, posting.claim_token("host:1"))
        posting._unrecorded.update({answered: None, timed_out: None})  # what Fence.hold leaves
        posting._uncertain.add(timed_out)  # what Fence.posted(maybe_later=True) leaves before its write fails
        assert posting.release_worker(s, "host:1") == 2
    by_id = {r.id: r for r in rows(app)}
    assert by_id[answered].doubt_until is None and by_id[timed_out].doubt_until is not None
    assert all(r.claimed_by is None and r.next_attempt_at == r.lease_until for r in by_id.values())
    assert not posting._unrecorded and not posting._uncertain


def test_a_doubt_given_back_after_the_lease_ran_out_requeues_the_newest(app, client, token, fake_github, monkeypatch):
    """The error was backed off past the lease: another worker delivered a newer state of the commit meanwhile,
    without the doubt. The doubt is still recorded, and that newer state is posted again after LATE_LANDING."""
    monkeypatch.setattr(posting, "_unrecorded", {})
    monkeypatch.setattr(posting, "_uncertain", set())
    upload(client, token, severity="low")
    with app.app_context():
        s = db.session()
        [older] = posting.claim(s, None, posting.claim_token("host:1"))
    posting._unrecorded[older] = None
    posting._uncertain.add(older)  # its post timed out; recording that failed, and the worker backed off
    with app.app_context():  # its lease ran out; another worker takes over
        s = db.session()
        s.execute(sa.update(OutboxItem).values(lease_until=utcnow() - timedelta(seconds=1)))
        s.commit()
    upload(client, token, severity="critical")
    clock = Clock()
    drain(app, clock)  # the newer state, delivered with no doubt known
    newest = rows(app)[-1]
    assert newest.state == "delivered" and newest.revision == 0
    with app.app_context():
        posting.release_worker(db.session(), "host:1")
    by_id = {r.id: r for r in rows(app)}
    assert by_id[older].doubt_until is not None
    again = by_id[newest.id]
    assert again.state == "pending" and again.revision == 1 and not again.status_posted


# ---------------------------------------------------------------- review: late posts and bad rows


@pytest.mark.github_timeout(0.5)
def test_a_late_older_create_is_found_by_the_newer_wishes_settling(app, client, token, fake_github):
    """A (green) create times out, lands 3 s later; B (red) supersedes A; B's settle must catch the late green run."""
    clock = Clock()
    upload(client, token, severity="low")  # A: success
    fake_github.timeout("POST", r"/check-runs$", times=1, seconds=3.0)
    run(app, clock)  # status success posted; create of A's run times out (maybe landed)
    upload(client, token, severity="critical")  # B: failure
    clock.advance(posting.LATE_LANDING.total_seconds() + 1)
    run(app, clock)  # B: lists (A's run not landed yet), creates its own: creates_sent 2, known 1 -> settling
    b = rows(app)[-1]
    assert b.state == "pending" and b.status_posted and not b.check_posted  # settling
    wait_until(lambda: len(fake_github.runs_of("acme", "api", SHA)) == 2)  # A's green run lands now
    drain(app, clock)
    runs = fake_github.runs_of("acme", "api", SHA)
    assert {r["conclusion"] for r in runs} == {"failure"}, runs


def test_a_row_that_cannot_be_delivered_does_not_stop_the_others(app, client, token, fake_github):
    """An answer githubkit cannot read (a 200 with a malformed body) is a counted failure of that row only, retried
    (and put back after its tries once GitHub answers: tests/test_no_lost_work.py)."""
    clock = Clock()
    upload(client, token, sha=SHA)
    upload(client, token, sha=SHA2)
    upload(client, token, sha="c" * 40)
    fake_github.fail("GET", rf"/commits/{SHA}/check-runs", status=200, json={"check_runs": "garbage"}, times=None)
    errors = []
    for _ in range(5):
        try:
            run(app, clock, worker="w", parallel=4)
        except Exception as exc:  # what worker.Loop would do: recover, then release_worker
            errors.append(type(exc).__name__)
            with app.app_context():
                db.discard_session()
                posting.release_worker(db.session(), "w")
        clock.advance(5)
    assert errors == []
    assert all(r.state == "delivered" for r in rows(app) if r.commit_sha != SHA)
    [bad] = rows(app, commit_sha=SHA)
    assert bad.state == "pending" and bad.attempts >= 1 and bad.last_error.startswith(revival.UNREADABLE)


def test_a_post_that_timed_out_after_its_lease_ran_out_requeues_the_newest(
    app, client, token, fake_github, monkeypatch
):
    """W's status post (older green) times out after W lost its lease; W2 delivered the newer red meanwhile; the
    green lands last: W re-queues the newest, posted once a late landing is past."""
    monkeypatch.setattr(posting, "LEASE", timedelta(seconds=1))
    upload(client, token, severity="low")  # A: success
    fake_github.timeout("POST", r"/statuses/", times=1, seconds=3.0)
    outcomes = []

    def stalled_worker() -> None:
        with app.app_context():
            s, gh = db.session(), github_app()
            gh.timeout = 2.0  # times out after the 1 s lease, before the fake applies the post at 3 s
            [first] = posting.claim(s, None, "stalled")
            outcomes.append(posting.deliver(s, gh, first, None, "stalled"))
            posting.record(s, first, outcomes[-1], None, random.Random(1), "stalled")

    a = threading.Thread(target=stalled_worker)
    a.start()
    try:
        wait_until(lambda: len(fake_github.calls_to("POST", r"/statuses/")) == 1)
        wait_until(lambda: lease_ran_out(app, rows(app)[0].id))
        upload(client, token, severity="critical")  # B
        with app.app_context():
            assert posting.run_once(db.session(), github_app(), worker="other") == 1
    finally:
        a.join(timeout=10)
    assert outcomes[0].state == "lost"
    wait_until(lambda: fake_github.latest_status("acme", "api", SHA)["state"] == "success", seconds=5)
    newest = rows(app)[-1]
    assert newest.state == "pending" and not newest.status_posted  # re-queued, after a late landing
    drain(app, Clock())
    assert fake_github.latest_status("acme", "api", SHA)["state"] == "failure"


@pytest.mark.github_timeout(0.5)
def test_a_lease_lost_between_two_patches_requeues_the_newest(app, client, token, fake_github, monkeypatch):
    """Two runs on the commit; W's PATCH of the target (older green) lands after W2 delivered red; W's next renewal
    (before the other run's PATCH) finds the lease gone and re-queues the newest."""
    clock = Clock()
    upload(client, token, severity="critical")
    fake_github.timeout("POST", r"/check-runs$", times=1, seconds=1.5)
    run(app, clock)
    clock.now = rows(app)[0].next_attempt_at
    run(app, clock)
    wait_until(lambda: len(fake_github.runs_of("acme", "api", SHA)) == 2)
    drain(app, clock)
    assert len(fake_github.runs_of("acme", "api", SHA)) == 2
    monkeypatch.setattr(posting, "LEASE", timedelta(seconds=1))
    upload(client, token, severity="low")  # A: success
    fake_github.timeout("PATCH", r"/check-runs/\d+$", times=1, seconds=3.0)
    before = len(fake_github.calls_to("PATCH", r"/check-runs/"))

    def stalled_worker() -> None:
        with app.app_context():
            s, gh = db.session(), github_app()
            gh.timeout = 10.0
            gh._installations.clear()  # made earlier with the 0.5 s timeout
            [first] = posting.claim(s, None, "stalled")
            out = posting.deliver(s, gh, first, None, "stalled")
            posting.record(s, first, out, None, random.Random(1), "stalled")

    a = threading.Thread(target=stalled_worker)
    a.start()
    try:
        wait_until(lambda: len(fake_github.calls_to("PATCH", r"/check-runs/")) > before)
        wait_until(lambda: lease_ran_out(app, rows(app)[-1].id))
        upload(client, token, severity="critical")  # B
        with app.app_context():
            assert posting.run_once(db.session(), github_app(), worker="other") == 1
    finally:
        a.join(timeout=10)
    drain(app, Clock())
    runs = fake_github.runs_of("acme", "api", SHA)
    assert {r["conclusion"] for r in runs} == {"failure"}
