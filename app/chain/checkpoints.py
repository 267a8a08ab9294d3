"""Signed checkpoints: Ed25519 statements "org X's chain had N entries ending in hash H at time T".

An org keeps them outside the database; `chain verify --checkpoint FILE` then detects a cut tail or a chain
rebuilt with recomputed hashes, which the chain alone cannot show. The app stores what it signed and refuses
to sign a state that does not extend its previous checkpoint.

Signed message: b"fremforge/checkpoint/v1\\n" + canonical JSON (UTF-8, sorted keys, compact) of
{"org", "size", "head_hash", "time"}. key_id = "ed25519:" + the first 16 hex digits of SHA-256(public key).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import logging
import os
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from flask import Flask
from sqlalchemy.orm import Session

from app import chain
from app.chain import verify
from app.models import GENESIS_HASH, ChainCheckpoint

log = logging.getLogger(__name__)
DOMAIN = b"fremforge/checkpoint/v1\n"
SIGNED_HASH = re.compile(r"[0-9a-f]{64}")
SIGNED_FIELDS = ("org", "size", "head_hash", "time")
HASH = re.compile(r"[0-9a-f]{64}")
FIELDS = (*SIGNED_FIELDS, "key_id", "public_key", "signature")
KEY_FILE_NAME = "checkpoint_ed25519.pem"  # in the instance folder, when FREMFORGE_CHECKPOINT_KEY_FILE is not set


class KeyUnavailable(Exception):
    """The signing key cannot be read (or, where none may be made, does not exist)."""


class Inconsistent(Exception):
    """The chain does not extend the org's previous checkpoint: the app will not sign it."""


class KeyChanged(Exception):
    """This process signs with another key than the deployment's (the newest checkpoint's, of any org): a host not
    given the deployment's key file, or a key replaced, which only `chain checkpoint --new-key` may sign with first."""


@dataclass(frozen=True)
class Key:
    private: Ed25519PrivateKey
    public_raw: bytes

    @property
    def key_id(self) -> str:
        return "ed25519:" + hashlib.sha256(self.public_raw).hexdigest()[:16]


def key_of(app: Flask, create: bool = True) -> Key:
    """The app's signing key, read once per process from FREMFORGE_CHECKPOINT_KEY_FILE; made when absent if
    `create` (signing), never when only checking checkpoints. KeyUnavailable when it cannot be had."""
    key = app.extensions.get("fremforge.checkpoint_key")
    if key is None:
        path = app.config.get("CHECKPOINT_KEY_FILE") or Path(app.instance_path) / KEY_FILE_NAME
        key = app.extensions["fremforge.checkpoint_key"] = load_or_create(Path(path), create)
    return key


