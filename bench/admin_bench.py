#!/usr/bin/env python3
"""Admin pages benchmark: the scans page and a scan's page on a big database (100,000 scans, 5,000,000 findings).

Target (the admin issue): with 100,000 scans and 5,000,000 findings stored, the scans page answers in under
150 ms of server time, with a fixed number of SQL statements per page, whatever its filters or depth.

The script makes a fresh database, runs the migrations, adds the org `acme`, seeds it with bulk inserts below
the ORM (COPY on PostgreSQL, executemany on SQLite), runs ANALYZE, then times the pages in-process through the
Flask test client (wall time of each request), counting the SQL statements of each with an engine event.

  . .venv/bin/activate
  python bench/admin_bench.py                                  # SQLite, a file in a fresh temp dir
  python bench/admin_bench.py --database postgresql \\
      --pg-url postgresql://postgres@127.0.0.1:5432/postgres  # a throwaway fremforge_bench_admin database
  python bench/admin_bench.py --scans 5000 --findings-per-scan 10   # a quick run

PostgreSQL is reached on loopback only. The table is printed and written as JSON to bench/out/admin-<backend>.json.
Exit 0 when every measurement meets the target, 1 otherwise.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import html
import itertools
import json
import random
import re
import secrets
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa
from common import (  # before `app`: importing common puts the repository root on sys.path
    bench_parser,
    bulk,
    check_pg_url,
    finding_pool,
    forget_app_settings,
    in_app,
    machine_state,
    move_chain_head,
    print_load,
    seeding_connection,
    temp_dir,
    throwaway_databases,
    utc_now,
    write_out,
)
from flask import Flask
from flask.testing import FlaskClient

from app import fields
from app.findings import store

ORG = "acme"
SECTION = f"/admin/orgs/{ORG}/code-security/image-scanning"
PG_DATABASES = {"admin": "fremforge_bench_admin"}  # SQLite: admin.db in the temp dir
TARGET_MS = 150.0  # server time per page, at p95
PAGE = 50  # the scans page's size (app.admin.views.SCANS_PER_PAGE)
WARM_UP = 2  # untimed requests per measurement
FINDINGS_BATCH = 50_000  # rows per store.insert call
FINDINGS_PER_TRANSACTION = 1_000_000
COMPONENTS = ("api", "web", "worker", "migrate", "cron")


# ---------------------------------------------------------------- the data to seed


@dataclass(frozen=True)
class Scan:
    """One planned scan_runs row; its findings are the pool's entries [start, start + findings_per_scan)."""

    id: int
    repo: str
    sha: str
    image: str
    pr: int | None
    status: str
    block_action: str
    dirty: bool  # which finding pool
    start: int
    created_at: datetime
    signature: tuple[str, str | None, str | None]


@dataclass
class Plan:
    scans: list[Scan]
    findings_per_scan: int
    pools: dict[bool, list[tuple[Any, ...]]]  # dirty? -> finding payloads (cve_id ... synthetic), doubled
    window: dict[bool, list[tuple[tuple[int, ...], int]]]  # dirty? -> per start: (severity counts, fixable)
    retired: list[str]  # repos with scans only in the oldest 5% of the history

    def counts(self, s: Scan) -> tuple[tuple[int, ...], int]:
        return self.window[s.dirty][s.start]


SEVERITY_INDEX = {s: i for i, s in enumerate(("critical", "high", "medium", "low", "unknown"))}


def sliding_counts(pool: list[tuple[Any, ...]], k: int) -> list[tuple[tuple[int, ...], int]]:
    """For each start in the pool, the severity counts and the fixable count of its k findings (wrapping)."""
    n = len(pool)
    out = []
    counts = [0] * 5
    fixable = 0
    for row in pool[:k]:
        counts[SEVERITY_INDEX[row[1]]] += 1
        fixable += row[4] is not None
    for start in range(n):
        out.append((tuple(counts), fixable))
        gone, new = pool[start], pool[(start + k) % n]
        counts[SEVERITY_INDEX[gone[1]]] -= 1
        fixable -= gone[4] is not None
        counts[SEVERITY_INDEX[new[1]]] += 1
        fixable += new[4] is not None
    return out


