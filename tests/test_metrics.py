"""GET /metrics (spec section 11): the series move with uploads, webhooks and GitHub calls; the bearer token rule; the
outbox gauges read from the database; the sums right across gunicorn workers and the outbox worker; the dashboard."""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import http.client
import importlib.util
import json
import os
import re
import secrets
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from githubkit import TokenAuthStrategy
from githubkit.exception import RequestError
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from app import db, metrics, metrics_folder
from app.github import client as github_client
from app.github.client import github_app
from app.models import OutboxItem, utcnow
from app.worker import Loop
from tests import paths
from tests.conftest import ROOT, WEBHOOK_SECRET, MakeApp, app_with_github, org_with_installation
from tests.factories import finding, make_org, make_token, post, seed, set_policy
from tests.fakes import FakeGitHub, github_app_config
from tests.pgcluster import free_port

HOST = "127.0.0.1"
GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"
STRONG_KEY = "kV3q9Zt2-Lw8xYb_Rm4NcH7pJ0sEfUa6DgT1iOyQhWn5XrBzCvKe"
REPO = "acme/api"
SERIES = (
    "fremforge_uploads_total",
    "fremforge_findings_ingested_total",
    "fremforge_upload_seconds",
    "fremforge_outbox_pending",
    "fremforge_outbox_oldest_pending_seconds",
    "fremforge_github_requests_total",
    "fremforge_webhook_deliveries_total",
)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# ---------------------------------------------------------------- helpers


