#!/usr/bin/env python3
"""Observability benchmark: 50-finding upload throughput with JSON logs and a /metrics scraper against without.

Measures (issue 16's performance target): two copies of the app side by side on the same backend, each on a fresh
database of its own and under `gunicorn -w 2` started in the repository root (so gunicorn.conf.py applies, as in
production), both with gunicorn's access log on (`--access-logfile -`, written with the rest of its output to a log
file in the temp dir):

  * off: FREMFORGE_LOG_FORMAT=text, PROMETHEUS_MULTIPROC_DIR a fresh folder of the temp dir, nobody reads /metrics;
  * on:  FREMFORGE_LOG_FORMAT=json, PROMETHEUS_MULTIPROC_DIR another fresh folder, and a scraper in this
    process sending GET /metrics once a second while the on copy is being measured.

The app has no switch that turns metrics off: under gunicorn.conf.py both copies count in prometheus_client's
multiprocess mode (without a folder named they would count in the checkout's instance/metrics: each copy is given
one of its own), every upload counted into mmapped files by app.metrics. What differs is the log format (the app's
lines and gunicorn's own and access lines: one JSON object a line against key=value text, both redacted) and the
scrape (the sum over the workers' files, plus the outbox gauges' query on the database). Which one names the folder
makes no difference to the counting.

After a warm-up, --requests (8000) 50-finding seed uploads per copy over 16 connections, in --rounds (8) rounds
alternating the copies (which copy goes first alternates too); requests/s over the summed wall time, on/off >= 0.95.
Every answer must be 202 with all 50 findings accepted. After the clock: every scrape answered 200, the on copy's
/metrics counts every upload it was sent, the on log is JSON and the off log text, with an access line a request.

Run from the repository root, with the virtualenv active:
  . .venv/bin/activate
  python bench/observability_bench.py                             # SQLite, a fresh temp dir per run
  python bench/observability_bench.py --database postgresql \\
      --pg-url postgresql://postgres@127.0.0.1:5432/postgres     # fresh fremforge_bench_obs_{off,on} databases

Everything listens on 127.0.0.1 only. The table is printed and written as JSON to
bench/out/observability-<backend>.json. Exit 0 when the bar is met and every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from common import (
    BIG,
    HOST,
    ROOT,
    SMALL,
    Client,
    Errors,
    app_env,
    bench_parser,
    check_pg_url,
    gunicorn,
    healthz_ok,
    machine_state,
    make_trivy,
    prepare_app,
    print_load,
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
WORKERS = 2
RATIO_BAR = 0.95  # on / off, requests/s
SCRAPE_EVERY = 1.0  # seconds between scrapes of the on copy
COPIES = ("off", "on")
PG_DATABASES = {"off": "fremforge_bench_obs_off", "on": "fremforge_bench_obs_on"}
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SAMPLE = re.compile(r"^(fremforge_[a-z_]+)(?:\{([^}]*)\})? ([0-9.eE+-]+)$", re.M)


# ---------------------------------------------------------------- the scraper


class Scraper:
    """GET /metrics once every SCRAPE_EVERY seconds while `active` is set (the on copy's rounds), on a fixed tick."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.active = threading.Event()
        self.done = threading.Event()
        self.scrapes: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._loop, name="scraper", daemon=True)

    def __enter__(self) -> Scraper:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=30)

    def scrape(self) -> tuple[int, bytes]:
        """One GET /metrics on a fresh connection (as Prometheus's scrape); recorded; returns status and body."""
        start = time.perf_counter()
        try:
            conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            status, body = resp.status, resp.read()
            conn.close()
        except (OSError, http.client.HTTPException) as exc:
            status, body = 0, f"{type(exc).__name__}: {exc}".encode()
        self.scrapes.append({"status": status, "seconds": time.perf_counter() - start, "bytes": len(body)})
        return status, body

    def _loop(self) -> None:
        tick = time.monotonic()
        while not self.done.is_set():
            if self.active.is_set():
                self.scrape()
            tick += SCRAPE_EVERY
            self.done.wait(max(0.0, tick - time.monotonic()))


def samples(body: bytes) -> dict[str, float]:
    """The fremforge_* samples of an exposition, `name{labels}` -> value."""
    return {
        (f"{m[1]}{{{m[2]}}}" if m[2] else m[1]): float(m[3]) for m in SAMPLE.finditer(body.decode(errors="replace"))
    }


