#!/usr/bin/env python3
"""Ingest benchmark: the app against shared/bench/floor_app.py, in the same run, both under `gunicorn -w 2`.

Measures (spec section 9):
  * a 10,000-finding seed upload: median time over --repeat uploads, app/floor (bar <= 2.0x, goal <= 1.25x);
  * a raw 10,000-finding Trivy report uploaded to the app, against the floor's 10k seed time (same bars);
  * 50-finding seed uploads over 16 connections: requests/s over --requests uploads after a warm-up,
    app/floor (bar >= 0.5x, goal >= 0.75x), and every answer must be 202.

Run from the repository root, with the virtualenv active:
  . .venv/bin/activate
  python bench/ingest_bench.py                                   # SQLite, a fresh temp dir per run
  python bench/ingest_bench.py --database postgresql \\
      --pg-url postgresql://postgres@127.0.0.1:5432/postgres    # fresh fremforge_bench_{app,floor} databases

Both servers listen on 127.0.0.1 only. The table is printed and written as JSON to
bench/out/ingest-<backend>.json. Exit 0 when every bar is met and no request failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    BIG,
    HOST,
    ROOT,
    SMALL,
    Client,
    CpuMeter,
    Errors,
    Servers,
    app_and_floor,
    bench_parser,
    check_pg_url,
    context,
    gunicorn,
    healthz_ok,
    machine_state,
    make_trivy,
    print_load,
    seed_body,
    seed_findings,
    small_bodies,
    tail,
    temp_dir,
    throwaway_databases,
    timed_post,
    utc_now,
    wait_until,
    warm_up,
    write_out,
)

CONCURRENCY = 16
ROUNDS = 4  # the concurrent part alternates floor and app this many times
PG_DATABASES = {"app": "fremforge_bench_app", "floor": "fremforge_bench_floor"}


# ---------------------------------------------------------------- results


@dataclass
class Row:
    measurement: str
    unit: str
    floor: float
    app: float
    bar: float | None  # None: reported for information, no bar
    goal: float | None
    higher_is_better: bool

    @property
    def ratio(self) -> float:
        return self.app / self.floor

    @property
    def passed(self) -> bool:
        if self.bar is None:
            return True
        return self.ratio >= self.bar if self.higher_is_better else self.ratio <= self.bar

    @property
    def goal_met(self) -> bool:
        if self.goal is None:
            return False
        return self.ratio >= self.goal if self.higher_is_better else self.ratio <= self.goal


# ---------------------------------------------------------------- the measurements


def run_concurrent(client: Client, server: str, errors: Errors, bodies: list[bytes]) -> tuple[float, list[float]]:
    """Post every body over CONCURRENCY threads; return (wall seconds, per-request latencies)."""
    with ThreadPoolExecutor(CONCURRENCY, thread_name_prefix=f"bench-{server}") as pool:
        start = time.perf_counter()
        latencies = list(pool.map(lambda b: timed_post(client, server, errors, b, SMALL), bodies))
        wall = time.perf_counter() - start
    client.close_all()
    return wall, latencies


def measure_big(
    clients: dict[str, Client], errors: Errors, findings: list[dict], raw_report: bytes, repeat: int
) -> dict[str, list[float]]:
    """Alternate floor seed, app seed and app raw-Trivy uploads of 10,000 findings, `repeat` times."""
    times: dict[str, list[float]] = {"floor_seed": [], "app_seed": [], "app_trivy": []}
    for i in range(repeat):
        body = seed_body(f"big-{i}", findings)  # the same bytes to both servers
        times["floor_seed"].append(timed_post(clients["floor"], "floor", errors, body, BIG))
        times["app_seed"].append(timed_post(clients["app"], "app", errors, body, BIG))
        times["app_trivy"].append(timed_post(clients["app"], "app", errors, raw_report, BIG, context(f"trivy-{i}")))
        print(
            f"  10k rep {i + 1}/{repeat}: floor {times['floor_seed'][-1]:.3f}s"
            f"  app {times['app_seed'][-1]:.3f}s  app raw Trivy {times['app_trivy'][-1]:.3f}s",
            flush=True,
        )
    return times


def measure_concurrent(
    clients: dict[str, Client],
    errors: Errors,
    pool: list[dict],
    requests: int,
    meters: dict[str, CpuMeter] | None = None,
) -> dict[str, dict[str, Any]]:
    """Warm up each server, then post `requests` 50-finding uploads to each over 16 connections.

    The requests go in ROUNDS alternating the servers (bodies alike: the same findings, each server its own
    commits, as two servers may share a database), so a change in machine load during the run weighs on all
    alike; throughput is requests over summed wall time. With `meters`, also the CPU milliseconds per upload that
    each server's processes used during its rounds (its workers; on PostgreSQL its database's backends too): a
    measure of work done that a busy machine moves less than it moves throughput.
    """
    size = -(-requests // ROUNDS)
    bodies = {server: small_bodies(f"small-{server}", requests, pool) for server in clients}
    rounds = [{server: b[i : i + size] for server, b in bodies.items()} for i in range(0, requests, size)]
    walls = dict.fromkeys(clients, 0.0)
    cpu: dict[str, dict[str, float]] = {server: {} for server in clients}
    lats: dict[str, list[float]] = {server: [] for server in clients}
    for server in clients:
        run_concurrent(clients[server], server, errors, small_bodies(f"warm-{server}", CONCURRENCY * 4, pool))
    for chunk in rounds:
        for server in clients:
            meter = meters.get(server) if meters else None
            before = meter.read() if meter else {}
            wall, lat = run_concurrent(clients[server], server, errors, chunk[server])
            walls[server] += wall
            lats[server] += lat
            for part, used in (meter.read() if meter else {}).items():
                cpu[server][part] = cpu[server].get(part, 0.0) + used - before[part]
    out = {}
    for server in clients:
        lat = sorted(lats[server])
        out[server] = {
            "requests": requests,
            "rounds": len(rounds),
            "seconds": walls[server],
            "rps": requests / walls[server],
            "p50_ms": 1000 * lat[len(lat) // 2],
            "p95_ms": 1000 * lat[max(0, int(len(lat) * 0.95) - 1)],
            "cpu_ms_per_upload": {part: 1000 * used / requests for part, used in cpu[server].items()},
        }
        print(
            f"  {server}: {requests} requests in {walls[server]:.2f}s = {out[server]['rps']:.1f} req/s "
            f"(p50 {out[server]['p50_ms']:.0f} ms, p95 {out[server]['p95_ms']:.0f} ms)",
            flush=True,
        )
    return out


def measure_scaling(
    args: argparse.Namespace, tmp: Path, servers: Servers, app: Client, errors: Errors, findings: list[dict]
) -> dict[str, Any]:
    """A second app on the same database with --scaling workers, alternating with the first in the concurrent part."""
    log = tmp / "app-more.log"
    with gunicorn("wsgi:app", ROOT, servers.app_env, log, args.scaling) as (more_port, more_proc):
        wait_until(lambda: healthz_ok(more_port), more_proc, "app (more workers)", log)
        print(
            f"[{args.database}] scaling: the app with {args.workers} and with {args.scaling} workers, alternating",
            flush=True,
        )
        scaling = measure_concurrent(
            {"app": app, "app-more": Client(more_port, servers.token)}, errors, findings, args.requests
        )
    return {"workers": args.workers, "more_workers": args.scaling, **scaling}


# ---------------------------------------------------------------- report


def build_rows(big: dict[str, list[float]], conc: dict[str, Any]) -> list[Row]:
    rows = [
        Row(
            f"{SMALL}-finding uploads x{CONCURRENCY} connections",
            unit="req/s",
            floor=conc["floor"]["rps"],
            app=conc["app"]["rps"],
            bar=0.5,
            goal=0.75,  # issue 12 asks for the goal on both backends
            higher_is_better=True,
        )
    ]
    names = {"workers": "gunicorn workers' CPU per upload", "database": "PostgreSQL backends' CPU per upload"}
    for part, name in names.items():
        if conc["floor"]["cpu_ms_per_upload"].get(part) and part in conc["app"]["cpu_ms_per_upload"]:
            rows.append(
                Row(  # information: where the throughput goes (bench/README.md)
                    f"{name} in that run",
                    unit="ms",
                    floor=conc["floor"]["cpu_ms_per_upload"][part],
                    app=conc["app"]["cpu_ms_per_upload"][part],
                    bar=None,
                    goal=None,
                    higher_is_better=False,
                )
            )
    if "scaling" in conc:
        sc = conc["scaling"]
        rows.append(
            Row(  # "floor" here is the app with fewer workers: more workers must not lower throughput
                f"app with {sc['more_workers']} workers vs {sc['workers']} as floor",
                unit="req/s",
                floor=sc["app"]["rps"],
                app=sc["app-more"]["rps"],
                bar=0.95,  # within the noise of this machine
                goal=1.0,
                higher_is_better=True,
            )
        )
    if big:
        rows = big_rows(big) + rows
    return rows


def big_rows(big: dict[str, list[float]]) -> list[Row]:
    floor_seed = statistics.median(big["floor_seed"])
    big_bars = {"unit": "s", "bar": 2.0, "goal": 1.25, "higher_is_better": False}  # spec section 9
    return [
        Row("10k seed upload (median)", floor=floor_seed, app=statistics.median(big["app_seed"]), **big_bars),
        Row(
            "10k raw Trivy upload, app vs floor 10k seed (median)",
            floor=floor_seed,
            app=statistics.median(big["app_trivy"]),
            unit="s",
            bar=None,  # the issue asks for this time, not a bar: a raw report is ~8x the seed's bytes
            goal=None,
            higher_is_better=False,
        ),
    ]


def print_table(backend: str, rows: list[Row], errors: Errors) -> None:
    head = f"{'backend':<11}{'measurement':<56}{'floor':>10}{'app':>10}{'ratio':>8}{'bar':>8}{'goal':>8}  result"
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        cmp = ">=" if r.higher_is_better else "<="
        if r.bar is None:
            result, bar, goal = "info", "-", "-"
        else:
            result = ("PASS" if r.passed else "MISS") + (" (goal met)" if r.goal_met else "")
            bar, goal = cmp + format(r.bar, "g"), cmp + format(r.goal, "g")
        print(
            f"{backend:<11}{r.measurement + ' [' + r.unit + ']':<56}{r.floor:>10.3f}{r.app:>10.3f}"
            f"{r.ratio:>7.2f}x{bar:>8}{goal:>8}  {result}"
        )
    err_ok = sum(errors.count.values()) == 0
    print(
        f"{backend:<11}{'non-202 answers / failed requests':<56}{errors.count['floor']:>10}"
        f"{errors.count['app']:>10}{'':>8}{'==0':>8}{'':>8}  {'PASS' if err_ok else 'MISS'}"
    )
    for s in errors.samples:
        print(f"  error sample: {s}")


def write_json(backend: str, rows: list[Row], errors: Errors, big: dict, conc: dict, args: argparse.Namespace) -> Path:
    doc = {
        "backend": backend,
        "when": utc_now(),
        "settings": {
            "repeat": args.repeat,
            "requests": args.requests,
            "concurrency": CONCURRENCY,
            "big_findings": BIG,
            "small_findings": SMALL,
            "workers": args.workers,
            "scaling_workers": args.scaling,
            **machine_state(),
        },
        "rows": [
            {
                "backend": backend,
                "measurement": r.measurement,
                "unit": r.unit,
                "floor": r.floor,
                "app": r.app,
                "ratio": r.ratio,
                "bar": r.bar,
                "goal": r.goal,
                "direction": "higher_is_better" if r.higher_is_better else "lower_is_better",
                "pass": r.passed,
                "goal_met": r.goal_met,
            }
            for r in rows
        ],
        "errors": {"floor": errors.count["floor"], "app": errors.count["app"], "samples": errors.samples},
        "raw": {"big_seconds": big, "concurrent": conc},
    }
    return write_out(f"ingest-{backend}.json", doc)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = bench_parser(__doc__)
    ap.add_argument("--repeat", type=int, default=5, help="10,000-finding uploads per server (median reported)")
    ap.add_argument("--requests", type=int, default=1600, help="50-finding uploads per server in the concurrent part")
    ap.add_argument("--workers", type=int, default=2, help="gunicorn workers of the app and of the floor")
    ap.add_argument("--skip-big", action="store_true", help="only the concurrent part (and --scaling)")
    ap.add_argument(
        "--scaling",
        type=int,
        metavar="N",
        help="also serve the app with N workers beside --workers (one database) and compare their throughput",
    )
    args = ap.parse_args(argv)
    if not 1 <= args.repeat <= 100:
        ap.error("--repeat must be between 1 and 100")
    if not CONCURRENCY <= args.requests <= 100_000:
        ap.error(f"--requests must be between {CONCURRENCY} and 100000")
    if not 1 <= args.workers <= 32 or (args.scaling is not None and not 1 <= args.scaling <= 32):
        ap.error("--workers and --scaling must be between 1 and 32")
    check_pg_url(args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backend = args.database
    with (
        temp_dir(f"fremforge-bench-{backend}-") as tmp,
        throwaway_databases(backend, args.pg_url, tmp, PG_DATABASES) as urls,
    ):
        return run(args, tmp, urls)


def run(args: argparse.Namespace, tmp: Path, urls: dict[str, str]) -> int:
    """The measurements, on fresh databases; the table and the JSON; 0 when every bar is met, else 1."""
    backend = args.database
    errors = Errors()
    load = print_load(backend, f"Trivy reports in {tmp}")
    if load > (os.cpu_count() or 1) / 2:
        print(f"[{backend}] note: the machine is busy; ratios are fairer than absolute figures", flush=True)
    report = make_trivy(BIG, tmp / "trivy-10k.json")
    raw_report = (tmp / "trivy-10k.json").read_bytes()
    findings = seed_findings(report)
    assert len(findings) == BIG

    print(f"[{backend}] preparing databases", flush=True)
    with app_and_floor(urls, tmp, args.workers) as servers:
        clients = {"floor": Client(servers.floor_port, None), "app": Client(servers.app_port, servers.token)}
        print(
            f"[{backend}] app on {HOST}:{servers.app_port}, floor on {HOST}:{servers.floor_port}; warming up",
            flush=True,
        )
        warm_up(clients, errors, findings)
        big: dict[str, list[float]] = {}
        if not args.skip_big:
            print(f"[{backend}] {BIG}-finding uploads x{args.repeat}", flush=True)
            big = measure_big(clients, errors, findings, raw_report, args.repeat)
            for c in clients.values():
                c.close_all()
        print(
            f"[{backend}] {SMALL}-finding uploads, {args.requests} per server over {CONCURRENCY} connections",
            flush=True,
        )
        databases = PG_DATABASES if backend == "postgresql" else {}
        meters = {
            "floor": CpuMeter(servers.floor_proc, databases.get("floor")),
            "app": CpuMeter(servers.app_proc, databases.get("app")),
        }
        conc = measure_concurrent(clients, errors, findings, args.requests, meters)
        if args.scaling is not None:
            conc["scaling"] = measure_scaling(args, tmp, servers, clients["app"], errors, findings)
        if sum(errors.count.values()):
            print(f"\napp log tail:\n{tail(tmp / 'app.log')}\n\nfloor log tail:\n{tail(tmp / 'floor.log')}")

    rows = build_rows(big, conc)
    print_table(backend, rows, errors)
    print(f"\nwritten: {write_json(backend, rows, errors, big, conc, args)}")
    ok = all(r.passed for r in rows) and sum(errors.count.values()) == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