def parse(text: str) -> Samples:
    """Every sample of a scrape, by (sample name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(client: FlaskClient, token: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.content_type.startswith("text/plain; version=0.0.4")
    return parse(r.get_data(as_text=True))


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def sha_of(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


def signed(client: FlaskClient, event: str, payload: dict[str, Any], secret: str = WEBHOOK_SECRET, **extra: str) -> Any:
    body = json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": extra.pop("delivery", str(uuid.uuid4())),
        "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
        **extra,
    }
    return client.post("/webhooks/github", data=body, headers=headers)


def ping_payload() -> dict[str, Any]:
    return json.loads((paths.FIXTURES / "github-webhooks" / "ping.json").read_text())


# ---------------------------------------------------------------- the series move


def declared_from_the_start(text: str) -> None:
    """Every series of spec section 11 with its HELP and TYPE lines; the counter without labels at 0 at least."""
    for name in SERIES:
        assert re.search(rf"^# HELP {name} \S", text, re.M), (name, text)
        assert re.search(rf"^# TYPE {name} (counter|histogram|gauge)$", text, re.M), (name, text)
    assert re.search(r"^fremforge_findings_ingested_total \d", text, re.M), text
    assert "_created" not in text


def test_every_series_is_exposed(app: Flask, client: FlaskClient) -> None:
    declared_from_the_start(client.get("/metrics").get_data(as_text=True))


def test_uploads_findings_and_latency_move_with_each_answer(app: Flask, client: FlaskClient) -> None:
    make_org(app, block_action="block_pull")
    token = make_token(app)
    before = scrape(client)
    ok = post(client, token, seed([finding(severity="low"), finding("CVE-2024-1", severity="low", package="zlib")]))
    assert ok.status_code == 202 and ok.json["status"] == "success"
    failing = post(client, token, seed([finding("CVE-2024-2", severity="critical")], image_ref="ghcr.io/acme/w:1"))
    assert failing.status_code == 202 and failing.json["status"] == "failure"
    assert post(client, "ffis_" + "x" * 40, seed()).status_code == 401
    assert post(client, token, {"image_ref": "x"}).status_code == 422
    set_policy(app, "acme", enabled=False)
    disabled = post(client, token, seed())
    assert disabled.status_code == 202 and disabled.json["status"] == "disabled"
    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("fremforge_uploads_total", status="success") == 1
    assert moved("fremforge_uploads_total", status="failure") == 1
    assert moved("fremforge_uploads_total", status="disabled") == 1
    assert moved("fremforge_uploads_total", status="401") == 1
    assert moved("fremforge_uploads_total", status="422") == 1
    assert moved("fremforge_findings_ingested_total") == ok.json["accepted"] + failing.json["accepted"] == 3
    assert moved("fremforge_upload_seconds_count") == 3  # the accepted ones (disabled included), not the refused
    assert moved("fremforge_upload_seconds_sum") > 0
    assert moved("fremforge_upload_seconds_bucket", le="+Inf") == 3


def test_an_idempotent_replay_counts_as_replayed_and_stores_nothing_more(app: Flask, client: FlaskClient) -> None:
    make_org(app)
    token = make_token(app)
    key = {"Idempotency-Key": str(uuid.uuid4())}
    assert post(client, token, seed(), headers=key).status_code == 202
    before = scrape(client)
    again = post(client, token, seed(), headers=key)
    assert again.status_code == 202 and again.headers.get("Idempotent-Replayed") == "true"
    after = scrape(client)
    assert (
        value(after, "fremforge_uploads_total", status="replayed")
        - value(before, "fremforge_uploads_total", status="replayed")
        == 1
    )
    assert value(after, "fremforge_uploads_total", status="success") == value(
        before, "fremforge_uploads_total", status="success"
    )
    assert value(after, "fremforge_findings_ingested_total") == value(before, "fremforge_findings_ingested_total")


def test_webhook_deliveries_by_event_and_outcome(webhook_app: Flask) -> None:
    make_org(webhook_app)
    client = webhook_app.test_client()
    before = scrape(client)
    delivery = str(uuid.uuid4())
    assert signed(client, "ping", ping_payload(), delivery=delivery).status_code == 200
    assert signed(client, "ping", ping_payload(), delivery=delivery).json == {"status": "duplicate"}
    assert signed(client, "ping", ping_payload(), secret="another-secret").status_code == 401
    unsigned = client.post("/webhooks/github", json={}, headers={"X-GitHub-Event": "ping"})
    assert unsigned.status_code == 401
    after = scrape(client)

    def moved(event: str, outcome: str) -> float:
        labels = {"event": event, "outcome": outcome}
        return value(after, "fremforge_webhook_deliveries_total", **labels) - value(
            before, "fremforge_webhook_deliveries_total", **labels
        )

    assert moved("ping", "ok") == 1
    assert moved("ping", "duplicate") == 1
    assert moved("unverified", "bad_signature") == 1  # the event of an unsigned delivery is nobody's word
    assert moved("unverified", "missing_signature") == 1


def test_outbox_gauges_and_github_requests_move_with_the_worker(make_app: MakeApp, fake_github: FakeGitHub) -> None:
    app = app_with_github(make_app, fake_github, [REPO])
    token = org_with_installation(app)
    client = app.test_client()
    for name in ("one", "two"):
        assert post(client, token, seed(sha=sha_of(name))).status_code == 202
    with app.app_context():  # the older item waited an hour (created_at is stamped by the web process)
        session = db.session()
        oldest = session.scalars(sa.select(sa.func.min(OutboxItem.id))).one()
        session.execute(
            sa.update(OutboxItem).where(OutboxItem.id == oldest).values(created_at=utcnow() - timedelta(hours=1))
        )
        session.commit()
    before = scrape(client)
    assert value(before, "fremforge_outbox_pending") == 2
    assert 3590 < value(before, "fremforge_outbox_oldest_pending_seconds") < 3700

    with app.app_context():
        gh = github_app()
        assert gh is not None
        assert Loop(gh, once=True).run() == 2
    after = scrape(client)
    assert value(after, "fremforge_outbox_pending") == 0
    assert value(after, "fremforge_outbox_oldest_pending_seconds") == 0
    github_calls = len(fake_github.calls)
    moved = sum(v - before.get(k, 0.0) for k, v in after.items() if k[0] == "fremforge_github_requests_total")
    assert moved == github_calls > 0  # every exchange with GitHub (token included), once each
    assert value(after, "fremforge_github_requests_total", status="201") > value(
        before, "fremforge_github_requests_total", status="201"
    )


def test_a_github_call_without_an_answer_counts_as_error(app: Flask, client: FlaskClient) -> None:
    before = scrape(client)
    port = free_port()  # nothing listens there
    gh = github_client.new_client(TokenAuthStrategy("ghs_" + "x" * 36), f"http://{HOST}:{port}", 2.0)
    with pytest.raises(RequestError):
        gh.rest.meta.root()
    after = scrape(client)
    assert (
        value(after, "fremforge_github_requests_total", status="error")
        - value(before, "fremforge_github_requests_total", status="error")
        == 1
    )


# ---------------------------------------------------------------- who may scrape


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token-of-some-length", "Basic bWV0cmljczp0b2tlbg==", "Bearer", "bearer  "],
    ids=["none", "another-token", "basic", "empty-bearer", "blank"],
)
def test_with_a_metrics_token_a_scrape_without_it_is_401_json(make_app: MakeApp, authorization: str | None) -> None:
    token = secrets.token_urlsafe(32)
    client = make_app(METRICS_TOKEN=token).test_client()
    r = client.get("/metrics", headers={"Authorization": authorization} if authorization else {})
    assert r.status_code == 401
    assert r.json["error"] == "unauthorized" and "FREMFORGE_METRICS_TOKEN" in r.json["message"]
    assert r.headers["WWW-Authenticate"].startswith("Bearer ")
    assert token not in r.get_data(as_text=True)
    assert client.get("/metrics", headers={"Authorization": f"Bearer {token}x"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"bearer {token}"}).status_code == 200
    assert client.get("/metrics", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_without_a_metrics_token_the_scrape_is_open(client: FlaskClient) -> None:
    assert client.get("/metrics").status_code == 200


def test_the_token_is_compared_in_constant_time(make_app: MakeApp, monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr("app.metrics.hmac.compare_digest", spy)
    client = make_app(METRICS_TOKEN="a-metrics-token-of-decent-length").test_client()
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert compared == [(b"nope", b"a-metrics-token-of-decent-length")]


def test_metrics_are_never_rate_limited(make_app: MakeApp) -> None:
    app = make_app(RATE_LIMIT="1/minute")
    make_org(app)
    token = make_token(app)
    client = app.test_client()
    listing = "/api/v1/orgs/acme/image-scans"
    assert client.get(listing, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert client.get(listing, headers={"Authorization": f"Bearer {token}"}).status_code == 429  # the limit is on
    for _ in range(20):
        assert client.get("/metrics", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_metrics_are_in_the_document_of_every_route_and_take_no_api_token(client: FlaskClient) -> None:
    """Spec section 2: the document is of every route; the scrape is no API operation (no app token, no rate limit)."""
    operation = client.get("/api/v1/openapi.json").json["paths"]["/metrics"]["get"]
    assert operation["security"] == [] and "text/plain" in operation["responses"]["200"]["content"]


# ---------------------------------------------------------------- several processes


def served_env(database_url: str, tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of a served app (development, with a strong key; files under `tmp`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FREMFORGE_", "PROMETHEUS_"))}
    env.update(
        FREMFORGE_DATABASE_URL=database_url,
        FREMFORGE_SECRET_KEY=STRONG_KEY,
        FREMFORGE_PUBLIC_URL="http://fremforge.test",
        FREMFORGE_CHECKPOINT_KEY_FILE=str(tmp / "checkpoint_ed25519.pem"),
        PROMETHEUS_MULTIPROC_DIR=str(tmp / "prometheus"),  # not the checkout's instance/metrics
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.update(extra)
    return env


def call(port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
    """One request on a fresh connection (so that any worker may take it): (status, headers, body)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


