#!/usr/bin/env python3
"""Profile one app process ingesting uploads in-process (Flask test client, no gunicorn, no network).

Where ingest_bench.py says how far the app is from the floor, this says where the app's time goes:
the SQL statements per request (count and time), and cProfile's top functions.

  . .venv/bin/activate
  python bench/profile_ingest.py                         # SQLite in a temp dir
  python bench/profile_ingest.py --database-url postgresql://postgres@127.0.0.1:5432/fremforge_bench_profile
  python bench/profile_ingest.py --kind big --count 3    # 10,000-finding seed uploads instead of 50-finding ones

With a PostgreSQL URL, the database named in it is dropped and re-created first, and dropped at the end
(loopback only).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import sqlalchemy as sa
from common import (
    BIG,
    ORG,
    PATH,
    ROOT,
    check_loopback_pg,
    context,
    drop_pg_databases,
    in_app,
    make_trivy,
    pg_url_for,
    recreate_pg_databases,
    seed_body,
    seed_findings,
    small_bodies,
    temp_dir,
)


@contextmanager
def throwaway_database(url: str) -> Iterator[None]:
    """With a PostgreSQL URL (loopback only), the database named in it is dropped and re-created first, and dropped
    again on the way out; any other URL is used as it is."""
    if not url.startswith("postgres"):
        yield
        return
    check_loopback_pg(url, "--database-url")
    server, name = pg_url_for(url, "postgres", "postgresql"), urlsplit(url).path.lstrip("/")
    recreate_pg_databases(server, [name])
    try:
        yield
    finally:
        drop_pg_databases(server, [name])


def make_app(url: str):  # type: ignore[no-untyped-def]
    """The app on `url`, migrated, with the org; returns the app and a findings:write token."""
    from app import create_app, migrate, orgs, tokens

    app = create_app({"DATABASE_URL": url, "SECRET_KEY": "bench"})
    migrate.upgrade(app)
    token = in_app(app, lambda s: tokens.create(s, orgs.create(s, ORG), ["findings:write"], "profile").secret)
    return app, token


class StatementLog:
    """Counts and times every SQL statement the engine runs, keyed by its first words."""

    def __init__(self, engine: sa.Engine) -> None:
        self.count: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()
        sa.event.listen(engine, "before_cursor_execute", self._before)
        sa.event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        conn.info.setdefault("bench_t", []).append(time.perf_counter())

    def _after(self, conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        elapsed = time.perf_counter() - conn.info["bench_t"].pop()
        key = " ".join(statement.split()[:6])[:90]
        self.count[key] += 1
        self.seconds[key] += elapsed

    def report(self, requests: int) -> str:
        lines = [f"{'per request':>12} {'ms/request':>10}  statement"]
        for key, n in self.seconds.most_common():
            lines.append(f"{self.count[key] / requests:>12.2f} {1000 * n / requests:>10.2f}  {key}")
        return "\n".join(lines)


def app_functions(prof: cProfile.Profile, requests: int) -> str:
    """The app's own functions (files under app/) by cumulative time per request: where to look first."""
    app_dir = str(ROOT / "app")
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    rows = [
        (ct, nc, f"{Path(file).relative_to(ROOT)}:{line}({name})")
        for (file, line, name), (_cc, nc, _tt, ct, _callers) in stats.items()
        if file.startswith(app_dir)
    ]
    lines = [f"{'ms/request':>10} {'calls/req':>9}  app function (cumulative, under cProfile)"]
    for ct, nc, where in sorted(rows, reverse=True)[:25]:
        lines.append(f"{1000 * ct / requests:>10.2f} {nc / requests:>9.1f}  {where}")
    return "\n".join(lines)


def bodies(kind: str, count: int, tmp: Path) -> list[tuple[bytes, dict[str, str] | None]]:
    report = make_trivy(BIG, tmp / "trivy.json")
    findings = seed_findings(report)
    if kind == "small":
        return [(b, None) for b in small_bodies("profile", count, findings)]
    if kind == "big":
        return [(seed_body(f"profile-big-{i}", findings), None) for i in range(count)]
    raw = (tmp / "trivy.json").read_bytes()
    return [(raw, context(f"profile-trivy-{i}")) for i in range(count)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database-url", help="default: SQLite in a temp dir")
    ap.add_argument("--kind", choices=("small", "big", "trivy"), default="small")
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()

    with temp_dir("fremforge-profile-") as tmp:
        url = args.database_url or f"sqlite:///{tmp / 'app.db'}"
        with throwaway_database(url):
            app, token = make_app(url)
            try:
                profile(app, token, url, args, tmp)
            finally:
                app.extensions["fremforge.db"].engine.dispose()
    return 0


def profile(app, token: str, url: str, args: argparse.Namespace, tmp: Path) -> None:  # type: ignore[no-untyped-def]
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    warm = 5 if args.kind == "small" else 1
    work = bodies(args.kind, args.count + warm, tmp)

    def post(body: bytes, query: dict[str, str] | None) -> None:
        path = PATH + ("?" + urlencode(query) if query else "")
        resp = client.post(path, data=body, headers=headers)
        assert resp.status_code == 202, (resp.status_code, resp.get_data(as_text=True)[:300])

    for body, query in work[:warm]:  # warm-up: imports, caches, the token's last-use write
        post(body, query)
    log = StatementLog(app.extensions["fremforge.db"].engine)
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    for body, query in work[warm:]:
        post(body, query)
    prof.disable()
    wall = time.perf_counter() - start

    print(
        f"{args.count} {args.kind} uploads on {sa.make_url(url).get_backend_name()}: "
        f"{1000 * wall / args.count:.2f} ms/request (under cProfile)\n"
    )
    print(log.report(args.count) + "\n")
    print(app_functions(prof, args.count) + "\n")
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(prof, stream=out).strip_dirs().sort_stats(order).print_stats(args.top)
        print(f"--- top {args.top} by {order}\n" + out.getvalue().split("\n\n", 1)[-1])


if __name__ == "__main__":
    sys.exit(main())
