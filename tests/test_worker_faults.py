"""Real faults injected into a real worker process (`flask --app wsgi worker`, spawned as a subprocess): a worker
stopped (SIGSTOP) past its lease, SIGTERM in the middle of a batch, a SQLite write lock held past the database's
budget, PostgreSQL restarted under it; and /readyz, which wants a heartbeat (spec section 4, "posting is reliable"
and "the worker never exits on a database or GitHub error").

Each test fails on the code before the fenced worker (HEAD's app/github/posting.py and app/cli.py: leases on the
worker's own clock, no fencing, no re-queue, a worker loop that exited on any exception, no heartbeat); why is said
in each test. To check that, the worker subprocess can be run from another checkout: FREMFORGE_TEST_WORKER_ROOT=
<a tree of HEAD's files, e.g. `git archive HEAD | tar -x -C /tmp/head`> runs it from there, against the schema of
this tree.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from flask import Flask

from app import clock, create_app, db, migrate
from app import worker as worker_loop
from app.github import posting
from app.github.client import github_app
from app.models import OutboxItem, WorkerHeartbeat, utcnow
from tests import pgcluster
from tests.conftest import INSTALLATION, TEST_CONFIG, MakeApp, app_with_github, org_with_installation, skip_or_fail
from tests.factories import finding, make_token, post, seed
from tests.fakes import FakeGitHub, github_app_config
from tests.test_delivery import posted_states, rows, upload

ROOT = Path(__file__).resolve().parent.parent
WORKER_ROOT = Path(os.environ.get("FREMFORGE_TEST_WORKER_ROOT") or ROOT)  # where the worker's code is taken from
LEASE_SECONDS = 3.0  # the shortened lease of the stall tests' workers (60 s in production)
POLL_SECONDS = 0.2  # the subprocess worker's --poll-seconds
START_TIMEOUT = 30.0  # seconds for a worker process to get going (imports, first claim)
STOP_TIMEOUT = 5.0  # seconds a worker may take to exit after SIGTERM
WAIT = 30.0  # a bound for what should happen at once, not a pause
SETTLE_TIMEOUT = 45.0  # seconds for the outbox to drain after PostgreSQL came back: less than the 60 s lease
INTERVAL = 0.02  # seconds between two looks at what is awaited (a poll's interval, not a synchronisation point)

T = TypeVar("T")


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def app(make_app: MakeApp, fake_github: FakeGitHub) -> Flask:
    """The app with a GitHub App configured against the fake, on each backend (conftest's `client` uses it)."""
    return app_with_github(make_app, fake_github, ["acme/api"])


@pytest.fixture
def token(app: Flask) -> str:
    return org_with_installation(app)


def wait_for(condition: Callable[[], T], timeout: float, what: str, worker: Worker | None = None) -> T:
    """Poll `condition` until it is truthy (returned), or fail after `timeout` seconds saying what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            log = f"\nworker log:\n{worker.output()[-6000:]}" if worker is not None else ""
            raise AssertionError(f"waited {timeout:.0f} s for {what}{log}")
        time.sleep(INTERVAL)


def sha_of(n: int) -> str:
    return hashlib.sha1(f"commit-{n}".encode()).hexdigest()


def db_now(app: Flask) -> Any:
    with app.app_context():
        return clock.now_of(db.session().connection())


def outbox_row(app: Flask, item_id: int) -> OutboxItem:
    with app.app_context():
        return db.session().get(OutboxItem, item_id)


def deliver_in_process(app: Flask) -> int:
    """One round of an in-process worker ("B") on the database's own clock."""
    with app.app_context():
        gh = github_app()
        assert gh is not None
        return posting.run_once(db.session(), gh, worker="in-process-B")


def drain_in_process(app: Flask, worker: Worker | None = None) -> None:
    """Run the in-process worker until nothing is pending (another worker may hold a row meanwhile)."""

    def drained() -> bool:
        deliver_in_process(app)
        return not rows(app, state="pending")

    wait_for(drained, WAIT, "the outbox to drain", worker)


# ---------------------------------------------------------------- the worker process

# `flask --app wsgi worker ...` with the lease shortened first: flask.cli.main reads its arguments from sys.argv[1:],
# which for `python -c CODE ARGS...` are ARGS.
HARNESS = (
    "import datetime, app.github.posting as d; d.LEASE = datetime.timedelta(seconds={lease!r}); "
    "from flask.cli import main; main()"
)


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def errors(self) -> int:
        """How many errors the worker's loop recovered from (it logs each)."""
        return self.output().count("worker.error ")

    def stop(self) -> int:
        """SIGTERM; the exit code (failing when it does not exit within STOP_TIMEOUT)."""
        self.send(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the worker did not exit within {STOP_TIMEOUT:.0f} s of SIGTERM\n{self.output()[-4000:]}"
            ) from None


@contextmanager
def worker_process(
    database_url: str, fake: FakeGitHub, tmp: Path, *, lease: float | None = None, parallel: int = 1
) -> Iterator[Worker]:
    """A worker process on `database_url` delivering to `fake`; killed (by its pid) on the way out if still there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FREMFORGE_")}
    env.update({f"FREMFORGE_{key}": value for key, value in github_app_config(fake).items()})
    env.update(
        FREMFORGE_DATABASE_URL=database_url,
        FREMFORGE_SECRET_KEY="worker-test-secret-key",
        FREMFORGE_PUBLIC_URL="http://fremforge.test",
        FREMFORGE_CHECKPOINT_KEY_FILE=str(tmp / "checkpoint_ed25519.pem"),
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONUNBUFFERED="1",
    )
    args = ["--app", "wsgi", "worker", "--poll-seconds", str(POLL_SECONDS), "--parallel", str(parallel)]
    if lease is None:
        cmd = [sys.executable, "-m", "flask", *args]
    else:
        cmd = [sys.executable, "-c", HARNESS.format(lease=lease), *args]
    log = tmp / f"worker-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=WORKER_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield Worker(proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()  # SIGKILL ends a stopped process too
        proc.wait(timeout=WAIT)


# ---------------------------------------------------------------- 1. a worker stopped past its lease


def test_a_worker_stopped_past_its_lease_and_resumed_leaves_github_showing_the_newest_state(
    app: Flask, client: Any, token: str, fake_github: FakeGitHub, tmp_path: Path, database_url: str, monkeypatch: Any
) -> None:
    """Worker A (a process, 3 s lease) is frozen inside its token exchange, before posting `success`; its lease
    runs out, a `failure` is uploaded and delivered by worker B; A resumes and posts its stale `success`.

    A's post is fenced after the fact: it finds its lease gone and re-queues the newest wish, so `failure` is
    posted again and GitHub ends red. On HEAD's code A posted `success` (and PATCHed B's check run to success)
    and recorded its row delivered: nothing re-queued the newest wish and GitHub stayed green.
    """
    monkeypatch.setattr(posting, "LEASE", timedelta(seconds=LEASE_SECONDS))  # worker B's
    first = upload(client, token, severity="low")  # state success
    [row1] = rows(app)
    fake_github.timeout("POST", r"/access_tokens$", times=1, seconds=2.0)
    with worker_process(database_url, fake_github, tmp_path, lease=LEASE_SECONDS) as a:
        wait_for(lambda: fake_github.calls_to("POST", r"/access_tokens$"), START_TIMEOUT, "A's token exchange", a)
        a.send(signal.SIGSTOP)
        claimed = outbox_row(app, row1.id)
        assert claimed.claimed_by is not None and claimed.lease_until is not None, "A holds the row it posts"

        def lease_ran_out() -> bool:
            lease = outbox_row(app, row1.id).lease_until
            return lease is not None and db_now(app) > lease

        wait_for(lease_ran_out, LEASE_SECONDS + WAIT, "A's lease to run out on the database's clock", a)
        newest = upload(client, token, severity="critical")  # state failure
        row2 = rows(app)[-1]
        assert row2.id != row1.id and row2.commit_status["state"] == "failure"

        def b_delivered() -> bool:
            deliver_in_process(app)
            latest = fake_github.latest_status("acme", "api", row2.commit_sha)
            return latest is not None and latest["state"] == "failure"

        wait_for(b_delivered, WAIT, "worker B to post failure")
        b = outbox_row(app, row2.id)  # posted, not done: A's post is out (its mark says so) and may land after it
        assert b.state == "pending" and b.status_posted and b.last_error == posting.VERIFYING
        revision = b.revision

        a.send(signal.SIGCONT)

        def stale_posted() -> bool:
            return any(
                c.status and isinstance(c.json, dict) and c.json.get("state") == "success"
                for c in fake_github.calls_to("POST", r"/statuses/")
            )

        wait_for(stale_posted, WAIT, "A to post its stale success after resuming", a)
        wait_for(
            lambda: outbox_row(app, row2.id).revision > revision,
            WAIT,
            "A, finding its lease gone after its post, to re-queue the newest wish",
            a,
        )
        drain_in_process(app, a)

        sha = row2.commit_sha
        assert posted_states(fake_github, sha) == ["failure", "success", "failure"]  # B, A late, the newest again
        assert fake_github.latest_status("acme", "api", sha)["state"] == "failure"
        runs = fake_github.runs_of("acme", "api", sha)
        assert runs and all(r["conclusion"] == "failure" for r in runs), runs
        assert rows(app)[-1].state == "delivered"
        read = make_token(app, scopes=["findings:read"])
        detail = client.get(
            f"/api/v1/orgs/acme/image-scans/{newest['scan_run_id']}", headers={"Authorization": f"Bearer {read}"}
        )
        assert detail.status_code == 200, detail.json
        assert detail.json["commit_status"]["state"] == "failure"
        assert detail.json["commit_status"]["delivery"]["state"] == "delivered", detail.json["commit_status"]
        assert first["scan_run_id"] != newest["scan_run_id"]
        assert fake_github.invalid_requests == []

        assert a.alive(), a.output()[-4000:]
        assert a.stop() == 0, a.output()[-4000:]


# ---------------------------------------------------------------- 2. SIGTERM in the middle of a batch


def test_sigterm_finishes_the_item_in_hand_and_releases_the_rest(
    app: Flask, client: Any, token: str, fake_github: FakeGitHub, tmp_path: Path, database_url: str
) -> None:
    """Five commits due, one worker thread; SIGTERM arrives while the first status POST is held by GitHub.

    The worker finishes that row (status and check run), gives the four others back untried (no lease, no
    attempt), and exits 0 at once. HEAD's worker only looked at its stop flag between batches: it delivered all
    five before exiting (and a worker killed meanwhile would have left its rows leased for two minutes).
    """
    shas = [sha_of(n) for n in range(5)]
    for sha in shas:
        upload(client, token, sha=sha, severity="critical")
    fake_github.latency("POST", r"/statuses/", 1.0)
    with worker_process(database_url, fake_github, tmp_path, parallel=1) as w:
        wait_for(lambda: fake_github.calls_to("POST", r"/statuses/"), START_TIMEOUT, "the first status POST", w)
        started = time.monotonic()
        code = w.stop()
        took = time.monotonic() - started
        output = w.output()
    assert code == 0, output[-4000:]
    assert took < STOP_TIMEOUT

    posts = fake_github.calls_to("POST", r"/statuses/")
    assert len(posts) == 1, [c.path for c in posts]
    first_sha = posts[0].path.rsplit("/", 1)[-1]
    assert fake_github.latest_status("acme", "api", first_sha)["state"] == "failure"
    [run] = fake_github.runs_of("acme", "api", first_sha)
    assert run["conclusion"] == "failure"

    by_sha = {r.commit_sha: r for r in rows(app)}
    assert set(by_sha) == set(shas)
    done = by_sha.pop(first_sha)
    assert done.state == "delivered" and done.status_posted and done.check_posted
    assert done.claimed_by is None and done.lease_until is None
    released = [
        (r.commit_sha, r.state, r.claimed_by, r.lease_until, r.attempts, r.status_posted, r.check_posted)
        for r in by_sha.values()
    ]
    assert released == [(r.commit_sha, "pending", None, None, 0, False, False) for r in by_sha.values()], released
    assert len(fake_github.calls_to("POST", r"/check-runs$")) == 1


# ---------------------------------------------------------------- 3. a SQLite write lock held past the budget


def test_the_worker_survives_a_sqlite_write_lock_held_past_its_budget(tmp_path: Path, fake_github: FakeGitHub) -> None:
    """Another program (the sqlite3 module, as the sqlite3 shell would) holds BEGIN IMMEDIATE on the database file
    while rows are due; the worker waits for the lock up to its budget (app.db.DATABASE_BUSY_SECONDS), fails,
    backs off, and once the lock is gone beats its heartbeat and delivers every row.

    HEAD's worker let the "database is locked" error out of its loop and exited (status 1): nothing was delivered
    until someone restarted it.
    """
    path = tmp_path / "w.db"
    url = f"sqlite:///{path}"
    app = create_app({**TEST_CONFIG, "DATABASE_URL": url, **github_app_config(fake_github)})
    app.instance_path = str(tmp_path / "instance")
    engine = app.extensions["fremforge.db"].engine
    try:
        migrate.upgrade(app)
        fake_github.add_installation(INSTALLATION, "acme", ["acme/api"])
        token = org_with_installation(app)
        client = app.test_client()
        shas = [sha_of(n) for n in range(3)]
        for sha in shas:
            upload(client, token, sha=sha, severity="critical")
        engine.dispose()

        budget = db.DATABASE_BUSY_SECONDS
        lock = sqlite3.connect(path, isolation_level=None, timeout=WAIT)
        try:
            lock.execute("BEGIN IMMEDIATE")
            held_since = time.monotonic()
            with worker_process(url, fake_github, tmp_path) as w:
                try:
                    wait_for(
                        lambda: w.errors() or not w.alive(),
                        START_TIMEOUT + 6 * budget,  # bounded; met after one budget
                        "the worker to give up waiting for the lock",
                        w,
                    )
                    held = time.monotonic() - held_since
                    assert rows(app, state="delivered") == [], "nothing can be delivered while the lock is held"
                finally:
                    lock.execute("ROLLBACK")
                assert w.alive(), f"the worker exited on a locked database:\n{w.output()[-4000:]}"
                assert held >= budget, f"the lock was held {held:.1f} s, under the {budget} s budget"
                assert "database is locked" in w.output()

                wait_for(
                    lambda: len(rows(app, state="delivered")) == len(shas),
                    WAIT,
                    "every row to be delivered once the lock is gone",
                    w,
                )
                assert [fake_github.latest_status("acme", "api", sha)["state"] for sha in shas] == ["failure"] * 3

                def beats_written() -> list[Any]:  # its thread's beat during the lock failed; the next is due
                    with app.app_context():  # within BEAT_EVERY of it, maybe after the rows went out
                        conn = db.session().connection()
                        return conn.execute(sa.select(WorkerHeartbeat.name, WorkerHeartbeat.beat_at)).all()

                wait_for(beats_written, worker_loop.BEAT_EVERY + WAIT, "the worker's heartbeat", w)
                with app.app_context():
                    conn = db.session().connection()
                    beats = conn.execute(sa.select(WorkerHeartbeat.name, WorkerHeartbeat.beat_at)).all()
                    assert beats, "the worker never wrote its heartbeat"
                    newest = max(b.beat_at for b in beats)
                    age = clock.now_of(conn) - newest
                    assert age <= timedelta(seconds=worker_loop.BEAT_EVERY + 5), (beats, age)
                    assert worker_loop.alive(conn)
                readyz = client.get("/readyz")
                assert readyz.status_code == 200, readyz.json
                assert w.alive()
                assert w.stop() == 0, w.output()[-4000:]
        finally:
            lock.close()
    finally:
        engine.dispose()


# ---------------------------------------------------------------- 4. PostgreSQL restarted under the worker

COMMITS = 4
ACCEPTED_PER_PHASE = 4  # uploads that must go through before each restart, and after it
MAX_UPLOADS = 400  # a bound on the load, whatever happens
PHASE_TIMEOUT = 30.0  # seconds for uploads to go through again after a restart


@pytest.mark.postgres
def test_the_worker_goes_on_through_postgresql_restarts(tmp_path: Path, fake_github: FakeGitHub) -> None:
    """A worker process runs while uploads go on and PostgreSQL restarts (fast, then immediate): the worker stays
    up, every wish ends delivered or superseded, GitHub shows each commit's newest state, and /readyz is 200.

    HEAD's worker exited on the first database error (the restart ends its connection): the wishes stored after
    it stayed pending, and GitHub kept showing older states.
    """
    try:
        cluster = pgcluster.Cluster()
    except pgcluster.Unavailable as exc:
        skip_or_fail(f"PostgreSQL fault injection needs a throwaway cluster: {exc}")
    with cluster:
        cluster.start()
        app = create_app({**TEST_CONFIG, "DATABASE_URL": cluster.url, **github_app_config(fake_github)})
        app.instance_path = str(tmp_path / "instance")
        engine = app.extensions["fremforge.db"].engine
        try:
            migrate.upgrade(app)
            fake_github.add_installation(INSTALLATION, "acme", ["acme/api"])
            token = org_with_installation(app)
            client = app.test_client()
            # The production lease (60 s): rows a restart left claimed are given back by the worker itself once
            # the database answers again, so nothing waits for a lease to run out (SETTLE_TIMEOUT < the lease).
            with worker_process(cluster.url, fake_github, tmp_path) as w:
                upload(client, token, sha=sha_of(0), severity="critical")  # the worker is up once it posted this
                wait_for(
                    lambda: fake_github.latest_status("acme", "api", sha_of(0)), START_TIMEOUT, "a first delivery", w
                )
                upload_through_restarts(cluster, client, token)
                engine.dispose()  # connections made before the restarts are gone
                assert w.alive(), f"the worker exited:\n{w.output()[-4000:]}"

                def settled() -> bool:
                    return not rows(app, state="pending")

                wait_for(settled, SETTLE_TIMEOUT, "every wish to be delivered after the restarts", w)
                outbox = rows(app)
                assert {r.state for r in outbox} <= {"delivered", "superseded"}, [(r.id, r.state) for r in outbox]
                newest: dict[str, OutboxItem] = {}
                for r in outbox:
                    newest[r.commit_sha] = r  # ordered by id: the last one is the newest
                assert len(newest) == COMMITS
                for sha, r in newest.items():
                    assert r.state == "delivered", (sha, r.state, r.last_error)
                    shown = fake_github.latest_status("acme", "api", sha)
                    assert shown is not None and shown["state"] == r.commit_status["state"], (sha, shown)
                    runs = fake_github.runs_of("acme", "api", sha)
                    assert runs and {run["conclusion"] for run in runs} == {r.check_run["conclusion"]}, (sha, runs)
                assert fake_github.invalid_requests == []

                def ready() -> bool:
                    return client.get("/readyz").status_code == 200

                wait_for(ready, WAIT, "/readyz to answer 200", w)
                assert w.errors() >= 1, "the worker never met the restarts: the test did not test them"
                assert w.alive()
                assert w.stop() == 0, w.output()[-4000:]
        finally:
            engine.dispose()


def upload_through_restarts(cluster: pgcluster.Cluster, client: Any, token: str) -> int:
    """Upload (retrying on a 503, as a client would) while the cluster restarts fast, then immediate, in another
    thread: ACCEPTED_PER_PHASE uploads go through before the first restart, and after each one has ended (others
    meet it). Returns how many 503s the uploads met."""
    accepted = unavailable = phase_start = 0
    plan = ["fast", "immediate"]
    restarting: threading.Thread | None = None
    failure: list[BaseException] = []

    def restart(mode: str) -> None:
        try:
            cluster.restart(mode)
        except BaseException as exc:  # raised again by the uploading thread
            failure.append(exc)

    for i in range(MAX_UPLOADS):
        sha = sha_of(i % COMMITS)
        severity = "critical" if (i // COMMITS) % 2 == 0 else "low"  # each commit's state flips every round
        body = seed([finding(f"CVE-2024-{i:04d}", severity=severity)], image_ref="ghcr.io/acme/api:1", sha=sha)
        give_up = time.monotonic() + PHASE_TIMEOUT
        while True:
            r = post(client, token, body)
            if r.status_code == 202:
                accepted += 1
                break
            assert r.status_code == 503, (r.status_code, r.get_data()[:2000])
            assert r.get_json()["error"] == "database_unavailable" and r.headers.get("Retry-After"), r.get_json()
            unavailable += 1
            if time.monotonic() > give_up:
                raise AssertionError(f"an upload got 503 for {PHASE_TIMEOUT:.0f} s\n{cluster.output()[-3000:]}")
            time.sleep(0.05)  # a client backing off (Retry-After, scaled down), not a synchronisation point
        if failure:
            raise failure[0]
        if restarting is not None:
            if restarting.is_alive():
                continue
            restarting = None
            phase_start = accepted  # the server is back: count the uploads that go through now
        if accepted - phase_start >= ACCEPTED_PER_PHASE:
            if not plan:
                return unavailable
            restarting = threading.Thread(target=restart, args=(plan.pop(0),), daemon=True)
            restarting.start()
    raise AssertionError(f"{MAX_UPLOADS} uploads did not get through the restarts")


# ---------------------------------------------------------------- 5. /readyz and the heartbeat


def test_readyz_wants_a_recent_worker_heartbeat_when_a_github_app_is_configured(app: Flask, make_app: MakeApp) -> None:
    """Without a GitHub App nothing needs delivering: /readyz is 200 with no worker. With one, /readyz is 503 and
    names the worker until a worker beat within the last minute (on the database's clock); then 200.

    HEAD had no heartbeat: /readyz was 200 with no worker running, while uploads waited for a delivery that
    never came.
    """
    r = make_app().test_client().get("/readyz")  # no GitHub App
    assert r.status_code == 200, r.json
    assert r.json["status"] == "ok" and r.json["worker"].startswith("none"), r.json

    client = app.test_client()
    r = client.get("/readyz")
    assert r.status_code == 503, r.json
    assert r.json["database"] == "ok" and "flask --app wsgi worker" in r.json["worker"], r.json

    with app.app_context():  # a worker that beat two minutes ago is not alive
        session = db.session()
        at = clock.now_of(session.connection())
        session.add(WorkerHeartbeat(name="gone", started_at=at, beat_at=at - timedelta(minutes=2)))
        session.commit()
    r = client.get("/readyz")
    assert r.status_code == 503 and "worker" in r.json, r.json

    with app.app_context():
        worker_loop.beat(db.session(), "w", utcnow(), str(app.config["GITHUB_APP_ID"]))
    r = client.get("/readyz")
    assert r.status_code == 200, r.json
    assert r.json["status"] == "ok" and r.json["worker"] == "alive", r.json


def test_readyz_is_503_when_this_process_and_the_workers_post_as_different_github_apps(
    app: Flask, make_app: MakeApp
) -> None:
    """A web process whose environment lost the GitHub App settings stores every upload's state as "not delivered",
    which no worker posts: GitHub shows nothing for those commits while the upload said 202. /readyz says so (503)
    while a worker posting as an App is alive, and so does a process whose App is not the one the workers post as;
    a worker with no App beside a web process with one is no worker for it.

    HEAD: /readyz was 200 ("alive") in all three cases: the heartbeat did not say which App a worker posts as.
    """
    ours = str(app.config["GITHUB_APP_ID"])
    without_app = make_app().test_client()
    other_app = make_app(GITHUB_APP_ID="999999", GITHUB_PRIVATE_KEY=app.config["GITHUB_PRIVATE_KEY"]).test_client()
    with app.app_context():
        worker_loop.beat(db.session(), "no-app", utcnow(), None)  # a worker with no App: nothing to deliver
    r = without_app.get("/readyz")
    assert r.status_code == 200 and r.json["worker"] == "alive", r.json
    r = app.test_client().get("/readyz")
    assert r.status_code == 503 and "flask --app wsgi worker" in r.json["worker"], r.json

    with app.app_context():
        worker_loop.beat(db.session(), "ours", utcnow(), ours)
    r = app.test_client().get("/readyz")
    assert r.status_code == 200 and r.json["worker"] == "alive", r.json
    r = without_app.get("/readyz")
    assert r.status_code == 503, r.json
    assert "no GitHub App configured" in r.json["worker"] and f"App {ours}" in r.json["worker"], r.json
    r = other_app.get("/readyz")
    assert r.status_code == 503, r.json
    assert "App 999999" in r.json["worker"] and f"post as App {ours}" in r.json["worker"], r.json


def test_the_worker_beats_with_the_github_app_it_posts_as(app: Flask, make_app: MakeApp) -> None:
    """The heartbeat a worker process beats names its App (None without one), `worker --once` too: what /readyz
    compares."""
    ours = str(app.config["GITHUB_APP_ID"])
    with app.app_context():
        assert worker_loop.Loop(github_app()).beat_once(db.database().sessions)
        assert worker_loop.apps_alive(db.session().connection()) == {ours}
        db.session().execute(sa.delete(WorkerHeartbeat))
        db.session().commit()
        worker_loop.Loop(github_app(), once=True).run()  # beats once per round, from its own loop
        assert worker_loop.apps_alive(db.session().connection()) == {ours}
    plain = make_app()
    with plain.app_context():
        db.session().execute(sa.delete(WorkerHeartbeat))
        db.session().commit()
        assert worker_loop.Loop(None).beat_once(db.database().sessions)
        assert worker_loop.apps_alive(db.session().connection()) == {None}


def test_a_worker_of_an_earlier_release_is_taken_for_any_app_during_an_upgrade(app: Flask, make_app: MakeApp) -> None:
    """Migrated, but the workers still run the release before: their beats name no App (NULL). A web process with an
    App is ready, as before; one without an App too (nothing says the workers post as one)."""
    with app.app_context():
        session = db.session()
        at = clock.now_of(session.connection())
        session.add(WorkerHeartbeat(name="old-release", started_at=at, beat_at=at, github_app_id=None))
        session.commit()
    r = app.test_client().get("/readyz")
    assert r.status_code == 200 and r.json["worker"] == "alive", r.json
    r = make_app().test_client().get("/readyz")
    assert r.status_code == 200, r.json
