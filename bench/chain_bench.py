#!/usr/bin/env python3
"""Chain benchmark: `chain verify` and `retention run` on one org with 1,000,000 findings; appends stay O(1).

Targets (issue 5): on one org with 1,000,000 findings, `flask --app wsgi chain verify SLUG` under 20 s and
`flask --app wsgi retention run` over all of them under 60 s, on SQLite and on PostgreSQL; appending stays
O(1) per entry however long the chain.

The script makes a fresh database, runs `flask --app wsgi db upgrade`, adds the orgs `acme` (the long chain)
and `newco` (a short one), and seeds `acme` with real chain entries: every finding's payload_hash and
chain_hash come from app.chain.extend over app.chain.finding_payload, as ingest computes them, bulk-inserted
with app.findings.store.insert (COPY on PostgreSQL, executemany on SQLite). Audit events are added through the
app's own code (a token, settings changes). Then it times, as subprocesses from spawn to exit:
`chain verify acme`, `retention run --now <far future>` (which redacts every payload), and `chain verify acme`
again; and in-process, 100-finding uploads (Flask test client, bearer token) to the long chain and to the short one.

  . .venv/bin/activate
  python bench/chain_bench.py                                  # SQLite, a file in a fresh temp dir
  python bench/chain_bench.py --database postgresql \\
      --pg-url postgresql://postgres@127.0.0.1:5432/postgres  # a throwaway fremforge_bench_chain_main database
  python bench/chain_bench.py --findings 50000 --uploads 5     # a quick run

The table is printed and written as JSON to bench/out/chain-<backend>.json. Exit 0 when every target is met
and every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import re
import secrets
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from common import (  # before `app`: importing common puts the repository root on sys.path
    ROOT,
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

from app import chain
from app.findings import store
from app.models import FINDING_PAYLOAD_COLUMNS, utcnow

ORG, SHORT_ORG = "acme", "newco"  # the long chain, and a short one to compare appends with
PG_DATABASES = {"chain": "fremforge_bench_chain_main"}  # SQLite: chain.db in the temp dir
VERIFY_TARGET_S = 20.0
RETENTION_TARGET_S = 60.0
APPEND_RATIO_TARGET = 2.0  # long chain / short chain, median upload time
UPLOAD_FINDINGS = 100
WARM_UP = 3  # untimed uploads per org before each timed series
FINDINGS_BATCH = 50_000  # rows per store.insert call
FINDINGS_PER_TRANSACTION = 500_000
SCAN_SIZES = (100, 1000)  # findings per seeded scan, uniform
HISTORY = timedelta(days=360)  # the seeded scans' created_at spread over this, ending an hour ago
FAR_FUTURE = "2100-01-01T00:00:00Z"  # retention as of then: everything is older than any retention_days
SUBPROCESS_TIMEOUT = 1800.0
INTACT = re.compile(r"chain of (\S+) is intact: (\d+) entries \((\d+) redacted by retention\), head seq (\d+)")
SEVERITIES = ("critical", "high", "medium", "low", "unknown")
SCAN_COLUMNS = (  # noqa: SIM905
    "id org_id image_ref commit_sha repo_full_name signature_status pr_number status block_action "
    "critical high medium low unknown fixable accepted duplicates created_at"
).split()


# ---------------------------------------------------------------- the data


def finding_dicts(rng: random.Random, size: int) -> list[dict[str, Any]]:
    """`size` findings as ingest holds them after validation (admin_bench's realistic pools, both kinds)."""
    out = []
    for dirty in (False, True):
        for cve, sev, pkg, inst, fixed, target, title, url, refs, vendors, synthetic in finding_pool(
            rng, size // 2, dirty
        ):
            out.append(
                {
                    "cve_id": cve,
                    "severity": sev,
                    "package": pkg,
                    "installed_version": inst,
                    "fixed_version": fixed,
                    "target": target,
                    "title": title,
                    "primary_url": url,
                    "references": json.loads(refs),
                    "vendor_ids": json.loads(vendors),
                    "synthetic": synthetic,
                }
            )
    rng.shuffle(out)
    return out


def plan_scan_sizes(n: int, rng: random.Random) -> list[int]:
    sizes: list[int] = []
    left = n
    while left > 0:
        k = min(left, rng.randint(*SCAN_SIZES))
        sizes.append(k)
        left -= k
    return sizes


@dataclass
class Seeded:
    findings: int = 0
    scans: int = 0
    head_seq: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def seed(url: str, org_id: int, n: int, pool: list[dict[str, Any]], rng: random.Random) -> Seeded:
    """Append `n` findings to the org's chain in scans of 100-1000, computed as ingest does; bulk insert."""
    out = Seeded()
    sizes = plan_scan_sizes(n, rng)
    end = utcnow() - timedelta(hours=1)
    step = HISTORY / len(sizes)
    doubled = pool + pool  # a scan's window may wrap around the end
    dumps = orjson.dumps
    with seeding_connection(url) as conn:
        dialect = conn.dialect.name
        with conn.begin():
            seq, head = conn.execute(
                sa.text("SELECT seq, head_hash FROM chain_heads WHERE org_id = :org"), {"org": org_id}
            ).one()
            first_scan = (conn.execute(sa.text("SELECT max(id) FROM scan_runs")).scalar() or 0) + 1
        t = time.perf_counter()
        hashing = 0.0
        scan_rows: list[tuple[Any, ...]] = []
        rows: list[tuple[Any, ...]] = []
        in_transaction = 0
        tx = conn.begin()
        for i, k in enumerate(sizes):
            scan_id = first_scan + i
            at = end - HISTORY + step * i + timedelta(seconds=rng.randint(0, 600))
            at = at.replace(microsecond=rng.randrange(1_000_000))
            start = rng.randrange(len(pool))
            findings = doubled[start : start + k]
            th = time.perf_counter()
            stamp = chain.timestamp(at)
            entries, seq, head = chain.extend(
                seq, head, "finding", (chain.finding_payload(org_id, scan_id, stamp, f) for f in findings)
            )
            hashing += time.perf_counter() - th
            created = store.sqlite_datetime(at) if dialect == "sqlite" else at
            for (s, ph, ch), f in zip(entries, findings, strict=True):
                rows.append(
                    (
                        org_id, scan_id, s, ph, ch, created, f["cve_id"], f["severity"], f["package"],
                        f["installed_version"], f["fixed_version"], f["target"], f["title"], f["primary_url"],
                        dumps(f["references"]).decode(), dumps(f["vendor_ids"]).decode(), f["synthetic"], None,
                    )
                )  # fmt: skip
            counts = [sum(1 for f in findings if f["severity"] == sev) for sev in SEVERITIES]
            fixable = sum(1 for f in findings if f["fixed_version"])
            sha = secrets.token_hex(20)
            scan_rows.append(
                (
                    scan_id, org_id, f"ghcr.io/acme/service-{i % 40:02d}:{sha[:12]}", sha,
                    f"acme/service-{i % 40:02d}", "unknown", None, "success", "warn", *counts, fixable, k, 0, created,
                )
            )  # fmt: skip
            if len(rows) >= FINDINGS_BATCH or i == len(sizes) - 1:
                bulk(conn, "scan_runs", SCAN_COLUMNS, scan_rows)  # before its findings (foreign key)
                store.insert(conn, rows, len(rows), None)  # the head is moved at the end
                in_transaction += len(rows)
                out.findings += len(rows)
                out.scans += len(scan_rows)
                scan_rows, rows = [], []
                if in_transaction >= FINDINGS_PER_TRANSACTION or i == len(sizes) - 1:
                    tx.commit()
                    tx = conn.begin()
                    in_transaction = 0
                    print(f"  findings: {out.findings:,} rows, {time.perf_counter() - t:.0f}s", flush=True)
        move_chain_head(conn, org_id, seq, head)
        tx.commit()
        out.head_seq = seq
        out.seconds["findings_and_scans"] = time.perf_counter() - t
        out.seconds["of_which_hashing"] = hashing
        if dialect == "postgresql":
            # As autovacuum would have by now on a year-old table (visibility map, hint bits, statistics).
            t = time.perf_counter()
            auto = conn.execution_options(isolation_level="AUTOCOMMIT")
            auto.exec_driver_sql("VACUUM (ANALYZE)")
            # And long since checkpointed: the seeding's dirty pages are not being written out under the timings.
            auto.exec_driver_sql("CHECKPOINT")
            out.seconds["vacuum_analyze_checkpoint"] = time.perf_counter() - t
    return out


# ---------------------------------------------------------------- the app: in-process and as the CLI


def flask_env(url: str, tmp: Path, secret: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FREMFORGE_")}
    env.update(
        FREMFORGE_DATABASE_URL=url,
        FREMFORGE_SECRET_KEY=secret,
        FREMFORGE_CHECKPOINT_KEY_FILE=str(tmp / "checkpoint_ed25519.pem"),
    )
    return env


@dataclass
class Run:
    args: list[str]
    seconds: float
    code: int
    stdout: str
    stderr: str


def flask_cli(env: dict[str, str], *args: str) -> Run:
    """`flask --app wsgi ARGS` as a user runs it; wall time from spawn to exit."""
    cmd = [sys.executable, "-m", "flask", "--app", "wsgi", *args]
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    return Run(list(args), time.perf_counter() - t, done.returncode, done.stdout, done.stderr)


def make_app(url: str, secret: str, tmp: Path) -> Flask:
    from app import create_app

    app = create_app({"DATABASE_URL": url, "SECRET_KEY": secret, "CHECKPOINT_KEY_FILE": str(tmp / "key.pem")})
    app.instance_path = str(tmp / "instance")
    return app


def create_org(app: Flask, slug: str) -> int:
    from app import orgs

    return in_app(app, lambda s: orgs.create(s, slug).id)


def create_token(app: Flask, slug: str) -> str:
    from app import orgs, tokens

    return in_app(
        app, lambda s: tokens.create(s, orgs.by_slug(s, slug), ["findings:write"], "bench", actor="cli").secret
    )


def change_settings(app: Flask, slug: str, doc: dict[str, Any]) -> None:
    """What `policy set` and the admin settings page do: validate, lock, apply (records settings.changed)."""
    from app import orgs
    from app.policy import settings as policy_settings

    changes = policy_settings.parse_change(doc)
    in_app(
        app, lambda s: policy_settings.apply(s, orgs.settings_for_update(s, orgs.by_slug(s, slug).id), changes, "cli")
    )


# ---------------------------------------------------------------- appends


class Uploader:
    def __init__(self, app: Flask, slug: str, token: str, pool: list[dict[str, Any]], rng: random.Random) -> None:
        self.client: FlaskClient = app.test_client()
        self.slug, self.pool, self.rng = slug, pool, rng
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.accepted = 0
        self.errors: list[str] = []

    def body(self) -> bytes:
        sha = secrets.token_hex(20)
        start = self.rng.randrange(len(self.pool) - UPLOAD_FINDINGS)
        findings = [
            {
                "cve_id": f["cve_id"],
                "severity": f["severity"],
                "package_name": f["package"],
                "installed_version": f["installed_version"],
                "fixed_version": f["fixed_version"],
                "title": f["title"],
                "target": f["target"],
                "primary_url": f["primary_url"],
                "references": f["references"],
                "vendor_ids": f["vendor_ids"],
            }
            for f in self.pool[start : start + UPLOAD_FINDINGS]
        ]
        doc = {
            "image_ref": f"ghcr.io/{self.slug}/api:{sha[:12]}",
            "commit_sha": sha,
            "repo_full_name": f"{self.slug}/api",
            "findings": findings,
        }
        return orjson.dumps(doc)

    def upload(self) -> float:
        """One upload's wall time (seconds), the answer read; its findings are counted when accepted."""
        body = self.body()
        t = time.perf_counter()
        resp = self.client.post(f"/api/v1/orgs/{self.slug}/image-scans/findings", data=body, headers=self.headers)
        doc = resp.get_json(silent=True) or {}
        elapsed = time.perf_counter() - t
        if resp.status_code != 202:
            self.errors.append(f"{self.slug}: status {resp.status_code}: {resp.get_data(as_text=True)[:200]}")
        else:
            self.accepted += doc.get("accepted", 0)
        return elapsed


def time_appends(uploaders: list[Uploader], count: int) -> list[list[float]]:
    """`count` timed uploads per uploader after WARM_UP untimed ones, alternating between them."""
    for u in uploaders:
        for _ in range(WARM_UP):
            u.upload()
    gc.collect()
    times: list[list[float]] = [[] for _ in uploaders]
    for _ in range(count):
        for i, u in enumerate(uploaders):
            times[i].append(u.upload())
    return times


# ---------------------------------------------------------------- checks on the database


def unredacted_findings(url: str) -> tuple[int, int]:
    """(findings, of which still holding any payload column or without redacted_at), over every org."""
    holding = " OR ".join(f'"{c}" IS NOT NULL' for c in FINDING_PAYLOAD_COLUMNS)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            total = conn.execute(sa.text("SELECT count(*) FROM findings")).scalar_one()
            left = conn.execute(
                sa.text(f"SELECT count(*) FROM findings WHERE {holding} OR redacted_at IS NULL")
            ).scalar_one()
    finally:
        engine.dispose()
    return total, left


def head_seq(url: str, slug: str) -> int:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(
                sa.text("SELECT h.seq FROM chain_heads h JOIN orgs o ON o.id = h.org_id WHERE o.slug = :s"), {"s": slug}
            ).scalar_one()
    finally:
        engine.dispose()


def check_verify(run: Run, entries: int, redacted: int) -> list[str]:
    errors = []
    if run.code != 0:
        errors.append(f"exit {run.code}: {(run.stdout + run.stderr).strip()[-300:]}")
    found = INTACT.search(run.stdout)
    if not found:
        errors.append(f"no 'intact' verdict in its output: {run.stdout.strip()[-300:]!r}")
    elif (int(found.group(2)), int(found.group(3))) != (entries, redacted):
        errors.append(
            f"{found.group(2)} entries ({found.group(3)} redacted) reported, {entries} ({redacted} redacted) expected"
        )
    return errors


# ---------------------------------------------------------------- report


@dataclass
class Row:
    measurement: str
    value: float
    unit: str
    target: str
    passed: bool | None  # None: information only
    note: str = ""


def print_table(backend: str, rows: list[Row]) -> None:
    head = f"{'backend':<11}{'measurement':<52}{'value':>12}  {'target':<10}result"
    print("\n" + head + "\n" + "-" * (len(head) + 10))
    for r in rows:
        verdict = "info" if r.passed is None else "PASS" if r.passed else "MISS"
        value = f"{r.value:.2f} {r.unit}"
        note = f"  ({r.note})" if r.note else ""
        print(f"{backend:<11}{r.measurement:<52}{value:>12}  {r.target:<10}{verdict}{note}")


# ---------------------------------------------------------------- databases


def database_size(url: str) -> int | None:
    if url.startswith("sqlite"):
        path = Path(url.removeprefix("sqlite:///"))
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT pg_database_size(current_database())")).scalar_one()
    finally:
        engine.dispose()


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = bench_parser(__doc__)
    ap.add_argument("--findings", type=int, default=1_000_000, help="findings in acme's chain (default 1,000,000)")
    ap.add_argument("--uploads", type=int, default=15, help="timed 100-finding uploads per org and series")
    ap.add_argument("--seed", type=int, default=1, help="random seed of the generated data")
    args = ap.parse_args(argv)
    if not 1_000 <= args.findings <= 20_000_000:
        ap.error("--findings must be between 1000 and 20000000")
    if not 1 <= args.uploads <= 500:
        ap.error("--uploads must be between 1 and 500")
    check_pg_url(args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    forget_app_settings()
    with (
        temp_dir(f"fremforge-bench-chain-{args.database}-") as tmp,
        throwaway_databases(args.database, args.pg_url, tmp, PG_DATABASES) as urls,
    ):
        print_load(args.database, f"work dir {tmp}")
        url = urls["chain"]
        secret = secrets.token_urlsafe(32)
        env = flask_env(url, tmp, secret)
        upgrade = flask_cli(env, "db", "upgrade")
        if upgrade.code != 0:
            raise SystemExit(f"db upgrade failed: {upgrade.stderr}")
        app = make_app(url, secret, tmp)
        try:
            return run(args, app, env, url)
        finally:
            app.extensions["fremforge.db"].engine.dispose()


def run(args: argparse.Namespace, app: Flask, env: dict[str, str], url: str) -> int:
    """Appends before and after seeding, then the commands; the table and the JSON; 0 when all is well, else 1."""
    backend = args.database
    doc: dict[str, Any] = {"backend": backend, "when": utc_now()}
    rng = random.Random(args.seed)
    rows: list[Row] = []
    errors: list[str] = []
    org_id = create_org(app, ORG)
    create_org(app, SHORT_ORG)
    pool = finding_dicts(rng, 4000)
    short = Uploader(app, SHORT_ORG, create_token(app, SHORT_ORG), pool, rng)

    # Appends on an empty database (information: the same code with nothing stored yet).
    [empty_db_times] = time_appends([short], args.uploads)
    print(f"[{backend}] empty database: upload median {1000 * statistics.median(empty_db_times):.1f} ms")

    app.extensions["fremforge.db"].engine.dispose()  # seeding wants the database to itself
    print(f"[{backend}] seeding {args.findings:,} findings into {ORG}'s chain", flush=True)
    t = time.perf_counter()
    seeded = seed(url, org_id, args.findings, pool, rng)
    seed_s = time.perf_counter() - t
    print(
        f"[{backend}] seeded {seeded.findings:,} findings in {seeded.scans:,} scans in {seed_s:.0f}s "
        f"({', '.join(f'{k} {v:.1f}s' for k, v in seeded.seconds.items())})",
        flush=True,
    )
    rows.append(Row(f"seed {seeded.findings:,} findings, {seeded.scans:,} scans", seed_s, "s", "-", None))

    # Audit events through the app's code, after the seeded history (they happen now).
    long = Uploader(app, ORG, create_token(app, ORG), pool, rng)  # token.created
    change_settings(app, ORG, {"retention_days": 730})  # settings.changed
    change_settings(app, ORG, {"allowed_issuers": [{"issuer": "https://token.actions.githubusercontent.com"}]})
    audit_events = 3

    # Appends: the long chain against the short one, alternating.
    long_times, short_times = time_appends([long, short], args.uploads)
    long_ms, short_ms = 1000 * statistics.median(long_times), 1000 * statistics.median(short_times)
    empty_ms = 1000 * statistics.median(empty_db_times)
    ratio = long_ms / short_ms
    errors += long.errors + short.errors
    n_long = head_seq(url, ORG)
    rows += [
        Row(f"upload 100 findings, {SHORT_ORG} on an empty database", empty_ms, "ms", "-", None, "median"),
        Row(f"upload 100 findings, {SHORT_ORG} (short chain)", short_ms, "ms", "-", None, "median"),
        Row(f"upload 100 findings, {ORG} ({seeded.findings:,}-entry chain)", long_ms, "ms", "-", None, "median"),
        Row(
            f"append ratio {ORG} / {SHORT_ORG}",
            ratio,
            "x",
            f"<= {APPEND_RATIO_TARGET:.0f}x",
            ratio <= APPEND_RATIO_TARGET,
            f"{ORG} / empty database {long_ms / empty_ms:.2f}x",
        ),
    ]
    app.extensions["fremforge.db"].engine.dispose()

    expected = seeded.findings + audit_events + long.accepted
    if n_long != expected:
        errors.append(f"{ORG}'s head is at seq {n_long}, {expected} entries expected")
    print(f"[{backend}] {ORG}'s chain: {n_long:,} entries; timing `chain verify {ORG}`", flush=True)
    size_before = database_size(url)

    startup = flask_cli(env, "chain", "verify", SHORT_ORG)  # a short chain: the command's fixed cost
    v1 = flask_cli(env, "chain", "verify", ORG)
    v1_err = check_verify(v1, expected, 0)
    print(f"  {v1.seconds:.1f}s: {v1.stdout.strip()}", flush=True)

    print(f"[{backend}] timing `retention run --now {FAR_FUTURE}`", flush=True)
    ret = flask_cli(env, "retention", "run", "--now", FAR_FUTURE)
    ret_err = [] if ret.code == 0 else [f"exit {ret.code}: {(ret.stdout + ret.stderr).strip()[-300:]}"]
    print(f"  {ret.seconds:.1f}s: {ret.stdout.strip()}", flush=True)
    line = next((x for x in ret.stdout.splitlines() if x.startswith(f"{ORG}:")), "")
    want = f"removed the payload of {expected - audit_events} finding(s) and {audit_events} audit event(s)"
    if want not in line:
        ret_err.append(f"its line for {ORG} does not say {want!r}: {line!r}")
    total, left = unredacted_findings(url)
    if left:
        ret_err.append(f"{left:,} of {total:,} findings still hold a payload column or have no redacted_at")
    size_after = database_size(url)

    print(f"[{backend}] timing `chain verify {ORG}` after retention", flush=True)
    v2 = flask_cli(env, "chain", "verify", ORG)
    v2_err = check_verify(v2, expected + 1, expected)  # + retention.run's own audit event, not redacted
    print(f"  {v2.seconds:.1f}s: {v2.stdout.strip()}", flush=True)

    rows += [
        Row(f"chain verify {SHORT_ORG} (start-up cost)", startup.seconds, "s", "-", None),
        Row(
            f"chain verify {ORG} ({expected:,} entries)",
            v1.seconds,
            "s",
            f"< {VERIFY_TARGET_S:.0f} s",
            v1.seconds < VERIFY_TARGET_S and not v1_err,
            "; ".join(v1_err),
        ),
        Row(
            f"retention run ({total:,} findings redacted)",
            ret.seconds,
            "s",
            f"< {RETENTION_TARGET_S:.0f} s",
            ret.seconds < RETENTION_TARGET_S and not ret_err,
            "; ".join(ret_err) or f"database {size_before / 2**20:.0f} -> {size_after / 2**20:.0f} MiB",
        ),
        Row(
            f"chain verify {ORG} after retention (all redacted)",
            v2.seconds,
            "s",
            f"< {VERIFY_TARGET_S:.0f} s",
            v2.seconds < VERIFY_TARGET_S and not v2_err,
            "; ".join(v2_err),
        ),
    ]
    errors += v1_err + ret_err + v2_err
    print_table(backend, rows)
    if errors:
        print("\nerrors:\n  " + "\n  ".join(errors))

    doc.update(
        settings={
            "findings": args.findings,
            "uploads": args.uploads,
            "warm_up": WARM_UP,
            "upload_findings": UPLOAD_FINDINGS,
            "seed": args.seed,
            **machine_state(),
        },
        seeding={"seconds": seed_s, "steps": seeded.seconds, "findings": seeded.findings, "scans": seeded.scans},
        chain_entries=expected,
        database_bytes={"before_retention": size_before, "after_retention": size_after},
        rows=[r.__dict__ for r in rows],
        upload_ms={
            "empty_database": [1000 * x for x in empty_db_times],
            "short_chain": [1000 * x for x in short_times],
            "long_chain": [1000 * x for x in long_times],
        },
        commands={
            name: {"args": r.args, "seconds": r.seconds, "exit": r.code, "stdout": r.stdout, "stderr": r.stderr}
            for name, r in (("verify_short", startup), ("verify", v1), ("retention", ret), ("verify_after", v2))
        },
        errors=errors,
    )
    print(f"\nwritten: {write_out(f'chain-{backend}.json', doc)}")
    return 0 if not errors and all(r.passed is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
