#!/usr/bin/env python3
"""Gate benchmark: issue 14's performance targets for block_on new and for re-posting, on one backend.

Measures:
  * block_on new: a --findings (10,000) finding upload at the head of an open pull request whose base branch
    (main) has a scan of as many findings of the same image, half of the head's findings shared with it, half new;
    the same upload at another head under block_on all; the app under `gunicorn -w --workers` (2), the two modes
    alternating (the policy changed by PUT .../settings between them, read per request), median of --repeat each.
    Target: new / all <= 1.2; every answer 202 with every finding accepted; under new the head's verdict counts
    only the new findings (its description says "new", and the stored scan its baseline and blocking count).
  * re-posting: --heads (1,000) commits, each the head of an open pull request with one small scan, posted
    `failure` under block_pull by `flask --app wsgi worker` (--worker-processes, 1) against a FakeGitHub
    (tests/fakes.py, in this process); then the time from the PUT that switches block_action to warn until the
    fake's latest commit status of every head is `success`. Target: within 60 s.

Run from the repository root, with the virtualenv active:
  . .venv/bin/activate
  python bench/gate_bench.py                                     # SQLite, a fresh temp dir per run
  python bench/gate_bench.py --database postgresql \\
      --pg-url postgresql://postgres@127.0.0.1:5432/postgres    # fresh fremforge_bench_gate_* databases

Everything listens on 127.0.0.1 only. The table is printed and written as JSON to bench/out/gate-<backend>.json.
Exit 0 when every target is met and every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import os
import re
import secrets
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from common import (  # importing common puts the repository root on sys.path, for `app` and `tests.fakes`
    HOST,
    ORG,
    REPO,
    REQUEST_TIMEOUT,
    ROOT,
    VENV_BIN,
    Client,
    Errors,
    answer_problem,
    app_env,
    bench_parser,
    bulk,
    check_pg_url,
    commit_sha,
    flask_cli,
    free_port,
    gunicorn,
    healthz_ok,
    machine_state,
    make_trivy,
    print_load,
    seed_findings,
    seeding_connection,
    stop,
    tail,
    temp_dir,
    throwaway_databases,
    utc_now,
    wait_until,
    warm_up,
    write_out,
)

IMAGE = "ghcr.io/acme/api"  # the image name of every scan here (the tag differs)
MAIN = "refs/heads/main"
CONTEXT = "fremforge/image-scan"  # the app's commit status context (app.policy.CONTEXT)
SETTINGS_PATH = f"/api/v1/orgs/{ORG}/image-scans/settings"
WEBHOOK_PATH = "/webhooks/github"
INSTALLATION = 4711  # the fake GitHub installation of `acme`, as in tests/conftest.py
PG_DATABASES = {"new": "fremforge_bench_gate_new", "repost": "fremforge_bench_gate_repost"}  # one per part
RATIO_BAR = 1.2  # block_on new / block_on all
REPOST_BAR = 60.0  # seconds from the settings change to every head green on GitHub
BLOCKING = ("critical", "high")  # at or above the default block_threshold (high); ignore_unfixed is off
POLL = 0.1  # seconds between looks at the fake GitHub: a poll interval, not a synchronisation point
DB_POLL_EVERY = 5  # polls between looks at the database's reposts and outbox (progress only)
SEED_THREADS = 8  # connections uploading the re-post part's small scans


# ---------------------------------------------------------------- results


@dataclass
class Row:
    measurement: str
    unit: str
    value: float
    op: str | None  # "<=", "==": the target's comparison; None: reported for information
    target: float | None = None

    @property
    def passed(self) -> bool:
        if self.op is None or self.target is None:
            return True
        return {"<=": self.value <= self.target, "==": self.value == self.target}[self.op]


@dataclass
class Problems:
    """Wrong answers and failed checks; a few samples."""

    count: int = 0
    samples: list[str] = field(default_factory=list)

    def add(self, what: str) -> None:
        self.count += 1
        if len(self.samples) < 10:
            self.samples.append(what)


# ---------------------------------------------------------------- HTTP, webhooks, tokens


def call(port: int, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any, float]:
    """One request on a connection of its own: the status, the JSON answer (None if not JSON) and the seconds."""
    conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT)
    try:
        start = time.perf_counter()
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        elapsed = time.perf_counter() - start
    finally:
        conn.close()
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    return resp.status, doc, elapsed


def put_settings(port: int, token: str, **change: str) -> float:
    """PUT the settings change with a settings:write token; fail unless it answers 200 with the change applied."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    status, doc, elapsed = call(port, "PUT", SETTINGS_PATH, json.dumps(change).encode(), headers)
    if status != 200 or not isinstance(doc, dict) or any(doc.get(k) != v for k, v in change.items()):
        raise RuntimeError(f"PUT {SETTINGS_PATH} {change} answered {status}: {doc!r:.300}")
    return elapsed


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def pull_request_opened(port: int, secret: str, number: int, head: str, base_sha: str) -> None:
    """A signed pull_request `opened` delivery: PR `number` of REPO, open at `head`, based on main at `base_sha`.
    What the handler reads (GitHub sends much more); the org is found by the repository owner's login."""
    doc = {
        "action": "opened",
        "number": number,
        "pull_request": {
            "number": number,
            "state": "open",
            "updated_at": "2026-01-15T10:00:00Z",
            "head": {"sha": head, "ref": f"feature-{number}"},
            "base": {"sha": base_sha, "ref": "main"},
        },
        "repository": {"full_name": REPO, "name": REPO.split("/")[1], "owner": {"login": ORG}},
    }
    body = json.dumps(doc).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "pull_request",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(secret, body),
    }
    status, answer, _ = call(port, "POST", WEBHOOK_PATH, body, headers)
    if not 200 <= status < 300:
        raise RuntimeError(f"pull_request delivery for #{number} answered {status}: {answer!r:.300}")


