"""What the bench scripts share: paths, command-line options, throwaway databases, servers, bodies, the HTTP client.

Each script in bench/ keeps its own measurements and report; the set-up they have in common is here:

  * the --database and --pg-url options and the loopback check of --pg-url;
  * a fresh temp dir, and one fresh database per part (SQLite files in the temp dir, or PostgreSQL databases
    dropped and re-created at --pg-url, and dropped again at the end);
  * the app's environment, its CLI (`flask --app wsgi ...`), gunicorn on a free loopback port, readiness polling,
    and stopping it, always;
  * the app and the floor (shared/bench/floor_app.py) prepared and served side by side;
  * the upload bodies (make_trivy.py's reports in the seed shape) and a keep-alive HTTP client for them;
  * seeding below the ORM (a bare connection set up for bulk loading, COPY or executemany, realistic findings);
  * the JSON written to bench/out/.

Imported as `from common import ...` by scripts run as `python bench/<script>.py` (bench/ is then on sys.path).
Importing it puts the repository root on sys.path, so `app` and `tests.fakes` can be imported.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent  # /work/main
SHARED = ROOT.parent / "shared"
SHARED_BENCH = SHARED / "bench"
VENV_BIN = ROOT / ".venv" / "bin"
OUT_DIR = Path(__file__).resolve().parent / "out"

if str(ROOT) not in sys.path:  # `app` and `tests.fakes` are imported from the repository root
    sys.path.insert(0, str(ROOT))

HOST = "127.0.0.1"  # loopback only, always
ORG = "acme"
REPO = "acme/api"
PATH = f"/api/v1/orgs/{ORG}/image-scans/findings"
BIG = 10_000  # findings in a big seed upload
SMALL = 50  # findings in a small seed upload
READY_TIMEOUT = 60.0  # seconds for a server to answer after start
REQUEST_TIMEOUT = 300.0  # seconds for one request (socket timeout)
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


# ---------------------------------------------------------------- command line


def bench_parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser described by the first line of the script's docstring, with --database and --pg-url."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument(
        "--pg-url",
        default=DEFAULT_PG_URL,
        help="maintenance URL of a loopback PostgreSQL (trust auth) for the throwaway databases",
    )
    return ap


def check_pg_url(args: argparse.Namespace) -> None:
    """With --database postgresql, refuse a --pg-url that is not on loopback (exit 1)."""
    if args.database == "postgresql":
        check_loopback_pg(args.pg_url)


# ---------------------------------------------------------------- the run: temp dir, machine, output


@contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    """A fresh temp dir for the run's files (SQLite databases, logs, bodies); removed on the way out."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def print_load(backend: str, where: str) -> float:
    """Print the run's first line: the load average and the CPUs, then where its files are. Returns the load."""
    load = os.getloadavg()[0]
    print(f"[{backend}] load average {load:.2f} on {os.cpu_count()} CPUs; {where}", flush=True)
    return load


def machine_state() -> dict[str, Any]:
    """The CPUs and the load average now, for the settings in the JSON output."""
    return {"cpus": os.cpu_count(), "loadavg_1_5_15_at_end": os.getloadavg()}


def utc_now() -> str:
    """The time now, as the JSON output's "when"."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_out(name: str, doc: dict[str, Any]) -> Path:
    """Write `doc` as indented JSON to bench/out/<name> (anything JSON has no type for as text); return the path."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / name
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return path


def forget_app_settings() -> None:
    """Remove FREMFORGE_* from this process's environment: the app's settings are the bench's, not the shell's."""
    for key in [k for k in os.environ if k.startswith("FREMFORGE_")]:
        del os.environ[key]


# ---------------------------------------------------------------- databases


def check_loopback_pg(url: str, option: str = "--pg-url") -> None:
    """Exit (code 1) unless `url` points at a PostgreSQL on loopback."""
    host = urlsplit(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"{option} must point at loopback (127.0.0.1), not {host!r}")


def libpq_url(url: str) -> str:
    """The URL as psycopg takes it (no SQLAlchemy driver suffix such as +psycopg)."""
    return urlunsplit(("postgresql", *urlsplit(url)[1:]))


def pg_url_for(base: str, dbname: str, driver: str = "postgresql+psycopg") -> str:
    """The URL of database `dbname` on the server of `base`, with the given scheme."""
    parts = urlsplit(base)
    return urlunsplit((driver, parts.netloc, "/" + dbname, parts.query, ""))


