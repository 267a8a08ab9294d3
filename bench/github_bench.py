#!/usr/bin/env python3
"""GitHub benchmark: issue 3's performance targets for webhooks and the delivery worker, on one backend.

Measures:
  * webhooks while GitHub is unreachable: the app under gunicorn as the README runs it (--workers: 3 on SQLite,
    as `make run`; 4 on PostgreSQL, as the production command), its GitHub API URL a closed loopback port, its
    worker running (and failing to reach GitHub) alongside; --bursts bursts of --deliveries signed deliveries
    built from GitHub's own example payloads, each burst sent --concurrency at a time from one event loop, each
    delivery on its own connection, after an unmeasured burst of the same shape has warmed the server up.
    Target: p99 latency under 100 ms over all measured deliveries (one burst's p99 is its third-slowest answer
    of 200, at the mercy of one hiccup of a shared machine; the worst burst's p99 is reported too), and every
    answer 2xx with the outcome its handler should give;
  * the worker: --commits uploads (each its own commit) leave as many pending outbox rows; the time of one
    `flask --app wsgi worker --once` against a FakeGitHub (tests/fakes.py, in this process) until it exits.
    Target: >= 50 commits/s, and every commit has exactly one status and one check run on the fake.

Run from the repository root, with the virtualenv active:
  . .venv/bin/activate
  python bench/github_bench.py                                   # SQLite, a fresh temp dir per run
  python bench/github_bench.py --database postgresql \\
      --pg-url postgresql://postgres@127.0.0.1:5432/postgres    # fresh fremforge_bench_gh_* databases

Everything listens on 127.0.0.1 only. The table is printed and written as JSON to bench/out/github-<backend>.json.
Exit 0 when every target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import hashlib
import hmac
import http.client
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (  # importing common puts the repository root on sys.path, for `app` and `tests.fakes`
    HOST,
    ROOT,
    SHARED,
    VENV_BIN,
    app_env,
    bench_parser,
    check_pg_url,
    commit_sha,
    flask_cli,
    free_port,
    gunicorn,
    healthz_ok,
    machine_state,
    print_load,
    stop,
    tail,
    temp_dir,
    throwaway_databases,
    utc_now,
    wait_until,
    write_out,
)

FIXTURES = SHARED / "fixtures" / "github-webhooks"

ORG = "codertocat"
LOGIN = "Codertocat"  # the account of the example payloads
REPO = "Codertocat/Hello-World"
INSTALLATION = 957387  # the installation of installation_repositories.added.json; set in every payload
CONTEXT = "fremforge/image-scan"  # the app's check run name (app.policy.CONTEXT)
WEBHOOK_PATH = "/webhooks/github"
UPLOAD_PATH = f"/api/v1/orgs/{ORG}/image-scans/findings"
PG_DATABASES = {"webhooks": "fremforge_bench_gh_webhooks", "worker": "fremforge_bench_gh_worker"}  # one per part

# (fixture, X-GitHub-Event, the answer's "status" when the handler did its work, weight in the mix)
MIX = (
    ("pull_request.opened.json", "pull_request", "ok", 6),
    ("pull_request.synchronize.json", "pull_request", "ok", 5),
    ("check_run.rerequested.json", "check_run", "queued", 4),
    ("installation_repositories.added.json", "installation_repositories", "ok", 3),
    ("ping.json", "ping", "ok", 2),
)
SEEDED_COMMITS = 20  # commits with a judged scan before the burst: pull requests link them, re-runs repost them
FINDINGS_PER_UPLOAD = 10
WEBHOOK_P99_MS = 100.0
WORKER_RATE = 50.0  # commits/s
REQUEST_TIMEOUT = 60.0
WORKER_TIMEOUT = 900.0  # seconds for `worker --once` to drain everything (a bound, not a target)
LOG_SETTLE = 0.5  # seconds for gunicorn's access-log lines of the last answers to be written


# ---------------------------------------------------------------- results


@dataclass
class Row:
    measurement: str
    unit: str
    value: float
    op: str | None  # "<", ">=", "==": the target's comparison; None: reported for information
    target: float | None = None

    @property
    def passed(self) -> bool:
        if self.op is None or self.target is None:
            return True
        return {"<": self.value < self.target, ">=": self.value >= self.target, "==": self.value == self.target}[
            self.op
        ]


@dataclass
class Problems:
    """Failed requests and wrong answers; a few samples."""

    count: int = 0
    samples: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, what: str) -> None:
        with self.lock:
            self.count += 1
            if len(self.samples) < 10:
                self.samples.append(what)


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile of `values` (p in 0..100)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def summary_ms(seconds: list[float]) -> dict[str, float]:
    ms = [1000 * s for s in seconds]
    return {
        "n": len(ms),
        "p50": percentile(ms, 50),
        "p95": percentile(ms, 95),
        "p99": percentile(ms, 99),
        "max": max(ms),
        "mean": statistics.fmean(ms),
    }


# ---------------------------------------------------------------- shared bodies and settings


def findings(label: str) -> list[dict[str, Any]]:
    """A small seed-shaped findings list, different per upload."""
    rng = random.Random(label)
    severities = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN")
    return [
        {
            "cve_id": f"CVE-2024-{rng.randrange(1000, 99999)}",
            "severity": rng.choice(severities),
            "package_name": f"pkg-{rng.randrange(200)}",
            "installed_version": f"1.{rng.randrange(20)}.{n}",
            "fixed_version": f"1.{rng.randrange(20, 40)}.0" if rng.random() < 0.6 else None,
            "title": "benchmark finding",
            "target": "usr/lib/benchmark",
        }
        for n in range(FINDINGS_PER_UPLOAD)
    ]


def upload_body(label: str) -> bytes:
    sha = commit_sha(label)
    return json.dumps(
        {
            "image_ref": f"ghcr.io/codertocat/hello-world:{sha[:12]}",
            "commit_sha": sha,
            "repo_full_name": REPO,
            "findings": findings(label),
        }
    ).encode()


def rsa_private_key_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def github_env(env: dict[str, str], public_url: str, app_id: str, key_pem: str, api_url: str, secret: str) -> dict:
    return {
        **env,
        "FREMFORGE_PUBLIC_URL": public_url,
        "FREMFORGE_GITHUB_APP_ID": app_id,
        "FREMFORGE_GITHUB_PRIVATE_KEY": key_pem,
        "FREMFORGE_GITHUB_API_URL": api_url,
        "FREMFORGE_GITHUB_WEBHOOK_SECRET": secret,
    }


def prepare_org(env: dict[str, str]) -> str:
    """Migrate the empty database, add the org holding the installation, return a findings:write token."""
    flask_cli(env, "db", "upgrade")
    flask_cli(env, "orgs", "create", ORG, "--github-login", LOGIN, "--installation-id", str(INSTALLATION))
    out = flask_cli(env, "tokens", "create", "--org", ORG, "--scope", "findings:write", "--name", "bench")
    return out.strip().splitlines()[-1].strip()


# ---------------------------------------------------------------- processes


@contextmanager
def background_worker(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """`flask worker` polling as in production; stopped with SIGTERM (it finishes its batch and exits)."""
    cmd = [str(VENV_BIN / "flask"), "--app", "wsgi", "worker", "--poll-seconds", "0.5"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        stop(proc)


def access_log_options(access_log: Path) -> list[str]:
    """gunicorn options for an access log of each request's method, path, status, time (µs) and GitHub event."""
    return ["--access-logfile", str(access_log), "--access-logformat", "%(m)s %(U)s %(s)s %(D)s %({x-github-event}i)s"]