def make_token(env: dict[str, str], *scopes: str) -> str:
    """A token of the org with the given scopes (`tokens create` prints it alone on its last line)."""
    args = ["tokens", "create", "--org", ORG, "--name", "gate-bench"]
    for scope in scopes:
        args += ["--scope", scope]
    return flask_cli(env, *args).strip().splitlines()[-1].strip()


def engine_for(url: str) -> sa.Engine:
    from app.config import normalise_database_url

    return sa.create_engine(normalise_database_url(url))


# ---------------------------------------------------------------- part 1: block_on new against block_on all


@dataclass
class Head:
    """One upload at a pull request head: its mode (block_on), PR number and commit; filled in when sent."""

    mode: str
    number: int
    sha: str
    warm: bool  # the untimed first round
    body: bytes = b""
    seconds: float = float("nan")
    answer: dict[str, Any] | None = None


def upload_order(repeat: int) -> list[tuple[str, bool]]:
    """(mode, warm-up?) per upload: an untimed round, then `repeat` rounds, the modes strictly alternating (new, all,
    new, all, ...): every upload follows a PUT that switches the mode, and a drift of the machine weighs on both
    modes alike."""
    return [(m, warm) for warm in [True] + [False] * repeat for m in ("new", "all")]


def expectations(base: list[dict], head: list[dict]) -> dict[str, Any]:
    """What the head's verdict must say, from the findings alone: which are new (no finding of the base has the same
    advisory id and package name) and how many block in each mode, by severity."""
    pairs = {(f["cve_id"], f["package_name"]) for f in base}
    new = [f for f in head if (f["cve_id"], f["package_name"]) not in pairs]

    def blocking(findings: list[dict]) -> dict[str, int]:
        counted = Counter(f["severity"].lower() for f in findings)
        return {s: counted[s] for s in BLOCKING}

    return {
        "findings": len(head),
        "new": len(new),
        "shared": len(head) - len(new),
        "blocking": {"new": blocking(new), "all": blocking(head)},
    }


def verdict_problem(h: Head, expect: dict[str, Any]) -> str | None:
    """What is wrong with a head's answer: its status, or a commit status description that does not name exactly
    the blocking counts of its mode (`N new high` under new, `N high` under all)."""
    a = h.answer or {}
    blocking = expect["blocking"][h.mode]
    want_status = "failure" if any(blocking.values()) else "success"
    if a.get("status") != want_status:
        return f"#{h.number} ({h.mode}): status {a.get('status')!r}, expected {want_status!r}"
    desc = (a.get("commit_status") or {}).get("description") or ""
    word = "new " if h.mode == "new" else ""
    for severity, n in blocking.items():
        if n and not re.search(rf"(?<![\d]){n} {word}{severity}\b", desc):
            return f"#{h.number} ({h.mode}): description {desc!r} does not say '{n} {word}{severity}'"
    if h.mode == "all" and re.search(r"\bnew\b", desc):
        return f"#{h.number} (all): description {desc!r} says 'new'"
    return None