def recreate_pg_databases(pg_url: str, names: Iterable[str]) -> None:
    """Drop (closing any connections to them) and create each named database on the server of `pg_url`."""
    import psycopg

    with psycopg.connect(libpq_url(pg_url), autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')


def drop_pg_databases(pg_url: str, names: Iterable[str]) -> None:
    """Drop each named database on the server of `pg_url`, closing any connections to them."""
    import psycopg

    with psycopg.connect(libpq_url(pg_url), autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def throwaway_databases(backend: str, pg_url: str, tmp: Path, names: dict[str, str]) -> Iterator[dict[str, str]]:
    """One fresh database per key of `names`; yields each key's SQLAlchemy URL.

    SQLite: the file `<key>.db` in `tmp` (removed with it). PostgreSQL: the database `names[key]` on the server of
    `pg_url`, dropped and re-created, and dropped again on the way out; a failed drop is only a note on stderr,
    since the run's result stands.
    """
    if backend == "sqlite":
        yield {key: f"sqlite:///{tmp / (key + '.db')}" for key in names}
        return
    try:
        recreate_pg_databases(pg_url, names.values())
        yield {key: pg_url_for(pg_url, name) for key, name in names.items()}
    finally:
        try:
            drop_pg_databases(pg_url, names.values())
        except Exception as exc:  # the result stands; say why the cleanup did not happen
            print(f"note: could not drop {', '.join(names.values())}: {exc}", file=sys.stderr)


# ---------------------------------------------------------------- processes


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 30 s (gunicorn's master stops its workers on SIGTERM)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def gunicorn(
    target: str,
    chdir: Path,
    env: dict[str, str],
    log: Path,
    workers: int = 2,
    port: int | None = None,
    options: Sequence[str] = (),
) -> Iterator[tuple[int, subprocess.Popen]]:
    """Serve `target` with `gunicorn -w <workers>` on a loopback port (a free one unless given); yields the port
    and the master process, and always stops it on the way out. `options` go to gunicorn before the target."""
    if port is None:
        port = free_port()
    cmd = [str(VENV_BIN / "gunicorn"), "-w", str(workers), "-b", f"{HOST}:{port}", "--chdir", str(chdir)]
    cmd += [*options, target]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=chdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield port, proc
    finally:
        stop(proc)


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
    """Whether the app on `port` answers GET /healthz with 200."""
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=2)
        conn.request("GET", "/healthz")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except (OSError, http.client.HTTPException):
        return False


def tcp_open(port: int) -> bool:
    """Whether something accepts TCP connections on `port` (the floor has no health page)."""
    try:
        socket.create_connection((HOST, port), timeout=2).close()
        return True
    except OSError:
        return False


def base_env() -> dict[str, str]:
    """This process's environment without the app's and the floor's settings, for the servers and CLI commands."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FREMFORGE_", "FLOOR_"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # shared/ is read-only; keep the trees as they are
    return env


def app_env(database_url: str) -> dict[str, str]:
    """The app's environment: its database and a random secret key."""
    env = base_env()
    env["FREMFORGE_DATABASE_URL"] = database_url
    env["FREMFORGE_SECRET_KEY"] = secrets.token_urlsafe(48)
    return env


def flask_cli(env: dict[str, str], *args: str) -> str:
    """Run `flask --app wsgi ARGS` in the repository root; return its stdout, or fail with its output."""
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


@dataclass
class Servers:
    """The app and the floor, each under gunicorn on its own loopback port."""

    token: str  # the app's findings:write token
    app_env: dict[str, str]
    app_port: int
    app_proc: subprocess.Popen
    floor_port: int
    floor_proc: subprocess.Popen


@contextmanager
def app_and_floor(urls: dict[str, str], tmp: Path, workers: int = 2) -> Iterator[Servers]:
    """Prepare the app's database (urls["app"]) and the floor's (urls["floor"]), serve both with
    `gunicorn -w <workers>`, and wait until both answer; both are always stopped on the way out.
    Their logs are tmp/app.log and tmp/floor.log."""
    env_app = app_env(urls["app"])
    env_floor = {**base_env(), "FLOOR_DB": urls["floor"]}
    token = prepare_app(env_app)
    prepare_floor(env_floor)
    with ExitStack() as stack:
        app_port, app_proc = stack.enter_context(gunicorn("wsgi:app", ROOT, env_app, tmp / "app.log", workers))
        floor_port, floor_proc = stack.enter_context(
            gunicorn("floor_app:app", SHARED_BENCH, env_floor, tmp / "floor.log", workers)
        )
        wait_until(lambda: healthz_ok(app_port), app_proc, "app", tmp / "app.log")
        wait_until(lambda: tcp_open(floor_port), floor_proc, "floor", tmp / "floor.log")
        yield Servers(token, env_app, app_port, app_proc, floor_port, floor_proc)


# ---------------------------------------------------------------- CPU used, from /proc (Linux)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pids: Iterable[int]) -> float:
    """The user + system CPU seconds the processes have used so far (those gone meanwhile count nothing)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return total / CLOCK_TICKS


def children(pid: int) -> list[int]:
    """The direct children of a process (a gunicorn master's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent == pid:
                found.append(int(entry.name))
    return found


def postgres_backends(dbname: str) -> list[int]:
    """The PostgreSQL server processes serving connections to `dbname` on this machine, by their process title:
    `postgres: [<cluster name>:] <user> <database> <client> <state>`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            words = title.split()
            if words[:1] == ["postgres:"] and dbname in words[2:4]:
                found.append(int(entry.name))
    return found


@dataclass
class CpuMeter:
    """CPU seconds used by one server's gunicorn workers and, on PostgreSQL, by the backends serving its database;
    the processes are looked up at each reading (gunicorn may replace a worker, a pool may reconnect)."""

    master: subprocess.Popen
    database: str | None = None  # a PostgreSQL database name; None on SQLite

    def read(self) -> dict[str, float]:
        """Seconds so far, by part; nothing where there is no /proc to read."""
        if not Path("/proc/self/stat").exists():
            return {}
        taken = {"workers": cpu_seconds(children(self.master.pid))}
        if self.database is not None:
            taken["database"] = cpu_seconds(postgres_backends(self.database))
        return taken


# ---------------------------------------------------------------- the app, in-process


def in_app(app: Any, fn: Callable[[Any], Any]) -> Any:
    """fn(session) in a write transaction of the app's own session, as a request or CLI command has it."""
    from app import db
    from app.db import write_transaction

    with app.app_context():
        session = db.session()
        with write_transaction(session):
            return fn(session)


# ---------------------------------------------------------------- upload bodies


def make_trivy(n: int, out: Path, seed: int = 1, id_offset: int = 0) -> dict:
    """A Trivy report of `n` vulnerabilities written to `out` by shared/bench/make_trivy.py; returns it parsed.
    Its advisory ids are numbered from `id_offset` + 1, so reports with disjoint ranges share no advisory."""
    subprocess.run(
        [
            sys.executable,
            str(SHARED_BENCH / "make_trivy.py"),
            str(n),
            str(out),
            "--seed",
            str(seed),
            "--id-offset",
            str(id_offset),
        ],
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
    """A commit SHA of its own for each label."""
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
    """A seed-shaped upload body: the label's context and the findings."""
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
        """POST the body to the findings endpoint; return the status and the answer's bytes."""
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
    """What is wrong with an upload's answer (not 202, or not `expect` findings accepted), or None."""
    if status != 202:
        return f"HTTP {status}: {payload[:300]!r}"
    try:
        accepted = json.loads(payload)["accepted"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP 202 without an 'accepted' count: {payload[:300]!r}"
    return None if accepted == expect else f"HTTP 202 but accepted {accepted}, not {expect}"


def warm_up(clients: dict[str, Client], errors: Errors, pool: list[dict]) -> None:
    """A few small uploads per server, so imports and connection pools are warm before timing."""
    for server, client in clients.items():
        for body in small_bodies(f"first-{server}", 4, pool):
            timed_post(client, server, errors, body, SMALL)
        client.close_all()


# ---------------------------------------------------------------- seeding below the ORM

PACKAGES = (  # noqa: SIM905
    "openssl libssl3 libcurl4 curl zlib1g glibc libc6 libxml2 libexpat1 libsqlite3-0 libpq5 perl-base tar "
    "gzip bash coreutils util-linux libgnutls30 libkrb5-3 libzstd1 ncurses-base busybox musl apk-tools "
    "libcrypto3 django flask jinja2 werkzeug requests urllib3 certifi cryptography pyyaml pillow lxml "
    "setuptools pip express lodash axios minimist semver ws jsonwebtoken body-parser qs tar-fs "
    "follow-redirects golang.org/x/net golang.org/x/crypto golang.org/x/text google.golang.org/grpc "
    "stdlib org.apache.logging.log4j:log4j-core com.fasterxml.jackson.core:jackson-databind "
    "io.netty:netty-codec-http org.springframework:spring-web org.yaml:snakeyaml com.google.guava:guava"
).split()
SEVERITY_MIX = {
    False: {"medium": 45, "low": 45, "unknown": 10},  # an image without high or critical findings
    True: {"critical": 8, "high": 25, "medium": 35, "low": 25, "unknown": 7},
}


def finding_pool(rng: random.Random, size: int, dirty: bool) -> list[tuple[Any, ...]]:
    """`size` realistic finding payloads in store.COLUMNS order from cve_id on, JSON columns as JSON text;
    `dirty`: with high and critical findings."""
    mix = SEVERITY_MIX[dirty]
    severities = rng.choices(list(mix), weights=list(mix.values()), k=size)
    pool = []
    for sev in severities:
        year = rng.randint(2015, 2025)
        cve = f"CVE-{year}-{rng.randint(1000, 52000)}"
        pkg = rng.choice(PACKAGES)
        installed = f"{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 20)}"
        fixed = f"{installed}-r{rng.randint(1, 9)}" if rng.random() < 0.65 else None
        debian = rng.random() < 0.5
        target = f"ghcr.io/acme/app (debian 12.{rng.randint(0, 9)})" if debian else f"usr/local/lib/{pkg}/METADATA"
        title = f"{pkg}: {rng.choice(('heap overflow', 'denial of service', 'path traversal', 'use after free'))} in "
        title += rng.choice(("the parser", "TLS handshake", "archive extraction", "HTTP/2 handling", "the decoder"))
        url = f"https://avd.aquasec.com/nvd/{cve.lower()}"
        refs = json.dumps([f"https://nvd.nist.gov/vuln/detail/{cve}", f"https://github.com/advisories/GHSA-{year}"])
        vendors = json.dumps([f"DSA-{rng.randint(4000, 6000)}-1"] if debian else [])
        pool.append((cve, sev, pkg, installed, fixed, target, title, url, refs, vendors, False))
    return pool


@contextmanager
def seeding_connection(url: str) -> Iterator[sa.Connection]:
    """A bare connection (none of the app's listeners) set up for bulk loading; put back afterwards."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                # Only while seeding a throwaway file: no journal, no fsync. WAL again when done, as the app has it.
                for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-1000000", "temp_store=MEMORY"):
                    conn.exec_driver_sql(f"PRAGMA {pragma}")
            else:
                conn.exec_driver_sql("SET synchronous_commit = off")
            conn.commit()
            try:
                yield conn
            finally:
                if conn.dialect.name == "sqlite":
                    conn.rollback()
                    conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    finally:
        engine.dispose()


def bulk(conn: sa.Connection, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
    """COPY on PostgreSQL, one executemany on SQLite (as app.findings.store does for findings)."""
    quoted = ", ".join(f'"{c}"' for c in columns)
    if conn.dialect.name == "postgresql":
        raw = conn.connection.driver_connection
        with raw.cursor() as cur, cur.copy(f"COPY {table} ({quoted}) FROM STDIN") as copy:  # type: ignore[union-attr]
            for row in rows:
                copy.write_row(row)
    else:
        conn.exec_driver_sql(f"INSERT INTO {table} ({quoted}) VALUES ({', '.join('?' * len(columns))})", list(rows))


def move_chain_head(conn: sa.Connection, org_id: int, seq: int, head_hash: str) -> None:
    """After seeding: the org's chain head at the last finding, and (PostgreSQL) the scans' id sequence past the
    last scan, since the seeded scans were given their ids. In the caller's transaction."""
    conn.execute(
        sa.text("UPDATE chain_heads SET seq = :seq, head_hash = :hash WHERE org_id = :org"),
        {"seq": seq, "hash": head_hash, "org": org_id},
    )
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            "SELECT setval(pg_get_serial_sequence('scan_runs', 'id'), (SELECT max(id) FROM scan_runs))"
        )