@contextmanager
def gunicorn(env: dict[str, str], log: Path, *options: str, workers: int = 2, cwd: Path = ROOT) -> Iterator[int]:
    """`gunicorn --workers N ... wsgi:app` from the repository root, or `cwd` (so gunicorn.conf.py applies); its
    port."""
    port = free_port()
    cmd = [str(GUNICORN), "--workers", str(workers), "--bind", f"{HOST}:{port}", "--no-control-socket", *options]
    with log.open("wb") as out:
        proc = subprocess.Popen([*cmd, "wsgi:app"], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            with suppress(OSError, http.client.HTTPException):
                if call(port, "GET", "/healthz")[0] == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gunicorn did not come up:\n{log.read_text(errors='replace')}")
            time.sleep(0.05)  # readiness poll
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def upload_over_http(port: int, token: str, sha: str) -> int:
    body = json.dumps(seed([finding()], sha=sha)).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    return call(port, "POST", "/api/v1/orgs/acme/image-scans/findings", body, headers)[0]


def uploads_by_file(folder: Path) -> dict[str, float]:
    """fremforge_uploads_total{status="success"} as each process's file holds it."""
    found = {}
    for path in folder.glob("counter_*.db"):
        for family in MultiProcessCollector.merge([str(path)], accumulate=False):
            for sample in family.samples:
                if sample.name == "fremforge_uploads_total" and sample.labels.get("status") == "success":
                    found[path.name] = sample.value
    return found


def listen_queue(port: int) -> int:
    """Connections waiting for a gunicorn worker to accept them on `port` (Linux: a listener's rx_queue)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
            return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"nothing listens on {port}")


def wait_accepted(port: int) -> None:
    """Until every connection made so far has been taken by a worker."""
    deadline = time.monotonic() + 10
    while listen_queue(port):
        assert time.monotonic() < deadline, "gunicorn's workers took no connection for 10 s"
        time.sleep(0.01)  # polling the kernel's accept queue


class HeldUpload:
    """An upload whose body is sent in two halves: between them it holds the sync worker that took it."""

    def __init__(self, port: int, token: str, sha: str) -> None:
        self.body = json.dumps(seed([finding()], sha=sha)).encode()
        self.conn = http.client.HTTPConnection(HOST, port, timeout=30)
        self.conn.putrequest("POST", "/api/v1/orgs/acme/image-scans/findings")
        for name, val in (("Authorization", f"Bearer {token}"), ("Content-Type", "application/json")):
            self.conn.putheader(name, val)
        self.conn.putheader("Content-Length", str(len(self.body)))
        self.conn.endheaders(self.body[:10])
        wait_accepted(port)

    def finish(self) -> int:
        self.conn.send(self.body[10:])
        status = self.conn.getresponse().status
        self.conn.close()
        return status


def scraped_uploads(port: int) -> float:
    status, _headers, body = call(port, "GET", "/metrics")
    assert status == 200
    samples = parse(body.decode())
    counts = (
        value(samples, "fremforge_uploads_total", status="success"),
        value(samples, "fremforge_upload_seconds_count"),
        value(samples, "fremforge_findings_ingested_total"),
    )
    assert len(set(counts)) == 1, counts
    return counts[0]


@pytest.mark.parametrize("preload", [True, False], ids=["preload", "no-preload"])
def test_the_count_is_the_sum_over_gunicorn_workers_whichever_answers(
    make_app: MakeApp, database_url: str, tmp_path: Path, preload: bool
) -> None:
    """Two sync workers, A and B. An upload held half-sent keeps one busy, so the other answers, in turn: each worker
    counts some uploads, and each answers a scrape with the sum of both."""
    app = make_app()
    make_org(app)
    token = make_token(app)
    folder = tmp_path / "prometheus"
    env = served_env(database_url, tmp_path, PROMETHEUS_MULTIPROC_DIR=str(folder))
    with gunicorn(env, tmp_path / "gunicorn.log", *(["--preload"] if preload else [])) as port:
        held_by_a = HeldUpload(port, token, sha_of("held-a"))
        for n in range(5):  # B alone answers
            assert upload_over_http(port, token, sha_of(f"c{n}")) == 202
        assert scraped_uploads(port) == 5  # B's answer
        held_by_b = HeldUpload(port, token, sha_of("held-b"))
        assert held_by_a.finish() == 202
        assert scraped_uploads(port) == 6  # A's answer: B is busy
        assert held_by_b.finish() == 202
        per_worker = sorted(uploads_by_file(folder).values())
        assert per_worker == [1, 6], per_worker  # A counted one, B six (with preload the master counted none)
        for _ in range(5):  # whichever answers
            assert scraped_uploads(port) == 7
    assert "Traceback" not in (tmp_path / "gunicorn.log").read_text()


def test_the_outbox_workers_github_calls_join_the_webs_metrics(
    make_app: MakeApp, database_url: str, fake_github: FakeGitHub, tmp_path: Path
) -> None:
    """The outbox worker, given the web's PROMETHEUS_MULTIPROC_DIR on the same host, counts its GitHub calls there."""
    app = app_with_github(make_app, fake_github, [REPO])
    token = org_with_installation(app)
    folder = tmp_path / "prometheus"
    github = {f"FREMFORGE_{k}": v for k, v in github_app_config(fake_github).items()}
    env = served_env(database_url, tmp_path, PROMETHEUS_MULTIPROC_DIR=str(folder), **github)
    with gunicorn(env, tmp_path / "gunicorn.log", "--preload") as port:
        for n in range(3):
            assert upload_over_http(port, token, sha_of(f"w{n}")) == 202
        samples = parse(call(port, "GET", "/metrics")[2].decode())
        assert value(samples, "fremforge_outbox_pending") == 3
        assert not any(k[0] == "fremforge_github_requests_total" for k in samples)  # the web called no GitHub
        worker = [sys.executable, "-m", "flask", "--app", "wsgi", "worker", "--once"]
        done = subprocess.run(worker, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        samples = parse(call(port, "GET", "/metrics")[2].decode())
        assert value(samples, "fremforge_outbox_pending") == 0
        counted = sum(v for k, v in samples.items() if k[0] == "fremforge_github_requests_total")
        assert counted == len(fake_github.calls) > 0


def load_gunicorn_conf(monkeypatch: pytest.MonkeyPatch, folder: Path) -> ModuleType:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    spec = importlib.util.spec_from_file_location("fremforge_gunicorn_conf", ROOT / "gunicorn.conf.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A process of the app counting in `folder` (argv[1]): GitHub calls (argv[2]) answered `error`, upload times (argv[3],
# comma-separated), and a live and a plain gauge of its own; with argv[4] == "wait" it stays until its stdin closes.
COUNTING = """
import os, sys
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
from prometheus_client import Gauge
from app import metrics
for _ in range(int(sys.argv[2])):
    metrics.github_request("error")
for seconds in filter(None, sys.argv[3].split(",")):
    metrics.series().upload_seconds.observe(float(seconds))
Gauge("fremforge_test_live", "A live gauge.", multiprocess_mode="livesum").set(1)
Gauge("fremforge_test_all", "A gauge kept after its process.", multiprocess_mode="all").set(2)
print(os.getpid(), flush=True)
if sys.argv[4:] == ["wait"]:
    sys.stdin.read()
"""


def count_in(folder: Path, errors: int, seconds: str = "", wait: bool = False) -> tuple[subprocess.Popen[str], int]:
    """A process counting in `folder` (see COUNTING), still running when `wait`; and its pid."""
    args = [sys.executable, "-c", COUNTING, str(folder), str(errors), seconds, *(["wait"] if wait else [])]
    proc = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    pid = int(proc.stdout.readline())
    if not wait:
        proc.communicate(timeout=60)
        assert proc.returncode == 0
    return proc, pid


class Families:
    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> list[Any]:
        return self.families


def folder_samples(folder: Path) -> Samples:
    """What /metrics would serve from `folder`: every sample summed over its files, read as a scrape reads them."""
    registry = CollectorRegistry()
    registry.register(Families(metrics_folder.collect(folder)))  # type: ignore[arg-type]
    return parse(generate_latest(registry).decode())


def without(samples: Samples, name: str) -> Samples:
    return {k: v for k, v in samples.items() if k[0] != name}


def test_a_start_folds_the_counts_of_processes_gone_and_keeps_the_running_ones(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """gunicorn's start (on_starting): counters and histograms of processes gone are summed into one archive per type
    and their files removed; a running process's files stay; a dead process's live gauge goes (mark_process_dead), its
    plain gauge stays (prometheus_client's rule). Nothing the scrape sums changes."""
    folder = tmp_path / "prometheus"
    conf = load_gunicorn_conf(monkeypatch, folder)
    pids = [count_in(folder, 2, "0.07,3")[1], count_in(folder, 3, "200")[1]]
    running, live = count_in(folder, 5, "0.2", wait=True)
    try:
        before = folder_samples(folder)
        assert value(before, "fremforge_github_requests_total", status="error") == 10
        assert value(before, "fremforge_upload_seconds_count") == 4
        assert value(before, "fremforge_upload_seconds_bucket", le="0.1") == 1
        assert value(before, "fremforge_upload_seconds_bucket", le="5.0") == 3
        assert value(before, "fremforge_test_live") == 3
        conf.on_starting(None)
        names = sorted(p.name for p in folder.glob("*.db"))
        assert names == sorted(
            [
                "counter_archive.db",
                "histogram_archive.db",
                f"counter_{live}.db",
                f"histogram_{live}.db",
                f"gauge_livesum_{live}.db",
                f"gauge_all_{live}.db",
                *(f"gauge_all_{pid}.db" for pid in pids),
            ]
        ), names
        after = folder_samples(folder)
        folded, counted = without(after, "fremforge_test_live"), without(before, "fremforge_test_live")
        assert folded == pytest.approx(counted)  # from the archives (sums of floats: in another order)
        assert value(after, "fremforge_test_live") == 1  # the running process's alone
        conf.on_starting(None)  # again: nothing more to fold, nothing counted twice
        assert folder_samples(folder) == after
    finally:
        running.communicate("", timeout=30)
    conf.on_starting(None)  # the running one is gone now: folded onto the archive
    assert sorted(p.name for p in folder.glob("[ch]*.db")) == ["counter_archive.db", "histogram_archive.db"]
    assert value(folder_samples(folder), "fremforge_github_requests_total", status="error") == 10
    assert value(folder_samples(folder), "fremforge_upload_seconds_sum") == pytest.approx(203.27)
    assert re.search(r"path=%\(U\)s", conf.access_log_format) and "%(r)s" not in conf.access_log_format
    assert "%(q)s" not in conf.access_log_format and "%(f)s" not in conf.access_log_format


def dead_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=60)
    return proc.pid


def test_an_unreadable_file_of_a_process_gone_is_set_aside_and_every_start_goes_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A process killed as it made its file leaves it empty or cut short. The fold sets such a file aside (logged)
    and folds the rest; gunicorn's start and the outbox worker's (`upkeep`) never fail on metrics. (Review: both
    exited with a traceback, and systemd restarted them into the same failure: no web, no deliveries.)"""
    folder = tmp_path / "prometheus"
    count_in(folder, 4)
    empty, cut = f"counter_{dead_pid()}.db", f"histogram_{dead_pid()}.db"
    (folder / empty).write_bytes(b"")
    (folder / cut).write_bytes(b"\x00\x10\x00\x00")  # says 4,096 bytes are used, and holds four
    conf = load_gunicorn_conf(monkeypatch, folder)
    conf.on_starting(None)
    assert sorted(p.name for p in folder.glob("*.unreadable")) == sorted([f"{empty}.unreadable", f"{cut}.unreadable"])
    assert [p.name for p in folder.glob("c*.db")] == ["counter_archive.db"]
    assert value(folder_samples(folder), "fremforge_github_requests_total", status="error") == 4
    assert "metrics.fold.unreadable" in caplog.text
    (folder / "counter_archive.db").write_bytes(b"")  # even the archive: set aside, the next counts fold anew
    count_in(folder, 2)
    conf.on_starting(None)
    assert value(folder_samples(folder), "fremforge_github_requests_total", status="error") == 2
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    metrics_folder.upkeep(not_a_folder)  # whatever else goes wrong is logged; the process starts
    assert "metrics.fold.failed" in caplog.text


def test_a_scrape_sets_aside_an_unreadable_file_of_a_process_gone_and_answers(tmp_path: Path) -> None:
    """A gunicorn worker killed as it made its file, while the master runs on (no start to fold it): every scrape
    was a 500 until the next restart (review). The scrape sets the file aside, as a fold does, and answers."""
    folder = tmp_path / "prometheus"
    count_in(folder, 3)
    bad = folder / f"counter_{dead_pid()}.db"
    bad.write_bytes(b"")
    assert value(folder_samples(folder), "fremforge_github_requests_total", status="error") == 3
    assert not bad.exists() and bad.with_name(bad.name + metrics_folder.UNREADABLE).exists()


def test_a_scrape_that_cannot_read_the_files_is_a_json_503(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever else the files do (a live process's file being made), the scrape is a logged 503 to retry."""

    def unreadable() -> bytes:
        raise RuntimeError("Read beyond file size detected, file is corrupted.")

    monkeypatch.setattr(metrics, "exposition", unreadable)
    r = client.get("/metrics")
    assert r.status_code == 503 and r.get_json()["error"] == "metrics_unavailable"
    assert r.headers["Retry-After"] == "5"


def lock_waiters(folder: Path) -> int:
    """Processes waiting for the folder's lock (Linux: the blocked entries of /proc/locks on its inode)."""
    inode = (folder / metrics_folder.LOCK).stat().st_ino
    lines = Path("/proc/locks").read_text().splitlines()
    return sum(1 for line in lines if "->" in line and line.split()[6].rsplit(":", 1)[1] == str(inode))


FOLDING = "import sys; from pathlib import Path; from app import metrics_folder; metrics_folder.fold(Path(sys.argv[1]))"


def test_a_fold_waits_for_a_scrape_and_folds_at_once_count_each_file_once(tmp_path: Path) -> None:
    """A fold holds the folder's lock alone: it waits for a scrape in progress (which shares it), so no scrape sees an
    archive written and the files it folded still there; several folding at once count each file once."""
    folder = tmp_path / "prometheus"
    for n in range(12):
        count_in(folder, n + 1)
    expected = sum(range(1, 13))
    fd = os.open(folder / metrics_folder.LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # a scrape reading the files
        waiting = subprocess.Popen([sys.executable, "-c", FOLDING, str(folder)], cwd=ROOT)
        deadline = time.monotonic() + 30
        while not lock_waiters(folder):
            assert waiting.poll() is None and time.monotonic() < deadline, "the fold did not wait for the lock"
            time.sleep(0.01)  # polling the kernel's lock table
        assert len(list(folder.glob("counter_*.db"))) == 12 and not (folder / "counter_archive.db").exists()
    finally:
        os.close(fd)
    assert waiting.wait(timeout=60) == 0
    assert [p.name for p in folder.glob("counter_*.db")] == ["counter_archive.db"]
    assert value(folder_samples(folder), "fremforge_github_requests_total", status="error") == expected

    for _ in range(12):  # more processes gone, folded by four at once
        count_in(folder, 100)
    folds = [subprocess.Popen([sys.executable, "-c", FOLDING, str(folder)], cwd=ROOT) for _ in range(4)]
    assert [f.wait(timeout=60) for f in folds] == [0, 0, 0, 0]
    assert [p.name for p in folder.glob("counter_*.db")] == ["counter_archive.db"]
    assert value(folder_samples(folder), "fremforge_github_requests_total", status="error") == expected + 1200
    assert not [p.name for p in folder.iterdir() if p.name.endswith(metrics_folder.NEW)]


def test_a_fold_that_died_after_its_commit_is_finished_by_the_next_scrape(tmp_path: Path) -> None:
    """A fold killed between its commit (the journal) and the end of it: the next scrape finishes it first, so it
    reads each count once; one killed before its commit left nothing that counts."""
    folder = tmp_path / "prometheus"
    for n in (1, 2, 3):
        count_in(folder, n)
    dies_after_commit = (
        "import os, sys; from pathlib import Path; from app import metrics_folder\n"
        "finish = metrics_folder._finish\n"
        "metrics_folder._finish = lambda folder: os._exit(3) if (folder / metrics_folder.JOURNAL).exists() "
        "else finish(folder)\n"
        "metrics_folder.fold(Path(sys.argv[1]))"
    )
    died = subprocess.run([sys.executable, "-c", dies_after_commit, str(folder)], cwd=ROOT, timeout=60, check=False)
    assert died.returncode == 3
    assert (folder / metrics_folder.JOURNAL).exists() and len(list(folder.glob("counter_*.db"))) == 3  # half done
    assert value(folder_samples(folder), "fremforge_github_requests_total", status="error") == 6
    assert not (folder / metrics_folder.JOURNAL).exists()
    assert [p.name for p in folder.glob("counter_*.db")] == ["counter_archive.db"]
    assert value(folder_samples(folder), "fremforge_github_requests_total", status="error") == 6


def github_requests(port: int) -> tuple[float, float]:
    """(fremforge_github_requests_total over every status, fremforge_outbox_pending), as /metrics answers now."""
    status, _headers, body = call(port, "GET", "/metrics")
    assert status == 200
    samples = parse(body.decode())
    total = sum(v for k, v in samples.items() if k[0] == "fremforge_github_requests_total")
    return total, value(samples, "fremforge_outbox_pending")


def test_a_total_never_goes_down_while_the_outbox_worker_counts_across_restarts(
    make_app: MakeApp, database_url: str, fake_github: FakeGitHub, tmp_path: Path
) -> None:
    """As deploy/ runs them: web and worker share the folder. Worker A delivers and stops; worker B starts and
    delivers; then the web alone is restarted, B still running: the total is still A's calls plus B's (the web's
    start used to remove A's file, and the total went back to B's alone)."""
    app = app_with_github(make_app, fake_github, [REPO])
    token = org_with_installation(app)
    github = {f"FREMFORGE_{k}": v for k, v in github_app_config(fake_github).items()}
    env = served_env(database_url, tmp_path, **github)
    worker = [sys.executable, "-m", "flask", "--app", "wsgi", "worker"]
    b: subprocess.Popen[bytes] | None = None
    try:
        with gunicorn(env, tmp_path / "web-1.log", "--preload") as port:
            for n in range(2):
                assert upload_over_http(port, token, sha_of(f"a{n}")) == 202
            a = subprocess.run([*worker, "--once"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
            assert a.returncode == 0, a.stderr
            by_a = len(fake_github.calls)
            assert github_requests(port) == (by_a, 0) and by_a > 0
            for n in range(2):
                assert upload_over_http(port, token, sha_of(f"b{n}")) == 202
            with (tmp_path / "worker-b.log").open("wb") as out:
                b = subprocess.Popen([*worker, "--poll-seconds", "0.1"], cwd=ROOT, env=env, stdout=out, stderr=out)
            deadline = time.monotonic() + 60
            while github_requests(port) != (len(fake_github.calls), 0) or len(fake_github.calls) == by_a:
                assert b.poll() is None and time.monotonic() < deadline, (tmp_path / "worker-b.log").read_text()
                time.sleep(0.05)  # until B has delivered both (polling what it counted)
            both = len(fake_github.calls)
        with gunicorn(env, tmp_path / "web-2.log") as port:  # the web alone restarted, B running
            assert b.poll() is None
            assert github_requests(port)[0] >= both  # (B runs on: it may call GitHub again meanwhile)
    finally:
        if b is not None:
            b.terminate()
            b.wait(timeout=60)
    with gunicorn(env, tmp_path / "web-3.log") as port:  # B stopped too: its counts folded, not lost
        assert github_requests(port) == (len(fake_github.calls), 0)


def test_without_a_named_folder_the_web_and_the_worker_count_in_the_instance_folder(
    make_app: MakeApp, database_url: str, fake_github: FakeGitHub, tmp_path: Path
) -> None:
    """Plain `gunicorn ... wsgi:app` and `flask --app wsgi worker`, no PROMETHEUS_MULTIPROC_DIR: both count in the
    instance folder's `metrics` (0700), so /metrics has the worker's GitHub calls. The checkout is a copy made of
    links, so that its instance folder is the test's. A fresh web's /metrics has every series, HELP and TYPE."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in ("instance", ".git"):
            (checkout / entry.name).symlink_to(entry)
    app = app_with_github(make_app, fake_github, [REPO])
    token = org_with_installation(app)
    github = {f"FREMFORGE_{k}": v for k, v in github_app_config(fake_github).items()}
    env = served_env(database_url, tmp_path, **github)
    del env["PROMETHEUS_MULTIPROC_DIR"]
    folder = checkout / "instance" / "metrics"
    with gunicorn(env, tmp_path / "gunicorn.log", cwd=checkout) as port:
        status, _headers, body = call(port, "GET", "/metrics")
        assert status == 200
        declared_from_the_start(body.decode())
        for n in range(3):
            assert upload_over_http(port, token, sha_of(f"d{n}")) == 202
        worker = [sys.executable, "-m", "flask", "--app", "wsgi", "worker", "--once"]
        done = subprocess.run(worker, cwd=checkout, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert github_requests(port) == (len(fake_github.calls), 0) and fake_github.calls
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert list(folder.glob("counter_*.db"))


def test_a_fresh_web_declares_every_series_in_multiprocess_mode(database_url: str, tmp_path: Path) -> None:
    """In multiprocess mode only the files say what was counted: a fresh web has counted no webhook delivery and
    called no GitHub, yet both series are there with their HELP and TYPE."""
    with gunicorn(served_env(database_url, tmp_path), tmp_path / "gunicorn.log", "--preload") as port:
        status, _headers, body = call(port, "GET", "/metrics")
        assert status == 200
        declared_from_the_start(body.decode())


# ---------------------------------------------------------------- the dashboard


def test_the_grafana_dashboard_charts_every_series(client: FlaskClient) -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert all(p["datasource"]["uid"] == "${DS_PROMETHEUS}" for p in dashboard["panels"])
    used = {name for e in expressions for name in re.findall(r"\bfremforge_\w+", e)}
    for name in SERIES:
        assert any(u == name or u.startswith(name + "_") for u in used), f"{name} is charted nowhere"
    exposed = client.get("/metrics").get_data(as_text=True)
    for name in used:  # nothing charted that the app does not expose
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        assert f"# TYPE {base} " in exposed, name
    joined = " ".join(expressions)
    assert "histogram_quantile(0.5," in joined and "histogram_quantile(0.95," in joined
    assert "by (status)" in joined and "by (event, outcome)" in joined