def load_or_create(path: Path, create: bool = True) -> Key:
    if not path.exists():
        if not create:
            raise KeyUnavailable(
                f"there is no checkpoint key at {path} (FREMFORGE_CHECKPOINT_KEY_FILE): checkpoints cannot be checked"
            )
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # its own folder, when made here, is private
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # Written aside then linked into place: concurrent workers all end up reading the same key.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        try:
            os.link(tmp, path)
            log.warning("checkpoint.key_created path=%s: keep it (and a copy) safe", path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyUnavailable(f"the checkpoint key {path} cannot be read: {exc}") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyUnavailable(f"{path} does not hold an Ed25519 private key")
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return Key(private, raw)


def message(statement: dict[str, Any]) -> bytes:
    return DOMAIN + chain.canonical({k: statement[k] for k in SIGNED_FIELDS})


def document(key: Key, slug: str, size: int, head_hash: str, time: str, signature: str) -> dict[str, Any]:
    return {
        "org": slug,
        "size": size,
        "head_hash": head_hash,
        "time": time,
        "key_id": key.key_id,
        "public_key": base64.b64encode(key.public_raw).decode(),
        "signature": signature,
    }


# The deployment's key is read and, with the first checkpoint, set under this advisory lock (keyed by this class and
# the schema the app's tables are in); on SQLite the one writer holds it already.
KEY_LOCK_CLASS = 0x66636B79  # "fcky"
_KEY_LOCK = sa.select(sa.func.pg_advisory_xact_lock(KEY_LOCK_CLASS, sa.func.hashtext(sa.func.current_schema())))


def deployment_key_id(session: Session) -> str | None:
    """The key id of the newest checkpoint of any org (None before the first): the key every host must sign with."""
    newest = sa.select(ChainCheckpoint.key_id).order_by(ChainCheckpoint.id.desc()).limit(1)
    return session.scalars(newest).first()


def issue(session: Session, key: Key, org_id: int, slug: str, now: datetime, new_key: bool = False) -> dict[str, Any]:
    """Sign the org's chain as it is now, in the caller's write transaction; Inconsistent when it does not
    extend the previous checkpoint (or its head row disagrees with its last entry); KeyChanged when `key` is not the
    deployment's (the newest checkpoint's, of any org), unless `new_key` (an operator replacing the key on purpose):
    checkpoints of two keys fail the pinned verification of either, so every host must sign with the same one."""
    head = chain.lock_head(session, org_id)
    conn = session.connection()
    if head.seq and verify.chain_hash_at(conn, org_id, head.seq) != head.head_hash:
        raise Inconsistent(f"the chain head (seq {head.seq}) does not match the entry stored at that seq")
    if conn.dialect.name == "postgresql":  # one signer at a time: two first checkpoints of two orgs, one key
        conn.execute(_KEY_LOCK)
    signer = deployment_key_id(session)  # the newest checkpoint's, of any org: the deployment's key
    if signer is not None and signer != key.key_id and not new_key:
        raise KeyChanged(
            f"this service signs with {key.key_id}, but this deployment's checkpoints are signed by {signer}"
        )
    prev = session.scalars(
        sa.select(ChainCheckpoint).where(ChainCheckpoint.org_id == org_id).order_by(ChainCheckpoint.id.desc())
    ).first()
    if prev is not None:
        if head.seq < prev.size:
            raise Inconsistent(
                f"the chain has {head.seq} entries but the checkpoint of {prev.signed_at} covered {prev.size}"
            )
        if (verify.chain_hash_at(conn, org_id, prev.size) if prev.size else GENESIS_HASH) != prev.head_hash:
            raise Inconsistent(
                f"the entry at seq {prev.size} no longer has the hash signed in the checkpoint of {prev.signed_at}"
            )
        if prev.size == head.seq and prev.key_id == key.key_id:
            return document(key, slug, prev.size, prev.head_hash, prev.signed_at, prev.signature)
    time = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    statement = {"org": slug, "size": head.seq, "head_hash": head.head_hash, "time": time}
    signature = base64.b64encode(key.private.sign(message(statement))).decode()
    row = ChainCheckpoint(org_id=org_id, size=head.seq, head_hash=head.head_hash, signed_at=time, key_id=key.key_id)
    row.signature = signature
    session.add(row)
    return document(key, slug, head.seq, head.head_hash, time, signature)


def parse(text: str) -> list[dict[str, Any]]:
    """Checkpoints from a file: one JSON object, a JSON array of them, or JSON lines."""
    try:
        doc = orjson.loads(text)
        docs = doc if isinstance(doc, list) else [doc]
    except orjson.JSONDecodeError:
        try:
            docs = [orjson.loads(line) for line in text.splitlines() if line.strip()]
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not JSON, a JSON array or JSON lines: {exc}") from None
    if not docs:
        raise ValueError("no checkpoint in it")
    for i, d in enumerate(docs, 1):
        if not isinstance(d, dict) or not all(k in d for k in FIELDS):
            raise ValueError(f"checkpoint {i} is not an object with {', '.join(FIELDS)}")
        texts = [k for k in FIELDS if k != "size" and k in d and not isinstance(d[k], str)]
        if texts:
            raise ValueError(f"checkpoint {i}: {', '.join(texts)} must be text")
        if not isinstance(d["size"], int) or isinstance(d["size"], bool) or not 0 <= d["size"] < 2**63:
            raise ValueError(f"checkpoint {i}: size must be a whole number")
        if not HASH.fullmatch(d["head_hash"]):
            raise ValueError(f"checkpoint {i}: head_hash must be 64 lowercase hex digits")
    return docs


def signature_ok(public_raw: bytes, doc: dict[str, Any]) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_raw).verify(base64.b64decode(doc["signature"]), message(doc))
    except (InvalidSignature, binascii.Error, ValueError, TypeError):
        return False
    return True


def check(
    conn: sa.Connection, org_id: int, slug: str, head: tuple[int, str], key: Key, docs: list[dict[str, Any]]
) -> verify.Verdict | None:
    """The first checkpoint (smallest first) the chain contradicts, as a verdict; None when all agree."""
    head_seq, head_hash = head

    def bad(seq: int | None, fault: str, detail: str) -> verify.Verdict:
        return verify.Verdict(False, head_seq, 0, head_seq, head_hash, seq, fault, None, None, detail)

    for doc in sorted(docs, key=lambda d: d["size"]):
        when = f"the checkpoint of {doc['time']} (size {doc['size']})"
        if doc.get("key_id", key.key_id) != key.key_id or not signature_ok(key.public_raw, doc):
            return bad(None, "checkpoint_signature", f"{when} is not signed by this app's key ({key.key_id})")
        if doc["org"] != slug:
            return bad(None, "checkpoint_signature", f"{when} is for org {doc['org']!r}, not {slug!r}")
        if doc["size"] > head_seq:
            detail = f"{when} covered {doc['size']} entries but the chain has {head_seq}: its tail was cut"
            return bad(head_seq + 1, "checkpoint_truncated", detail)
        stored = verify.chain_hash_at(conn, org_id, doc["size"]) if doc["size"] else GENESIS_HASH
        if stored != doc["head_hash"]:
            detail = (
                f"the entry at seq {doc['size']} has chain_hash {stored}, {when} signed {doc['head_hash']}: "
                f"the chain was rebuilt or rewritten at or before seq {doc['size']}"
            )
            return bad(doc["size"], "checkpoint_mismatch", detail)
    return None


def verify_with(
    engine: sa.Engine, org_id: int, slug: str, key: Key | None, docs: list[dict[str, Any]]
) -> verify.Verdict:
    """The chain's own verdict and then, if it is intact, the checkpoints' verdict, from one snapshot."""
    with verify.snapshot(engine) as conn:
        head = verify.head_of(conn, org_id)
        with verify.entries(conn, org_id) as chain:
            verdict = verify.walk(chain, head, verify.store_lookups(conn, org_id))
        if not verdict.intact or not docs:
            return verdict
        assert key is not None, "checking checkpoints needs the key"
        state = head or (0, GENESIS_HASH)
        return check(conn, org_id, slug, state, key, docs) or dataclasses.replace(verdict, checkpoints=len(docs))
