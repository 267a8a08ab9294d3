"""Verification of an org's chain: recompute every link from the first entry, check every payload still
stored against its hash, and name the first bad entry with what is wrong with it.

`walk` is pure: it takes the entries in chain order and the org's head, and asks the callables it is given
only on the failure path (to tell "entry of another org" from "payload changed"). `verify_org` feeds it
from the database, inside one snapshot, streaming: memory stays flat however long the chain.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa

from app.chain import DOMAINS, audit_payload, timestamp
from app.models import FINDING_PAYLOAD_COLUMNS, GENESIS_HASH, AuditEvent, ChainHead, Finding, Org, utcnow

# (seq, kind, row id, payload or None when redacted, payload_hash hex, chain_hash hex)
Entry = tuple[int, str, int, dict[str, Any] | None, str, str]

FAULTS = {
    "payload_changed": "payload changed: its stored fields no longer hash to its payload_hash",
    "payload_hash_changed": "payload_hash changed: it no longer links the entry into the chain",
    "chain_hash_changed": "chain_hash changed: it is not H(previous chain_hash || payload_hash)",
    "entry_missing": "entry missing",
    "entry_inserted": "entry inserted",
    "order_changed": "order changed: entries were swapped or moved",
    "other_org": "entry of another org",
    "head_mismatch": "the chain head does not match the last entry",
    "payload_removed": "payload removed before its retention time: not by a retention run",
    "checkpoint_signature": "checkpoint signature invalid",
    "checkpoint_truncated": "chain shorter than a signed checkpoint: its tail was cut",
    "checkpoint_mismatch": "chain differs from a signed checkpoint: it was rebuilt or rewritten",
}
_KIND_ORDER = {"audit": 0, "finding": 1}
EARLY = "fremforge:removed-early"  # the payload the readers give an entry emptied outside a retention run
MIN_AGE = timedelta(days=1)  # retention_days is at least 1


@dataclass(frozen=True)
class Verdict:
    intact: bool
    entries: int  # entries checked, in chain order, before the first fault
    redacted: int  # of those, how many had their payload removed by retention
    head_seq: int
    head_hash: str
    first_bad_seq: int | None = None
    fault: str | None = None
    kind: str | None = None  # finding | audit: the kind of the entry at fault, when there is one
    entry_id: int | None = None
    detail: str | None = None
    checkpoints: int = 0  # signed checkpoints checked

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self, slug: str) -> str:
        if self.intact:
            extra = f", {self.checkpoints} checkpoint(s) consistent" if self.checkpoints else ""
            return (
                f"chain of {slug} is intact: {self.entries} entries ({self.redacted} redacted by retention), "
                f"head seq {self.head_seq} {self.head_hash}{extra}"
            )
        if self.first_bad_seq is None:  # the checkpoints, not the chain, were refused
            return f"chain of {slug}: checkpoint rejected: {self.detail}"
        where = f" ({self.kind} id {self.entry_id})" if self.kind else ""
        return f"chain of {slug} is BROKEN at seq {self.first_bad_seq}{where}: {self.detail}"


@dataclass(frozen=True)
class Lookups:
    """What the failure path may ask of the store; each default knows nothing."""

    other_org_ids: Callable[[], list[int]] = list
    # Which other org holds an entry that links at `seq` after `prev` (an entry moved away)? Its slug or None.
    holder_of: Callable[[int, bytes], str | None] = lambda seq, prev: None


def payload_digest(kind: str, payload: dict[str, Any]) -> bytes:
    return hashlib.sha256(DOMAINS[kind] + orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).digest()


def walk(entries: Iterable[Entry], head: tuple[int, str] | None, lookups: Lookups = Lookups()) -> Verdict:
    """The verdict on a chain given its entries sorted by (seq, kind, id) and its head (seq, head_hash); a head
    of None means the org's head row is gone."""
    if head is None:
        return _headless(entries)
    head_seq, head_hash = head
    sha256, dumps, opt = hashlib.sha256, orjson.dumps, orjson.OPT_SORT_KEYS
    stream = _Peekable(iter(entries))
    prev, prevprev = bytes(32), None
    expected, redacted = 1, 0

    def bad(seq: int, fault: str, detail: str, entry: Entry | None = None) -> Verdict:
        return Verdict(
            False,
            expected - 1,
            redacted,
            head_seq,
            head_hash,
            seq,
            fault,
            entry[1] if entry else None,
            entry[2] if entry else None,
            f"{FAULTS[fault].split(':')[0]}: {detail}" if detail else FAULTS[fault],
        )

    for entry in stream:
        seq, kind, _id, payload, ph_hex, ch_hex = entry
        if seq != expected or seq > head_seq:
            return _out_of_place(entry, expected, prev, head_seq, lookups, bad)
        try:
            ph = bytes.fromhex(ph_hex)
            if len(ph) != 32 or ph.hex() != ph_hex:  # only 64 lowercase hex digits, as stored
                raise ValueError(ph_hex)
            link = sha256(prev + ph).digest()
            p = None if payload is None else sha256(DOMAINS[kind] + dumps(payload, option=opt)).digest()
        except (ValueError, TypeError):  # a stored hash that is not a SHA-256 in lowercase hex
            return bad(seq, "payload_hash_changed", f"{ph_hex!r} is not a SHA-256 in lowercase hex", entry)
        if link.hex() == ch_hex:
            if p is not None and p != ph:
                return _payload_fault(entry, p, stream, lookups, bad)
            prevprev, prev = prev, link
            expected += 1
            redacted += payload is None
            continue
        return _link_fault(entry, p, ph, link, prev, prevprev, stream, head, lookups, bad)

    last = expected - 1
    if last < head_seq:
        return bad(expected, "entry_missing", f"the chain ends at seq {last} but its head is at seq {head_seq}")
    if prev.hex() != head_hash:
        return bad(head_seq, "head_mismatch", f"the last chain_hash is {prev.hex()}, the head says {head_hash}")
    return Verdict(True, last, redacted, head_seq, head_hash)