def run_worker_once(env: dict[str, str], log: Path) -> tuple[float, str]:
    """Time `flask --app wsgi worker --once` from spawn to exit; return (seconds, its last stdout line)."""
    cmd = [str(VENV_BIN / "flask"), "--app", "wsgi", "worker", "--once"]
    with log.open("wb") as err:
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, timeout=WORKER_TIMEOUT)
        elapsed = time.perf_counter() - start
    out = done.stdout.decode(errors="replace").strip()
    if done.returncode != 0:
        raise RuntimeError(f"worker --once exited with {done.returncode}:\n{out}\n{tail(log)}")
    return elapsed, (out.splitlines() or [""])[-1]


# ---------------------------------------------------------------- part 1: webhooks


@dataclass
class Delivery:
    event: str
    expect: str  # the answer's "status"
    body: bytes
    headers: dict[str, str]


def load_fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def adapt(fixture: str, payload: dict[str, Any], i: int, commits: list[str]) -> dict[str, Any]:
    """The example payload made to concern our org's installation and commits, so its handler does real work."""
    p = copy.deepcopy(payload)
    if isinstance(p.get("installation"), dict):
        p["installation"]["id"] = INSTALLATION
    sha = commits[i % len(commits)]
    if fixture.startswith("pull_request."):
        p["number"] = p["pull_request"]["number"] = 1000 + i  # its own pull request
        p["pull_request"]["head"]["sha"] = sha
    elif fixture.startswith("check_run."):  # a "Re-run" on our own check run of a commit with a judged scan
        p["check_run"]["name"] = CONTEXT
        p["check_run"]["head_sha"] = p["check_run"]["check_suite"]["head_sha"] = sha
        p["repository"].update(full_name=REPO, name=REPO.split("/")[1])
        p["repository"]["owner"]["login"] = LOGIN
    elif fixture.startswith("installation_repositories."):
        added = p["repositories_added"][0]
        p["repositories_added"] = [{**added, "id": 10_000 + i, "name": f"repo-{i}", "full_name": f"{LOGIN}/repo-{i}"}]
    return p


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def make_deliveries(count: int, secret: str, commits: list[str], seed: int) -> list[Delivery]:
    """`count` deliveries in the MIX's proportions, shuffled, each with a unique X-GitHub-Delivery."""
    fixtures = {name: load_fixture(name) for name, *_ in MIX}
    kinds = [(name, event, expect) for name, event, expect, weight in MIX for _ in range(weight)]
    rng = random.Random(seed)
    chosen = [kinds[i % len(kinds)] for i in range(count)]
    rng.shuffle(chosen)
    out = []
    for i, (name, event, expect) in enumerate(chosen):
        body = json.dumps(adapt(name, fixtures[name], seed * 100_000 + i, commits)).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/bench",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "X-GitHub-Hook-ID": "1",
            "X-Hub-Signature-256": sign(secret, body),
        }
        out.append(Delivery(event, expect, body, headers))
    return out


