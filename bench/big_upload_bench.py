#!/usr/bin/env python3
"""The largest accepted upload against shared/bench/floor_app.py, in the same run, both under `gunicorn -w 2`.

Measures (spec section 9: "the largest accepted upload (MAX_FINDINGS findings) is answered within 2.5x the floor's
time for it, with each server process's peak memory under 512 MiB"):
  * 100,000 findings in the seed shape (the documented jq's mapping of a make_trivy.py report, ~27 MB);
  * 100,000 findings filling the 64 MiB upload limit (the same, with advisory URLs and references);
both to the floor and to the app (same bytes, alternating, --repeat times; median time, app/floor <= 2.5x), and
for information:
  * a raw Trivy report of ~64 MiB (make_trivy.py, as Trivy writes it, indented), against the floor's time for
    the same findings in the seed shape;
  * 100,001 findings: the app answers 413 too_many_findings;
  * 64 MiB of ~800,000 tiny findings (what took > 1.2 GiB per worker before): 413 too_many_findings;
  * 64 MiB of short strings nested 5 and 40 lists deep, and one finding of ~4.5 million keys (what ran past
    gunicorn's 30 s before: minutes for the deep ones): 413 too_many_values;
  * up to 100,000 findings of 64 references and 64 vendor ids each, one character (62 MB) or four and all
    different (64 MiB): each a Python string in the worker (what took 1.1 GiB before): 202, within the memory bar.
Peak memory: each gunicorn worker's peak resident set (VmHWM in /proc/PID/status, reset before each measurement
with `echo 5 > /proc/PID/clear_refs`); bar: under 512 MiB for every app worker in every measurement.

  . .venv/bin/activate
  python bench/big_upload_bench.py                          # SQLite, a fresh temp dir
  python bench/big_upload_bench.py --database postgresql    # fresh fremforge_bench_big_{app,floor} databases

Writes the table to stdout and bench/out/big-upload-<backend>.json; exit 1 when a bar is missed or an answer
is not the expected one.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    HOST,
    Client,
    Errors,
    app_and_floor,
    bench_parser,
    check_pg_url,
    context,
    machine_state,
    make_trivy,
    print_load,
    seed_body,
    seed_findings,
    temp_dir,
    throwaway_databases,
    utc_now,
    warm_up,
    write_out,
)

MAX_FINDINGS = 100_000  # the app's default (FREMFORGE_MAX_FINDINGS)
LIMIT_BYTES = 64 * 2**20  # the app's default upload limit (FREMFORGE_MAX_UPLOAD_MB=64)
TIME_BAR = 2.5
RSS_BAR_MIB = 512
GUNICORN_TIMEOUT = 30  # gunicorn's default worker timeout, stated
PG_DATABASES = {"app": "fremforge_bench_big_app", "floor": "fremforge_bench_big_floor"}


# ---------------------------------------------------------------- bodies


def filled_findings(findings: list[dict], report: dict, limit: int) -> list[dict]:
    """The findings with their advisory links (PrimaryURL, References) and as many more references as bring
    the seed body just under `limit` bytes: 100,000 findings in the largest body the app accepts."""
    links = [(v["PrimaryURL"], v["References"]) for r in report["Results"] for v in r.get("Vulnerabilities") or ()]
    out = [{**f, "primary_url": url, "references": list(refs)} for f, (url, refs) in zip(findings, links, strict=True)]
    extra = "https://security-tracker.example.invalid/advisories/{cve}/{k:02d}"
    room = limit - 64 * 1024 - len(seed_body("size", out))
    for k in range(40):
        for f in out:
            ref = extra.format(cve=f["cve_id"], k=k)
            room -= len(ref) + 4  # quotes, comma, space
            if room < 0:
                assert len(seed_body("size", out)) <= limit
                return out
            f["references"].append(ref)
    return out


def tiny_body(limit: int) -> tuple[bytes, int]:
    """A seed body of as many tiny findings as fit in `limit` bytes (about 800,000)."""
    head = json.dumps({**context("tiny"), "findings": []})[:-2].encode()  # ends with "findings": [
    parts, size, n = [], len(head) + 2, 0
    while True:
        one = b'{"cve_id":"CVE-%d","severity":"low","package_name":"p","installed_version":null}' % n
        if size + len(one) + 1 > limit:
            break
        parts.append(one)
        size += len(one) + 1
        n += 1
    return head + b",".join(parts) + b"]}", n


def nested_body(limit: int, depth: int) -> bytes:
    """A seed body without findings whose extra key holds `limit` bytes of short strings nested `depth` lists deep:
    each level walked used to scan the rest of the body again (minutes past ten levels)."""
    head = json.dumps({**context(f"nested-{depth}"), "findings": []})[:-1].encode() + b', "junk": ' + b"[" * depth
    n = (limit - len(head) - depth - 2) // 4
    return head + b",".join([b'"a"'] * n) + b"]" * depth + b"}"


def wide_finding_body(limit: int) -> bytes:
    """A seed body of one finding holding as many extra keys as fit in `limit` bytes (about 4.5 million): walked a
    key at a time to its end, it ran past gunicorn's timeout."""
    head = json.dumps({**context("wide"), "findings": []})[:-2].encode() + b"{"
    tail = b'"cve_id":"CVE-1","severity":"low","package_name":"p","installed_version":"1"}]}'
    parts, size, n = [], len(head) + len(tail), 0
    while True:
        one = b'"k%d":0,' % n
        if size + len(one) > limit:
            break
        parts.append(one)
        size += len(one)
        n += 1
    return head + b"".join(parts) + tail


