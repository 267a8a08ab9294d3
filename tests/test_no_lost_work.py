"""Nothing given up for a transient reason stays undelivered (spec section 11): outbox items that ran out of tries
during a GitHub outage are delivered once GitHub answers again, never a stale state over a newer one, while permanent
failures stay failed; webhook deliveries that failed while the app was down are found with GET /app/hook/deliveries
and redelivered, hourly by the worker and by `webhooks redeliver`."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
import sqlalchemy as sa
from flask import Flask

from app import db, revival, worker
from app.chain import retention
from app.db import write_transaction
from app.github import outbox, posting, redeliver
from app.github.client import github_app
from app.models import OrgSettings, OutboxItem, RedeliveryLook, WebhookDelivery, utcnow
from tests import paths
from tests.conftest import MakeApp, admin_login, app_with_github, org_with_installation
from tests.factories import SHA, make_org, make_token, post, seed
from tests.fakes import FakeGitHub
from tests.test_delivery import Clock, delivery_detail, posted_states, rows, run, upload

REPO_WEB = "acme/web"
PING = json.loads((paths.FIXTURES / "github-webhooks" / "ping.json").read_bytes())


@pytest.fixture
def app(make_app: MakeApp, fake_github: FakeGitHub) -> Flask:
    return app_with_github(make_app, fake_github, ["acme/api", REPO_WEB])


@pytest.fixture
def token(app: Flask) -> str:
    return org_with_installation(app)


# ---------------------------------------------------------------- helpers


def sha_of(n: int) -> str:
    return f"{n:040x}"


def revive(app: Flask, clock: Clock | None = None, answered: bool = False) -> int:
    """One pass of the reconciler, on the simulated clock (or the database's)."""
    with app.app_context():
        gh = github_app()
        assert gh is not None
        return redeliver.revive_after_outage(
            db.session(), gh, answered=answered, now=clock.now if clock else None, rng=random.Random(3)
        )


def settle(app: Flask, clock: Clock, step: float = 60.0, limit: int = 2000) -> None:
    """Run the worker on simulated time until nothing is pending (through retries, refusals and the circuit)."""
    for _ in range(limit):
        if not rows(app, state="pending"):
            return
        run(app, clock)
        clock.advance(step)
    raise AssertionError(f"still pending: {[(r.id, r.attempts, r.last_error) for r in rows(app, state='pending')]}")


def probes(fake: FakeGitHub) -> list[Any]:
    """The reconciler's asks whether GitHub answers (the webhook's newest delivery, one per page)."""
    return [c for c in fake.calls_to("GET", r"^/app/hook/deliveries$") if c.query.get("per_page") == "1"]


def commit_page(client: Any, sha: str, repo: str = "acme/api") -> str:
    r = client.get(f"/admin/orgs/acme/code-security/image-scanning/commits/{sha}", query_string={"repo": repo})
    assert r.status_code == 200, r.get_data(as_text=True)[:500]
    return r.get_data(as_text=True)


def fail_rows(app: Flask, ids: list[int], **values: Any) -> None:
    """Mark outbox rows as the worker leaves them when it gives up (by default: during an outage)."""
    values = {
        "state": "failed",
        "attempts": posting.MAX_ATTEMPTS,
        "last_status_code": 503,
        "last_error": "GitHub answered 503: Service Unavailable",
        "lease_until": None,
        "claimed_by": None,
        **values,
    }
    with app.app_context():
        s = db.session()
        with write_transaction(s):
            s.execute(sa.update(OutboxItem).where(OutboxItem.id.in_(ids)).values(**values))


def assert_newest_once_and_last(fake: FakeGitHub, sha: str, newest: str, older: str) -> None:
    """The newest state is on GitHub exactly once, last; the older state is never posted after it."""
    states = posted_states(fake, sha)
    assert states and states[-1] == newest, (sha, states)
    assert states.count(newest) == 1, (sha, states)
    assert older not in states[states.index(newest) :], (sha, states)
    runs = fake.runs_of("acme", "api", sha)
    assert runs and {r["conclusion"] for r in runs} == {"success" if newest == "success" else "failure"}


# ---------------------------------------------------------------- outbox items given up on during an outage


def test_an_outage_past_the_retry_budget_ends_with_each_commits_newest_state_once(app, client, token, fake_github):
    clock = Clock()
    # Permanent failures first, while GitHub answers: a 422 on every status of acme/web, an org not installed.
    fake_github.fail("POST", r"^/repos/acme/web/statuses/", status=422, times=None)
    upload(client, token, repo=REPO_WEB, sha=sha_of(100))
    make_org(app, "other", github_login="other")
    other = post(client, make_token(app, "other"), seed(repo="other/api", sha=sha_of(101)), slug="other")
    assert other.status_code == 202
    settle(app, clock, step=150)
    permanent = rows(app, state="failed")
    assert {r.last_status_code for r in permanent} == {422, 404}
    assert not any(revival.revivable(r) for r in permanent)

    shas = [sha_of(n) for n in range(5)]
    for sha in shas[:2]:  # delivered before the outage: GitHub shows their older state
        upload(client, token, sha=sha, severity="critical")
    settle(app, clock)
    fake_github.outage(True)
    for sha in shas[2:]:  # older wishes made during the outage
        upload(client, token, sha=sha, severity="critical")
    settle(app, clock)  # they run out of tries
    stale = rows(app, state="failed", last_status_code=503)
    assert len(stale) == 3 and all(r.attempts == posting.MAX_ATTEMPTS for r in stale)
    newest = {sha: upload(client, token, sha=sha, severity="low") for sha in shas}  # the newest wishes: green
    settle(app, clock)  # the outage outlasts their tries too
    given_up = {r.commit_sha: r for r in rows(app, state="failed", last_status_code=503)}
    assert set(given_up) == set(shas) and len(rows(app, state="failed", last_status_code=503)) == 8

    # In between: the admin page and the API say the newest wishes are retried after the outage.
    detail = delivery_detail(client, token, newest[shas[2]]["scan_run_id"])
    assert detail.startswith("retrying after outage (GitHub answered 503")
    admin_login(app, client)
    assert "retrying after outage" in commit_page(client, shas[0])

    # While GitHub is still away, the reconciler puts nothing back (it asks first); the older wishes that ran out of
    # tries are superseded by their commits' newer ones, so they are never posted.
    clock.advance(120)
    before = len(probes(fake_github))
    assert revive(app, clock) == 0
    assert len(probes(fake_github)) == before + 1
    assert rows(app, state="pending") == []
    assert {r.commit_sha for r in rows(app, state="superseded")} >= set(shas[2:])
    calls_before_recovery = len(fake_github.calls_to("POST", r"/statuses/"))

    fake_github.outage(False)
    clock.advance(120)
    assert revive(app, clock) == len(shas)  # GitHub answers: every commit's newest wish, once
    assert delivery_detail(client, token, newest[shas[3]]["scan_run_id"]) == posting.REVIVED
    settle(app, clock)
    for sha in shas:
        assert_newest_once_and_last(fake_github, sha, "success", "failure")
    assert posted_states(fake_github, shas[0]) == ["failure", "success"]
    assert posted_states(fake_github, shas[2]) == ["success"]  # its older wish was never posted
    for sha in shas:
        latest = rows(app, commit_sha=sha)[-1]
        assert latest.state == "delivered" and latest.revivals == 1
        assert delivery_detail(client, token, newest[sha]["scan_run_id"]).startswith("delivered ")
    assert "retrying after outage" not in commit_page(client, shas[0])

    # Permanent failures stayed failed, and nothing more was posted for them.
    for row in permanent:
        again = rows(app, id=row.id)[0]
        assert again.state == "failed" and again.revivals == 0 and again.last_status_code == row.last_status_code
    assert posted_states(fake_github, sha_of(100)) == []
    statuses_after = fake_github.calls_to("POST", r"/statuses/")[calls_before_recovery:]
    assert len(statuses_after) == len(shas)  # one post per commit after the outage, none for the permanent ones
    assert revive(app, clock) == 0  # nothing left
    assert fake_github.invalid_requests == [] and fake_github.invalid_responses == []


def test_answers_that_cannot_be_read_are_retried_and_revived_not_given_up_for_good(app, client, token, fake_github):
    """GitHub (or a proxy before it) answers the check-run calls 200 with a body that is not a check run: GitHub was
    not heard. The status turned red but the old green run stood; the row runs out of tries as in an outage, is put
    back once GitHub answers readably, and the run turns red too."""
    clock = Clock()
    sha = sha_of(7)
    upload(client, token, sha=sha, severity="low")
    settle(app, clock)
    assert [r["conclusion"] for r in fake_github.runs_of("acme", "api", sha)] == ["success"]
    fake_github.fail("*", r"/check-runs", status=200, json={"unexpected": "shape"}, times=None)
    upload(client, token, sha=sha, severity="critical")
    settle(app, clock, step=150)
    [given_up] = rows(app, state="failed")
    assert given_up.last_error.startswith(revival.UNREADABLE) and revival.revivable(given_up), given_up.last_error
    assert posted_states(fake_github, sha)[-1] == "failure"
    assert fake_github.runs_of("acme", "api", sha)[-1]["conclusion"] == "success"  # the older green stands meanwhile

    fake_github.clear_faults()
    clock.advance(120)
    assert revive(app, clock) == 1
    settle(app, clock)
    assert rows(app, commit_sha=sha)[-1].state == "delivered"
    assert posted_states(fake_github, sha)[-1] == "failure"
    assert [r["conclusion"] for r in fake_github.runs_of("acme", "api", sha)] == ["failure"]


def test_a_revived_wish_waits_for_an_older_post_that_may_still_land(app, client, token, fake_github):
    clock = Clock()
    upload(client, token, severity="critical")
    upload(client, token, severity="low")
    older, newer = rows(app)
    # The older wish's post timed out: its commit stays in flight until a late landing is past (posting.LATE_LANDING).
    fail_rows(app, [older.id], state="superseded", lease_until=clock.now + posting.LATE_LANDING)
    fail_rows(app, [newer.id])
    assert revive(app, clock) == 1
    assert run(app, clock) == 0  # the commit is in flight: the revived newest wish waits
    clock.advance(posting.LATE_LANDING.total_seconds() + 1)
    assert run(app, clock) == 1
    assert posted_states(fake_github) == ["success"]


def test_only_the_newest_wish_of_a_commit_is_revived_and_older_ones_are_superseded(app, client, token, fake_github):
    clock = Clock()
    upload(client, token, severity="critical")
    [first] = rows(app)
    fail_rows(app, [first.id])
    upload(client, token, severity="low")  # a newer wish, not given up on: pending
    second = rows(app)[-1]
    assert second.state == "pending"
    assert revive(app, clock) == 0
    assert rows(app, id=first.id)[0].state == "superseded"
    settle(app, clock)
    assert posted_states(fake_github) == ["success"]


def test_retention_keeps_a_state_given_up_in_an_outage_until_it_is_posted(app, client, token, fake_github):
    """Review: GitHub away longer than the org keeps payloads (1 day here). The commit's newest state (failure, a
    second image's critical) was given up on in the outage; the daily retention trimmed its row, which was then never
    revived: GitHub kept the first image's green for good. A row still awaiting revival keeps its body; rows done with
    (delivered, superseded, failed for good) are trimmed as before."""
    clock = Clock()
    upload(client, token, severity="low", sha=sha_of(1))  # failed for good below: trimmed
    upload(client, token, severity="low", sha=sha_of(2))  # failed for good by an error of ours: trimmed
    upload(client, token, severity="low")  # image 1: success, delivered
    settle(app, clock)
    assert posted_states(fake_github) == ["success"]
    second_image = upload(client, token, image="ghcr.io/acme/worker:1", severity="critical")
    assert second_image["commit_status"]["state"] == "failure"
    first, ours, delivered, newest = rows(app)
    fail_rows(app, [first.id], last_status_code=422, last_error="GitHub answered 422: Validation Failed")
    # Review: no status code (NULL), so the revival rule in SQL was NULL, and negated still NULL: kept for ever.
    fail_rows(app, [ours.id], last_status_code=None, last_error="unexpected error: KeyError")
    fail_rows(app, [newest.id])  # given up on in the outage
    with app.app_context():
        s = db.session()
        with write_transaction(s):
            s.execute(sa.update(OrgSettings).values(retention_days=1))
        [done] = retention.run(db.session(), utcnow() + timedelta(days=2))
    assert done.outbox == 3  # the two failed for good and the one delivered
    kept = {r.id: r.redacted_at for r in rows(app)}
    assert kept[newest.id] is None and None not in (kept[first.id], kept[ours.id], kept[delivered.id]), kept
    assert revive(app, clock, answered=True) == 1
    settle(app, clock)
    assert posted_states(fake_github) == ["success", "failure"]  # what GitHub shows: the commit's newest state
    runs = fake_github.runs_of("acme", "api", SHA)
    assert {r["conclusion"] for r in runs} == {"failure"} and all("CVE-" in r["output"]["summary"] for r in runs)
    with app.app_context():  # posted: done with, trimmed at the next run
        [done] = retention.run(db.session(), utcnow() + timedelta(days=3))
    assert done.outbox == 1 and rows(app, id=newest.id)[0].redacted_at is not None


def test_retention_keeps_a_row_awaiting_revival_for_a_month_past_its_cut_off_at_most(app, client, token, fake_github):
    """Review: GitHub gone for good (the App removed, an Enterprise host retired) would keep the body for ever."""
    upload(client, token, severity="critical")
    [row] = rows(app)
    fail_rows(app, [row.id])
    with app.app_context():
        s = db.session()
        with write_transaction(s):
            s.execute(sa.update(OrgSettings).values(retention_days=1))
        month = retention.REVIVAL_KEPT_AT_MOST.days
        assert retention.run(db.session(), utcnow() + timedelta(days=month))[0].outbox == 0
        assert retention.run(db.session(), utcnow() + timedelta(days=month + 2))[0].outbox == 1
    assert rows(app)[0].redacted_at is not None and revive(app, answered=True) == 0


@pytest.mark.parametrize(
    "status_code,error,transient",
    [
        (503, "GitHub answered 503: Service Unavailable", True),
        (502, "GitHub answered 502", True),
        (None, "could not reach GitHub: ConnectError", True),
        (None, "GitHub did not answer in time", True),
        (429, "GitHub answered 429", True),
        (422, "GitHub answered 422: Validation Failed", False),
        (404, "the GitHub App is not installed on other/api", False),
        (401, "GitHub answered 401: Bad credentials", False),
        (400, "GitHub answered 400", False),
        (None, "unexpected error: KeyError", False),
    ],
)
def test_which_failures_count_as_transient(status_code, error, transient):
    assert revival.failed_in_outage(status_code, error) is transient


def test_permanent_failures_and_rows_revived_too_often_stay_failed(app, client, token, fake_github):
    clock = Clock()
    for n in range(4):
        upload(client, token, sha=sha_of(n))
    ids = [r.id for r in rows(app)]
    fail_rows(app, ids[:1], last_status_code=422, last_error="GitHub answered 422: Validation Failed")
    fail_rows(app, ids[1:2], last_status_code=401, last_error="GitHub answered 401: Bad credentials")
    fail_rows(app, ids[2:3], revivals=revival.MAX_REVIVALS)
    fail_rows(app, ids[3:])
    assert revive(app, clock) == 1
    settle(app, clock)
    states = {r.id: r.state for r in rows(app)}
    assert [states[i] for i in ids] == ["failed", "failed", "failed", "delivered"]
    details = [outbox.delivery_state(r)["detail"] for r in rows(app)[:3]]
    assert all(d.startswith("failed: ") for d in details), details
    assert posted_states(fake_github, sha_of(3)) == ["failure"]


def test_the_worker_revives_every_minute_and_at_once_when_its_circuit_closes(app, client, token, fake_github):
    upload(client, token, sha=sha_of(1))
    fail_rows(app, [r.id for r in rows(app)])
    with app.app_context():
        gh = github_app()
        assert gh is not None
        loop = worker.Loop(gh)
        loop.step()  # the first round looks at once: GitHub answers, the row is put back and delivered
    assert posted_states(fake_github, sha_of(1)) == ["failure"]
    assert len(probes(fake_github)) == 1

    upload(client, token, sha=sha_of(2))
    fail_rows(app, [rows(app)[-1].id])
    with app.app_context():
        loop.step()  # within the minute: not looked at
        assert rows(app)[-1].state == "failed"
        circuit = gh.circuit
        assert isinstance(circuit, posting.Circuit)
        circuit.failures = 1  # an outage the worker saw...
        circuit.observe(posting.Outcome("delivered"), utcnow(), random.Random(1))  # ...ends: GitHub answered
        loop.step()  # at once, and without asking GitHub first
    assert posted_states(fake_github, sha_of(2)) == ["failure"]
    assert len(probes(fake_github)) == 1

    upload(client, token, sha=sha_of(3))
    fail_rows(app, [rows(app)[-1].id])
    with app.app_context():
        loop._revive_due = time.monotonic()  # a minute later
        loop.step()
    assert posted_states(fake_github, sha_of(3)) == ["failure"]
    assert len(probes(fake_github)) == 2


def test_the_worker_command_once_delivers_what_an_outage_left(app, client, token, fake_github, runner):
    upload(client, token)
    fail_rows(app, [r.id for r in rows(app)])
    result = runner.invoke(args=["worker", "--once"])
    assert result.exit_code == 0, result.output
    assert posted_states(fake_github) == ["failure"]
    assert fake_github.calls_to("GET", r"^/app/hook/deliveries$") == probes(fake_github)  # no hourly look in --once


# ---------------------------------------------------------------- webhook deliveries that failed


def target_of(app: Flask) -> Callable[[dict[str, str], bytes], int]:
    """The app's webhook endpoint, as the fake GitHub's redeliveries reach it."""
    webhook_client = app.test_client()

    def send(headers: dict[str, str], body: bytes) -> int:
        return webhook_client.post("/webhooks/github", data=body, headers=headers).status_code

    return send


def handled(app: Flask) -> set[str]:
    with app.app_context():
        return set(db.session().scalars(sa.select(WebhookDelivery.delivery_id)))


def mark_handled(app: Flask, guid: str, event: str = "ping") -> None:
    with app.app_context():
        s = db.session()
        with write_transaction(s):
            s.add(WebhookDelivery(delivery_id=guid, event=event, action=None))


def asked(fake: FakeGitHub) -> list[int]:
    return list(fake.redelivery_requests)


def last_look(app: Flask) -> datetime | None:
    """Where the last successful look began (read afresh)."""
    with app.app_context():
        return db.session().execute(sa.select(RedeliveryLook.looked_at)).scalar_one_or_none()


def ago(**delta: float) -> datetime:
    return datetime.now(UTC) - timedelta(**delta)


def seed_deliveries(app: Flask, fake: FakeGitHub) -> dict[str, dict[str, Any]]:
    """Deliveries of several kinds; the two the app must ask for again are `down` and `no_connection`."""
    made = {
        "ok": fake.add_hook_delivery("ping", None, status_code=200, delivered_at=ago(minutes=50), payload=PING),
        "down": fake.add_hook_delivery("ping", None, status_code=503, delivered_at=ago(minutes=40), payload=PING),
        "no_connection": fake.add_hook_delivery("ping", None, status_code=0, delivered_at=ago(minutes=39)),
        "handled": fake.add_hook_delivery("ping", None, status_code=502, delivered_at=ago(minutes=30)),
        "refused_again": fake.add_hook_delivery("ping", None, status_code=503, delivered_at=ago(minutes=20)),
        "healed": fake.add_hook_delivery("ping", None, status_code=504, delivered_at=ago(minutes=15)),
        "too_old": fake.add_hook_delivery("ping", None, status_code=503, delivered_at=ago(days=3, minutes=10)),
    }
    mark_handled(app, made["handled"]["guid"])  # the app handled it although GitHub saw a failure (a slow answer)
    # A redelivery the app refused (400): asking once more would not help.
    fake.add_hook_delivery(
        "ping", None, status_code=400, guid=made["refused_again"]["guid"], redelivery=True, delivered_at=ago(minutes=19)
    )
    # A redelivery that got through.
    fake.add_hook_delivery(
        "ping", None, status_code=200, guid=made["healed"]["guid"], redelivery=True, delivered_at=ago(minutes=14)
    )
    return made


def test_only_failed_unhandled_deliveries_are_redelivered_by_the_cli_with_the_app_jwt(app, runner, fake_github):
    made = seed_deliveries(app, fake_github)
    fake_github.redeliver_to(target_of(app), "webhook-secret")
    result = runner.invoke(args=["webhooks", "redeliver"])
    assert result.exit_code == 0, result.output
    assert asked(fake_github) == [made["down"]["id"], made["no_connection"]["id"]]  # oldest first
    lines = result.output.splitlines()
    assert lines[0].startswith("looked at 8 webhook deliveries since ")
    assert f"asked GitHub to redeliver delivery {made['down']['id']} (ping, event {made['down']['guid']})" in lines[1]
    assert "failed 503 'Service Unavailable'" in lines[1]
    assert "failed 0 'failed to connect'" in lines[2] and lines[-1] == "asked for 2 redeliveries"
    # GitHub delivered them again, signed: the app handled them this time.
    assert {made["down"]["guid"], made["no_connection"]["guid"]} <= handled(app)
    assert [d["status_code"] for d in fake_github.deliveries_of(made["down"]["guid"])] == [503, 200]
    # With the App's JWT (RS256, issued by the App), never an installation token.
    calls = [c for c in fake_github.calls if c.path.startswith("/app/hook/deliveries")]
    assert calls and fake_github.token_exchanges == {}
    for call in calls:
        scheme, credential = call.headers["authorization"].split()
        assert scheme.lower() == "bearer"
        claims = jwt.decode(credential, fake_github.public_key_pem, algorithms=["RS256"])
        assert str(claims["iss"]) == fake_github.app_id
    # The next look starts where this one began: nothing more to ask for.
    again = runner.invoke(args=["webhooks", "redeliver"])
    assert again.exit_code == 0 and again.output.splitlines()[-1] == "nothing to redeliver"
    assert len(asked(fake_github)) == 2
    assert fake_github.invalid_requests == [] and fake_github.invalid_responses == []


def test_since_looks_further_back_but_never_past_three_days(app, runner, fake_github):
    made = seed_deliveries(app, fake_github)
    with app.app_context():
        s = db.session()
        with write_transaction(s):  # the last look began ten minutes ago: by default, only later deliveries
            s.add(RedeliveryLook(hook=redeliver.HOOK, looked_at=utcnow() - timedelta(minutes=10)))
    assert runner.invoke(args=["webhooks", "redeliver"]).output.splitlines()[-1] == "nothing to redeliver"
    since = (datetime.now(UTC) - timedelta(minutes=45)).isoformat()
    result = runner.invoke(args=["webhooks", "redeliver", "--since", since])
    assert result.exit_code == 0, result.output
    assert asked(fake_github) == [made["down"]["id"], made["no_connection"]["id"]]
    way_back = runner.invoke(args=["webhooks", "redeliver", "--since", "2020-01-01T00:00:00Z"])
    assert way_back.exit_code == 0, way_back.output
    assert made["too_old"]["id"] not in asked(fake_github)  # GitHub keeps deliveries three days: so does the look
    assert runner.invoke(args=["webhooks", "redeliver", "--since", "yesterday"]).exit_code == 2


def test_the_listing_is_followed_across_pages(app, runner, fake_github, monkeypatch):
    monkeypatch.setattr(redeliver, "PER_PAGE", 4)
    failed = []
    for n in range(14):  # 14 deliveries, every third failed: four pages
        code = 503 if n % 3 == 0 else 200
        item = fake_github.add_hook_delivery("ping", None, status_code=code, delivered_at=ago(minutes=60 - n))
        if code == 503:
            failed.append(item["id"])
    result = runner.invoke(args=["webhooks", "redeliver"])
    assert result.exit_code == 0, result.output
    assert sorted(asked(fake_github)) == sorted(failed)
    pages = [c for c in fake_github.calls if c.path == "/app/hook/deliveries"]
    assert [c.query.get("per_page") for c in pages] == ["4"] * 4
    assert "cursor" not in pages[0].query and all(c.query["cursor"].startswith("v1_") for c in pages[1:])
    assert fake_github.invalid_requests == []


def test_a_bounded_run_leaves_the_rest_for_the_next_look(app, runner, fake_github, monkeypatch):
    monkeypatch.setattr(redeliver, "MAX_ASKS", 2)
    made = [
        fake_github.add_hook_delivery("ping", None, status_code=503, delivered_at=ago(minutes=30 - n)) for n in range(3)
    ]
    ids = [d["id"] for d in made]
    first = runner.invoke(args=["webhooks", "redeliver"])
    assert first.exit_code == 0 and asked(fake_github) == ids[:2]
    assert "more remain" in first.output
    assert last_look(app) is None  # not done: not recorded
    for delivery in made[:2]:  # GitHub redelivered the first two, and the app handled them this time
        mark_handled(app, delivery["guid"])
    second = runner.invoke(args=["webhooks", "redeliver"])
    assert second.exit_code == 0, second.output
    assert asked(fake_github) == ids  # the third, and only it
    assert last_look(app) is not None


def test_the_worker_looks_hourly_and_an_outage_never_stops_it(app, fake_github):
    first = fake_github.add_hook_delivery("ping", None, status_code=503, delivered_at=ago(minutes=5), payload=PING)
    fake_github.redeliver_to(target_of(app), "webhook-secret")
    with app.app_context():
        gh = github_app()
        assert gh is not None
        loop = worker.Loop(gh)
        loop.step()  # the first round looks (no look recorded yet)
        assert asked(fake_github) == [first["id"]] and first["guid"] in handled(app)

        second = fake_github.add_hook_delivery("ping", None, status_code=502, payload=PING)
        loop._redelivery_due = 0.0
        loop.step()  # within the hour (the database says so, for every worker process): no look
        assert asked(fake_github) == [first["id"]]

        hour_ago = utcnow() - redeliver.LOOK_EVERY - timedelta(minutes=1)
        s = db.session()
        with write_transaction(s):
            s.execute(sa.update(RedeliveryLook).values(tried_at=hour_ago, looked_at=hour_ago))
        fake_github.outage(True)
        loop._redelivery_due = 0.0
        loop.step()  # an hour on, GitHub is away: logged, the worker goes on
        assert asked(fake_github) == [first["id"]]
        assert last_look(app) == hour_ago  # that look did not count

        fake_github.outage(False)
        with write_transaction(s):
            s.execute(sa.update(RedeliveryLook).values(tried_at=hour_ago))
        loop._redelivery_due = 0.0
        loop.step()  # the next hour: it goes on from the last look that was done
        assert asked(fake_github) == [first["id"], second["id"]] and second["guid"] in handled(app)
    assert fake_github.invalid_requests == []


def test_the_cli_says_why_it_could_not_look(app, runner, fake_github):
    fake_github.outage(True)
    result = runner.invoke(args=["webhooks", "redeliver"])
    assert result.exit_code == 1
    assert "could not list the webhook's deliveries: GitHub answered 503" in result.output


def test_the_cli_without_a_github_app(make_app):
    result = make_app().test_cli_runner().invoke(args=["webhooks", "redeliver"])
    assert result.exit_code == 1 and "no GitHub App configured" in result.output


def test_a_redelivery_github_refuses_is_reported_and_the_rest_go_on(app, runner, fake_github):
    gone = fake_github.add_hook_delivery("ping", None, status_code=503, delivered_at=ago(minutes=20))
    kept = fake_github.add_hook_delivery("ping", None, status_code=503, delivered_at=ago(minutes=10))
    fake_github.fail("POST", rf"^/app/hook/deliveries/{gone['id']}/attempts$", status=422, times=1)
    result = runner.invoke(args=["webhooks", "redeliver"])
    assert result.exit_code == 0, result.output
    assert "GitHub refused (GitHub answered 422" in result.output
    assert result.output.splitlines()[-1] == "asked for 1 redelivery"
    assert asked(fake_github) == [kept["id"]]


def test_a_worker_stopped_while_it_backs_off_after_an_error_gives_its_rows_back(app, client, token, fake_github):
    """SIGTERM during the back-off after an error: the rows that error left claimed are given back on the way out
    (not held until their leases run out, with newer states of their commits waiting behind them)."""
    upload(client, token, sha=sha_of(1))
    with app.app_context():
        gh = github_app()
        assert gh is not None
        loop = worker.Loop(gh)
        [held] = posting.claim(db.session(), None, posting.claim_token(loop.name))

        def failing_step() -> int:
            loop.stop.set()  # the stop arrives while the error is backed off
            raise sa.exc.OperationalError("select 1", {}, Exception("the database went away"))

        loop.step = failing_step  # type: ignore[method-assign]
        assert loop.run() == 0
        assert not loop.holding_rows
    [row] = rows(app)
    assert row.id == held and row.claimed_by is None and row.lease_until is None and row.state == "pending"


def test_worker_once_that_fails_gives_its_rows_back_before_the_command_fails(app, client, token, fake_github):
    """`worker --once` ends at its first error (the command fails, saying why); the rows that error left claimed are
    given back first, not held until their leases run out."""
    upload(client, token, sha=sha_of(1))
    with app.app_context():
        gh = github_app()
        assert gh is not None
        loop = worker.Loop(gh, once=True)
        [held] = posting.claim(db.session(), None, posting.claim_token(loop.name))

        def failing_step() -> int:
            raise sa.exc.OperationalError("select 1", {}, Exception("the database went away"))

        loop.step = failing_step  # type: ignore[method-assign]
        with pytest.raises(sa.exc.OperationalError):
            loop.run()
        assert not loop.holding_rows
    [row] = rows(app)
    assert row.id == held and row.claimed_by is None and row.lease_until is None and row.state == "pending"
