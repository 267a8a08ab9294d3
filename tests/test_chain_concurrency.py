"""Concurrent uploads over HTTP to gunicorn's 4 workers: every org's chain stays whole, with exact counts, no 5xx."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from flask import Flask

from app import db, orgs
from app.chain.verify import verify_org
from app.models import AuditEvent, ChainHead, Finding, OutboxItem, ScanRun
from tests.factories import finding, make_org, make_token, seed

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"
HOST = "127.0.0.1"
WORKERS = 4
MAIN_ORG = "acme"
MAIN_UPLOADERS = 8
OTHER_ORGS = ["o1", "o2", "o3", "o4"]
UPLOADS = 50  # per uploader
READY_TIMEOUT = 60.0  # seconds for gunicorn to answer /healthz
# Log lines of an error: app and gunicorn ERROR/CRITICAL lines (a worker timed out or died), and exceptions.
SERVER_ERROR = re.compile(r"\b(ERROR|CRITICAL|WORKER TIMEOUT)\b|^\s*\S*(Error|Exception): |database is locked")
REQUEST_TIMEOUT = 120.0  # seconds for one upload (a SQLite writer may wait 5 s for its turn + 10 s busy_timeout)


@dataclass
class Uploader:
    slug: str
    token: str
    index: int  # of this uploader within its org
    sent: list[int] = field(default_factory=list)  # findings per upload
    scan_ids: list[int] = field(default_factory=list)
    accepted: int = 0
    problems: list[str] = field(default_factory=list)

    def body(self, i: int) -> tuple[bytes, int]:
        """Upload `i`: 1-5 distinct findings, its own image; every fifth upload starts a new commit."""
        n = 1 + (self.index * 7 + i) % 5
        sha = hashlib.sha1(f"{self.slug}/{self.index}/{i // 5}".encode()).hexdigest()
        findings = [
            finding(f"CVE-2024-{self.index:02d}{i:03d}{k}", ("critical", "high", "medium", "low", "unknown")[k])
            for k in range(n)
        ]
        doc = seed(findings, image_ref=f"ghcr.io/{self.slug}/api:{self.index}-{i}", sha=sha, repo=f"{self.slug}/api")
        return json.dumps(doc).encode(), n


def test_concurrent_uploads_keep_every_chain_whole(app: Flask, database_url: str, tmp_path: Path) -> None:
    slugs = [MAIN_ORG, *OTHER_ORGS]
    for slug in slugs:
        make_org(app, slug)
    uploaders = [Uploader(MAIN_ORG, make_token(app, MAIN_ORG, ["findings:write"]), i) for i in range(MAIN_UPLOADERS)]
    uploaders += [Uploader(slug, make_token(app, slug, ["findings:write"]), 0) for slug in OTHER_ORGS]
    heads_before = {slug: chain_of(app, slug)[1] for slug in slugs}  # the audit events of setup (token.created)

    log = tmp_path / "gunicorn.log"
    with gunicorn(database_url, log) as port:
        start = threading.Barrier(len(uploaders), timeout=READY_TIMEOUT)
        threads = [threading.Thread(target=upload_all, args=(u, port, start)) for u in uploaders]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    problems = [p for u in uploaders for p in u.problems]
    causes = "\n".join(server_errors(log)[:10])  # the app answers a 500 without its cause; the log has it
    locked = [p for p in problems if "database is locked" in p.lower()]
    assert not locked, f"{len(locked)} clients were told the database is locked, e.g.:\n" + "\n".join(locked[:5])
    failed = [p for p in problems if ": HTTP 5" in p]
    assert not failed, f"{len(failed)} answers were 5xx, e.g.:\n" + "\n".join(failed[:5]) + f"\nlog:\n{causes}"
    total = len(uploaders) * UPLOADS
    assert not problems, f"{len(problems)} of {total} uploads failed, e.g.:\n" + "\n".join(problems[:10])
    assert not causes, f"the server logged errors:\n{causes}"
    for slug in slugs:
        mine = [u for u in uploaders if u.slug == slug]
        sent = sum(sum(u.sent) for u in mine)
        uploads = sum(len(u.sent) for u in mine)
        assert uploads == len(mine) * UPLOADS
        assert sum(u.accepted for u in mine) == sent, slug
        scan_ids = [s for u in mine for s in u.scan_ids]
        assert len(set(scan_ids)) == uploads, f"{slug}: every upload has its own scan run"

        seqs, head_seq, counts = chain_of(app, slug)
        n = heads_before[slug] + sent
        assert counts == {"findings": sent, "scan_runs": uploads, "accepted": sent}, slug
        assert seqs == list(range(1, n + 1)), f"{slug}: seq over findings and audit events is exactly 1..{n}"
        assert head_seq == n, slug
        with app.app_context():
            org = orgs.by_slug(db.session(), slug)
            assert org is not None
            verdict = verify_org(db.database().engine, org.id)
        assert verdict.intact, verdict.describe(slug)
        assert (verdict.entries, verdict.head_seq) == (n, n), slug


@dataclass
class ImageUploader(Uploader):
    """Uploads its own image to the same commits as the other image uploaders, one commit after another."""

    def body(self, i: int) -> tuple[bytes, int]:
        sha = hashlib.sha1(f"{self.slug}/together/{i}".encode()).hexdigest()
        findings = [finding(f"CVE-2024-{self.index:02d}{i:03d}", "high")]
        doc = seed(findings, image_ref=f"ghcr.io/{self.slug}/img{self.index}:1", sha=sha, repo=f"{self.slug}/api")
        return json.dumps(doc).encode(), 1


IMAGES = 6
COMMITS = 12


def test_images_of_one_commit_uploaded_at_once_are_all_in_its_newest_wish(
    app: Flask, database_url: str, tmp_path: Path
) -> None:
    """The aggregate a commit's newest wish holds names every image, however their uploads interleave."""
    make_org(app, MAIN_ORG)
    token = make_token(app, MAIN_ORG, ["findings:write"])
    uploaders = [ImageUploader(MAIN_ORG, token, i) for i in range(IMAGES)]
    with gunicorn(database_url, tmp_path / "gunicorn.log") as port:
        start = threading.Barrier(len(uploaders), timeout=READY_TIMEOUT)
        threads = [threading.Thread(target=upload_all, args=(u, port, start, COMMITS)) for u in uploaders]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    problems = [p for u in uploaders for p in u.problems]
    assert not problems, "\n".join(problems[:10])
    with app.app_context():
        rows = db.session().execute(sa.select(OutboxItem.commit_sha, OutboxItem.commit_status).order_by(OutboxItem.id))
        newest = {sha: status for sha, status in rows}  # the last row of each commit wins
    assert len(newest) == COMMITS
    short = {sha: s["description"] for sha, s in newest.items() if not s["description"].startswith(f"{IMAGES} images")}
    assert not short, f"newest wishes missing images: {short}"


