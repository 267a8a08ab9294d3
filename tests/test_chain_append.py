"""The per-org chain: contiguous seq, hashes that recompute, and concurrent uploads that never fork it."""

from __future__ import annotations

import hashlib
import json
import threading

import sqlalchemy as sa

from app import db
from app.models import AuditEvent, ChainHead, Finding, Org
from tests.factories import SHA, finding, make_org, make_token, post, seed


def _canonical(payload: dict) -> bytes:
    # Written out independently of app.chain: sorted keys, compact, UTF-8, non-ASCII kept as is.
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def recompute(app, slug: str) -> list[int]:
    """Recompute the org's whole chain from its stored rows; return the seqs, asserting every hash."""
    with app.app_context():
        s = db.session()
        org = s.scalars(sa.select(Org).where(Org.slug == slug)).one()
        entries = []
        for f in s.scalars(sa.select(Finding).where(Finding.org_id == org.id)):
            payload = {
                "org_id": f.org_id,
                "scan_run_id": f.scan_run_id,
                "created_at": f.created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "cve_id": f.cve_id,
                "severity": f.severity,
                "package": f.package,
                "installed_version": f.installed_version,
                "fixed_version": f.fixed_version,
                "target": f.target,
                "title": f.title,
                "primary_url": f.primary_url,
                "references": f.references,
                "vendor_ids": f.vendor_ids,
                "synthetic": f.synthetic,
            }
            entries.append((f.seq, b"fremforge/finding/v1\n", payload, f.payload_hash, f.chain_hash))
        for e in s.scalars(sa.select(AuditEvent).where(AuditEvent.org_id == org.id)):
            payload = {
                "org_id": e.org_id,
                "created_at": e.created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "action": e.action,
                "actor": e.actor,
                "details": e.details,
            }
            entries.append((e.seq, b"fremforge/audit/v1\n", payload, e.payload_hash, e.chain_hash))
        head = s.get(ChainHead, org.id)
    entries.sort(key=lambda x: x[0])
    prev = bytes(32)
    for seq, domain, payload, payload_hash, chain_hash in entries:
        ph = hashlib.sha256(domain + _canonical(payload)).digest()
        assert ph.hex() == payload_hash, f"payload hash of seq {seq}"
        prev = hashlib.sha256(prev + ph).digest()
        assert prev.hex() == chain_hash, f"chain hash of seq {seq}"
    seqs = [e[0] for e in entries]
    assert seqs == list(range(1, len(seqs) + 1)), "seq is contiguous from 1"
    assert head is not None and head.seq == len(seqs) and head.head_hash == (prev.hex() if seqs else "0" * 64)
    return seqs


def test_findings_and_audit_events_share_one_chain(app, client):
    make_org(app, block_action="block_pull")  # one audit event (settings.changed)
    token = make_token(app)  # another (token.created)
    body = seed(
        [
            finding("CVE-1", title="naïve ünïcode — ok"),
            finding("CVE-2", "low"),
            finding("GHSA-aaaa-bbbb-cccc", "critical", references=["https://x"], vendor_ids=["DSA-1"]),
        ]
    )
    assert post(client, token, body).status_code == 202
    assert recompute(app, "acme") == [1, 2, 3, 4, 5]


def test_concurrent_uploads_never_fork_the_chain(app):
    make_org(app)
    make_org(app, "beta")
    tokens = {"acme": make_token(app, "acme"), "beta": make_token(app, "beta")}
    errors: list[str] = []
    start = threading.Barrier(8)

    def uploader(n: int) -> None:
        slug = "acme" if n % 2 else "beta"
        client = app.test_client()
        start.wait()
        for i in range(6):
            body = seed(
                [finding(f"CVE-{n}-{i}-{k}") for k in range(20)], image_ref=f"img-{n}", sha=SHA, repo=f"{slug}/api"
            )
            r = post(client, tokens[slug], body, slug=slug)
            if r.status_code != 202:
                errors.append(f"{r.status_code} {r.get_data(as_text=True)}")

    threads = [threading.Thread(target=uploader, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # 4 uploaders x 6 scans x 20 findings per org, plus its token.created event
    assert len(recompute(app, "acme")) == 4 * 6 * 20 + 1
    assert len(recompute(app, "beta")) == 4 * 6 * 20 + 1