def short_lists_body(limit: int, n: int, distinct: bool) -> tuple[bytes, int]:
    """A seed body of up to `n` findings (as many as fit in `limit` bytes), each with 64 references and 64 vendor
    ids, all within the limits: one character each (`distinct` False), or four, every one different (True). Their
    strings are what costs a worker memory (each a Python object of ~50 bytes), not their bytes."""
    label = "short-distinct" if distinct else "short-same"
    head = json.dumps({**context(label), "findings": []})[:-2].encode()  # ends with "findings": [
    alphabet = [chr(c).encode() for c in range(0x30, 0x7B) if chr(c).isalnum()]
    words = (a + b + c + d for a in alphabet for b in alphabet for c in alphabet for d in alphabet)
    same = b",".join([b'"a"'] * 64)
    parts, size = [], len(head) + 2
    for i in range(n):
        refs = b",".join(b'"%s"' % next(words) for _ in range(64)) if distinct else same
        ids = b",".join(b'"%s"' % next(words) for _ in range(64)) if distinct else same
        one = b'{"cve_id":"C%d","severity":"low","package_name":"p","installed_version":"",' % i
        one += b'"references":[' + refs + b'],"vendor_ids":[' + ids + b"]}"
        if size + len(one) + 1 > limit:
            break
        parts.append(one)
        size += len(one) + 1
    return head + b",".join(parts) + b"]}", len(parts)


def trivy_under(limit: int, tmp: Path) -> tuple[bytes, dict]:
    """A make_trivy.py report (indented, as Trivy writes it) just under `limit` bytes, and the report."""
    n = 44_000
    while True:
        path = tmp / f"trivy-{n}.json"
        report = make_trivy(n, path, seed=7)
        data = path.read_bytes()
        if len(data) <= limit:
            return data, report
        n -= 1000


# ---------------------------------------------------------------- memory of the server processes


def workers(master: int) -> list[int]:
    """The pids whose parent is `master` (gunicorn's workers)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == master:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return sorted(out)


def reset_peaks(pids: list[int]) -> None:
    for pid in pids:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")  # resets the peak resident set size (VmHWM) to the current one


def peaks_mib(pids: list[int], field: str = "VmHWM") -> dict[int, float]:
    """Each process's peak resident set since the last reset_peaks (VmHWM), or its current one (VmRSS)."""
    out = {}
    for pid in pids:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    out[pid] = int(line.split()[1]) / 1024
    return out


# ---------------------------------------------------------------- measurements


@dataclass
class Result:
    measurement: str
    expect: str  # "202 N" or "413 too_many_findings"
    app_seconds: list[float]
    floor_seconds: list[float]
    app_peak_mib: float
    floor_peak_mib: float
    bar: float | None
    problems: list[str]

    @property
    def ratio(self) -> float | None:
        if not self.floor_seconds:
            return None
        return statistics.median(self.app_seconds) / statistics.median(self.floor_seconds)

    @property
    def passed(self) -> bool:
        time_ok = self.bar is None or (self.ratio is not None and self.ratio <= self.bar)
        return time_ok and self.app_peak_mib < RSS_BAR_MIB and not self.problems


def check(status: int, payload: bytes, expect: str) -> str | None:
    want_status, want = expect.split(" ", 1)
    if status != int(want_status):
        return f"HTTP {status}, not {want_status}: {payload[:300]!r}"
    try:
        doc = json.loads(payload)
    except ValueError:
        return f"HTTP {status} without a JSON body: {payload[:300]!r}"
    if status == 202 and doc.get("accepted") != int(want):
        return f"accepted {doc.get('accepted')}, not {want}"
    if status != 202 and doc.get("error") != want:
        return f"error {doc.get('error')!r}, not {want!r}"
    return None


