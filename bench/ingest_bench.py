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
import hashlib
import http.client
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent  # /work/main
SHARED_BENCH = ROOT.parent / "shared" / "bench"
VENV_BIN = ROOT / ".venv" / "bin"
OUT_DIR = Path(__file__).resolve().parent / "out"

HOST = "127.0.0.1"  # loopback only, always
ORG = "acme"
REPO = "acme/api"
PATH = f"/api/v1/orgs/{ORG}/image-scans/findings"
BIG = 10_000
SMALL = 50
CONCURRENCY = 16
READY_TIMEOUT = 60.0  # seconds for a server to answer after start
REQUEST_TIMEOUT = 300.0  # seconds for one request (socket timeout)
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


@dataclass
class Errors:
    """Failed requests, non-202 answers and answers not accepting every finding, per server; a few samples."""

    count: dict[str, int] = field(default_factory=lambda: {"floor": 0, "app": 0, "app-more": 0})
    samples: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, server: str, what: str) -> None:
        with self.lock:
            self.count[server] += 1
            if len(self.samples) < 10:
                self.samples.append(f"{server}: {what}")


# ---------------------------------------------------------------- bodies


def make_trivy(n: int, out: Path, seed: int = 1) -> dict:
    subprocess.run(
        [sys.executable, str(SHARED_BENCH / "make_trivy.py"), str(n), str(out), "--seed", str(seed)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return json.loads(out.read_text())


def seed_findings(report: dict) -> list[dict]:
    """The Trivy report mapped to seed findings, exactly as the documented workflow's jq does it."""
    return [
        {
            "cve_id": v["VulnerabilityID"],
            "severity": v["Severity"],
            "package_name": v["PkgName"],
            "installed_version": v["InstalledVersion"],
            "fixed_version": v.get("FixedVersion"),
            "title": v.get("Title"),
            "target": v.get("PkgPath") or r["Target"],
        }
        for r in report["Results"]
        for v in r.get("Vulnerabilities") or ()
    ]


def commit_sha(label: str) -> str:
    return hashlib.sha1(label.encode()).hexdigest()


def context(label: str) -> dict[str, str]:
    """A distinct commit and image per upload, as CI would send them."""
    sha = commit_sha(label)
    return {
        "image_ref": f"registry.example.invalid/shop/api:{sha[:12]}",
        "commit_sha": sha,
        "repo_full_name": REPO,
    }


def seed_body(label: str, findings: list[dict]) -> bytes:
    return json.dumps({**context(label), "findings": findings}).encode()


def small_bodies(prefix: str, count: int, pool: list[dict]) -> list[bytes]:
    """`count` 50-finding seed bodies, each its own commit, findings taken in turn from the pool."""
    slices = len(pool) // SMALL
    return [seed_body(f"{prefix}-{i}", pool[(i % slices) * SMALL : (i % slices + 1) * SMALL]) for i in range(count)]


# ---------------------------------------------------------------- HTTP client


class Client:
    """One keep-alive http.client connection per thread (http.client reopens it when the server closes it)."""

    def __init__(self, port: int, token: str | None) -> None:
        self.port = port
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.local = threading.local()
        self.opened: list[http.client.HTTPConnection] = []
        self.lock = threading.Lock()

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(HOST, self.port, timeout=REQUEST_TIMEOUT)
            with self.lock:
                self.opened.append(conn)
        return conn

    def post(self, body: bytes, query: dict[str, str] | None = None) -> tuple[int, bytes]:
        url = PATH + ("?" + urlencode(query) if query else "")
        conn = self._conn()
        try:
            conn.request("POST", url, body=body, headers=self.headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except Exception:
            conn.close()
            self.local.conn = None
            raise

    def close_all(self) -> None:
        """Close every thread's connection; the next post from any thread opens a new one."""
        with self.lock:
            for conn in self.opened:
                conn.close()
            self.opened.clear()
            self.local = threading.local()


def timed_post(
    client: Client, server: str, errors: Errors, body: bytes, expect: int, query: dict[str, str] | None = None
) -> float:
    """Post once; return the wall time in seconds. A failure, a non-202 answer, or an answer that did not
    accept `expect` findings is recorded as an error (checked after the clock stops)."""
    start = time.perf_counter()
    try:
        status, payload = client.post(body, query)
    except (OSError, http.client.HTTPException) as exc:
        errors.add(server, f"{type(exc).__name__}: {exc}")
        return time.perf_counter() - start
    elapsed = time.perf_counter() - start
    problem = answer_problem(status, payload, expect)
    if problem:
        errors.add(server, problem)
    return elapsed


def answer_problem(status: int, payload: bytes, expect: int) -> str | None:
    if status != 202:
        return f"HTTP {status}: {payload[:300]!r}"
    try:
        accepted = json.loads(payload)["accepted"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP 202 without an 'accepted' count: {payload[:300]!r}"
    return None if accepted == expect else f"HTTP 202 but accepted {accepted}, not {expect}"


def run_concurrent(client: Client, server: str, errors: Errors, bodies: list[bytes]) -> tuple[float, list[float]]:
    """Post every body over CONCURRENCY threads; return (wall seconds, per-request latencies)."""
    with ThreadPoolExecutor(CONCURRENCY, thread_name_prefix=f"bench-{server}") as pool:
        start = time.perf_counter()
        latencies = list(pool.map(lambda b: timed_post(client, server, errors, b, SMALL), bodies))
        wall = time.perf_counter() - start
    client.close_all()
    return wall, latencies


# ---------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen, what: str, log: Path) -> None:
    """Poll `ready()` until it is true; fail if the process exits or READY_TIMEOUT passes."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; log {log}:\n{tail(log)}")
        if ready():
            return
        time.sleep(0.05)  # poll interval, not a synchronisation point
    raise RuntimeError(f"{what} not ready after {READY_TIMEOUT:.0f}s; log {log}:\n{tail(log)}")


def healthz_ok(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=2)
        conn.request("GET", "/healthz")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except (OSError, http.client.HTTPException):
        return False


def tcp_open(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=2).close()
        return True
    except OSError:
        return False


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextmanager
def gunicorn(
    target: str, chdir: Path, env: dict[str, str], log: Path, workers: int = 2
) -> Iterator[tuple[int, subprocess.Popen]]:
    """Serve `target` with `gunicorn -w <workers>` on a free loopback port; always stopped on the way out."""
    port = free_port()
    cmd = [str(VENV_BIN / "gunicorn"), "-w", str(workers), "-b", f"{HOST}:{port}", "--chdir", str(chdir), target]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=chdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield port, proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()  # gunicorn's master stops its workers on SIGTERM
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FREMFORGE_", "FLOOR_"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # shared/ is read-only; keep the trees as they are
    return env


def app_env(database_url: str) -> dict[str, str]:
    env = base_env()
    env["FREMFORGE_DATABASE_URL"] = database_url
    env["FREMFORGE_SECRET_KEY"] = secrets.token_urlsafe(48)
    return env


def flask_cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [str(VENV_BIN / "flask"), "--app", "wsgi", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"flask {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def prepare_app(env: dict[str, str]) -> str:
    """Migrate the app's empty database, add the org, and return a findings:write token."""
    flask_cli(env, "db", "upgrade")
    flask_cli(env, "orgs", "create", ORG)
    out = flask_cli(env, "tokens", "create", "--org", ORG, "--scope", "findings:write", "--name", "bench")
    return out.strip().splitlines()[-1].strip()


def prepare_floor(env: dict[str, str]) -> None:
    """Create the floor's tables once, so its two workers do not race to create them at import."""
    subprocess.run([sys.executable, "-c", "import floor_app"], cwd=SHARED_BENCH, env=env, check=True, timeout=120)


# ---------------------------------------------------------------- databases


def sqlite_urls(tmp: Path) -> tuple[str, str]:
    return f"sqlite:///{tmp / 'app.db'}", f"sqlite:///{tmp / 'floor.db'}"


def pg_url_for(base: str, dbname: str, driver: str) -> str:
    parts = urlsplit(base)
    return urlunsplit((driver, parts.netloc, "/" + dbname, parts.query, ""))


def libpq_url(base: str) -> str:
    """The URL as psycopg takes it (no SQLAlchemy driver suffix such as +psycopg)."""
    parts = urlsplit(base)
    return urlunsplit(("postgresql", *parts[1:]))


def check_loopback_pg(base: str) -> None:
    host = urlsplit(base).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"--pg-url must point at loopback (127.0.0.1), not {host!r}")


def recreate_pg_databases(base: str) -> tuple[str, str]:
    """Drop and create the throwaway databases; return the app's and the floor's URLs."""
    import psycopg

    with psycopg.connect(libpq_url(base), autocommit=True) as conn:
        for name in PG_DATABASES.values():
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
    return (
        pg_url_for(base, PG_DATABASES["app"], "postgresql+psycopg"),
        pg_url_for(base, PG_DATABASES["floor"], "postgresql+psycopg"),
    )


def drop_pg_databases(base: str) -> None:
    import psycopg

    with psycopg.connect(libpq_url(base), autocommit=True) as conn:
        for name in PG_DATABASES.values():
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---------------------------------------------------------------- the measurements


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
    clients: dict[str, Client], errors: Errors, pool: list[dict], requests: int
) -> dict[str, dict[str, float]]:
    """Warm up each server, then post `requests` 50-finding uploads to each over 16 connections.

    The requests go in ROUNDS alternating the servers (bodies alike: the same findings, each server its own
    commits, as two servers may share a database), so a change in machine load during the run weighs on all
    alike; throughput is requests over summed wall time.
    """
    size = -(-requests // ROUNDS)
    bodies = {server: small_bodies(f"small-{server}", requests, pool) for server in clients}
    rounds = [{server: b[i : i + size] for server, b in bodies.items()} for i in range(0, requests, size)]
    walls = dict.fromkeys(clients, 0.0)
    lats: dict[str, list[float]] = {server: [] for server in clients}
    for server in clients:
        run_concurrent(clients[server], server, errors, small_bodies(f"warm-{server}", CONCURRENCY * 4, pool))
    for chunk in rounds:
        for server in clients:
            wall, lat = run_concurrent(clients[server], server, errors, chunk[server])
            walls[server] += wall
            lats[server] += lat
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
        }
        print(
            f"  {server}: {requests} requests in {walls[server]:.2f}s = {out[server]['rps']:.1f} req/s "
            f"(p50 {out[server]['p50_ms']:.0f} ms, p95 {out[server]['p95_ms']:.0f} ms)",
            flush=True,
        )
    return out


def warm_up(clients: dict[str, Client], errors: Errors, pool: list[dict]) -> None:
    """A few small uploads per server, so imports and connection pools are warm before timing."""
    for server, client in clients.items():
        for body in small_bodies(f"first-{server}", 4, pool):
            timed_post(client, server, errors, body, SMALL)
        client.close_all()


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
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"ingest-{backend}.json"
    doc = {
        "backend": backend,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {
            "repeat": args.repeat,
            "requests": args.requests,
            "concurrency": CONCURRENCY,
            "big_findings": BIG,
            "small_findings": SMALL,
            "workers": args.workers,
            "scaling_workers": args.scaling,
            "cpus": os.cpu_count(),
            "loadavg_1_5_15_at_end": os.getloadavg(),
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
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument(
        "--pg-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="maintenance URL of a loopback PostgreSQL (trust auth) for the throwaway databases",
    )
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
    if args.database == "postgresql":
        check_loopback_pg(args.pg_url)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backend = args.database
    errors = Errors()
    tmp = Path(tempfile.mkdtemp(prefix=f"fremforge-bench-{backend}-"))
    try:
        load = os.getloadavg()[0]
        print(f"[{backend}] load average {load:.2f} on {os.cpu_count()} CPUs; Trivy reports in {tmp}", flush=True)
        if load > (os.cpu_count() or 1) / 2:
            print(f"[{backend}] note: the machine is busy; ratios are fairer than absolute figures", flush=True)
        report = make_trivy(BIG, tmp / "trivy-10k.json")
        raw_report = (tmp / "trivy-10k.json").read_bytes()
        findings = seed_findings(report)
        assert len(findings) == BIG

        app_url, floor_url = recreate_pg_databases(args.pg_url) if backend == "postgresql" else sqlite_urls(tmp)
        env_app = app_env(app_url)
        env_floor = {**base_env(), "FLOOR_DB": floor_url}
        print(f"[{backend}] preparing databases", flush=True)
        token = prepare_app(env_app)
        prepare_floor(env_floor)

        with ExitStack() as stack:
            app_port, app_proc = stack.enter_context(gunicorn("wsgi:app", ROOT, env_app, tmp / "app.log", args.workers))
            floor_port, floor_proc = stack.enter_context(
                gunicorn("floor_app:app", SHARED_BENCH, env_floor, tmp / "floor.log", args.workers)
            )
            wait_until(lambda: healthz_ok(app_port), app_proc, "app", tmp / "app.log")
            wait_until(lambda: tcp_open(floor_port), floor_proc, "floor", tmp / "floor.log")
            clients = {"floor": Client(floor_port, None), "app": Client(app_port, token)}
            print(f"[{backend}] app on {HOST}:{app_port}, floor on {HOST}:{floor_port}; warming up", flush=True)
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
            conc = measure_concurrent(clients, errors, findings, args.requests)
            if args.scaling is not None:
                more_port, more_proc = stack.enter_context(
                    gunicorn("wsgi:app", ROOT, env_app, tmp / "app-more.log", args.scaling)
                )
                wait_until(lambda: healthz_ok(more_port), more_proc, "app (more workers)", tmp / "app-more.log")
                print(
                    f"[{backend}] scaling: the app with {args.workers} and with {args.scaling} workers, alternating",
                    flush=True,
                )
                scaling = measure_concurrent(
                    {"app": clients["app"], "app-more": Client(more_port, token)}, errors, findings, args.requests
                )
                conc["scaling"] = {"workers": args.workers, "more_workers": args.scaling, **scaling}
            if sum(errors.count.values()):
                print(f"\napp log tail:\n{tail(tmp / 'app.log')}\n\nfloor log tail:\n{tail(tmp / 'floor.log')}")

        rows = build_rows(big, conc)
        print_table(backend, rows, errors)
        print(f"\nwritten: {write_json(backend, rows, errors, big, conc, args)}")
        ok = all(r.passed for r in rows) and sum(errors.count.values()) == 0
        return 0 if ok else 1
    finally:
        if backend == "postgresql":
            try:
                drop_pg_databases(args.pg_url)
            except Exception as exc:  # the result stands; say why the cleanup did not happen
                print(f"note: could not drop the bench databases: {exc}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