def _headless(entries: Iterable[Entry]) -> Verdict:
    last = None
    for last in entries:  # noqa: B007  (only the last one matters)
        pass
    if last is None:  # no head and no entry: an org that never had any
        return Verdict(True, 0, 0, 0, GENESIS_HASH)
    detail = f"{FAULTS['head_mismatch'].split(':')[0]}: the org's chain head row is missing"
    return Verdict(False, 0, 0, 0, GENESIS_HASH, last[0], "head_mismatch", None, None, detail)


def _out_of_place(entry: Entry, expected: int, prev: bytes, head_seq: int, lookups: Lookups, bad: Any) -> Verdict:
    """An entry whose seq is not the next one: a gap, a second entry with a seq, or one past the head."""
    seq, kind, _id, payload, ph_hex, _ch = entry
    if seq < 1:  # sorted first: an entry renumbered out of the chain (its own seq shows as missing, if it was one)
        return bad(1 if head_seq else 0, "entry_inserted", f"an entry has seq {seq}; seqs start at 1", entry)
    if expected <= seq <= head_seq:  # seq > expected: the entries from `expected` are gone
        holder = lookups.holder_of(expected, prev)
        where = f"; it is stored under org {holder!r}" if holder else ""
        return bad(expected, "entry_missing", f"no entry has seq {expected} (the next one is {seq}){where}")
    why = f"a second entry with seq {seq}" if seq < expected else f"seq {seq} is past the chain head ({head_seq})"
    if payload is not None:
        owner = _other_owner(kind, payload, ph_hex, lookups)
        if owner is not None:
            return bad(seq, "other_org", f"{why}, whose payload belongs to org id {owner}", entry)
    if expected <= head_seq and seq > head_seq:  # past the head while entries are still due: they are missing
        return bad(expected, "entry_missing", f"no entry has seq {expected} (the next one is {seq})")
    return bad(seq, "entry_inserted", why, entry)


def _payload_fault(entry: Entry, p: bytes, stream: _Peekable, lookups: Lookups, bad: Any) -> Verdict:
    """The entry links into the chain, but its stored fields no longer hash to its payload_hash."""
    seq, kind, _id, payload, _ph, _ch = entry
    assert payload is not None
    if EARLY in payload:
        return bad(seq, "payload_removed", payload[EARLY], entry)
    owner = _other_owner(kind, payload, entry[4], lookups)
    if owner is not None:
        return bad(seq, "other_org", f"its payload names org id {owner}", entry)
    wanted = p.hex()
    for later in stream:  # the failure path: one pass over the rest of the chain
        if later[4] == wanted:
            return bad(seq, "order_changed", f"it holds the payload of the entry with seq {later[0]}", entry)
    return bad(seq, "payload_changed", "", entry)