def post(client: Client, body: bytes, expect: str, problems: list[str], query: dict | None = None) -> float:
    start = time.perf_counter()
    try:
        status, payload = client.post(body, query)
    except (OSError, http.client.HTTPException) as exc:  # a worker killed at its timeout drops the connection
        problems.append(f"{type(exc).__name__}: {exc}")
        client.close_all()
        return time.perf_counter() - start
    elapsed = time.perf_counter() - start
    problem = check(status, payload, expect)
    if problem:
        problems.append(problem)
    return elapsed


def measure(
    name: str,
    servers: dict[str, tuple[Client, int]],
    app_body: bytes,
    expect: str,
    repeat: int,
    floor_body: bytes | None = None,
    floor_expect: str | None = None,
    query: dict | None = None,
    bar: float | None = None,
) -> Result:
    """Alternate floor and app `repeat` times; each server's workers' peak memory over the measurement."""
    pids = {s: workers(master) for s, (_, master) in servers.items()}
    for s in pids:
        reset_peaks(pids[s])
    problems: list[str] = []
    app_t: list[float] = []
    floor_t: list[float] = []
    for i in range(repeat):
        if floor_body is not None:
            floor_t.append(post(servers["floor"][0], floor_body, floor_expect or expect, problems))
        app_t.append(post(servers["app"][0], app_body, expect, problems, query))
        line = f"  {name} {i + 1}/{repeat}: app {app_t[-1]:.2f}s"
        if floor_t:
            line += f"  floor {floor_t[-1]:.2f}s"
        print(line, flush=True)
    peaks = {s: peaks_mib(pids[s]) for s in pids}
    if workers(servers["app"][1]) != pids["app"]:
        problems.append("an app worker was replaced during the measurement (killed at its timeout?)")
    return Result(
        name,
        expect,
        app_t,
        floor_t,
        max(peaks["app"].values()),
        max(peaks["floor"].values()) if floor_body is not None else 0.0,
        bar,
        problems[:5],
    )


# ---------------------------------------------------------------- report