def upload_all(u: Uploader, port: int, start: threading.Barrier, uploads: int = UPLOADS) -> None:
    """Post `uploads` bodies one after another; record every answer that is not a 202 accepting them all."""
    bodies = [u.body(i) for i in range(uploads)]
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {u.token}"}
    path = f"/api/v1/orgs/{u.slug}/image-scans/findings"
    start.wait()
    for i, (body, n) in enumerate(bodies):
        u.sent.append(n)
        # A new connection per upload: gunicorn's sync workers close each one after answering.
        conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT)
        try:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            status, text = resp.status, resp.read().decode(errors="replace")
        except (OSError, http.client.HTTPException) as exc:
            u.problems.append(f"{u.slug}#{u.index} upload {i}: {type(exc).__name__}: {exc}")
            continue
        finally:
            conn.close()
        if status != 202:
            u.problems.append(f"{u.slug}#{u.index} upload {i}: HTTP {status}: {text[:500]}")
            continue
        try:
            answer = json.loads(text)
            accepted, duplicates, scan_id = answer["accepted"], answer["duplicates"], answer["scan_run_id"]
        except (ValueError, KeyError, TypeError):
            u.problems.append(f"{u.slug}#{u.index} upload {i}: HTTP 202 without its counts: {text[:500]}")
            continue
        if (accepted, duplicates) != (n, 0):
            u.problems.append(f"{u.slug}#{u.index} upload {i}: accepted {accepted} of {n}: {text[:500]}")
        u.accepted += accepted
        u.scan_ids.append(scan_id)


def chain_of(app: Flask, slug: str) -> tuple[list[int], int, dict[str, int]]:
    """The org's seqs over findings and audit events in order, its head's seq, and its stored counts."""
    with app.app_context():
        s = db.session()
        org = orgs.by_slug(s, slug)
        assert org is not None
        finding_seqs = s.scalars(sa.select(Finding.seq).where(Finding.org_id == org.id))
        audit_seqs = s.scalars(sa.select(AuditEvent.seq).where(AuditEvent.org_id == org.id))
        seqs = sorted([*finding_seqs, *audit_seqs])
        head = s.get(ChainHead, org.id)
        assert head is not None
        counts = {
            "findings": s.scalar(sa.select(sa.func.count()).where(Finding.org_id == org.id)) or 0,
            "scan_runs": s.scalar(sa.select(sa.func.count()).where(ScanRun.org_id == org.id)) or 0,
            "accepted": s.scalar(sa.select(sa.func.sum(ScanRun.accepted)).where(ScanRun.org_id == org.id)) or 0,
        }
        return seqs, head.seq, counts


@contextmanager
def gunicorn(database_url: str, log: Path) -> Iterator[int]:
    """`gunicorn --workers 4 wsgi:app` on the test's database, on a free loopback port; stopped on the way out."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FREMFORGE_")}
    env.update(
        FREMFORGE_DATABASE_URL=database_url,
        FREMFORGE_SECRET_KEY=secrets.token_urlsafe(48),
        FREMFORGE_CHECKPOINT_KEY_FILE=str(log.parent / "checkpoint_ed25519.pem"),
        PYTHONDONTWRITEBYTECODE="1",
    )
    # No control socket: its default path is one per user, which two servers of a parallel run would share.
    cmd = [str(GUNICORN), "--workers", str(WORKERS), "--bind", f"{HOST}:{port}", "--no-control-socket", "wsgi:app"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(proc, port, log)
        yield port
    finally:
        if proc.poll() is None:
            proc.terminate()  # the master stops its workers on SIGTERM
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gunicorn exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            try:
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return
            finally:
                conn.close()
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.05)  # poll interval of the readiness check, not a synchronisation point
    raise AssertionError(f"gunicorn not answering /healthz after {READY_TIMEOUT:.0f}s:\n{log.read_text()}")


def server_errors(log: Path) -> list[str]:
    """The log's lines naming an error: unhandled ones, a locked database, a worker that died or timed out."""
    return [line for line in log.read_text(errors="replace").splitlines() if SERVER_ERROR.search(line)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]