def _link_fault(
    entry: Entry,
    p: bytes | None,
    ph: bytes,
    link: bytes,
    prev: bytes,
    prevprev: bytes | None,
    stream: _Peekable,
    head: tuple[int, str],
    lookups: Lookups,
    bad: Any,
) -> Verdict:
    """The entry does not link to the one before it: say why, looking as far ahead as that needs."""
    seq, kind, _id, payload, _ph, ch_hex = entry
    sha = hashlib.sha256
    if p is not None and p != ph:
        owner = _other_owner(kind, payload or {}, entry[4], lookups)
        if owner is not None:
            return bad(seq, "other_org", f"its payload names org id {owner}", entry)
        if sha(prev + p).hexdigest() == ch_hex:
            return bad(seq, "payload_hash_changed", "", entry)
    nxt = stream.peek()
    if nxt is None:
        if link.hex() == head[1] and seq == head[0]:
            return bad(seq, "chain_hash_changed", "", entry)
    elif _links(link, nxt):
        return bad(seq, "chain_hash_changed", "the next entry links to the recomputed value", entry)
    if prevprev is not None and sha(prevprev + ph).hexdigest() == ch_hex:
        return bad(seq - 1, "entry_inserted", f"the entry with seq {seq} links to the one before seq {seq - 1}")
    next_links_to_stored = nxt is not None and _links(_unhex(ch_hex), nxt)
    prior = entry  # the entry just before `later` in the stream
    for later in stream:  # where is the entry that belongs at this seq?
        if _links(prev, later):
            # Swapped: this entry belongs after the one before `later` (after `later` itself, when adjacent).
            if _links(_unhex((later if prior is entry else prior)[5]), entry):
                return bad(seq, "order_changed", f"it and the entry with seq {later[0]} were swapped", entry)
            return bad(seq, "entry_inserted", f"the entry with seq {later[0]} links to the one before this", entry)
        prior = later
    if payload is None and (next_links_to_stored or nxt is None):
        return bad(seq, "payload_hash_changed", "a redacted entry whose payload_hash was altered", entry)
    if next_links_to_stored and p == ph:  # the entry is whole, but does not follow the one before it
        detail = (
            "its payload and payload_hash were both replaced, or an entry before it was removed and the rest renumbered"
        )
        return bad(seq, "payload_hash_changed", detail, entry)
    return bad(seq, "chain_hash_changed", "it does not link to the entry before it", entry)