def stored_problems(url: str, heads: list[Head], base_scan: int, expect: dict[str, Any]) -> list[str]:
    """After the clock: each head's stored scan (block_on, baseline, blocking count) and its findings' `new`
    flags against what its mode should give."""
    problems = []
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            ref = conn.execute(sa.text("SELECT ref FROM scan_runs WHERE id = :id"), {"id": base_scan}).scalar_one()
            if ref != MAIN:  # the baseline must be found by the base branch, its first probe
                problems.append(f"the base scan's ref is {ref!r}, not {MAIN}")
            for h in heads:
                scan_id = (h.answer or {}).get("scan_run_id")
                if scan_id is None:
                    continue  # already counted as a wrong answer
                row = conn.execute(
                    sa.text("SELECT block_on, baseline_scan_id, blocking FROM scan_runs WHERE id = :id"),
                    {"id": scan_id},
                ).one()
                flags = dict(
                    conn.execute(
                        sa.text("SELECT new, count(*) FROM findings WHERE scan_run_id = :id GROUP BY new"),
                        {"id": scan_id},
                    ).all()
                )
                flags = {None if k is None else bool(k): v for k, v in flags.items()}
                blocks = sum(expect["blocking"][h.mode].values())
                if h.mode == "new":
                    want = ("new", base_scan, blocks, {True: expect["new"], False: expect["shared"]})
                else:
                    want = ("all", None, blocks, {None: expect["findings"]})
                got = (row.block_on, row.baseline_scan_id, row.blocking, flags)
                if got != want:
                    problems.append(
                        f"#{h.number} ({h.mode}): stored (block_on, baseline, blocking, new flags) {got}, "
                        f"expected {want}"
                    )
    finally:
        engine.dispose()
    return problems


def checkpoint(url: str) -> list[int] | None:
    """SQLite: a passive checkpoint of the WAL from a connection of the benchmark's own, while the app is idle; its
    (busy, frames in the WAL, frames checkpointed). None on PostgreSQL.

    Run before each head upload so that each starts from an empty WAL. A 10,000-finding upload writes about 970 WAL
    frames, just under SQLite's automatic checkpoint at 1,000: without this, every second upload's commit copies
    both uploads' frames into the database (about 22 ms here), and with the modes alternating it was always the
    same mode's upload that paid it.
    """
    if not url.startswith("sqlite:///"):
        return None
    conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30)
    try:
        return list(conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())
    finally:
        conn.close()