def raw_request(d: Delivery, port: int) -> bytes:
    """The delivery as the bytes of one HTTP/1.1 request on a connection of its own (built before the burst)."""
    head = [
        f"POST {WEBHOOK_PATH} HTTP/1.1",
        f"Host: {HOST}:{port}",
        "Connection: close",
        f"Content-Length: {len(d.body)}",
    ]
    head += [f"{name}: {value}" for name, value in d.headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + d.body


async def send_one(port: int, d: Delivery, request: bytes, problems: Problems) -> float:
    """Post one delivery on a connection of its own; return its latency (connect to last byte) in seconds."""
    start = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), REQUEST_TIMEOUT)
        try:
            writer.write(request)
            answer = await asyncio.wait_for(reader.read(), REQUEST_TIMEOUT)  # the server closes after answering
        finally:
            writer.close()
    except (TimeoutError, OSError) as exc:
        problems.add(f"{d.event}: {type(exc).__name__}: {exc}")
        return time.perf_counter() - start
    elapsed = time.perf_counter() - start
    head, _, payload = answer.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        problems.add(f"{d.event}: not an HTTP answer: {answer[:300]!r}")
    else:
        problem = webhook_problem(d, int(status_line[1]), payload)
        if problem:
            problems.add(problem)
    return elapsed


def send_burst(port: int, deliveries: list[Delivery], concurrency: int, problems: Problems) -> list[float]:
    """Send every delivery, at most `concurrency` at a time, from one event loop; return the latencies in order.

    The sender stands in for GitHub, which does not share the server's CPUs: one event loop writing prebuilt
    bytes costs far less CPU than a thread per connection, so the measurement leaves the CPUs to the server.
    """
    requests = [raw_request(d, port) for d in deliveries]

    async def run() -> list[float]:
        gate = asyncio.Semaphore(concurrency)

        async def one(d: Delivery, request: bytes) -> float:
            async with gate:
                return await send_one(port, d, request, problems)

        return await asyncio.gather(*(one(d, r) for d, r in zip(deliveries, requests, strict=True)))

    return asyncio.run(run())


