#!/usr/bin/env python3
"""Insights benchmark: advisory search, images now and the trend on a big database (100,000 scans, 5,000,000
findings), through the API and the admin pages.

Target (issue 17): with 100,000 scans and 5,000,000 findings stored, the advisory search and the images-now page
answer in under 150 ms of server time (p95) with a fixed number of SQL statements; the trend for an org in under
300 ms. The scans page, which now draws the org's trend, keeps its own target (150 ms, bench/admin_bench.py).

The history is admin_bench's (one org, --scans over --repos repositories, each with 1-5 images, three minutes
apart up to an hour ago, so the trend's 90 days hold about 43,000 scans): seeded below the ORM on a database
migrated to 0018, then migrated to head, so migration 0019 derives every image's latest scan and the org's trend
changes from the scans as it would on a real database (its time is reported). Times are wall times of requests
through the Flask test client, in-process, after warm-up; statements are counted with an engine event.

The API searches are measured twice: with every image's latest scan in the search's index (as migration 0020
leaves them), and again with none indexed (the worker never ran: the search reads every latest scan's findings).

Checks, independent of the app (from the seeded plan): the search finds exactly the images whose latest scan has
the advisory (as its id or a vendor id), whatever page size; paging gives each hit once; the images list has every
image once with its latest scan; the trend's last day is the sum of the images' latest counts.

  . .venv/bin/activate
  python bench/insights_bench.py                                  # SQLite, a file in a fresh temp dir
  python bench/insights_bench.py --database postgresql \\
      --pg-url postgresql://postgres@127.0.0.1:5432/postgres     # a throwaway fremforge_bench_insights database
  python bench/insights_bench.py --scans 5000                     # a quick run

The table is printed and written as JSON to bench/out/insights-<backend>.json. Exit 0 when every measurement meets
its target and every check passes, 1 otherwise.
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from admin_bench import SECTION, Plan, Scan, Statements, make_app, plan_scans, seed, signed_in_client
from common import (
    bench_parser,
    check_pg_url,
    forget_app_settings,
    in_app,
    machine_state,
    print_load,
    temp_dir,
    throwaway_databases,
    utc_now,
    write_out,
)
from flask import Flask
from flask.testing import FlaskClient

from app import fields

ORG = "acme"
API = f"/api/v1/orgs/{ORG}"
PG_DATABASES = {"insights": "fremforge_bench_insights"}
SEARCH_MS, TREND_MS = 150.0, 300.0
WARM_UP = 2
LEVELS = ("critical", "high", "medium", "low")


# ---------------------------------------------------------------- what the plan says the answers are


@dataclass(frozen=True)
class Truth:
    latest: dict[tuple[str, str], Scan]  # (repo, image name) -> its latest scan
    common: str  # the advisory id most latest scans have (as their own id)
    vendor: str  # a vendor id some latest scans have
    prefix: str  # an id prefix with hits in more than one page

    def hits(self, plan: Plan, q: str) -> set[tuple[int, str]]:
        """(scan id, finding's own id) of every finding of a latest scan that has `q` (exact, or prefix with *)."""
        prefix = q.endswith("*")
        text = q.rstrip("*").upper()

        def has(advisory: str) -> bool:
            return advisory.upper().startswith(text) if prefix else advisory.upper() == text

        found = set()
        for s in self.latest.values():
            for row in findings_of(plan, s):
                if has(row[0]) or any(has(v) for v in json.loads(row[9])):
                    found.add((s.id, row[0]))
        return found

    def totals(self, plan: Plan) -> tuple[int, ...]:
        return tuple(sum(plan.counts(s)[0][i] for s in self.latest.values()) for i in range(len(LEVELS)))


def findings_of(plan: Plan, s: Scan) -> list[tuple[Any, ...]]:
    return plan.pools[s.dirty][s.start : s.start + plan.findings_per_scan]


def truth_of(plan: Plan) -> Truth:
    latest: dict[tuple[str, str], Scan] = {}
    for s in plan.scans:  # oldest first: the last one wins
        latest[(s.repo, fields.image_name(s.image))] = s
    own = Counter(row[0] for s in latest.values() for row in findings_of(plan, s))
    vendors = Counter(v for s in latest.values() for row in findings_of(plan, s) for v in json.loads(row[9]))
    years = Counter(row[0][:9] for s in latest.values() for row in findings_of(plan, s))
    return Truth(latest, own.most_common(1)[0][0], vendors.most_common(1)[0][0], years.most_common(1)[0][0] + "*")


# ---------------------------------------------------------------- measuring


@dataclass
class Case:
    name: str
    url: str
    target_ms: float
    kind: str  # search | images | image | trend | page: which statement counts must agree
    check: Any = None  # fn(body) -> error text or None
    times_ms: list[float] = field(default_factory=list)
    statements: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def p95(self) -> float:
        ordered = sorted(self.times_ms)
        return ordered[max(0, -(-len(ordered) * 95 // 100) - 1)]

    @property
    def passed(self) -> bool:
        return bool(self.times_ms) and not self.errors and self.p95 <= self.target_ms


def run_case(client: FlaskClient, stmts: Statements, case: Case, requests: int, headers: dict[str, str]) -> None:
    for i in range(WARM_UP + requests):
        stmts.take()
        t = time.perf_counter()
        resp = client.get(case.url, headers=headers)
        body = resp.get_data()
        elapsed = time.perf_counter() - t
        n = len(stmts.take())
        if resp.status_code != 200:
            case.errors.append(f"status {resp.status_code}: {body[:200]!r}")
            return
        if i >= WARM_UP:
            case.times_ms.append(1000 * elapsed)
            case.statements.append(n)
    if case.check is not None and (problem := case.check(body)):
        case.errors.append(problem)


def api_token(app: Flask) -> str:
    from app import orgs, tokens

    return str(in_app(app, lambda s: tokens.create(s, orgs.by_slug(s, ORG), ["findings:read"], "bench").secret))


def items(body: bytes) -> tuple[list[dict[str, Any]], str | None]:
    doc = json.loads(body)
    listed = next(v for v in doc.values() if isinstance(v, list))
    return listed, doc.get("next_cursor")


def all_pages(client: FlaskClient, url: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    out, cursor = [], None
    while True:
        resp = client.get(url + (("&" if "?" in url else "?") + urlencode({"cursor": cursor}) if cursor else ""),
                          headers=headers)  # fmt: skip
        if resp.status_code != 200:
            raise RuntimeError(f"{url}: {resp.status_code} {resp.get_data()[:200]!r}")
        page, cursor = items(resp.get_data())
        out += page
        if not cursor:
            return out


def search_check(plan: Plan, truth: Truth, q: str) -> Any:
    expected = truth.hits(plan, q)

    def check(body: bytes) -> str | None:
        page, _ = items(body)
        got = {(h["scan_run_id"], h["cve_id"]) for h in page}
        if not got <= expected:
            return f"{len(got - expected)} hits that are not in any latest scan"
        if len(page) < min(len(expected), 50) and len(got) != len(expected):
            return f"{len(got)} hits, {len(expected)} expected"
        return None

    return check


def build_cases(app: Flask, plan: Plan, truth: Truth, page_client: FlaskClient) -> list[Case]:
    common, vendor, prefix = truth.common, truth.vendor, truth.prefix
    latest = max(truth.latest.values(), key=lambda s: s.id)
    image_id = image_id_of(app, latest)
    totals = truth.totals(plan)

    def trend_check(body: bytes) -> str | None:
        last = json.loads(body)["days"][-1]
        got = tuple(last[level] for level in LEVELS)
        return None if got == totals else f"last day {got}, the images' latest counts sum to {totals}"

    def search(q: str) -> Any:
        return search_check(plan, truth, q)

    cases = [
        Case(f"API search {common} (most common)", f"{API}/advisories/{quote(common)}/images", SEARCH_MS, "search",
             search(common)),
        Case(f"API search {vendor} (a vendor id)", f"{API}/advisories/{quote(vendor)}/images", SEARCH_MS, "search",
             search(vendor)),
        Case("API search CVE-1999-0001 (absent)", f"{API}/advisories/CVE-1999-0001/images", SEARCH_MS, "search",
             search("CVE-1999-0001")),
        Case(f"API search {prefix} (prefix)", f"{API}/advisories/{quote(prefix)}/images", SEARCH_MS, "search",
             search(prefix)),
        Case("API images now", f"{API}/images", SEARCH_MS, "images"),
        Case("API images now, one repo", f"{API}/images?repo={quote(latest.repo)}", SEARCH_MS, "images"),
        Case("API one image", f"{API}/images/{image_id}", SEARCH_MS, "image"),
        Case("API org trend (90 days)", f"{API}/trend", TREND_MS, "trend", trend_check),
        Case("API image trend (90 days)", f"{API}/images/{image_id}/trend", TREND_MS, "image trend"),
        Case(f"page: advisories?q={common}", f"{SECTION.replace('<slug>', ORG)}/advisories?q={quote(common)}",
             SEARCH_MS, "page"),
        Case(f"page: advisories?q={prefix}", f"{SECTION.replace('<slug>', ORG)}/advisories?q={quote(prefix)}",
             SEARCH_MS, "page"),
        Case("page: images now", f"{SECTION.replace('<slug>', ORG)}/images", SEARCH_MS, "page"),
        Case("page: one image (with its trend)", f"{SECTION.replace('<slug>', ORG)}/images/{image_id}", TREND_MS,
             "page"),
        Case("page: scans (with the org's trend)", SECTION.replace("<slug>", ORG), SEARCH_MS, "page"),
    ]  # fmt: skip
    return cases


def worker_behind_cases(cases: list[Case]) -> list[Case]:
    """The API searches again, measured with no image's latest scan indexed (the worker never ran: the search reads
    every latest scan from its findings), checked against the same truth."""
    return [
        Case(f"{c.name.removeprefix('API search ')}, none indexed", c.url, c.target_ms, c.kind, c.check)
        for c in cases
        if c.name.startswith("API search")
    ]


def forget_indexing(session: Any) -> None:
    import sqlalchemy as sa

    from app.models import Image

    session.execute(sa.update(Image).values(indexed_scan_id=None))  # in_app's transaction commits it


def image_id_of(app: Flask, s: Scan) -> int:
    import sqlalchemy as sa

    from app.models import Image

    name = fields.image_name(s.image)
    return int(in_app(app, lambda session: session.scalar(
        sa.select(Image.id).where(Image.repo_full_name == s.repo, Image.image_name == name))))  # fmt: skip


def paging_checks(client: FlaskClient, headers: dict[str, str], plan: Plan, truth: Truth) -> list[str]:
    """Every page of a prefix search and of the images list: each hit or image once, all of them."""
    problems = []
    hits = all_pages(client, f"{API}/advisories/{quote(truth.prefix)}/images?limit=17", headers)
    keys = [(h["scan_run_id"], h["cve_id"], h.get("package")) for h in hits]
    expected = truth.hits(plan, truth.prefix)
    if len(keys) != len(set(keys)):
        problems.append(f"prefix search paging repeated {len(keys) - len(set(keys))} hits")
    if {(k[0], k[1]) for k in keys} != expected:
        problems.append(f"prefix search paging: {len({(k[0], k[1]) for k in keys})} hits, {len(expected)} expected")
    listed = all_pages(client, f"{API}/images?limit=33", headers)
    got = {(i["repo_full_name"], i["image_name"]): i["scan_run_id"] for i in listed}
    want = {k: s.id for k, s in truth.latest.items()}
    if len(listed) != len(got) or got != want:
        wrong = sum(got.get(k) != v for k, v in want.items())
        problems.append(f"images paging: {len(listed)} listed, {len(want)} images, {wrong} wrong")
    return problems  # fmt: skip


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> Any:
    ap = bench_parser(__doc__)
    ap.add_argument("--scans", type=int, default=100_000, help="scans to seed (default 100,000)")
    ap.add_argument("--findings-per-scan", type=int, default=50, help="findings per scan (default 50)")
    ap.add_argument("--repos", type=int, default=200, help="repositories the scans are spread over (default 200)")
    ap.add_argument("--requests", type=int, default=20, help="timed requests per measurement (default 20)")
    ap.add_argument("--seed", type=int, default=1, help="random seed of the generated history")
    args = ap.parse_args(argv)
    if not 1_000 <= args.scans <= 2_000_000:
        ap.error("--scans must be between 1000 and 2000000")
    if not 40 <= args.repos <= 10_000 or args.repos > args.scans // 5:
        ap.error("--repos must be between 40 and 10000, and at most a fifth of --scans")
    check_pg_url(args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    forget_app_settings()
    with (
        temp_dir(f"fremforge-bench-insights-{args.database}-") as tmp,
        throwaway_databases(args.database, args.pg_url, tmp, PG_DATABASES) as urls,
    ):
        print_load(args.database, f"work dir {tmp}")
        app, org_id = make_app(urls["insights"], tmp / "instance", "0018")  # before images and trend changes
        try:
            return run(args, app, org_id, urls["insights"])
        finally:
            app.extensions["fremforge.db"].engine.dispose()


def run(args: Any, app: Flask, org_id: int, url: str) -> int:
    from app import migrate

    backend = args.database
    end = datetime.utcnow().replace(microsecond=0) - timedelta(hours=1)
    plan = plan_scans(args.scans, args.findings_per_scan, args.repos, args.seed, end=end)
    t = time.perf_counter()
    took = seed(url, org_id, plan, stats=False)
    seeded = time.perf_counter() - t
    t = time.perf_counter()
    migrate.upgrade(app)  # 0019: images and trend changes derived from the seeded scans
    migrated = time.perf_counter() - t
    app.extensions["fremforge.db"].engine.dispose()  # ANALYZE wants the database to itself
    from admin_bench import analyze
    from common import seeding_connection

    with seeding_connection(url) as conn:
        analyze(conn)
    truth = truth_of(plan)
    total = len(plan.scans) * plan.findings_per_scan
    print(f"[{backend}] seeded {len(plan.scans):,} scans, {total:,} findings in {seeded:.0f}s "
          f"({', '.join(f'{k} {v:.0f}s' for k, v in took.items())}); migration 0019 {migrated:.1f}s; "
          f"{len(truth.latest)} images", flush=True)  # fmt: skip

    gc.collect()
    gc.freeze()
    stmts = Statements(app.extensions["fremforge.db"].engine)
    page_client = signed_in_client(app)
    api_client = app.test_client()
    headers = {"Authorization": f"Bearer {api_token(app)}"}
    cases = build_cases(app, plan, truth, page_client)
    behind = worker_behind_cases(cases)
    for case in cases + behind:
        if case is behind[0]:  # the worker far behind: no image's latest scan indexed, every one read from findings
            in_app(app, forget_indexing)
        client, hdrs = (page_client, {}) if case.kind == "page" else (api_client, headers)
        run_case(client, stmts, case, args.requests, hdrs)
        timing = f"p50 {case.p50:.1f} ms, p95 {case.p95:.1f} ms" if case.times_ms else "no timing"
        print(f"  {case.name}: {timing} {'; '.join(case.errors)}", flush=True)
    cases += behind
    problems = paging_checks(api_client, headers, plan, truth)
    by_kind: dict[str, set[int]] = {}
    for case in cases:
        if case.kind != "page":
            by_kind.setdefault(case.kind, set()).update(case.statements)
    fixed = all(len(counts) == 1 for counts in by_kind.values())

    head = f"{'backend':<11}{'measurement':<48}{'p50 ms':>8}{'p95 ms':>8}{'target':>8}{'stmts':>7}  result"
    print("\n" + head + "\n" + "-" * len(head))
    for c in cases:
        stmts_shown = ",".join(str(n) for n in sorted(set(c.statements)))
        if not c.times_ms:
            print(f"{backend:<11}{c.name:<48}{'':>31}  MISS ({'; '.join(c.errors)})")
            continue
        note = f" ({'; '.join(c.errors)})" if c.errors else ""
        print(f"{backend:<11}{c.name:<48}{c.p50:>8.1f}{c.p95:>8.1f}{c.target_ms:>8.0f}{stmts_shown:>7}  "
              f"{'PASS' if c.passed else 'MISS'}{note}")  # fmt: skip
    counts_text = "; ".join(f"{k}: {sorted(v)}" for k, v in by_kind.items())
    print(f"{backend:<11}{'statements per API answer, by kind':<48}{counts_text}  {'PASS' if fixed else 'MISS'}")
    print(f"{backend:<11}{'paging (prefix search, images)':<48}{'; '.join(problems) or 'every item once'}  "
          f"{'MISS' if problems else 'PASS'}")  # fmt: skip
    doc = {
        "backend": backend,
        "when": utc_now(),
        "settings": {"scans": args.scans, "findings_per_scan": args.findings_per_scan, "repos": args.repos,
                     "requests": args.requests, "seed": args.seed, **machine_state()},
        "seeding_seconds": seeded,
        "migration_0019_seconds": migrated,
        "images": len(truth.latest),
        "statements_by_kind": {k: sorted(v) for k, v in by_kind.items()},
        "paging_problems": problems,
        "rows": [{"measurement": c.name, "url": c.url, "p50_ms": c.p50 if c.times_ms else None,
                  "p95_ms": c.p95 if c.times_ms else None, "target_ms": c.target_ms, "pass": c.passed,
                  "statements": sorted(set(c.statements)), "errors": c.errors, "times_ms": c.times_ms}
                 for c in cases],
    }  # fmt: skip
    print(f"written: {write_out(f'insights-{backend}.json', doc)}")
    return 0 if fixed and not problems and all(c.passed for c in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