def repo_names(n: int) -> list[str]:
    return [f"acme/service-{i:03d}" for i in range(n)]


def plan_scans(n: int, k: int, repos: int, seed: int, end: datetime = datetime(2026, 1, 1)) -> Plan:
    """The history of an org: `n` scans over `repos` repositories, oldest first (so ids grow with time), three
    minutes apart up to `end`.

    Repositories are busy in a Zipf-like way; a few stopped early (retired), so their scans all sit at the
    oldest ids. A commit scans each of its repo's 1-5 images; 5% of images get scanned again (a re-run).
    60% of commits belong to a pull request (1-4 commits each, numbered per repo); the others are on main,
    whose images carry the tag `:main` (so one image reference has many scans). The first 30% of the history
    ran under block action warn, the next 2% under none (skipped), the rest under block_pull, where an image
    with a high or critical finding fails. Half the images have no high or critical finding.
    """
    rng = random.Random(seed)
    size = max(2000, 2 * k)
    pools = {dirty: finding_pool(rng, size, dirty) for dirty in (False, True)}
    window = {dirty: sliding_counts(pool, k) for dirty, pool in pools.items()}
    pools = {dirty: pool + pool for dirty, pool in pools.items()}  # a window may wrap around the end

    names = repo_names(repos)
    cum_weights = list(itertools.accumulate(1 / (i + 1) ** 0.8 for i in range(repos)))
    retired = set(names[10 : 10 + max(1, repos // 40)])  # moderately busy ones, so they have scans
    components = {r: COMPONENTS[: rng.randint(1, len(COMPONENTS))] for r in names}
    prs: dict[str, list[int]] = {r: [0, 0] for r in names}  # last number, commits left in the open one
    commits = Counter[str]()
    start_time = end - timedelta(minutes=3 * n)
    scans: list[Scan] = []
    while len(scans) < n:
        repo = rng.choices(names, cum_weights=cum_weights)[0]
        if repo in retired and len(scans) > n // 20:
            continue
        pr_state = prs[repo]
        if pr_state[1] > 0:
            pr_state[1] -= 1
            pr: int | None = pr_state[0]
        elif rng.random() < 0.6:
            pr_state[0] += 1
            pr_state[1] = rng.randint(0, 3)
            pr = pr_state[0]
        else:
            pr = None
        commits[repo] += 1
        sha = hashlib.sha1(f"{repo}@{commits[repo]}".encode()).hexdigest()
        progress = len(scans) / n
        action = "warn" if progress < 0.30 else "none" if progress < 0.32 else "block_pull"
        for comp in components[repo]:
            image = f"ghcr.io/{repo}/{comp}:{'main' if pr is None else sha}"
            for _ in range(2 if rng.random() < 0.05 else 1):
                if len(scans) >= n:
                    break
                dirty = rng.random() < 0.5
                start = rng.randrange(size)
                crit_high = sum(window[dirty][start][0][:2])
                status = {"warn": "success", "none": "skipped"}.get(action) or ("failure" if crit_high else "success")
                sig = rng.random()
                signature = (
                    ("signed", "https://token.actions.githubusercontent.com", f"https://github.com/{repo}/")
                    if sig < 0.5
                    else ("unsigned", None, None)
                    if sig < 0.6
                    else ("unknown", None, None)
                )
                scans.append(
                    Scan(
                        id=len(scans) + 1,
                        repo=repo,
                        sha=sha,
                        image=image,
                        pr=pr,
                        status=status,
                        block_action=action,
                        dirty=dirty,
                        start=start,
                        created_at=start_time + timedelta(minutes=3 * len(scans), seconds=rng.randint(0, 170)),
                        signature=signature,
                    )
                )
    return Plan(scans, k, pools, window, sorted(retired))


# ---------------------------------------------------------------- seeding (below the ORM)


def stamp(dialect: str, value: datetime) -> Any:
    return store.sqlite_datetime(value) if dialect == "sqlite" else value


SCAN_COLUMNS = (  # noqa: SIM905
    "id org_id image_ref image_name commit_sha repo_full_name signature_status signature_issuer signature_subject "
    "pr_number status block_action critical high medium low unknown fixable accepted duplicates "
    "created_at"
).split()
OUTBOX_COLUMNS = (  # noqa: SIM905
    "org_id scan_run_id repo_full_name commit_sha state commit_status check_run status_posted "
    "check_posted attempts next_attempt_at last_status_code last_error created_at delivered_at"
).split()


def scan_rows(plan: Plan, org_id: int, dialect: str) -> Iterator[tuple[Any, ...]]:
    k = plan.findings_per_scan
    for s in plan.scans:
        counts, fixable = plan.counts(s)
        yield (
            s.id, org_id, s.image, fields.image_name(s.image), s.sha, s.repo, *s.signature, s.pr, s.status,
            s.block_action, *counts, fixable, k, 0, stamp(dialect, s.created_at),
        )  # fmt: skip


def description(counts: tuple[int, ...]) -> str:
    found = [f"{n} {sev}" for sev, n in zip(SEVERITY_INDEX, counts, strict=True) if n and sev != "unknown"]
    return ", ".join(found) + " found" if found else "No vulnerabilities found"


def outbox_rows(plan: Plan, org_id: int, dialect: str) -> Iterator[tuple[Any, ...]]:
    """A wish per judged scan, as ingest stores it: the oldest 10% before the GitHub App was installed
    (not_delivered), the newest 200 pending, 2% superseded, 1% failed, the rest delivered."""
    n = len(plan.scans)
    rng = random.Random(7)
    for s in plan.scans:
        if s.status == "skipped":
            continue  # block action none: nothing to post, no wish
        counts, _ = plan.counts(s)
        state = "success" if s.status == "success" else "failure"
        desc = description(counts)
        target = f"https://fremforge.example{SECTION}/commits/{s.sha}?repo={s.repo.replace('/', '%2F')}"
        commit_status = {"state": state, "description": desc, "context": "fremforge/image-scan", "target_url": target}
        summary = f"**{desc}** (policy: `{s.block_action}`)\n\n### `{s.image}`\n\n" + "| Critical | High |\n" * 20
        check_run = {
            "name": "fremforge/image-scan",
            "head_sha": s.sha,
            "status": "completed",
            "conclusion": state,
            "external_id": f"{ORG}:{s.repo}@{s.sha}",
            "output": {"title": desc, "summary": summary},
            "details_url": target,
        }
        roll = rng.random()
        made = s.created_at + timedelta(milliseconds=5)
        if s.id <= n // 10:
            row = ("not_delivered", False, 0, None, None, "no GitHub App configured", None)
        elif s.id > n - 200:
            row = ("pending", False, 0, made, None, None, None)
        elif roll < 0.02:
            row = ("superseded", False, 0, made, None, None, None)
        elif roll < 0.03:
            row = ("failed", False, 7, None, 422, "422 Unprocessable Entity: No commit found for SHA", None)
        else:
            row = ("delivered", True, 1, None, 201, None, made + timedelta(seconds=2))
        wish, posted, attempts, next_at, code, error, delivered = row
        yield (
            org_id, s.id, s.repo, s.sha, wish, json.dumps(commit_status), json.dumps(check_run), posted, posted,
            attempts, next_at and stamp(dialect, next_at), code, error, stamp(dialect, made),
            delivered and stamp(dialect, delivered),
        )  # fmt: skip


def finding_rows(plan: Plan, org_id: int, dialect: str, scans: Sequence[Scan], seq: int, prev: bytes):
    """The findings of `scans`, chained on from (seq, prev); returns (rows, last seq, last chain hash)."""
    sha256 = hashlib.sha256
    k = plan.findings_per_scan
    rows = []
    for s in scans:
        created = stamp(dialect, s.created_at)
        for payload in plan.pools[s.dirty][s.start : s.start + k]:
            seq += 1
            ph = sha256(b"fremforge/bench/finding\n" + seq.to_bytes(8, "big")).digest()
            prev = sha256(prev + ph).digest()
            # truncated, and the gate flags (blocking, new, exception_id): NULL
            rows.append((org_id, s.id, seq, ph.hex(), prev.hex(), created, *payload, None, None, None, None))
    return rows, seq, prev


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def seed(url: str, org_id: int, plan: Plan, stats: bool = True) -> dict[str, float]:
    """Insert the plan's scans, outbox wishes and findings; move the chain head; ANALYZE. Seconds per step."""
    took: dict[str, float] = {}
    with seeding_connection(url) as conn:
        dialect = conn.dialect.name
        t = time.perf_counter()
        with conn.begin():
            bulk(conn, "scan_runs", SCAN_COLUMNS, list(scan_rows(plan, org_id, dialect)))
        took["scan_runs"] = time.perf_counter() - t

        t = time.perf_counter()
        with conn.begin():
            for part in chunks(list(outbox_rows(plan, org_id, dialect)), 20_000):
                bulk(conn, "outbox", OUTBOX_COLUMNS, part)
        took["outbox"] = time.perf_counter() - t

        t = time.perf_counter()
        seq, prev = 0, bytes(32)
        per_batch = max(1, FINDINGS_BATCH // plan.findings_per_scan)
        per_transaction = max(1, FINDINGS_PER_TRANSACTION // FINDINGS_BATCH)
        batches = list(chunks(plan.scans, per_batch))
        for group in chunks(batches, per_transaction):
            with conn.begin():
                for batch in group:
                    rows, seq, prev = finding_rows(plan, org_id, dialect, batch, seq, prev)
                    store.insert(conn, rows, len(rows), None)  # the head is moved at the end
            print(f"  findings: {seq:,} rows, {time.perf_counter() - t:.0f}s", flush=True)
        took["findings"] = time.perf_counter() - t

        with conn.begin():
            move_chain_head(conn, org_id, seq, prev.hex())
        if stats:
            t = time.perf_counter()
            analyze(conn)
            took["analyze"] = time.perf_counter() - t
    return took


def analyze(conn: sa.Connection) -> None:
    if conn.dialect.name == "postgresql":
        # VACUUM as autovacuum would have by now (visibility map for index-only scans), and ANALYZE.
        conn.commit()
        conn.execution_options(isolation_level="AUTOCOMMIT")  # the seeding connection is closed right after
        conn.exec_driver_sql("VACUUM (ANALYZE)")
    else:
        conn.exec_driver_sql("ANALYZE")
        conn.commit()


# ---------------------------------------------------------------- the app, in-process


def make_app(url: str, instance: Path, revision: str = "head") -> tuple[Flask, int]:
    """The app on `url`, migrated to `revision` (db upgrade), with the org; returns the app and the org's id."""
    from app import create_app, migrate, orgs

    app = create_app({"DATABASE_URL": url, "SECRET_KEY": secrets.token_urlsafe(32)})
    app.instance_path = str(instance)
    migrate.upgrade(app, revision)
    org_id = in_app(app, lambda s: orgs.create(s, ORG).id)
    app.extensions["fremforge.db"].engine.dispose()  # seeding wants the database to itself
    return app, org_id


def signed_in_client(app: Flask) -> FlaskClient:
    """A test client signed in to the org's admin pages as a browser is: through a one-time login link."""
    from app import orgs
    from app.admin import login_links

    token = in_app(app, lambda s: login_links.create(s, orgs.by_slug(s, ORG), actor="bench").token)
    client = app.test_client()
    client.get(f"/admin/login/link/{token}")  # the link's page (a button) gives the session its CSRF token
    with client.session_transaction() as cookie:
        csrf = cookie["csrf"]
    resp = client.post(f"/admin/login/link/{token}", data={"csrf_token": csrf})
    if resp.status_code != 303:
        raise RuntimeError(f"signing in answered {resp.status_code}: {resp.get_data(as_text=True)[:300]}")
    return client


class Statements:
    """Every SQL statement the app's engine runs: (statement, parameters, seconds)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.log: list[tuple[str, Any, float]] = []
        sa.event.listen(engine, "before_cursor_execute", self._before)
        sa.event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        conn.info["bench_t"] = time.perf_counter()

    def _after(self, conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        self.log.append((statement, params, time.perf_counter() - conn.info.pop("bench_t")))

    def take(self) -> list[tuple[str, Any, float]]:
        out, self.log = self.log, []
        return out


# ---------------------------------------------------------------- the measurements


@dataclass
class Case:
    name: str
    path: str  # the page, before any cursor following
    expect_rows: int | None  # scans (or findings, on a scan page) on the measured page; None: not checked
    follow: int = 0  # follow the "Older" link this many times first; the page reached is the one measured
    kind: str = "scans"  # scans | detail


@dataclass
class Result:
    case: Case
    url: str
    times_ms: list[float] = field(default_factory=list)
    statements: list[int] = field(default_factory=list)
    rows: int = 0  # scans shown (findings, on a scan page)
    errors: list[str] = field(default_factory=list)
    main_sql: str = ""  # the page's main query: the scans list, or the scan's findings
    plan: str = ""

    @property
    def p50(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def p95(self) -> float:
        ordered = sorted(self.times_ms)
        return ordered[max(0, -(-len(ordered) * 95 // 100) - 1)]

    @property
    def passed(self) -> bool:
        return not self.errors and self.p95 <= TARGET_MS


def scans_url(**params: Any) -> str:
    query = {k: v for k, v in params.items() if v is not None}
    return SECTION + ("?" + urlencode(query) if query else "")


def matching(plan: Plan, **f: Any) -> list[Scan]:
    keys = {"repo": "repo", "image": "image", "commit": "sha", "pr": "pr", "status": "status"}
    return [s for s in plan.scans if all(getattr(s, keys[k]) == v for k, v in f.items())]


def page_rows(found: list[Scan], follow: int = 0) -> int:
    return max(0, min(PAGE, len(found) - follow * PAGE))


def build_cases(plan: Plan, deep: int) -> list[Case]:
    """The pages to time: the first, a deep one, each filter alone and some together, the worst cases."""
    scans = plan.scans
    by_repo = Counter(s.repo for s in scans)
    busiest = by_repo.most_common(1)[0][0]
    quiet = max(plan.retired, key=lambda r: by_repo[r])
    main_images = Counter(s.image for s in scans if s.image.endswith(":main") and s.repo == busiest)
    main_image = main_images.most_common(1)[0][0] if main_images else scans[-1].image
    recent = next(s for s in reversed(scans) if s.pr is not None and s.repo == busiest)
    commit_scans = Counter(s.sha for s in scans)
    sha = max((s for s in scans[-5000:]), key=lambda s: commit_scans[s.sha]).sha
    commit_repo = next(s.repo for s in scans if s.sha == sha)
    one_image = next(s.image for s in reversed(scans) if s.pr is not None and s.repo != busiest)
    common_pr = 3
    nowhere = "0" * 40
    failures = matching(plan, status="failure")
    fail_follow = min(10, (len(failures) - 1) // PAGE)  # page 11, or the last page of a small run
    cases = [
        Case("first page", scans_url(), page_rows(scans)),
        Case(f"deep page (page {deep + 1})", scans_url(), page_rows(scans, deep), follow=deep),
        Case("oldest page (cursor at id 31)", scans_url(cursor=_cursor(31)), 30),
        Case("repo (busiest)", scans_url(repo=busiest), page_rows(matching(plan, repo=busiest))),
        Case("repo (retired early: old ids only)", scans_url(repo=quiet), page_rows(matching(plan, repo=quiet))),
        Case("image (:main tag, many scans)", scans_url(image=main_image), page_rows(matching(plan, image=main_image))),
        Case("image (one commit's image)", scans_url(image=one_image), page_rows(matching(plan, image=one_image))),
        Case("commit (full SHA)", scans_url(commit=sha), page_rows(matching(plan, commit=sha))),
        Case("commit (no scan of it)", scans_url(commit=nowhere), 0),
        Case(f"pr #{common_pr} (in many repos)", scans_url(pr=common_pr), page_rows(matching(plan, pr=common_pr))),
        Case("pr (no such number)", scans_url(pr=999_999), 0),
        Case("status=failure", scans_url(status="failure"), page_rows(failures)),
        Case("status=skipped (2%, old)", scans_url(status="skipped"), page_rows(matching(plan, status="skipped"))),
        Case(
            f"status=failure, deep page (page {fail_follow + 1})",
            scans_url(status="failure"),
            page_rows(failures, fail_follow),
            follow=fail_follow,
        ),
        Case(
            "repo + status=failure",
            scans_url(repo=busiest, status="failure"),
            page_rows(matching(plan, repo=busiest, status="failure")),
        ),
        Case(
            f"repo + pr #{recent.pr}",
            scans_url(repo=busiest, pr=recent.pr),
            page_rows(matching(plan, repo=busiest, pr=recent.pr)),
        ),
        Case(
            "repo + commit",
            scans_url(repo=commit_repo, commit=sha),
            page_rows(matching(plan, repo=commit_repo, commit=sha)),
        ),
        Case(
            "image + status=failure",
            scans_url(image=main_image, status="failure"),
            page_rows(matching(plan, image=main_image, status="failure")),
        ),
        Case(
            f"pr #{common_pr} + status=failure",
            scans_url(pr=common_pr, status="failure"),
            page_rows(matching(plan, pr=common_pr, status="failure")),
        ),
        Case(
            "repo + image + status + pr (no match)",
            scans_url(repo=busiest, image=main_image, status="skipped", pr=1),
            0,
        ),
    ]
    k = plan.findings_per_scan
    shown = min(k, FINDINGS_PAGE)
    cases += [
        Case(f"scan detail ({k} findings, newest scan)", f"{SECTION}/scans/{scans[-1].id}", shown, kind="detail"),
        Case(f"scan detail ({k} findings, oldest scan)", f"{SECTION}/scans/{scans[0].id}", shown, kind="detail"),
    ]
    return cases


def _cursor(scan_id: int) -> str:
    from app.findings.queries import encode_cursor

    return encode_cursor(scan_id)


NEXT_LINK = re.compile(r'<a href="([^"]+)" rel="next">')
SCAN_ROW = '<th scope="row" class="image">'
FINDING_ROW = '<th scope="row" class="advisory">'
FINDINGS_PAGE = 500  # findings per scan page (app.admin.views.FINDINGS_PER_PAGE)


def get(client: FlaskClient, stmts: Statements, url: str) -> tuple[float, list[tuple[str, Any, float]], int, str]:
    """One request: (server seconds, its statements, status, body)."""
    stmts.take()
    t = time.perf_counter()
    resp = client.get(url)
    body = resp.get_data(as_text=True)
    elapsed = time.perf_counter() - t
    return elapsed, stmts.take(), resp.status_code, body


def run_case(client: FlaskClient, stmts: Statements, case: Case, requests: int) -> Result:
    url = case.path
    result = Result(case, url)
    for _ in range(case.follow):
        _, _, status, body = get(client, stmts, url)
        found = NEXT_LINK.search(body)
        if status != 200 or not found:
            result.errors.append(f"following the cursor: status {status}, next link {'found' if found else 'missing'}")
            return result
        url = html.unescape(found.group(1))
    result.url = url
    log: list[tuple[str, Any, float]] = []
    for i in range(WARM_UP + requests):
        elapsed, log, status, body = get(client, stmts, url)
        if status != 200:
            result.errors.append(f"status {status}")
            return result
        if i >= WARM_UP:
            result.times_ms.append(1000 * elapsed)
            result.statements.append(len(log))
    result.rows = body.count(SCAN_ROW if case.kind == "scans" else FINDING_ROW)
    if case.expect_rows is not None and result.rows != case.expect_rows:
        result.errors.append(f"{result.rows} scans shown, {case.expect_rows} expected")
    statement, params = main_statement(log, case.kind)
    result.main_sql = " ".join(statement.split())
    result.plan = explain(client.application, statement, params)
    return result


def main_statement(log: list[tuple[str, Any, float]], kind: str) -> tuple[str, Any]:
    """The statement whose plan matters: the scans query of a list page, the findings query of a scan page."""
    marker = "FROM scan_runs" if kind == "scans" else "FROM findings"
    found = [(stmt, params) for stmt, params, _ in log if marker in stmt and "ORDER BY" in stmt]
    return found[0] if found else max(log, key=lambda entry: entry[2])[:2]


def explain(app: Flask, statement: str, params: Any) -> str:
    """The plan of a statement the page ran (PostgreSQL: EXPLAIN ANALYZE, BUFFERS; SQLite: EXPLAIN QUERY PLAN)."""
    engine: sa.Engine = app.extensions["fremforge.db"].engine
    if engine.dialect.name == "postgresql":
        prefix, pick = "EXPLAIN (ANALYZE, BUFFERS) ", 0
    else:
        prefix, pick = "EXPLAIN QUERY PLAN ", 3
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(prefix + statement, params).all()
        return "\n".join(str(r[pick]) for r in rows)
    except Exception as exc:  # a plan is information only
        return f"(no plan: {exc})"


def statements_check(results: list[Result]) -> tuple[bool, str]:
    """Scans pages run a fixed number of statements whatever they show: with rows, one more only where a shown
    outbox item is not on GitHub yet (what GitHub still shows is then looked up, once for the page); a page without
    rows at most as many."""
    full = {n for r in results if r.case.kind == "scans" and r.rows for n in r.statements}
    empty = {n for r in results if r.case.kind == "scans" and not r.rows for n in r.statements}
    ok = bool(full) and max(full) - min(full) <= 1 and all(n <= min(full) for n in empty)
    text = f"{sorted(full)} with scans, {sorted(empty) or '-'} without"
    return ok, text


# ---------------------------------------------------------------- report


def print_table(backend: str, results: list[Result], stmt_ok: bool, stmt_text: str) -> None:
    head = f"{'backend':<11}{'measurement':<44}{'p50 ms':>8}{'p95 ms':>8}{'max ms':>8}{'stmts':>7}"
    head += f"{'rows':>6}  result"
    print("\n" + head + "\n" + "-" * len(head))
    for r in results:
        if not r.times_ms:
            print(f"{backend:<11}{r.case.name:<44}{'':>37}  MISS ({'; '.join(r.errors)})")
            continue
        stmts = ",".join(str(n) for n in sorted(set(r.statements)))
        verdict = "PASS" if r.passed else "MISS"
        note = f" ({'; '.join(r.errors)})" if r.errors else ""
        print(
            f"{backend:<11}{r.case.name:<44}{r.p50:>8.1f}{r.p95:>8.1f}{max(r.times_ms):>8.1f}"
            f"{stmts:>7}{r.rows:>6}  {verdict}{note}"
        )
    print(f"{backend:<11}{'statements per scans page':<44}{stmt_text:>37}  {'PASS' if stmt_ok else 'MISS'}")
    for r in results:
        if r.times_ms and not r.passed:
            plan = r.plan.replace("\n", "\n    ")
            print(f"\n{r.case.name}: main query\n  {r.main_sql}\n  plan:\n    {plan}")


def write_json(
    backend: str, args: argparse.Namespace, seeded: dict[str, Any], results: list[Result], stmt: tuple[bool, str]
) -> Path:
    doc = {
        "backend": backend,
        "when": utc_now(),
        "target_ms": TARGET_MS,
        "settings": {
            "scans": args.scans,
            "findings_per_scan": args.findings_per_scan,
            "repos": args.repos,
            "requests": args.requests,
            "warm_up": WARM_UP,
            "seed": args.seed,
            "analyzed": not args.no_analyze,
            **machine_state(),
        },
        "seeding": seeded,
        "statements_per_page": {"pass": stmt[0], "counts": stmt[1]},
        "rows": [
            {
                "measurement": r.case.name,
                "url": r.url,
                "p50_ms": r.p50 if r.times_ms else None,
                "p95_ms": r.p95 if r.times_ms else None,
                "pass": r.passed if r.times_ms else False,
                "scans_shown": r.rows,
                "expected_scans": r.case.expect_rows,
                "statements": sorted(set(r.statements)),
                "errors": r.errors,
                "times_ms": r.times_ms,
                "main_statement": r.main_sql,
                "plan": r.plan,
            }
            for r in results
        ],
    }
    return write_out(f"admin-{backend}.json", doc)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = bench_parser(__doc__)
    ap.add_argument("--scans", type=int, default=100_000, help="scans to seed (default 100,000)")
    ap.add_argument("--findings-per-scan", type=int, default=50, help="findings per scan (default 50)")
    ap.add_argument("--repos", type=int, default=200, help="repositories the scans are spread over (default 200)")
    ap.add_argument("--requests", type=int, default=20, help="timed requests per measurement (default 20)")
    ap.add_argument("--deep-pages", type=int, default=50, help="cursor links to follow for the deep page")
    ap.add_argument("--seed", type=int, default=1, help="random seed of the generated history")
    ap.add_argument(
        "--no-analyze",
        action="store_true",
        help="skip ANALYZE after seeding: the planner as on a database that never had statistics gathered",
    )
    args = ap.parse_args(argv)
    if not 1_000 <= args.scans <= 2_000_000:
        ap.error("--scans must be between 1000 and 2000000")
    if not 1 <= args.findings_per_scan <= 1_000:
        ap.error("--findings-per-scan must be between 1 and 1000")
    if not 40 <= args.repos <= 10_000 or args.repos > args.scans // 5:
        ap.error("--repos must be between 40 and 10000, and at most a fifth of --scans")
    if not 1 <= args.requests <= 1_000:
        ap.error("--requests must be between 1 and 1000")
    args.deep_pages = max(1, min(args.deep_pages, args.scans // PAGE - 2))
    check_pg_url(args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    forget_app_settings()
    with (
        temp_dir(f"fremforge-bench-admin-{args.database}-") as tmp,
        throwaway_databases(args.database, args.pg_url, tmp, PG_DATABASES) as urls,
    ):
        print_load(args.database, f"work dir {tmp}")
        app, org_id = make_app(urls["admin"], tmp / "instance")
        try:
            return run(args, app, org_id, urls["admin"])
        finally:
            app.extensions["fremforge.db"].engine.dispose()


def run(args: argparse.Namespace, app: Flask, org_id: int, url: str) -> int:
    """Seed the org, time every page; the table and the JSON; 0 when every page meets the target, else 1."""
    backend = args.database
    t = time.perf_counter()
    plan = plan_scans(args.scans, args.findings_per_scan, args.repos, args.seed)
    planned = time.perf_counter() - t
    total = len(plan.scans) * plan.findings_per_scan
    print(f"[{backend}] planned {len(plan.scans):,} scans in {planned:.1f}s; seeding {total:,} findings")
    t = time.perf_counter()
    took = seed(url, org_id, plan, stats=not args.no_analyze)
    seeded = {
        "plan_seconds": planned,
        "seconds": time.perf_counter() - t,
        "steps": took,
        "scans": len(plan.scans),
        "findings": total,
        "outbox": sum(1 for s in plan.scans if s.status != "skipped"),
        "statuses": dict(Counter(s.status for s in plan.scans)),
        "commits": len({(s.repo, s.sha) for s in plan.scans}),
    }
    print(
        f"[{backend}] seeded in {seeded['seconds']:.0f}s "
        f"({', '.join(f'{k} {v:.1f}s' for k, v in took.items())}); statuses {seeded['statuses']}",
        flush=True,
    )

    # The plan's objects stay alive for the checks; keep them out of the collector's way, or a full collection
    # (about 100 ms over them) lands in some request's time, which a server without them would not pay.
    gc.collect()
    gc.freeze()
    stmts = Statements(app.extensions["fremforge.db"].engine)
    client = signed_in_client(app)
    results = []
    for case in build_cases(plan, args.deep_pages):
        results.append(run_case(client, stmts, case, args.requests))
        r = results[-1]
        timing = f"p50 {r.p50:.1f} ms, p95 {r.p95:.1f} ms" if r.times_ms else "no timing"
        print(f"  {case.name}: {timing} {'; '.join(r.errors)}", flush=True)

    stmt_ok, stmt_text = statements_check(results)
    print_table(backend, results, stmt_ok, stmt_text)
    print(f"\nseeding: {seeded['seconds']:.0f}s for {len(plan.scans):,} scans and {total:,} findings")
    print(f"written: {write_json(backend, args, seeded, results, (stmt_ok, stmt_text))}")
    return 0 if stmt_ok and all(r.times_ms and r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