def print_table(backend: str, results: list[Result]) -> None:
    print(f"\n[{backend}] largest upload: app and floor under gunicorn -w 2 (timeout {GUNICORN_TIMEOUT}s)")
    header = (
        f"{'measurement':<52} {'answer':<24} {'floor s':>8} {'app s':>8} {'ratio':>6} {'bar':>5} "
        f"{'app MiB':>8} {'floor MiB':>9}  ok"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        floor = f"{statistics.median(r.floor_seconds):8.2f}" if r.floor_seconds else f"{'-':>8}"
        ratio = f"{r.ratio:6.2f}" if r.ratio is not None else f"{'-':>6}"
        bar = f"{r.bar:5.1f}" if r.bar is not None else f"{'info':>5}"
        floor_mib = f"{r.floor_peak_mib:9.0f}" if r.floor_seconds else f"{'-':>9}"
        print(
            f"{r.measurement:<52} {r.expect:<24} {floor} {statistics.median(r.app_seconds):8.2f} {ratio} {bar} "
            f"{r.app_peak_mib:8.0f} {floor_mib}  {'yes' if r.passed else 'NO'}"
        )
        for p in r.problems:
            print(f"    problem: {p}")
    print(f"\nbars: app/floor time <= {TIME_BAR}x where a bar is shown; every app worker's peak < {RSS_BAR_MIB} MiB")


def write_json(backend: str, results: list[Result], sizes: dict[str, Any], args: argparse.Namespace) -> Path:
    doc = {
        "backend": backend,
        "when": utc_now(),
        "settings": {
            "repeat": args.repeat,
            "workers": 2,
            "gunicorn_timeout": GUNICORN_TIMEOUT,
            **machine_state(),
            "body_bytes": sizes,
        },
        "rows": [
            {
                "measurement": r.measurement,
                "expect": r.expect,
                "app_seconds": r.app_seconds,
                "floor_seconds": r.floor_seconds,
                "ratio": r.ratio,
                "bar": r.bar,
                "app_peak_mib": r.app_peak_mib,
                "floor_peak_mib": r.floor_peak_mib,
                "problems": r.problems,
                "pass": r.passed,
            }
            for r in results
        ],
    }
    return write_out(f"big-upload-{backend}.json", doc)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = bench_parser(__doc__)
    ap.add_argument("--repeat", type=int, default=3, help="uploads per server and measurement (median reported)")
    args = ap.parse_args(argv)
    check_pg_url(args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backend = args.database
    with (
        temp_dir(f"fremforge-big-{backend}-") as tmp,
        throwaway_databases(backend, args.pg_url, tmp, PG_DATABASES) as urls,
    ):
        return run(args, tmp, urls)


def run(args: argparse.Namespace, tmp: Path, urls: dict[str, str]) -> int:
    """The bodies, then the measurements on fresh databases; the table and the JSON; 0 when every bar is met."""
    backend = args.database
    print_load(backend, f"bodies in {tmp}")
    report = make_trivy(MAX_FINDINGS, tmp / "trivy-100k.json")
    findings = seed_findings(report)
    assert len(findings) == MAX_FINDINGS
    seed_100k = seed_body("big-100k", findings)
    seed_64 = seed_body("big-64mib", filled_findings(findings, report, LIMIT_BYTES))
    over = seed_body("over", [*findings, {**findings[0], "cve_id": "CVE-OVER-LIMIT"}])
    tiny, tiny_n = tiny_body(LIMIT_BYTES)
    lists = {distinct: short_lists_body(LIMIT_BYTES, MAX_FINDINGS, distinct) for distinct in (False, True)}
    del report
    trivy_raw, trivy_report = trivy_under(LIMIT_BYTES, tmp)
    trivy_findings = seed_findings(trivy_report)
    trivy_seed = seed_body("trivy-as-seed", trivy_findings)
    del trivy_report
    sizes: dict[str, Any] = {
        "seed_100k": len(seed_100k),
        "seed_64mib": len(seed_64),
        "trivy_raw": len(trivy_raw),
        "trivy_as_seed": len(trivy_seed),
        "over_limit": len(over),
        "tiny": len(tiny),
    }
    print(f"[{backend}] bodies: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sizes.items()), flush=True)

    results: list[Result] = []
    with app_and_floor(urls, tmp) as served:
        servers = {
            "app": (Client(served.app_port, served.token), served.app_proc.pid),
            "floor": (Client(served.floor_port, None), served.floor_proc.pid),
        }
        warm_up({"app": servers["app"][0], "floor": servers["floor"][0]}, Errors(), findings)
        print(f"[{backend}] app on {HOST}:{served.app_port}, floor on {HOST}:{served.floor_port}", flush=True)
        idle = {name: peaks_mib(workers(master), "VmRSS") for name, (_, master) in servers.items()}
        sizes["idle_rss_mib"] = {name: sorted(round(v) for v in idle[name].values()) for name in idle}
        print(f"[{backend}] workers' resident set after warm-up (MiB): {sizes['idle_rss_mib']}", flush=True)
        n = MAX_FINDINGS
        results.append(
            measure(
                f"{n:,} findings, seed shape ({len(seed_100k) / 2**20:.0f} MiB)",
                servers, seed_100k, f"202 {n}", args.repeat, seed_100k, bar=TIME_BAR,
            )
        )  # fmt: skip
        results.append(
            measure(
                f"{n:,} findings with references ({len(seed_64) / 2**20:.1f} MiB)",
                servers, seed_64, f"202 {n}", args.repeat, seed_64, bar=TIME_BAR,
            )
        )  # fmt: skip
        results.append(
            measure(
                f"raw Trivy report, {len(trivy_findings):,} vulns ({len(trivy_raw) / 2**20:.1f} MiB)",
                servers, trivy_raw, f"202 {len(trivy_findings)}", args.repeat, trivy_seed,
                f"202 {len(trivy_findings)}", query=context("trivy-raw"),
            )
        )  # fmt: skip
        results.append(
            measure(f"{n + 1:,} findings (one past MAX_FINDINGS)", servers, over, "413 too_many_findings", 1)
        )
        results.append(
            measure(
                f"{tiny_n:,} tiny findings ({len(tiny) / 2**20:.1f} MiB)",
                servers, tiny, "413 too_many_findings", 1,
            )
        )  # fmt: skip
        for depth in (5, 40):
            body = nested_body(LIMIT_BYTES, depth)
            results.append(
                measure(
                    f"strings nested {depth} lists deep ({len(body) / 2**20:.1f} MiB)",
                    servers, body, "413 too_many_values", 1,
                )
            )  # fmt: skip
        wide = wide_finding_body(LIMIT_BYTES)
        results.append(
            measure(
                f"one finding of millions of keys ({len(wide) / 2**20:.1f} MiB)",
                servers,
                wide,
                "413 too_many_values",
                1,
            )
        )
        for distinct, (body, count) in lists.items():
            kind = "4-character, all different" if distinct else "1-character"
            results.append(
                measure(
                    f"{count:,} findings x 128 {kind} refs/ids ({len(body) / 2**20:.1f} MiB)",
                    servers, body, f"202 {count}", 1,
                )
            )  # fmt: skip
    print_table(backend, results)
    print(f"\nwritten: {write_json(backend, results, sizes, args)}")
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