def _unhex(value: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError:
        return b""


def _links(prev: bytes, entry: Entry) -> bool:
    try:
        return hashlib.sha256(prev + bytes.fromhex(entry[4])).hexdigest() == entry[5]
    except ValueError:
        return False


def _other_owner(kind: str, payload: dict[str, Any], ph_hex: str, lookups: Lookups) -> int | None:
    """The id of another org whose id, put in this payload, makes it hash to the stored payload_hash."""
    for org_id in lookups.other_org_ids():
        if org_id != payload.get("org_id") and payload_digest(kind, {**payload, "org_id": org_id}).hex() == ph_hex:
            return org_id
    return None


class _Peekable:
    def __init__(self, it: Iterator[Entry]) -> None:
        self._it = it
        self._next: Entry | None = None

    def __iter__(self) -> _Peekable:
        return self

    def __next__(self) -> Entry:
        if self._next is not None:
            out, self._next = self._next, None
            return out
        return next(self._it)

    def peek(self) -> Entry | None:
        if self._next is None:
            self._next = next(self._it, None)
        return self._next


# ---------------------------------------------------------------- reading the chain from the database

_f, _a, _h = Finding.__table__, AuditEvent.__table__, ChainHead.__table__
_TEXT_JSON = {"references", "vendor_ids", "details"}  # read as JSON text, parsed with orjson (faster)
_FINDING_COLUMNS = ("scan_run_id", *FINDING_PAYLOAD_COLUMNS)


def _col(table: sa.Table, name: str) -> Any:
    column = table.c[name]
    return sa.cast(column, sa.Text).label(name) if name in _TEXT_JSON else column


def _raw(table: sa.Table, name: str) -> Any:
    return sa.type_coerce(table.c[name], sa.String).label(name)


# created_at and redacted_at as the driver gives them (SQLite: text; PostgreSQL: datetime): SQLAlchemy's
# per-row parsing of SQLite's text is left to _findings, once per distinct value (a scan's findings share one).
FINDINGS = (
    sa.select(
        _f.c.seq, _f.c.id, _f.c.org_id, _raw(_f, "created_at"), _raw(_f, "redacted_at"), _f.c.payload_hash,
        _f.c.chain_hash, *(_col(_f, c) for c in _FINDING_COLUMNS),
    )
    .where(_f.c.org_id == sa.bindparam("org"))
    .order_by(_f.c.seq, _f.c.id)
)  # fmt: skip
AUDIT = (
    sa.select(
        _a.c.seq, _a.c.id, _a.c.org_id, _a.c.created_at, _a.c.redacted_at, _a.c.payload_hash, _a.c.chain_hash,
        _a.c.action, _a.c.actor, _col(_a, "details"),
    )
    .where(_a.c.org_id == sa.bindparam("org"))
    .order_by(_a.c.seq, _a.c.id)
)  # fmt: skip
STREAM = {"yield_per": 5000}  # a server-side cursor on PostgreSQL: memory stays flat
RETENTION_RUNS = sa.select(_a.c.created_at, _col(_a, "details")).where(
    _a.c.org_id == sa.bindparam("org"), _a.c.action.in_(("retention.started", "retention.run"))
)  # a run's first removal comes with its retention.started event: a run cut short after it still has its cut-off
AGED_OUT_EVENTS = sa.select(_a.c.created_at).where(_a.c.org_id == sa.bindparam("org"), _a.c.redacted_at.is_not(None))
HEAD = sa.select(_h.c.seq, _h.c.head_hash).where(_h.c.org_id == sa.bindparam("org"))


def _json(text: Any) -> Any:
    return None if text is None else orjson.loads(text)


Aged = Callable[[datetime, datetime], str | None]  # (created_at, redacted_at) -> why it is not a retention's


def retention_rule(conn: sa.Connection, org_id: int) -> Aged:
    """Whether an entry's payload can have been removed by retention: by the cut-off of the retention.run event
    of that run (same time) while that event keeps its details; else, when an event of that time was aged out
    itself (a run's event keeps only its time and hashes, as every entry aged out), at least a day after it was made
    (the shortest retention) and not later than now. A time at which no run left an event is no run's."""
    cutoffs = {}
    for at, details in conn.execute(RETENTION_RUNS, {"org": org_id}):
        doc = _json(details) if details else None
        cutoff = doc.get("cutoff") if isinstance(doc, dict) else None
        if isinstance(cutoff, str):
            with suppress(ValueError):
                cutoffs[at] = datetime.strptime(cutoff, "%Y-%m-%dT%H:%M:%S.%fZ")
    aged_out = set(conn.execute(AGED_OUT_EVENTS, {"org": org_id}).scalars())
    latest = utcnow() + MIN_AGE

    def why_not(created: datetime, redacted: datetime) -> str | None:
        cutoff = cutoffs.get(redacted)
        if cutoff is not None:
            if created < cutoff:
                return None
            run = timestamp(redacted)
            return f"made {timestamp(created)}, after the cut-off {timestamp(cutoff)} of the run of {run}"
        if redacted in aged_out and created + MIN_AGE <= redacted <= latest:
            return None
        if redacted not in aged_out:
            return f"made {timestamp(created)}, marked as removed at {timestamp(redacted)}, when no retention ran"
        return f"made {timestamp(created)}, marked as removed by retention at {timestamp(redacted)}"

    return why_not


def _early(created: datetime, why: str) -> dict[str, Any]:
    return {"created_at": timestamp(created), EARLY: why}


def finding_entries(conn: sa.Connection, org_id: int, aged: Aged | None = None) -> Generator[Entry, None, None]:
    aged = aged or retention_rule(conn, org_id)
    parse = sa.DateTime().dialect_impl(conn.dialect).result_processor(conn.dialect, None)
    with conn.execute(FINDINGS, {"org": org_id}, execution_options=STREAM) as rows:
        yield from _findings(rows, aged, parse)


def _findings(rows: Iterable[Any], aged: Aged, parse: Callable[[Any], Any] | None = None) -> Iterator[Entry]:
    """Entries from FINDINGS rows; `parse` turns a raw created_at into a datetime (None: it is one already)."""
    loads = orjson.loads
    last_created: Any = object()  # the previous row's raw created_at, and its stamp
    stamp = ""
    last_judged: Any = None  # the previous redacted row's (created_at, redacted_at), its verdict and time
    judged: str | None = None
    made: Any = None
    for row in rows:
        (seq, id_, org, created, redacted, ph, ch, scan, cve, sev, pkg, inst, fixed, target, title, url, refs, vids,
         syn, cut) = row  # fmt: skip
        refs = None if refs is None else loads(refs)
        vids = None if vids is None else loads(vids)
        syn = None if syn is None else bool(syn)
        if redacted is not None and (
            cve is None and sev is None and pkg is None and inst is None and fixed is None and target is None
            and title is None and url is None and refs is None and vids is None and syn is None and cut is None
        ):  # fmt: skip
            if (created, redacted) != last_judged:  # a scan's findings share both times: judge once per scan
                made, gone = (parse(created), parse(redacted)) if parse else (created, redacted)
                judged, last_judged = aged(made, gone), (created, redacted)
            yield (seq, "finding", id_, None if judged is None else _early(made, judged), ph, ch)
            continue
        if created != last_created:
            stamp, last_created = timestamp(parse(created) if parse else created), created
        payload = {
            "org_id": org,
            "scan_run_id": scan,
            "created_at": stamp,
            "cve_id": cve,
            "severity": sev,
            "package": pkg,
            "installed_version": inst,
            "fixed_version": fixed,
            "target": target,
            "title": title,
            "primary_url": url,
            "references": refs,
            "vendor_ids": vids,
            "synthetic": syn,
        }
        if cut:  # in the payload only when true (app.chain.finding_payload)
            payload["truncated"] = True
        yield (seq, "finding", id_, payload, ph, ch)


def audit_entries(conn: sa.Connection, org_id: int, aged: Aged | None = None) -> Generator[Entry, None, None]:
    aged = aged or retention_rule(conn, org_id)
    with conn.execute(AUDIT, {"org": org_id}, execution_options=STREAM) as rows:
        yield from _audit_events(rows, aged)


def _audit_events(rows: Iterable[Any], aged: Aged) -> Iterator[Entry]:
    for r in rows:
        details = _json(r.details)
        if r.redacted_at is not None and r.action is None and r.actor is None and details is None:
            why = aged(r.created_at, r.redacted_at)
            early = None if why is None else _early(r.created_at, why)
            yield (r.seq, "audit", r.id, early, r.payload_hash, r.chain_hash)
            continue
        payload = audit_payload(r.org_id, timestamp(r.created_at), r.action, r.actor, details)
        yield (r.seq, "audit", r.id, payload, r.payload_hash, r.chain_hash)


@contextmanager
def entries(conn: sa.Connection, org_id: int) -> Iterator[Iterator[Entry]]:
    """Every entry of the org's chain, by (seq, kind, id): findings and audit events merged; the cursors are
    closed on leaving, however far the caller read."""
    aged = retention_rule(conn, org_id)
    findings, events = finding_entries(conn, org_id, aged), audit_entries(conn, org_id, aged)
    try:
        yield heapq.merge(findings, events, key=lambda e: (e[0], _KIND_ORDER[e[1]], e[2]))
    finally:
        findings.close()
        events.close()


def head_of(conn: sa.Connection, org_id: int) -> tuple[int, str] | None:
    row = conn.execute(HEAD, {"org": org_id}).one_or_none()
    return (row.seq, row.head_hash) if row else None


def chain_hash_at(conn: sa.Connection, org_id: int, seq: int) -> str | None:
    """The stored chain_hash of the org's entry at `seq` (None when there is none, or more than one)."""
    hashes = [
        *conn.execute(sa.select(_f.c.chain_hash).where(_f.c.org_id == org_id, _f.c.seq == seq)).scalars(),
        *conn.execute(sa.select(_a.c.chain_hash).where(_a.c.org_id == org_id, _a.c.seq == seq)).scalars(),
    ]
    return hashes[0] if len(hashes) == 1 else None


def store_lookups(conn: sa.Connection, org_id: int) -> Lookups:
    def other_org_ids() -> list[int]:
        return list(conn.execute(sa.select(Org.id).where(Org.id != org_id).order_by(Org.id)).scalars())

    def holder_of(seq: int, prev: bytes) -> str | None:
        for table in (_f, _a):
            rows = conn.execute(
                sa.select(table.c.payload_hash, table.c.chain_hash, Org.slug)
                .join(Org, Org.id == table.c.org_id)
                .where(table.c.seq == seq, table.c.org_id != org_id)
            )
            for ph, ch, slug in rows:
                if _links(prev, (seq, "", 0, None, ph, ch)):
                    return slug
        return None

    return Lookups(other_org_ids, holder_of)


def verify_org(engine: sa.Engine, org_id: int) -> Verdict:
    """Verify the org's chain inside one snapshot of the database (concurrent appends are not seen half-way)."""
    with snapshot(engine) as conn, entries(conn, org_id) as chain:
        return walk(chain, head_of(conn, org_id), store_lookups(conn, org_id))


@contextmanager
def snapshot(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A read-only connection whose statements all see one snapshot (REPEATABLE READ on PostgreSQL; on SQLite
    a read transaction keeps its WAL snapshot)."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin() as tx:
            try:
                yield conn
            finally:
                tx.rollback()