def webhook_problem(d: Delivery, status: int, payload: bytes) -> str | None:
    if not 200 <= status < 300:
        return f"{d.event}: HTTP {status}: {payload[:300]!r}"
    try:
        outcome = json.loads(payload).get("status")
    except (ValueError, AttributeError):
        return f"{d.event}: HTTP {status} without a JSON status: {payload[:300]!r}"
    return None if outcome == d.expect else f"{d.event}: answered {outcome!r}, expected {d.expect!r} (no real work)"


def upload_over_http(port: int, token: str, labels: list[str]) -> None:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    for label in labels:
        conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT)
        try:
            conn.request("POST", UPLOAD_PATH, body=upload_body(label), headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
        finally:
            conn.close()
        if resp.status != 202:
            raise RuntimeError(f"seed upload {label} answered {resp.status}: {payload[:300]!r}")


# ---------------------------------------------------------------- CPU accounting (Linux /proc; empty elsewhere)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (gunicorn's master and workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except OSError:
            pass
    return out


def cpu_ticks(pids: list[int]) -> int:
    """User+system clock ticks used so far by `pids` (processes that are gone count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat; (0, 0) where there is none."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except OSError:
        return 0, 0
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


class CpuMeter:
    """CPU seconds each group of processes used between start() and stop(): where the burst's CPU went."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups

    def start(self) -> None:
        self.before = {name: cpu_ticks(pids) for name, pids in self.groups.items()}
        self.machine_before = machine_ticks()

    def stop(self) -> dict[str, float]:
        used = {name: (cpu_ticks(pids) - self.before[name]) / CLOCK_TICKS for name, pids in self.groups.items()}
        (busy0, total0), (busy1, total1) = self.machine_before, machine_ticks()
        used["whole machine (all CPUs)"] = (busy1 - busy0) / CLOCK_TICKS
        used["machine busy share"] = (busy1 - busy0) / (total1 - total0) if total1 > total0 else float("nan")
        return used


def server_times(access_log: Path, offset: int) -> dict[str, list[float]]:
    """The webhook request times (seconds) per event that gunicorn logged after byte `offset` of its access log."""
    times: dict[str, list[float]] = {}
    with access_log.open("rb") as fh:
        fh.seek(offset)
        for line in fh.read().decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 5 and parts[0] == "POST" and parts[1] == WEBHOOK_PATH:
                times.setdefault(parts[4], []).append(int(parts[3]) / 1e6)
    return times


def measure_webhooks(url: str, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Part 1: the burst of signed deliveries while GitHub is unreachable; latencies as the sender sees them."""
    port, closed = free_port(), free_port()  # nothing listens on `closed`: GitHub is unreachable
    secret = secrets.token_urlsafe(32)
    env = github_env(
        app_env(url), f"http://{HOST}:{port}", "424242", rsa_private_key_pem(), f"http://{HOST}:{closed}", secret
    )
    token = prepare_org(env)
    commits = [commit_sha(f"seed-{n}") for n in range(SEEDED_COMMITS)]
    access = tmp / "webhooks-access.log"
    served = gunicorn("wsgi:app", ROOT, env, tmp / "webhooks-app.log", args.workers, port, access_log_options(access))
    with served as (_, app_proc), background_worker(env, tmp / "webhooks-worker.log") as worker_proc:
        wait_until(lambda: healthz_ok(port), app_proc, "app", tmp / "webhooks-app.log")
        upload_over_http(port, token, [f"seed-{n}" for n in range(SEEDED_COMMITS)])
        # A first burst of the same shape, unmeasured for the target: the server is measured warm, as it runs in
        # production (pooled connections open, statements prepared); its p99 is reported as the cold start.
        warm = Problems()
        cold = send_burst(port, make_deliveries(args.deliveries, secret, commits, seed=1), args.concurrency, warm)
        if warm.count:
            raise RuntimeError(f"warm-up deliveries failed: {warm.samples}\n{tail(tmp / 'webhooks-app.log')}")
        bursts = [make_deliveries(args.deliveries, secret, commits, seed=2 + b) for b in range(args.bursts)]
        problems = Problems()
        time.sleep(LOG_SETTLE)
        offset = access.stat().st_size
        print(
            f"  {args.bursts} bursts of {args.deliveries} deliveries, {args.concurrency} at a time, "
            f"gunicorn --workers {args.workers}, GitHub at closed port {closed}"
        )
        meter = CpuMeter(
            {
                "client (this process)": [os.getpid()],
                "app (gunicorn master and workers)": process_tree(app_proc.pid),
                "delivery worker": [worker_proc.pid],
            }
        )
        meter.start()
        start = time.perf_counter()
        latencies = [send_burst(port, deliveries, args.concurrency, problems) for deliveries in bursts]
        wall = time.perf_counter() - start
        cpu = meter.stop()
        time.sleep(LOG_SETTLE)
        server = server_times(access, offset)
        worker_alive = worker_proc.poll() is None
    worker_tried = (tmp / "webhooks-worker.log").read_text(errors="replace").count("github.delivery.retry")
    if not worker_alive:
        problems.add(f"the background worker exited during the burst:\n{tail(tmp / 'webhooks-worker.log')}")
    if problems.count:
        print(f"\napp log tail:\n{tail(tmp / 'webhooks-app.log')}")
    burst_p99s = [summary_ms(burst)["p99"] for burst in latencies]
    return {
        "deliveries": args.deliveries,
        "bursts": args.bursts,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "mix": Counter(d.event for d in bursts[0]),
        "wall_seconds": wall,
        "cpu_seconds_during_burst": cpu,
        "per_second": args.bursts * args.deliveries / wall,
        "burst_p99_ms": burst_p99s,
        "client_ms": summary_ms([t for burst in latencies for t in burst]),
        "cold_client_ms": summary_ms(cold),
        "server_ms": summary_ms([t for ts in server.values() for t in ts]) if server else None,
        "server_ms_by_event": {event: summary_ms(ts) for event, ts in sorted(server.items())},
        "errors": problems.count,
        "error_samples": problems.samples,
        "worker_alive_during_burst": worker_alive,
        "worker_failed_attempts": worker_tried,
        "latencies_ms": [sorted(round(1000 * s, 2) for s in burst) for burst in latencies],
    }


# ---------------------------------------------------------------- part 2: the worker


def upload_in_process(url: str, config: dict[str, str], token: str, labels: list[str]) -> float:
    """Upload one scan per label through the Flask test client (in this process); return the seconds it took."""
    from app import create_app

    app = create_app({"DATABASE_URL": url, **config})
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    start = time.perf_counter()
    try:
        for label in labels:
            resp = client.post(UPLOAD_PATH, data=upload_body(label), headers=headers, content_type="application/json")
            if resp.status_code != 202 or resp.get_json().get("commit_status") is None:
                raise RuntimeError(f"upload {label} answered {resp.status_code}: {resp.get_data()[:300]!r}")
        return time.perf_counter() - start
    finally:
        app.extensions["fremforge.db"].engine.dispose()


def outbox_states(url: str) -> Counter[str]:
    import sqlalchemy as sa

    from app.config import normalise_database_url

    engine = sa.create_engine(normalise_database_url(url))
    try:
        with engine.connect() as conn:
            return Counter(dict(conn.execute(sa.text("SELECT state, count(*) FROM outbox GROUP BY state")).all()))
    finally:
        engine.dispose()


def fake_census(fake: Any, shas: list[str]) -> dict[str, Any]:
    """How many of the commits got exactly one status and exactly one check run on the fake."""
    statuses = Counter(s["sha"] for s in fake.statuses if f"{s['owner']}/{s['repo']}".lower() == REPO.lower())
    runs = Counter(r["head_sha"] for r in fake.check_runs.values())
    exact = sum(1 for sha in shas if statuses[sha] == 1 and runs[sha] == 1)
    return {
        "commits_exactly_once": exact,
        "statuses": len(fake.statuses),
        "check_runs": len(fake.check_runs),
        "check_run_updates": sum(len(r["history"]) - 1 for r in fake.check_runs.values()),
        "token_exchanges": sum(fake.token_exchanges.values()),
        "requests": len(fake.calls),
        "invalid_requests": fake.invalid_requests[:10],
        "invalid_request_count": len(fake.invalid_requests),
    }


def measure_worker(url: str, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Part 2: `worker --once` draining `--commits` pending commits against the fake GitHub."""
    from tests.fakes import FakeGitHub

    fake = FakeGitHub().start()
    try:
        fake.add_installation(INSTALLATION, LOGIN, None)
        secret = secrets.token_urlsafe(32)
        public = f"http://{HOST}:{free_port()}"
        env = github_env(app_env(url), public, fake.app_id, fake.private_key_pem, fake.url, secret)
        token = prepare_org(env)
        config = {k.removeprefix("FREMFORGE_"): v for k, v in env.items() if k.startswith("FREMFORGE_")}
        labels = [f"commit-{n}" for n in range(args.commits)]
        print(f"  uploading {len(labels)} scans in-process (one commit each)", flush=True)
        upload_seconds = upload_in_process(url, config, token, labels)
        before = outbox_states(url)
        if before.get("pending") != args.commits:
            raise RuntimeError(f"expected {args.commits} pending outbox rows, found {dict(before)}")
        print(f"  {args.commits} pending; timing `flask --app wsgi worker --once`", flush=True)
        seconds, said = run_worker_once(env, tmp / "worker.log")
        census = fake_census(fake, [commit_sha(label) for label in labels])
        after = outbox_states(url)
        idle_seconds, _ = run_worker_once(env, tmp / "worker-idle.log")  # start-up and exit with nothing due
    finally:
        fake.stop()
    return {
        "commits": args.commits,
        "upload_seconds": upload_seconds,
        "worker_seconds": seconds,
        "commits_per_second": args.commits / seconds,
        "worker_said": said,
        "idle_worker_seconds": idle_seconds,
        "outbox_before": dict(before),
        "outbox_after": dict(after),
        **census,
    }


# ---------------------------------------------------------------- report


def build_rows(hooks: dict[str, Any] | None, work: dict[str, Any] | None) -> list[Row]:
    rows = []
    if hooks is not None:
        c, s = hooks["client_ms"], hooks["server_ms"] or {}
        n = (
            f"webhooks ({hooks['bursts']} bursts of {hooks['deliveries']} over {hooks['concurrency']} connections, "
            f"GitHub down, {hooks['workers']} gunicorn workers)"
        )
        little = 1000 * hooks["concurrency"] / hooks["per_second"]
        rows += [
            Row(f"{n}: p50", "ms", c["p50"], None),
            Row(f"{n}: p95", "ms", c["p95"], None),
            Row(f"{n}: p99", "ms", c["p99"], "<", WEBHOOK_P99_MS),
            Row(f"{n}: p99 of the worst burst", "ms", max(hooks["burst_p99_ms"]), None),
            Row(
                "webhooks: the same burst just after start (cold, unmeasured for the target): p99",
                "ms",
                hooks["cold_client_ms"]["p99"],
                None,
            ),
            Row("webhooks: non-2xx, failed, or not the handler's outcome", "count", hooks["errors"], "==", 0),
            Row("webhooks: server-side time p50 (gunicorn access log)", "ms", s.get("p50", float("nan")), None),
            Row("webhooks: server-side time p99 (gunicorn access log)", "ms", s.get("p99", float("nan")), None),
            Row("webhooks: throughput during the burst", "req/s", hooks["per_second"], None),
            Row("webhooks: connections / throughput (Little's law wait)", "ms", little, None),
            Row(
                "webhooks: worker attempts failed on unreachable GitHub", "count", hooks["worker_failed_attempts"], None
            ),
        ]
    if work is not None:
        rows += [
            Row(
                f"worker --once: {work['commits']} pending commits drained",
                "commits/s",
                work["commits_per_second"],
                ">=",
                WORKER_RATE,
            ),
            Row(
                "worker: commits with exactly 1 status and 1 check run",
                "count",
                work["commits_exactly_once"],
                "==",
                work["commits"],
            ),
            Row("worker: requests the fake GitHub found invalid", "count", work["invalid_request_count"], "==", 0),
            Row("worker: wall time of the drain (spawn to exit)", "s", work["worker_seconds"], None),
            Row("worker: start-up and exit with nothing due", "s", work["idle_worker_seconds"], None),
        ]
    return rows


def print_table(backend: str, rows: list[Row]) -> None:
    head = f"{'backend':<11}{'measurement':<66}{'value':>10}{'target':>10}  result"
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        target = "-" if r.op is None else f"{r.op}{r.target:g}"
        result = "info" if r.op is None else ("PASS" if r.passed else "MISS")
        value = f"{r.value:>10.0f}" if r.unit == "count" else f"{r.value:>10.1f}"
        print(f"{backend:<11}{r.measurement + ' [' + r.unit + ']':<66}{value}{target:>10}  {result}")


def write_json(backend: str, rows: list[Row], hooks: dict | None, work: dict | None, args: argparse.Namespace) -> Path:
    doc = {
        "backend": backend,
        "when": utc_now(),
        "settings": {
            "deliveries": args.deliveries,
            "concurrency": args.concurrency,
            "commits": args.commits,
            "workers": args.workers,
            "bursts": args.bursts,
            **machine_state(),
        },
        "rows": [
            {
                "backend": backend,
                "measurement": r.measurement,
                "unit": r.unit,
                "value": r.value,
                "target": None if r.op is None else f"{r.op}{r.target:g}",
                "pass": r.passed,
            }
            for r in rows
        ],
        "webhooks": hooks,
        "worker": work,
    }
    return write_out(f"github-{backend}.json", doc)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = bench_parser(__doc__)
    ap.add_argument("--deliveries", type=int, default=200, help="webhook deliveries in each measured burst")
    ap.add_argument(
        "--bursts",
        type=int,
        default=5,
        help="measured bursts, one after the other (the target applies to the p99 over all of them)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        help="gunicorn workers (default: 3 on SQLite, as `make run`; 4 on PostgreSQL, as the README's production)",
    )
    ap.add_argument(
        "--concurrency", type=int, default=50, help="deliveries in flight at once, each on a connection of its own"
    )
    ap.add_argument("--commits", type=int, default=1000, help="pending commits for `worker --once` to drain")
    ap.add_argument("--only", choices=("webhooks", "worker"), help="run one part only")
    args = ap.parse_args(argv)
    if not 1 <= args.deliveries <= 100_000:
        ap.error("--deliveries must be between 1 and 100000")
    if not 1 <= args.bursts <= 100:
        ap.error("--bursts must be between 1 and 100")
    if args.workers is None:
        args.workers = 4 if args.database == "postgresql" else 3
    if not 1 <= args.workers <= 32:
        ap.error("--workers must be between 1 and 32")
    if not 1 <= args.concurrency <= 500:
        ap.error("--concurrency must be between 1 and 500")
    if not 1 <= args.commits <= 100_000:
        ap.error("--commits must be between 1 and 100000")
    check_pg_url(args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with (
        temp_dir(f"fremforge-github-bench-{args.database}-") as tmp,
        throwaway_databases(args.database, args.pg_url, tmp, PG_DATABASES) as urls,
    ):
        return run(args, tmp, urls)


def run(args: argparse.Namespace, tmp: Path, urls: dict[str, str]) -> int:
    """The parts asked for, each on its fresh database; the table and the JSON; 0 when every target is met, else 1."""
    backend = args.database
    print_load(backend, f"logs in {tmp}")
    hooks = work = None
    if args.only in (None, "webhooks"):
        print(f"[{backend}] webhooks while GitHub is unreachable", flush=True)
        hooks = measure_webhooks(urls["webhooks"], tmp, args)
    if args.only in (None, "worker"):
        print(f"[{backend}] worker against the fake GitHub", flush=True)
        work = measure_worker(urls["worker"], tmp, args)
    rows = build_rows(hooks, work)
    print_table(backend, rows)
    if hooks is not None:
        cpu = hooks["cpu_seconds_during_burst"]
        print(f"\nCPU during the burst ({hooks['wall_seconds']:.2f} s wall on {os.cpu_count()} CPUs):")
        for name, value in cpu.items():
            print(f"  {name:<36}{value:>8.2f}" + (" s" if name != "machine busy share" else ""))
    for sample in (hooks or {}).get("error_samples", []) + (work or {}).get("invalid_requests", []):
        print(f"  sample: {sample}")
    print(f"\nwritten: {write_json(backend, rows, hooks, work, args)}")
    return 0 if all(r.passed for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
