"""The per-org tamper-evident log: canonical payloads, their hashes, and appends under the org's lock.

payload_hash = SHA-256(domain || canonical JSON), the domain naming the entry kind;
chain_hash = SHA-256(previous chain_hash || payload_hash), over the raw 32-byte digests,
starting from 32 zero bytes. Canonical JSON: UTF-8, keys sorted, no insignificant white space.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.models import ChainHead

DOMAINS = {"finding": b"fremforge/finding/v1\n", "audit": b"fremforge/audit/v1\n"}


def canonical(payload: dict[str, Any]) -> bytes:
    return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)


def payload_hash(kind: str, payload: dict[str, Any]) -> bytes:
    return hashlib.sha256(DOMAINS[kind] + canonical(payload)).digest()


def timestamp(at: datetime) -> str:
    """The time as it enters a payload: naive UTC, microseconds, ISO 8601."""
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lock_head(session: Session, org_id: int) -> ChainHead:
    """The org's chain head, locked until the transaction ends (FOR UPDATE; SQLite's write lock is global)."""
    head = session.scalars(sa.select(ChainHead).where(ChainHead.org_id == org_id).with_for_update()).one_or_none()
    if head is None:  # orgs made before chain heads existed, or by hand
        head = ChainHead(org_id=org_id, seq=0, head_hash="0" * 64)
        session.add(head)
        session.flush()
    return head


def extend(
    seq: int, head_hash: str, kind: str, payloads: Iterable[dict[str, Any]]
) -> tuple[list[tuple[int, str, str]], int, str]:
    """Append payloads after (seq, head_hash): (seq, payload_hash, chain_hash) per payload, and the new head."""
    return link(seq, head_hash, payload_hashes(kind, payloads))


def payload_hashes(kind: str, payloads: Iterable[dict[str, Any]]) -> list[bytes]:
    """The payload hash of each payload: what can be computed before the org's chain head is locked."""
    return hashes_of(kind, (canonical(payload) for payload in payloads))


def hashes_of(kind: str, canonicals: Iterable[bytes]) -> list[bytes]:
    """The payload hash of each payload given in its canonical encoding (`canonical`)."""
    sha256, domain = hashlib.sha256, DOMAINS[kind]
    return [sha256(domain + c).digest() for c in canonicals]


def link(seq: int, head_hash: str, hashes: Iterable[bytes]) -> tuple[list[tuple[int, str, str]], int, str]:
    """Chain payload hashes after (seq, head_hash): (seq, payload_hash, chain_hash) each (hex), and the new head."""
    sha256 = hashlib.sha256
    prev = bytes.fromhex(head_hash)
    out = []
    for ph in hashes:
        prev = sha256(prev + ph).digest()
        seq += 1
        out.append((seq, ph.hex(), prev.hex()))
    return out, seq, prev.hex()


def finding_payload(org_id: int, scan_run_id: int, created_at: str, f: dict[str, Any]) -> dict[str, Any]:
    """The hashed content of a finding row (every column but id, seq, the hashes and redaction time).

    `truncated` (a descriptive field was cut at upload, or a duplicate's ids merged past their cap) is in it only when
    true: a finding that was not cut, and every finding stored before the column existed, hashes exactly as before.
    """
    payload = {
        "org_id": org_id,
        "scan_run_id": scan_run_id,
        "created_at": created_at,
        "cve_id": f["cve_id"],
        "severity": f["severity"],
        "package": f["package"],
        "installed_version": f["installed_version"],
        "fixed_version": f["fixed_version"],
        "target": f["target"],
        "title": f["title"],
        "primary_url": f["primary_url"],
        "references": f["references"],
        "vendor_ids": f["vendor_ids"],
        "synthetic": f["synthetic"],
    }
    if f.get("truncated"):
        payload["truncated"] = True
    return payload


def audit_payload(org_id: int, created_at: str, action: str, actor: str, details: dict[str, Any]) -> dict[str, Any]:
    return {"org_id": org_id, "created_at": created_at, "action": action, "actor": actor, "details": details}