def total(found: dict[str, float], name: str) -> float:
    return sum(v for k, v in found.items() if k == name or k.startswith(name + "{"))


# ---------------------------------------------------------------- the measurement


def run_concurrent(client: Client, copy: str, errors: Errors, bodies: list[bytes]) -> tuple[float, list[float]]:
    """Post every body over CONCURRENCY threads; return (wall seconds, per-request latencies)."""
    with ThreadPoolExecutor(CONCURRENCY, thread_name_prefix=f"bench-{copy}") as pool:
        start = time.perf_counter()
        latencies = list(pool.map(lambda b: timed_post(client, copy, errors, b, SMALL), bodies))
        wall = time.perf_counter() - start
    client.close_all()
    return wall, latencies


def measure(
    clients: dict[str, Client], scraper: Scraper, errors: Errors, pool: list[dict], requests: int, rounds: int
) -> dict[str, Any]:
    """A warm-up of CONCURRENCY * 4 uploads per copy, then `requests` per copy in `rounds` rounds, the copies
    alternating (round i: off first when i is even, on first when odd); the scraper runs during the on copy's turns
    (warm-up included). Every copy gets its own commits, the same findings."""
    size = -(-requests // rounds)
    bodies = {copy: small_bodies(f"small-{copy}", requests, pool) for copy in clients}
    chunks = [{copy: b[i : i + size] for copy, b in bodies.items()} for i in range(0, requests, size)]
    walls: dict[str, list[float]] = {copy: [] for copy in clients}
    lats: dict[str, list[float]] = {copy: [] for copy in clients}

    def turn(copy: str, batch: list[bytes]) -> tuple[float, list[float]]:
        if copy == "on":
            scraper.active.set()
        try:
            return run_concurrent(clients[copy], copy, errors, batch)
        finally:
            scraper.active.clear()

    for copy in clients:
        turn(copy, small_bodies(f"warm-{copy}", CONCURRENCY * 4, pool))
    warm_scrapes = len(scraper.scrapes)
    for i, chunk in enumerate(chunks):
        order = COPIES if i % 2 == 0 else COPIES[::-1]
        line = []
        for copy in order:
            wall, lat = turn(copy, chunk[copy])
            walls[copy].append(wall)
            lats[copy] += lat
            line.append(f"{copy} {len(chunk[copy]) / wall:6.1f} req/s")
        ratio = (len(chunk["on"]) / walls["on"][-1]) / (len(chunk["off"]) / walls["off"][-1])
        print(f"  round {i + 1}/{len(chunks)} ({order[0]} first): {'  '.join(line)}  on/off {ratio:.3f}", flush=True)
    out: dict[str, Any] = {}
    for copy in clients:
        lat = sorted(lats[copy])
        seconds = sum(walls[copy])
        out[copy] = {
            "requests": requests,
            "rounds": len(chunks),
            "seconds": seconds,
            "rps": requests / seconds,
            "p50_ms": 1000 * lat[len(lat) // 2],
            "p95_ms": 1000 * lat[max(0, int(len(lat) * 0.95) - 1)],
            "round_seconds": walls[copy],
        }
    out["scrapes_measured"] = len(scraper.scrapes) - warm_scrapes
    out["round_ratios"] = [
        (len(c["on"]) / won) / (len(c["off"]) / woff)
        for c, won, woff in zip(chunks, walls["on"], walls["off"], strict=True)
    ]
    return out


# ---------------------------------------------------------------- checks after the clock


def log_lines(path: Path) -> dict[str, Any]:
    """A copy's log: lines, bytes, how many are JSON objects, and the access lines (gunicorn's http.request)."""
    lines = path.read_text(errors="replace").splitlines()
    parsed = 0
    access = 0
    uploads = 0
    for line in lines:
        try:
            doc = json.loads(line)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            parsed += 1
        if "http.request" in line:
            access += 1
        if "findings.uploaded" in line:
            uploads += 1
    return {
        "sample": [line for line in lines if "http.request" in line and "/findings" in line][-1:]
        + [line for line in lines if "findings.uploaded" in line][-1:],
        "lines": len(lines),
        "bytes": path.stat().st_size,
        "json_lines": parsed,
        "access_lines": access,
        "upload_lines": uploads,
    }


def check(
    sent: dict[str, int], scraper: Scraper, final: dict[str, bytes], logs: dict[str, dict[str, Any]]
) -> list[str]:
    """What is wrong with the run beside its ratio (an empty list when nothing)."""
    problems = []
    bad = [s for s in scraper.scrapes if s["status"] != 200]
    if bad:
        problems.append(f"{len(bad)} of {len(scraper.scrapes)} scrapes not 200: {bad[:3]}")
    if not scraper.scrapes:
        problems.append("no scrape during the run")
    for copy in COPIES:
        found = samples(final[copy])
        uploads, findings = total(found, "fremforge_uploads_total"), total(found, "fremforge_findings_ingested_total")
        if uploads != sent[copy] or findings != sent[copy] * SMALL:
            problems.append(
                f"{copy}: /metrics counts {uploads:.0f} uploads and {findings:.0f} findings, "
                f"sent {sent[copy]} and {sent[copy] * SMALL}"
            )
        log = logs[copy]
        if log["access_lines"] < sent[copy] or log["upload_lines"] < sent[copy]:
            problems.append(
                f"{copy}: {log['access_lines']} access lines and {log['upload_lines']} findings.uploaded lines "
                f"for {sent[copy]} uploads"
            )
    if logs["on"]["json_lines"] != logs["on"]["lines"]:
        problems.append(f"on: {logs['on']['lines'] - logs['on']['json_lines']} log lines are not JSON")
    if logs["off"]["json_lines"]:
        problems.append(f"off: {logs['off']['json_lines']} log lines are JSON")
    return problems


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = bench_parser(__doc__)
    ap.add_argument("--requests", type=int, default=8000, help="50-finding uploads per copy (after a warm-up)")
    ap.add_argument("--rounds", type=int, default=8, help="rounds alternating the copies (even: each first alike)")
    args = ap.parse_args(argv)
    if not 1 <= args.rounds <= 100:
        ap.error("--rounds must be between 1 and 100")
    if not CONCURRENCY * args.rounds <= args.requests <= 100_000:
        ap.error(f"--requests must be between {CONCURRENCY} x --rounds and 100000")
    check_pg_url(args)
    return args


def copy_env(copy: str, url: str, tmp: Path) -> dict[str, str]:
    env = app_env(url)
    env.pop(MULTIPROC_ENV.lower(), None)
    env["FREMFORGE_LOG_FORMAT"] = "json" if copy == "on" else "text"
    folder = tmp / f"metrics-{copy}"  # each copy its own, fresh (not the checkout's instance/metrics)
    folder.mkdir()
    env[MULTIPROC_ENV] = str(folder)
    return env


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backend = args.database
    with (
        temp_dir(f"fremforge-bench-obs-{backend}-") as tmp,
        throwaway_databases(backend, args.pg_url, tmp, PG_DATABASES) as urls,
    ):
        return run(args, tmp, urls)


def run(args: argparse.Namespace, tmp: Path, urls: dict[str, str]) -> int:
    backend = args.database
    load = print_load(backend, f"files in {tmp}")
    if load > (os.cpu_count() or 1) / 2:
        print(f"[{backend}] note: the machine is busy; the ratio is fairer than the absolute figures", flush=True)
    pool = seed_findings(make_trivy(BIG, tmp / "trivy-10k.json"))
    errors = Errors(count=dict.fromkeys(COPIES, 0))
    envs = {copy: copy_env(copy, urls[copy], tmp) for copy in COPIES}
    print(f"[{backend}] preparing databases", flush=True)
    tokens = {copy: prepare_app(envs[copy]) for copy in COPIES}
    logs = {copy: tmp / f"{copy}.log" for copy in COPIES}
    with ExitStack() as stack:
        ports = {}
        for copy in COPIES:
            port, proc = stack.enter_context(
                gunicorn("wsgi:app", ROOT, envs[copy], logs[copy], WORKERS, options=("--access-logfile", "-"))
            )
            wait_until(lambda p=port: healthz_ok(p), proc, f"app ({copy})", logs[copy])
            ports[copy] = port
        clients = {copy: Client(ports[copy], tokens[copy]) for copy in COPIES}
        scraper = stack.enter_context(Scraper(ports["on"]))
        print(f"[{backend}] off on {HOST}:{ports['off']}, on on {HOST}:{ports['on']}; warming up", flush=True)
        warm_up(clients, errors, pool)
        print(
            f"[{backend}] {SMALL}-finding uploads, {args.requests} per copy over {CONCURRENCY} connections, "
            f"{args.rounds} rounds",
            flush=True,
        )
        result = measure(clients, scraper, errors, pool, args.requests, args.rounds)
        scraper.done.set()
        sent = dict.fromkeys(COPIES, 4 + CONCURRENCY * 4 + args.requests)  # warm_up, measure's warm-up, the rounds
        final = {copy: Scraper(ports[copy]).scrape()[1] for copy in COPIES}
        time.sleep(0.5)  # gunicorn's access lines are written after the answers; let the last ones land
    log_stats = {copy: log_lines(logs[copy]) for copy in COPIES}
    problems = check(sent, scraper, final, log_stats)
    if sum(errors.count.values()):
        problems.append(f"failed uploads: {errors.count} {errors.samples}")
        print(f"\noff log tail:\n{tail(logs['off'])}\n\non log tail:\n{tail(logs['on'])}")

    ratio = result["on"]["rps"] / result["off"]["rps"]
    passed = ratio >= RATIO_BAR
    scrape_secs = sorted(s["seconds"] for s in scraper.scrapes) or [0.0]
    print(f"\n[{backend}] {SMALL}-finding uploads x {CONCURRENCY} connections, gunicorn -w {WORKERS} each")
    print(f"  {'copy':<5} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'log bytes/upload':>17}")
    for copy in COPIES:
        r = result[copy]
        per = log_stats[copy]["bytes"] / sent[copy]
        print(f"  {copy:<5} {r['rps']:8.1f} {r['p50_ms']:8.0f} {r['p95_ms']:8.0f} {per:17.0f}")
    rr = result["round_ratios"]
    print(
        f"  on/off {ratio:.3f} (bar >= {RATIO_BAR}): {'PASS' if passed else 'MISS'}; "
        f"per round median {statistics.median(rr):.3f}, min {min(rr):.3f}, max {max(rr):.3f}"
    )
    print(
        f"  scrapes of on: {len(scraper.scrapes)}, median {1000 * statistics.median(scrape_secs):.1f} ms, "
        f"max {1000 * scrape_secs[-1]:.1f} ms, {scraper.scrapes[-1]['bytes'] if scraper.scrapes else 0} bytes"
    )
    on_seconds = result["on"]["seconds"]
    print(
        f"  {result['scrapes_measured']} scrapes in the on copy's {on_seconds:.1f} s of measured rounds "
        f"({result['scrapes_measured'] / on_seconds:.2f}/s)"
    )
    print(f"  errors: {errors.count}; checks: {'ok' if not problems else ''}")
    for p in problems:
        print(f"    - {p}")

    doc = {
        "backend": backend,
        "when": utc_now(),
        "settings": {
            "requests": args.requests,
            "rounds": args.rounds,
            "concurrency": CONCURRENCY,
            "workers": WORKERS,
            "small_findings": SMALL,
            "scrape_every_seconds": SCRAPE_EVERY,
            "off": "FREMFORGE_LOG_FORMAT=text, --access-logfile -, PROMETHEUS_MULTIPROC_DIR a fresh folder, "
            "no scraping",
            "on": "FREMFORGE_LOG_FORMAT=json, --access-logfile -, PROMETHEUS_MULTIPROC_DIR a fresh folder, "
            "GET /metrics once a second during its turns",
            **machine_state(),
            "loadavg_at_start": load,
        },
        "rows": [
            {
                "backend": backend,
                "measurement": f"{SMALL}-finding uploads x {CONCURRENCY} connections",
                "unit": "req/s",
                "off": result["off"]["rps"],
                "on": result["on"]["rps"],
                "ratio": ratio,
                "bar": RATIO_BAR,
                "direction": "higher_is_better",
                "pass": passed,
            }
        ],
        "result": result,
        "scrapes": scraper.scrapes,
        "final_metrics": {copy: samples(final[copy]) for copy in COPIES},
        "logs": log_stats,
        "errors": {**errors.count, "samples": errors.samples},
        "problems": problems,
    }
    print(f"\nwritten: {write_out(f'observability-{backend}.json', doc)}")
    return 0 if passed and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