def measure_new(url: str, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Part 1: the head uploads under block_on new and block_on all, alternating, against one baseline."""
    secret = secrets.token_urlsafe(32)
    env = {**app_env(url), "FREMFORGE_GITHUB_WEBHOOK_SECRET": secret}  # webhooks, no GitHub App: nothing posted
    flask_cli(env, "db", "upgrade")
    flask_cli(env, "orgs", "create", ORG)
    flask_cli(env, "policy", "set", ORG, "--block-action", "block_pull")
    token = make_token(env, "findings:write", "settings:write")

    n, half = args.findings, args.findings // 2
    base = seed_findings(make_trivy(n, tmp / "base.json", seed=1))
    fresh = seed_findings(make_trivy(n - half, tmp / "fresh.json", seed=2, id_offset=n))  # advisories base lacks
    head = base[::2][:half] + fresh  # every other base finding (all three results), then the new ones
    expect = expectations(base, head)
    base_sha = commit_sha("gate-base")
    base_body = json.dumps(  # a seed body carries its ref (query parameters are for raw Trivy reports)
        {"image_ref": f"{IMAGE}:main", "commit_sha": base_sha, "repo_full_name": REPO, "ref": MAIN, "findings": base}
    ).encode()
    heads = [
        Head(mode, number, commit_sha(f"gate-head-{number}"), warm)
        for number, (mode, warm) in enumerate(upload_order(args.repeat), start=1)
    ]
    for h in heads:  # built before the clock: the same findings at each head, its own commit and tag
        h.body = json.dumps(
            {
                "image_ref": f"{IMAGE}:pr-{h.number}",
                "commit_sha": h.sha,
                "repo_full_name": REPO,
                "ref": f"refs/pull/{h.number}/merge",
                "findings": head,
            }
        ).encode()
    print(
        f"  base: {n} findings at {MAIN}; heads: {len(head)} findings ({expect['shared']} shared, {expect['new']} new),"
        f" {len(heads)} uploads (2 untimed), gunicorn -w {args.workers}",
        flush=True,
    )

    problems = Problems()
    errors = Errors()
    switches: list[float] = []
    checkpoints: list[list[int] | None] = []
    log = tmp / "new-app.log"
    with gunicorn("wsgi:app", ROOT, env, log, args.workers) as (port, proc):
        wait_until(lambda: healthz_ok(port), proc, "app", log)
        client = Client(port, token)
        warm_up({"app": client}, errors, base)  # four 50-finding uploads, other commits and image
        status, payload = client.post(base_body)
        problem = answer_problem(status, payload, n)
        if problem:
            raise RuntimeError(f"the base upload failed: {problem}\n{tail(log)}")
        base_scan = json.loads(payload)["scan_run_id"]
        for h in heads:
            pull_request_opened(port, secret, h.number, h.sha, base_sha)
        mode = None
        for h in heads:
            if h.mode != mode:
                switches.append(put_settings(port, token, block_on=h.mode))
                mode = h.mode
            checkpoints.append(checkpoint(url))
            start = time.perf_counter()
            status, payload = client.post(h.body)
            h.seconds = time.perf_counter() - start
            problem = answer_problem(status, payload, len(head))
            if problem:
                problems.add(f"#{h.number} ({h.mode}): {problem}")
                continue
            h.answer = json.loads(payload)
            problem = verdict_problem(h, expect)
            if problem:
                problems.add(problem)
            label = "warm-up" if h.warm else "timed"
            print(f"    #{h.number:<3} block_on {h.mode:<4} {h.seconds:6.3f} s  ({label})", flush=True)
        client.close_all()
    for problem in stored_problems(url, heads, base_scan, expect):
        problems.add(problem)
    for sample in errors.samples:
        problems.add(f"warm-up: {sample}")

    times = {m: [h.seconds for h in heads if h.mode == m and not h.warm] for m in ("new", "all")}
    medians = {m: statistics.median(ts) for m, ts in times.items()}
    timed = [h for h in heads if not h.warm]
    pairs = [timed[i : i + 2] for i in range(0, len(timed), 2)]  # each round's two uploads
    round_ratios = [
        next(h.seconds for h in p if h.mode == "new") / next(h.seconds for h in p if h.mode == "all") for p in pairs
    ]
    return {
        "findings": n,
        "expect": expect,
        "base_scan_id": base_scan,
        "seconds": times,
        "median_seconds": medians,
        "ratio": medians["new"] / medians["all"],
        "round_ratios": round_ratios,
        "warm_up_seconds": {h.mode: h.seconds for h in heads if h.warm},
        "settings_put_seconds": switches,
        "sqlite_checkpoints_before_uploads": checkpoints,
        "answers": [
            {"number": h.number, "mode": h.mode, "warm": h.warm, "seconds": h.seconds, "answer": h.answer}
            for h in heads
        ],
        "problems": problems.count,
        "problem_samples": problems.samples,
    }


# ---------------------------------------------------------------- part 2: re-posting 1,000 open pull request heads


def small_findings(n: int) -> list[dict[str, Any]]:
    """A small scan with one high finding that has a fix (blocks under block_pull), and two that do not block."""
    return [
        {
            "cve_id": f"CVE-2025-{10_000 + n}",
            "severity": "HIGH",
            "package_name": "openssl",
            "installed_version": "3.0.11",
            "fixed_version": "3.0.13",
            "title": "openssl: denial of service in the TLS handshake",
            "target": "ghcr.io/acme/api (debian 12.5)",
        },
        {
            "cve_id": "CVE-2024-2511",
            "severity": "MEDIUM",
            "package_name": "libssl3",
            "installed_version": "3.0.11",
            "fixed_version": None,
            "title": "openssl: unbounded memory growth",
            "target": "ghcr.io/acme/api (debian 12.5)",
        },
        {
            "cve_id": "CVE-2023-50495",
            "severity": "LOW",
            "package_name": "ncurses-base",
            "installed_version": "6.4-4",
            "fixed_version": None,
            "title": "ncurses: segmentation fault",
            "target": "ghcr.io/acme/api (debian 12.5)",
        },
    ]


def link_pull_requests(url: str, heads: list[str], base_sha: str) -> None:
    """One open pull request per head (numbers 1..N, based on main), inserted below the ORM as the pull_request
    handler stores them."""
    from app.findings.store import sqlite_datetime

    with seeding_connection(url) as conn:
        org = conn.execute(sa.text("SELECT id FROM orgs WHERE slug = :slug"), {"slug": ORG}).scalar_one()
        now: Any = datetime.now(UTC).replace(tzinfo=None)
        if conn.dialect.name == "sqlite":
            now = sqlite_datetime(now)
        columns = ("org_id", "repo_full_name", "number", "head_sha", "base_ref", "base_sha", "state", "updated_at")
        rows = [(org, REPO, n, sha, MAIN, base_sha, "open", now) for n, sha in enumerate(heads, start=1)]
        bulk(conn, "pull_requests", columns, rows)
        conn.commit()


def upload_heads(port: int, token: str, heads: list[str], problems: Problems) -> float:
    """One small scan per head over HTTP, SEED_THREADS at a time; each must be 202 and ask for `failure`."""
    client = Client(port, token)

    def one(n: int) -> None:
        body = json.dumps(
            {
                "image_ref": f"{IMAGE}:pr-{n}",
                "commit_sha": heads[n - 1],
                "repo_full_name": REPO,
                "ref": f"refs/pull/{n}/merge",
                "findings": small_findings(n),
            }
        ).encode()
        status, payload = client.post(body)
        problem = answer_problem(status, payload, 3)
        if problem is None and (json.loads(payload).get("commit_status") or {}).get("state") != "failure":
            problem = f"commit_status {json.loads(payload).get('commit_status')!r}, expected failure"
        if problem:
            problems.add(f"seed upload #{n}: {problem}")

    start = time.perf_counter()
    with ThreadPoolExecutor(SEED_THREADS) as pool:
        list(pool.map(one, range(1, len(heads) + 1)))
    client.close_all()
    return time.perf_counter() - start


def latest_states(fake: Any, heads: set[str]) -> dict[str, str]:
    """The state of the latest `fremforge/image-scan` status of each head on the fake, in one pass over what it
    holds (what fake.latest_status gives per commit; a copy of the list, so the fake's lock is not taken)."""
    owner, repo = REPO.split("/")
    latest: dict[str, str] = {}
    for s in list(fake.statuses):
        if (
            s["sha"] in heads
            and s["context"].lower() == CONTEXT
            and s["owner"].lower() == owner
            and s["repo"].lower() == repo
        ):
            latest[s["sha"]] = s["state"]
    return latest


def db_state(engine: sa.Engine) -> dict[str, int]:
    """Commits waiting to be re-posted, and outbox items by state."""
    with engine.connect() as conn:
        reposts = conn.execute(sa.text("SELECT count(*) FROM reposts")).scalar_one()
        outbox = dict(conn.execute(sa.text("SELECT state, count(*) FROM outbox GROUP BY state")).all())
    return {"reposts": int(reposts), **{f"outbox_{k}": int(v) for k, v in outbox.items()}}


def last_outbox_id(engine: sa.Engine) -> int:
    """The newest outbox item's id (0 when there is none)."""
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT coalesce(max(id), 0) FROM outbox")).scalar_one())


def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU seconds so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def delivery_workers(env: dict[str, str], tmp: Path, args: argparse.Namespace) -> Iterator[list[subprocess.Popen]]:
    """`flask --app wsgi worker` processes, as in production; each stopped with SIGTERM on the way out."""
    cmd = [str(VENV_BIN / "flask"), "--app", "wsgi", "worker"]
    cmd += ["--poll-seconds", str(args.worker_poll), "--parallel", str(args.worker_parallel)]
    with ExitStack() as stack:
        procs = []
        for i in range(args.worker_processes):
            with (tmp / f"worker-{i}.log").open("wb") as out:
                proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
            stack.callback(stop, proc)
            procs.append(proc)
        yield procs


def wait_for_states(
    fake: Any, heads: list[str], state: str, engine: sa.Engine, procs: list[subprocess.Popen], timeout: float
) -> tuple[float | None, list[dict[str, Any]]]:
    """Poll the fake every POLL until the latest status of every head is `state`; the seconds it took (None after
    `timeout`) and the progress seen (heads in `state` whenever it changed, and the database's queues)."""
    wanted = set(heads)
    start = time.perf_counter()
    progress: list[dict[str, Any]] = []
    last, polls = -1, 0
    while True:
        elapsed = time.perf_counter() - start
        done = sum(1 for s in latest_states(fake, wanted).values() if s == state)
        if done != last or polls % DB_POLL_EVERY == 0:
            sample: dict[str, Any] = {"t": round(elapsed, 3), state: done}
            if polls % DB_POLL_EVERY == 0:
                sample.update(db_state(engine))
            progress.append(sample)
            last = done
        if done == len(heads):
            return elapsed, progress
        if elapsed > timeout:
            return None, progress
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"a worker exited with {proc.returncode}")
        polls += 1
        time.sleep(POLL)


LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")
DELIVERED = re.compile(r"github\.posting\.delivered outbox=(\d+)")


def worker_log_timeline(logs: list[Path], since: float, last_item: int) -> dict[str, Any]:
    """From the workers' logs (their asctime, local time), relative to `since` (epoch seconds): when commits were
    turned into outbox items (`reposts.stored`, logged after `since`) and when the items newer than `last_item`
    were delivered (`github.posting.delivered`)."""
    stored: list[tuple[float, int]] = []
    delivered: list[float] = []
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            m = LOG_TIME.match(line)
            if not m:
                continue
            at = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000 - since
            if "reposts.stored" in line and at >= 0:
                stored.append((round(at, 3), int(line.rsplit("commits=", 1)[1].split()[0])))
            elif (item := DELIVERED.search(line)) and int(item.group(1)) > last_item:
                delivered.append(at)
    delivered.sort()
    return {
        "reposts_stored": sorted(stored),
        "reposts_stored_commits": sum(c for _, c in stored),
        "delivered": len(delivered),
        "first_delivered_s": delivered[0] if delivered else None,
        "last_delivered_s": delivered[-1] if delivered else None,
    }


def route_of(path: str) -> str:
    """A GitHub API path with its commit SHA and trailing id generalised, to count calls by kind."""
    return re.sub(r"/\d+$", "/{id}", re.sub(r"/[0-9a-f]{40}", "/{sha}", path))


def final_problems(fake: Any, heads: list[str]) -> list[str]:
    """After the clock: fake.latest_status of every head is success, and its newest check run concluded success."""
    owner, repo = REPO.split("/")
    problems = []
    runs: dict[str, dict[str, Any]] = {}
    for run in sorted(list(fake.check_runs.values()), key=lambda r: r["id"]):
        if run["name"] == CONTEXT and run["head_sha"] in heads:
            runs[run["head_sha"]] = run
    for sha in heads:
        status = fake.latest_status(owner, repo, sha)
        if status is None or status["state"] != "success":
            problems.append(f"{sha[:12]}: latest status {status and status['state']!r}, expected success")
        elif sha not in runs or runs[sha].get("conclusion") != "success":
            problems.append(f"{sha[:12]}: newest check run {runs.get(sha, {}).get('conclusion')!r}, expected success")
    return problems


def measure_repost(url: str, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Part 2: switch block_pull -> warn with --heads open pull request heads posted red; time until all green."""
    from tests.fakes import FakeGitHub, github_app_config

    fake = FakeGitHub().start()
    try:
        fake.add_installation(INSTALLATION, ORG, [REPO])
        port = free_port()
        env = {
            **app_env(url),
            **{f"FREMFORGE_{k}": v for k, v in github_app_config(fake).items()},
            "FREMFORGE_PUBLIC_URL": f"http://{HOST}:{port}",
        }
        flask_cli(env, "db", "upgrade")
        flask_cli(env, "orgs", "create", ORG, "--installation-id", str(INSTALLATION))
        flask_cli(env, "policy", "set", ORG, "--block-action", "block_pull")
        token = make_token(env, "findings:write", "settings:write")
        heads = [commit_sha(f"gate-pr-head-{n}") for n in range(1, args.heads + 1)]
        link_pull_requests(url, heads, commit_sha("gate-pr-base"))
        problems = Problems()
        engine = engine_for(url)
        log = tmp / "repost-app.log"
        served = gunicorn("wsgi:app", ROOT, env, log, args.workers, port)
        with served as (_, app_proc), delivery_workers(env, tmp, args) as procs:
            wait_until(lambda: healthz_ok(port), app_proc, "app", log)
            print(
                f"  {args.heads} open pull requests; uploading a 3-finding scan at each head "
                f"({SEED_THREADS} connections); {args.worker_processes} worker process(es), "
                f"--parallel {args.worker_parallel}, --poll-seconds {args.worker_poll}",
                flush=True,
            )
            seed_seconds = upload_heads(port, token, heads, problems)
            if problems.count:
                raise RuntimeError(f"seed uploads failed: {problems.samples}\n{tail(log)}")
            initial_seconds, _ = wait_for_states(fake, heads, "failure", engine, procs, args.timeout)
            if initial_seconds is None:
                raise RuntimeError(f"the initial failures were not all posted within {args.timeout:.0f} s")
            deadline = time.monotonic() + args.timeout
            while (quiet := db_state(engine)).get("reposts") or quiet.get("outbox_pending"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the workers did not finish the initial posts: {quiet}")
                time.sleep(POLL)  # the workers finish what they hold before the switch
            print(
                f"  initial failure of all {args.heads} heads on the fake {initial_seconds:.1f} s after the uploads;"
                f" outbox {quiet}",
                flush=True,
            )
            statuses_before, calls_before = len(fake.statuses), len(fake.calls)
            last_item = last_outbox_id(engine)
            cpu_before = {"bench process (fake GitHub, poller)": time.process_time()}
            cpu_before |= {f"worker {i}": cpu_seconds(p.pid) for i, p in enumerate(procs)}
            since = time.time()
            start = time.perf_counter()
            put_seconds = put_settings(port, token, block_action="warn")
            waited, progress = wait_for_states(fake, heads, "success", engine, procs, args.timeout)
            seconds = None if waited is None else time.perf_counter() - start
            wall = time.perf_counter() - start
            cpu_after = {"bench process (fake GitHub, poller)": time.process_time()}
            cpu_after |= {f"worker {i}": cpu_seconds(p.pid) for i, p in enumerate(procs)}
            after = db_state(engine)
        engine.dispose()
        for problem in final_problems(fake, heads):
            problems.add(problem)
        logs = [tmp / f"worker-{i}.log" for i in range(args.worker_processes)]
        timeline = worker_log_timeline(logs, since, last_item)
        statuses = len(fake.statuses) - statuses_before
        calls = Counter(f"{c.method} {route_of(c.path)}" for c in fake.calls[calls_before:])
        census = {
            "statuses_posted_for_switch": statuses,
            "github_calls_for_switch": dict(calls.most_common(10)),
            "invalid_requests": fake.invalid_requests[:10],
            "invalid_request_count": len(fake.invalid_requests),
        }
    finally:
        fake.stop()
    return {
        "heads": args.heads,
        "worker_processes": args.worker_processes,
        "worker_parallel": args.worker_parallel,
        "worker_poll_seconds": args.worker_poll,
        "seed_upload_seconds": seed_seconds,
        "initial_post_seconds": initial_seconds,
        "put_seconds": put_seconds,
        "seconds": seconds,
        "wall_seconds": wall,
        "milestones": milestones(progress, args.heads),
        "progress": progress,
        "worker_log": timeline,
        "cpu_seconds": {k: cpu_after[k] - cpu_before[k] for k in cpu_before},
        "db_after": after,
        "problems": problems.count,
        "problem_samples": problems.samples,
        **census,
    }


def milestones(progress: list[dict[str, Any]], heads: int) -> dict[str, float | None]:
    """When the first head turned green, half of them, all of them; and when no re-post was left to store."""

    def first(pred: Any) -> float | None:
        return next((p["t"] for p in progress if pred(p)), None)

    return {
        "first_success_s": first(lambda p: p.get("success", 0) > 0),
        "half_success_s": first(lambda p: p.get("success", 0) >= heads / 2),
        "all_success_s": first(lambda p: p.get("success", 0) == heads),
        "reposts_table_empty_s": first(lambda p: p.get("reposts") == 0 and p.get("success", 0) > 0),
    }


# ---------------------------------------------------------------- report


def build_rows(new: dict[str, Any] | None, rep: dict[str, Any] | None) -> list[Row]:
    rows = []
    if new is not None:
        n, med = new["findings"], new["median_seconds"]
        rows += [
            Row(f"{n}-finding head upload, block_on new (median)", "s", med["new"], None),
            Row(f"{n}-finding head upload, block_on all (median)", "s", med["all"], None),
            Row("block_on new / block_on all", "x", new["ratio"], "<=", RATIO_BAR),
            Row(
                "new / all per round (median of each round's ratio)", "x", statistics.median(new["round_ratios"]), None
            ),
            Row("new: non-202 answers, wrong verdicts or stored flags", "count", new["problems"], "==", 0),
        ]
    if rep is not None:
        seconds = rep["seconds"] if rep["seconds"] is not None else float("inf")
        rows += [
            Row(f"settings change -> {rep['heads']} open PR heads success on GitHub", "s", seconds, "<=", REPOST_BAR),
            Row("repost: the PUT itself (asks for every affected commit)", "s", rep["put_seconds"], None),
            Row("repost: heads not success (status and check run)", "count", rep["problems"], "==", 0),
            Row("repost: commit statuses posted for the switch", "count", rep["statuses_posted_for_switch"], None),
            Row("repost: requests the fake GitHub found invalid", "count", rep["invalid_request_count"], "==", 0),
        ]
    return rows


def print_table(backend: str, rows: list[Row]) -> None:
    head = f"{'backend':<11}{'measurement':<72}{'value':>10}{'target':>10}  result"
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        target = "-" if r.op is None else f"{r.op}{r.target:g}"
        result = "info" if r.op is None else ("PASS" if r.passed else "MISS")
        value = f"{r.value:>10.0f}" if r.unit == "count" else f"{r.value:>10.3f}"
        print(f"{backend:<11}{r.measurement + ' [' + r.unit + ']':<72}{value}{target:>10}  {result}")


def print_details(new: dict[str, Any] | None, rep: dict[str, Any] | None) -> None:
    if new is not None:
        print("\nblock_on new vs all, each timed upload (s):")
        for mode in ("new", "all"):
            print(f"  {mode:<4} " + "  ".join(f"{s:.3f}" for s in new["seconds"][mode]))
        print("  per round new/all: " + "  ".join(f"{r:.3f}" for r in new["round_ratios"]))
    if rep is not None:
        m, w = rep["milestones"], rep["worker_log"]
        procs, parallel = rep["worker_processes"], rep["worker_parallel"]
        print(f"\nre-post after the PUT ({procs} worker process(es), --parallel {parallel}):")
        print(f"  PUT answered {rep['put_seconds']:.3f} s; " + ", ".join(f"{k} {v}" for k, v in m.items()))
        print(f"  worker log: reposts.stored {w['reposts_stored']} ({w['reposts_stored_commits']} commits)")
        first, last = w["first_delivered_s"], w["last_delivered_s"]
        if first is not None and last is not None:
            print(f"  worker log: {w['delivered']} delivered, the first at {first:.2f} s, the last at {last:.2f} s")
        print("  CPU seconds during the switch: " + ", ".join(f"{k} {v:.1f}" for k, v in rep["cpu_seconds"].items()))
        print(f"  GitHub calls for the switch: {rep['github_calls_for_switch']}")
    for sample in (new or {}).get("problem_samples", []) + (rep or {}).get("problem_samples", []):
        print(f"  sample: {sample}")
    for sample in (rep or {}).get("invalid_requests", []):
        print(f"  invalid: {sample}")


def write_json(backend: str, rows: list[Row], new: dict | None, rep: dict | None, args: argparse.Namespace) -> Path:
    doc = {
        "backend": backend,
        "when": utc_now(),
        "settings": {
            "findings": args.findings,
            "repeat": args.repeat,
            "heads": args.heads,
            "workers": args.workers,
            "worker_processes": args.worker_processes,
            "worker_parallel": args.worker_parallel,
            "worker_poll_seconds": args.worker_poll,
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
        "block_on_new": new,
        "repost": rep,
    }
    return write_out(f"gate-{backend}.json", doc)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = bench_parser(__doc__)
    ap.add_argument("--repeat", type=int, default=5, help="timed head uploads per mode (median reported)")
    ap.add_argument("--findings", type=int, default=10_000, help="findings in the base and in each head upload")
    ap.add_argument("--heads", type=int, default=1000, help="open pull request heads to re-post")
    ap.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    ap.add_argument("--worker-processes", type=int, default=1, help="`flask worker` processes delivering")
    ap.add_argument("--worker-parallel", type=int, default=4, help="each worker's --parallel (its default: 4)")
    ap.add_argument("--worker-poll", type=float, default=1.0, help="each worker's --poll-seconds (its default: 1)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the fake to show a state")
    ap.add_argument("--only", choices=("new", "repost"), help="run one part only")
    args = ap.parse_args(argv)
    if not 1 <= args.repeat <= 100:
        ap.error("--repeat must be between 1 and 100")
    if not 2 <= args.findings <= 100_000:
        ap.error("--findings must be between 2 and 100000")
    if not 1 <= args.heads <= 100_000:
        ap.error("--heads must be between 1 and 100000")
    if not 1 <= args.workers <= 32 or not 1 <= args.worker_processes <= 16:
        ap.error("--workers must be between 1 and 32, --worker-processes between 1 and 16")
    if not 1 <= args.worker_parallel <= 32 or not 0.1 <= args.worker_poll <= 60:
        ap.error("--worker-parallel must be between 1 and 32, --worker-poll between 0.1 and 60")
    check_pg_url(args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with (
        temp_dir(f"fremforge-gate-bench-{args.database}-") as tmp,
        throwaway_databases(args.database, args.pg_url, tmp, PG_DATABASES) as urls,
    ):
        return run(args, tmp, urls)


def run(args: argparse.Namespace, tmp: Path, urls: dict[str, str]) -> int:
    """The parts asked for, each on its fresh database; the table and the JSON; 0 when every target is met, else 1."""
    backend = args.database
    print_load(backend, f"logs in {tmp}")
    new = rep = None
    if args.only in (None, "new"):
        print(f"[{backend}] block_on new against block_on all", flush=True)
        new = measure_new(urls["new"], tmp, args)
    if args.only in (None, "repost"):
        print(f"[{backend}] re-posting open pull request heads after a settings change", flush=True)
        rep = measure_repost(urls["repost"], tmp, args)
    rows = build_rows(new, rep)
    print_table(backend, rows)
    print_details(new, rep)
    print(f"\nwritten: {write_json(backend, rows, new, rep, args)}")
    return 0 if all(r.passed for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
