#!/usr/bin/env python3
"""Exceptions benchmark: a 10,000-finding upload to an org with 500 active exceptions against one with none.

Measures (issue 15's performance target):
  * a --findings (10,000) finding seed upload (make_trivy.py's report, its Debian findings with DSA vendor ids) to
    org `acme`, which has --exceptions (500) active exceptions, and the same findings to org `plain`, which has none
    (so its uploads skip reading exceptions: its settings row says none can be active); both orgs under block_pull,
    on one database and one app under `gunicorn -w --workers` (2), the two orgs alternating after an untimed round,
    median of --repeat (10) each. Target: acme / plain <= 1.2. (Whichever org goes first in a round is often
    slower, on SQLite most; an even --repeat puts each first equally often.)
  * the exceptions are what an org collects: 7 in 10 name advisories of the upload (most by id, some by a DSA
    vendor id in lower case), unscoped or scoped by package, repository or image pattern, nearly half of those scoped
    so they do not apply here (another package, repository or image); the rest name advisories the upload does not
    have (CVE, GHSA, RUSTSEC, DSA), some scoped. They are created through the API (POST .../exceptions), each an
    audit event, and that time is reported too.
  * checks, after the clock: every answer 202 with every finding accepted and the expected status; each stored scan's
    findings carry an exception_id exactly where the exceptions (matched here, independently of the app) cover them,
    and its blocking count is what is left.

Run from the repository root, with the virtualenv active:
  . .venv/bin/activate
  python bench/exceptions_bench.py                                # SQLite, a fresh temp dir per run
  python bench/exceptions_bench.py --database postgresql \\
      --pg-url postgresql://postgres@127.0.0.1:5432/postgres     # a fresh fremforge_bench_exceptions database

Everything listens on 127.0.0.1 only. The table is printed and written as JSON to bench/out/exceptions-<backend>.json.
Exit 0 when the target is met and every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import fnmatch
import http.client
import json
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from common import (  # importing common puts the repository root on sys.path, for `app`
    HOST,
    REQUEST_TIMEOUT,
    ROOT,
    answer_problem,
    app_env,
    bench_parser,
    check_pg_url,
    commit_sha,
    flask_cli,
    gunicorn,
    healthz_ok,
    machine_state,
    make_trivy,
    print_load,
    seed_findings,
    tail,
    temp_dir,
    throwaway_databases,
    utc_now,
    wait_until,
    write_out,
)

EXCEPTED, PLAIN = "acme", "plain"  # the org with exceptions, and the one without
IMAGE = "registry.example.invalid/shop/api"  # the image name of every upload (make_trivy's artifact; tags differ)
PG_DATABASES = {"bench": "fremforge_bench_exceptions"}
RATIO_BAR = 1.2  # with exceptions / without
CREATE_THREADS = 4  # connections creating the exceptions
BLOCKING = ("critical", "high")  # at or above the default block_threshold


def repo_of(org: str) -> str:
    return f"{org}/api"  # each org's GitHub login is its slug: its repositories are its own


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


# ---------------------------------------------------------------- HTTP


def call(port: int, method: str, path: str, token: str, body: bytes | None = None) -> tuple[int, bytes, float]:
    """One request on a connection of its own: the status, the answer's bytes and the seconds."""
    headers = {"Authorization": f"Bearer {token}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT)
    try:
        start = time.perf_counter()
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, raw, time.perf_counter() - start
    finally:
        conn.close()


def upload_path(org: str) -> str:
    return f"/api/v1/orgs/{org}/image-scans/findings"


def make_token(env: dict[str, str], org: str) -> str:
    """A token of `org` with every scope (`tokens create` prints it alone on its last line)."""
    args = ["tokens", "create", "--org", org, "--name", "exceptions-bench"]
    for scope in ("findings:write", "findings:read", "settings:write"):
        args += ["--scope", scope]
    return flask_cli(env, *args).strip().splitlines()[-1].strip()


# ---------------------------------------------------------------- the findings and the exceptions


def upload_findings(tmp: Path, n: int) -> list[dict[str, Any]]:
    """make_trivy.py's report in the seed shape; every other Debian finding with a DSA vendor id, as Trivy gives
    them for Debian images."""
    findings = seed_findings(make_trivy(n, tmp / "report.json", seed=1))
    for i, f in enumerate(findings):
        if "(debian" in f["target"] and i % 2 == 0:
            f["vendor_ids"] = [f"DSA-{5000 + i}-1"]
    return findings


REASONS = (
    "Not reachable: the vulnerable function is never called by the service.",
    "Vendor states not affected: the package is present but not loaded at runtime.",
    "Mitigated by the network policy; the listener is not exposed.",
    "Fix scheduled with the base image upgrade; risk accepted until then.",
    "False positive: the advisory covers the Windows build only.",
)


def exception_bodies(findings: list[dict[str, Any]], total: int, rng: random.Random) -> list[dict[str, Any]]:
    """`total` exceptions as an org collects them: about half for advisories of this image (some scoped to it, some
    scoped elsewhere), the rest for advisories it does not have."""
    picked = rng.sample(findings, min(len(findings), total))
    with_vendor = [f for f in findings if f.get("vendor_ids")]
    own_repo, own_image = repo_of(EXCEPTED), IMAGE.rsplit("/", 1)[0] + "/*"
    plan: list[tuple[int, Any]] = [  # (share of `total` in thousandths, how one is made from a finding)
        (200, lambda f: {"advisory_id": f["cve_id"]}),
        (120, lambda f: {"advisory_id": f["cve_id"], "package_name": f["package_name"]}),
        (80, lambda f: {"advisory_id": f["cve_id"], "package_name": f["package_name"] + "-dev"}),  # not this one
        (80, lambda f: {"advisory_id": f["cve_id"].lower(), "repo_full_name": own_repo.upper()}),
        (40, lambda f: {"advisory_id": f["cve_id"], "repo_full_name": "acme/web"}),  # another repository
        (80, lambda f: {"advisory_id": f["cve_id"], "image": own_image}),
        (40, lambda f: {"advisory_id": f["cve_id"], "image": "ghcr.io/acme/*"}),  # another image
    ]
    bodies: list[dict[str, Any]] = []
    for share, make in plan:
        for _ in range(total * share // 1000):
            bodies.append(make(picked[len(bodies)]))
    for f in rng.sample(with_vendor, min(len(with_vendor), total * 60 // 1000)):  # by a vendor id
        bodies.append({"advisory_id": f["vendor_ids"][0].lower()})
    kinds = ("CVE", "GHSA", "RUSTSEC", "DSA")
    while len(bodies) < total:  # advisories this image does not have (make_trivy's ids are CVE-YYYY-NNNNNN)
        kind = rng.choice(kinds)
        n = len(bodies)
        advisory = {
            "CVE": f"CVE-{rng.randint(2015, 2025)}-{900_000 + n}",
            "GHSA": f"GHSA-{n:04x}-{rng.getrandbits(16):04x}-{rng.getrandbits(16):04x}",
            "RUSTSEC": f"RUSTSEC-{rng.randint(2019, 2025)}-{n:04d}",
            "DSA": f"DSA-{50_000 + n}-1",  # past the upload's DSA-5000-1 ... DSA-14999-1
        }[kind]
        body: dict[str, Any] = {"advisory_id": advisory}
        scope = rng.random()
        if scope < 0.2:
            body["package_name"] = rng.choice(("openssl", "lodash", "org.yaml:snakeyaml", "libxml2"))
        elif scope < 0.35:
            body["image"] = rng.choice((own_image, "ghcr.io/acme/*", f"{IMAGE}"))
        elif scope < 0.45:
            body["repo_full_name"] = own_repo
        bodies.append(body)
    now = datetime.now(UTC)
    for i, body in enumerate(bodies):
        body["reason"] = REASONS[i % len(REASONS)]
        body["expires_at"] = (now + timedelta(days=rng.randint(7, 360))).strftime("%Y-%m-%dT%H:%M:%SZ")
        if i % 3 == 0:
            body["ticket_url"] = f"https://tickets.example.com/browse/SEC-{1000 + i}"
    rng.shuffle(bodies)
    return bodies


def covered(findings: list[dict[str, Any]], bodies: list[dict[str, Any]], repo: str, image: str) -> list[bool]:
    """Whether some exception covers each finding (spec section 10), worked out here without the app's code: the id
    or a vendor id equal to its advisory id in any letter case, and its package (exact), repository (any case) and
    image pattern (`*` any run of characters) where it names them."""
    by_id: dict[str, list[dict[str, Any]]] = {}
    for b in bodies:
        if b.get("repo_full_name") and b["repo_full_name"].lower() != repo.lower():
            continue
        if b.get("image") and not fnmatch.fnmatchcase(image, b["image"]):  # the patterns hold no ? or [
            continue
        by_id.setdefault(b["advisory_id"].lower(), []).append(b)
    return [
        any(
            b.get("package_name") in (None, f["package_name"])
            for advisory in (f["cve_id"], *(f.get("vendor_ids") or ()))
            for b in by_id.get(advisory.lower(), ())
        )
        for f in findings
    ]


def blocking_count(findings: list[dict[str, Any]], cover: list[bool]) -> int:
    """How many findings block under block_pull with the default policy: high or critical (ignore_unfixed is off, so
    fixed or not), and not covered."""
    return sum(1 for f, c in zip(findings, cover, strict=True) if not c and f["severity"].lower() in BLOCKING)


# ---------------------------------------------------------------- the run


@dataclass
class Upload:
    org: str
    round: int  # 0: the untimed round
    sha: str
    body: bytes = b""
    seconds: float = float("nan")
    answer: dict[str, Any] | None = None


def upload_order(repeat: int) -> list[tuple[str, int]]:
    """(org, round) per upload: an untimed round 0, then `repeat` rounds, each in the other order from the last, so a
    drift of the machine weighs on both alike."""
    order = [(EXCEPTED, 0), (PLAIN, 0)]
    for r in range(1, repeat + 1):
        order += [(org, r) for org in ((EXCEPTED, PLAIN) if r % 2 else (PLAIN, EXCEPTED))]
    return order


def create_exceptions(port: int, token: str, bodies: list[dict[str, Any]], problems: Problems) -> float:
    """POST every exception to acme, CREATE_THREADS at a time; each must be 201. The wall time."""
    path = f"/api/v1/orgs/{EXCEPTED}/exceptions"

    def one(body: dict[str, Any]) -> None:
        status, raw, _ = call(port, "POST", path, token, json.dumps(body).encode())
        if status != 201:
            problems.add(f"POST {path} {body['advisory_id']}: {status} {raw[:200]!r}")

    start = time.perf_counter()
    with ThreadPoolExecutor(CREATE_THREADS) as pool:
        list(pool.map(one, bodies))
    return time.perf_counter() - start


def list_active(port: int, token: str) -> tuple[int, float]:
    """How many exceptions of acme the API lists as active (pages of 1000), and the seconds it took."""
    total, cursor, seconds = 0, None, 0.0
    while True:
        query = "?state=active&limit=1000" + (f"&cursor={cursor}" if cursor else "")
        status, raw, elapsed = call(port, "GET", f"/api/v1/orgs/{EXCEPTED}/exceptions{query}", token)
        seconds += elapsed
        if status != 200:
            raise RuntimeError(f"listing the exceptions answered {status}: {raw[:300]!r}")
        page = json.loads(raw)
        total += len(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return total, seconds


def stored_problems(url: str, uploads: list[Upload], expect: dict[str, dict[str, int]]) -> list[str]:
    """After the clock: each stored scan's count of excepted findings and its blocking count."""
    from app.config import normalise_database_url

    problems = []
    engine = sa.create_engine(normalise_database_url(url))
    try:
        with engine.connect() as conn:
            for u in uploads:
                scan_id = (u.answer or {}).get("scan_run_id")
                if scan_id is None:
                    continue  # already counted as a wrong answer
                excepted = conn.execute(
                    sa.text("SELECT count(*) FROM findings WHERE scan_run_id = :id AND exception_id IS NOT NULL"),
                    {"id": scan_id},
                ).scalar_one()
                blocking = conn.execute(
                    sa.text("SELECT blocking FROM scan_runs WHERE id = :id"), {"id": scan_id}
                ).scalar_one()
                got = {"excepted": excepted, "blocking": blocking}
                want = {k: expect[u.org][k] for k in got}
                if got != want:
                    problems.append(f"{u.org} round {u.round}: stored {got}, expected {want}")
    finally:
        engine.dispose()
    return problems


def measure(url: str, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = app_env(url)
    flask_cli(env, "db", "upgrade")
    tokens = {}
    for org in (EXCEPTED, PLAIN):
        flask_cli(env, "orgs", "create", org)
        flask_cli(env, "policy", "set", org, "--block-action", "block_pull")
        tokens[org] = make_token(env, org)

    findings = upload_findings(tmp, args.findings)
    bodies = exception_bodies(findings, args.exceptions, random.Random(args.seed))
    expect = {}
    for org, exceptions in ((EXCEPTED, bodies), (PLAIN, [])):
        cover = covered(findings, exceptions, repo_of(org), IMAGE)
        blocks = blocking_count(findings, cover)
        expect[org] = {"excepted": sum(cover), "blocking": blocks, "status": "failure" if blocks else "success"}
    uploads = [Upload(org, r, commit_sha(f"exceptions-{org}-{r}")) for org, r in upload_order(args.repeat)]
    for u in uploads:  # built before the clock: the same findings, each upload its own commit and tag
        u.body = json.dumps(
            {
                "image_ref": f"{IMAGE}:{u.sha[:12]}",
                "commit_sha": u.sha,
                "repo_full_name": repo_of(u.org),
                "findings": findings,
            }
        ).encode()
    print(
        f"  {len(findings)} findings an upload; {len(bodies)} exceptions on {EXCEPTED} covering "
        f"{expect[EXCEPTED]['excepted']} of them; none on {PLAIN}; {len(uploads)} uploads (2 untimed), "
        f"gunicorn -w {args.workers}",
        flush=True,
    )

    problems = Problems()
    log = tmp / "app.log"
    with gunicorn("wsgi:app", ROOT, env, log, args.workers) as (port, proc):
        wait_until(lambda: healthz_ok(port), proc, "app", log)
        create_seconds = create_exceptions(port, tokens[EXCEPTED], bodies, problems)
        active, list_seconds = list_active(port, tokens[EXCEPTED])
        if active != len(bodies):
            problems.add(f"{active} exceptions listed as active, not {len(bodies)}")
        print(
            f"  created {len(bodies)} exceptions in {create_seconds:.2f} s; listed in {list_seconds:.3f} s", flush=True
        )
        for u in uploads:
            status, payload, u.seconds = call(port, "POST", upload_path(u.org), tokens[u.org], u.body)
            problem = answer_problem(status, payload, len(findings))
            if problem:
                problems.add(f"{u.org} round {u.round}: {problem}")
                print(tail(log, 10), file=sys.stderr)
                continue
            u.answer = json.loads(payload)
            if u.answer.get("status") != expect[u.org]["status"]:
                problems.add(
                    f"{u.org} round {u.round}: status {u.answer.get('status')!r}, not {expect[u.org]['status']}"
                )
            label = "untimed" if u.round == 0 else "timed"
            print(f"    {u.org:<6} round {u.round}  {u.seconds:6.3f} s  ({label})", flush=True)
    for problem in stored_problems(url, uploads, expect):
        problems.add(problem)

    timed = [u for u in uploads if u.round > 0]
    times = {org: [u.seconds for u in timed if u.org == org] for org in (EXCEPTED, PLAIN)}
    medians = {org: statistics.median(ts) for org, ts in times.items()}
    by_round = {(u.org, u.round): u.seconds for u in timed}
    round_ratios = [by_round[EXCEPTED, r] / by_round[PLAIN, r] for r in range(1, args.repeat + 1)]
    return {
        "findings": len(findings),
        "exceptions": len(bodies),
        "exception_scopes": scope_counts(bodies),
        "expect": expect,
        "create_seconds": create_seconds,
        "list_seconds": list_seconds,
        "seconds": times,
        "median_seconds": medians,
        "ratio": medians[EXCEPTED] / medians[PLAIN],
        "round_ratios": round_ratios,
        "untimed_seconds": {u.org: u.seconds for u in uploads if u.round == 0},
        "problems": problems.count,
        "problem_samples": problems.samples,
    }


def scope_counts(bodies: list[dict[str, Any]]) -> dict[str, int]:
    """How many exceptions name each scope (or none)."""
    counts = {"package_name": 0, "repo_full_name": 0, "image": 0, "unscoped": 0}
    for b in bodies:
        named = [k for k in ("package_name", "repo_full_name", "image") if b.get(k)]
        for k in named:
            counts[k] += 1
        counts["unscoped"] += not named
    return counts


# ---------------------------------------------------------------- report


def build_rows(m: dict[str, Any]) -> list[Row]:
    n, e, med = m["findings"], m["exceptions"], m["median_seconds"]
    return [
        Row(f"{n}-finding upload, {e} active exceptions (median)", "s", med[EXCEPTED], None),
        Row(f"{n}-finding upload, no exceptions (median)", "s", med[PLAIN], None),
        Row(f"with {e} exceptions / with none", "x", m["ratio"], "<=", RATIO_BAR),
        Row("the same, median of the per-round ratios", "x", statistics.median(m["round_ratios"]), None),
        Row(f"creating {e} exceptions over the API ({CREATE_THREADS} connections)", "s", m["create_seconds"], None),
        Row("non-202 answers, wrong statuses, wrong excepted or blocking counts", "count", m["problems"], "==", 0),
    ]


def print_table(backend: str, rows: list[Row]) -> None:
    head = f"{'backend':<11}{'measurement':<72}{'value':>10}{'target':>10}  result"
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        target = "-" if r.op is None else f"{r.op}{r.target:g}"
        result = "info" if r.op is None else ("PASS" if r.passed else "MISS")
        value = f"{r.value:>10.0f}" if r.unit == "count" else f"{r.value:>10.3f}"
        print(f"{backend:<11}{r.measurement + ' [' + r.unit + ']':<72}{value}{target:>10}  {result}")


def print_details(m: dict[str, Any]) -> None:
    print("\neach timed upload (s):")
    for org in (EXCEPTED, PLAIN):
        print(f"  {org:<6} " + "  ".join(f"{s:.3f}" for s in m["seconds"][org]))
    print("  per round with/without: " + "  ".join(f"{r:.3f}" for r in m["round_ratios"]))
    print(f"  exceptions by scope: {m['exception_scopes']}; expected: {m['expect']}")
    for sample in m["problem_samples"]:
        print(f"  sample: {sample}")


def write_json(backend: str, rows: list[Row], m: dict[str, Any], args: argparse.Namespace) -> Path:
    doc = {
        "backend": backend,
        "when": utc_now(),
        "settings": {
            "findings": args.findings,
            "exceptions": args.exceptions,
            "repeat": args.repeat,
            "workers": args.workers,
            "seed": args.seed,
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
        "measurements": m,
    }
    return write_out(f"exceptions-{backend}.json", doc)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = bench_parser(__doc__)
    ap.add_argument(
        "--repeat", type=int, default=10, help="timed uploads per org (median reported); even: each org first as often"
    )
    ap.add_argument("--findings", type=int, default=10_000, help="findings in each upload")
    ap.add_argument("--exceptions", type=int, default=500, help="active exceptions of the org that has them")
    ap.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    ap.add_argument("--seed", type=int, default=15, help="seed of the exceptions' choice")
    args = ap.parse_args(argv)
    if not 1 <= args.repeat <= 100:
        ap.error("--repeat must be between 1 and 100")
    if not 100 <= args.findings <= 100_000:
        ap.error("--findings must be between 100 and 100000")
    if not 10 <= args.exceptions <= 10_000:
        ap.error("--exceptions must be between 10 and 10000")
    if not 1 <= args.workers <= 32:
        ap.error("--workers must be between 1 and 32")
    check_pg_url(args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with (
        temp_dir(f"fremforge-exceptions-bench-{args.database}-") as tmp,
        throwaway_databases(args.database, args.pg_url, tmp, PG_DATABASES) as urls,
    ):
        backend = args.database
        print_load(backend, f"logs in {tmp}")
        print(
            f"[{backend}] {args.findings}-finding uploads with {args.exceptions} exceptions and with none", flush=True
        )
        m = measure(urls["bench"], tmp, args)
        rows = build_rows(m)
        print_table(backend, rows)
        print_details(m)
        print(f"\nwritten: {write_json(backend, rows, m, args)}")
        return 0 if all(r.passed for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
