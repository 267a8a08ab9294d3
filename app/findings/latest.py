"""Each image's latest scan, its findings' advisory ids (the search's index) and the org's trend changes, written
with an upload (app.findings.service) in the upload's own transaction; read by app.insights (images now, the
advisory search, the trend)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from app.db import write_transaction
from app.models import Image, LatestAdvisory, ScanRun, TrendChange

_images = Image.__table__
_changes = TrendChange.__table__
_advisories = LatestAdvisory.__table__
LEVELS = ("critical", "high", "medium", "low")  # what the trend counts
_org = sa.bindparam("i_org", type_=sa.Integer)
_repo = sa.bindparam("i_repo", type_=sa.String)
_name = sa.bindparam("i_name", type_=sa.String)
_scan = sa.bindparam("i_scan", type_=sa.Integer)
_this_image = (_images.c.org_id == _org, _images.c.repo_full_name == _repo, _images.c.image_name == _name)


def _move(insert: Any) -> sa.Insert:
    """The image's row made, or moved to this scan unless a later one is already there (ids only grow)."""
    statement = insert(_images).values(
        org_id=_org,
        repo_full_name=_repo,
        image_name=_name,
        latest_scan_id=_scan,
        updated_at=sa.bindparam("i_at", type_=sa.DateTime),
    )
    excluded = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=["org_id", "repo_full_name", "image_name"],
        set_={"latest_scan_id": excluded.latest_scan_id, "updated_at": excluded.updated_at},
        where=_images.c.latest_scan_id < excluded.latest_scan_id,
    )


_later = sa.exists().where(*_this_image, _images.c.latest_scan_id > _scan)  # a later scan of the image is stored


def _change(insert: Any) -> sa.Insert:
    """The day's trend change: this scan's counts minus those of the scan it replaces as the image's latest (none for
    a new image); nothing when a later scan of the image is already there. Reads the image's row as it was before
    the move: on SQLite it runs first, on PostgreSQL it is part of the same statement (one snapshot)."""
    replaced = (
        sa.select(*(getattr(ScanRun, level) for level in LEVELS))
        .select_from(_images)
        .join(ScanRun, ScanRun.id == _images.c.latest_scan_id)
        .where(*_this_image)
        .subquery("replaced")
    )
    one = sa.select(sa.literal(1).label("one")).subquery("one")
    change = sa.select(
        _org,
        sa.bindparam("i_day", type_=sa.Date),
        *(sa.bindparam(f"i_{level}", type_=sa.Integer) - sa.func.coalesce(replaced.c[level], 0) for level in LEVELS),
    ).select_from(one.outerjoin(replaced, sa.true()))
    statement = insert(_changes).from_select(["org_id", "day", *LEVELS], change.where(~_later))
    excluded = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=["org_id", "day"], set_={level: _changes.c[level] + excluded[level] for level in LEVELS}
    )


def advisory_ids(findings: Sequence[Mapping[str, Any]]) -> list[tuple[str, int]]:
    """The uploaded findings' advisory ids (own and vendor ids, upper case, each once a finding), with the finding's
    index in the upload. Made before any lock: a finding's chain seq is the first seq plus its index (chain.link
    numbers them in this order)."""
    rows = []
    for i, f in enumerate(findings):
        ids = {str(f["cve_id"]).upper()}
        ids.update(str(v).upper() for v in f.get("vendor_ids") or ())
        rows += [(a, i) for a in sorted(ids)]
    return rows


def advisory_json(rows: Sequence[tuple[str, int]]) -> str:
    """advisory_ids as the JSON PostgreSQL's ADD_ADVISORIES reads: [{"a": id, "i": index}]."""
    return orjson.dumps([{"a": a, "i": i} for a, i in rows]).decode()


_SQLITE_ADD = "INSERT INTO latest_advisories (org_id, advisory_id, seq, scan_run_id) VALUES (?, ?, ?, ?)"


def add_advisories_sqlite(
    conn: sa.Connection, org_id: int, scan_id: int, first_seq: int, rows: Sequence[tuple[str, int]]
) -> None:
    """SQLite: the scan's index rows, one executemany below SQLAlchemy. No later scan of the image can be stored
    already: its one writer gives scan ids in commit order."""
    if rows:
        conn.exec_driver_sql(_SQLITE_ADD, [(org_id, a, first_seq + i, scan_id) for a, i in rows])


_first_seq = sa.bindparam("i_first_seq", type_=sa.BigInteger)


def _add_advisories() -> sa.Insert:
    """PostgreSQL: this scan's index rows (advisory_json), unless a later scan of the image is already there."""
    rows = sa.bindparam("i_advisories", type_=sa.Text)
    recordset = sa.func.json_to_recordset(sa.cast(rows, postgresql.JSON)).table_valued(
        sa.column("a", sa.Text), sa.column("i", sa.BigInteger)
    )
    source = recordset.render_derived(with_types=True)
    return sa.insert(_advisories).from_select(
        ["org_id", "advisory_id", "seq", "scan_run_id"],
        sa.select(_org, source.c.a, _first_seq + source.c.i, _scan).select_from(source).where(~_later),
    )


# Run with the upload's last statement (app.findings.store.insert: on PostgreSQL part of that one statement), in
# this order (on SQLite, one after another: each reads the image's row before the move). The rows of the scan an
# upload replaces are left to prune_advisories (the search filters on the latest scans): deleting them here, inside
# the org's chain lock, cost a third of the upload throughput.
MOVE = {
    "postgresql": (_change(postgresql.insert), _add_advisories(), _move(postgresql.insert)),
    "sqlite": (_change(sqlite.insert), _move(sqlite.insert)),  # the index rows: add_advisories_sqlite
}


def move_params(
    org_id: int,
    repo: str,
    image_name: str,
    scan_id: int,
    now: datetime,
    counts: Mapping[str, int],
    advisories: str | None,
    first_seq: int,
) -> dict[str, Any]:
    """MOVE's parameters: `advisories` as advisory_json gives them (PostgreSQL), `first_seq` the upload's first
    finding's seq."""
    return {
        "i_advisories": advisories,
        "i_first_seq": first_seq,
        "i_org": org_id,
        "i_repo": repo,
        "i_name": image_name,
        "i_scan": scan_id,
        "i_at": now,
        "i_day": now.date(),
        **{f"i_{level}": counts[level] for level in LEVELS},
    }


PRUNE_BATCH = 5_000
_stale = (
    sa.select(_advisories.c.org_id, _advisories.c.advisory_id, _advisories.c.seq)
    .where(~sa.exists().where(_images.c.latest_scan_id == _advisories.c.scan_run_id))
    .limit(PRUNE_BATCH)
)
PRUNE = sa.delete(_advisories).where(
    sa.tuple_(_advisories.c.org_id, _advisories.c.advisory_id, _advisories.c.seq).in_(_stale)
)


def prune_advisories(session: Any, stopping: Callable[[], bool] = lambda: False) -> int:
    """Delete the index rows of scans no longer any image's latest (the worker, every PRUNE_EVERY), a batch per
    transaction; the rows deleted. An upload's rows and its image's move commit together, and ids only grow, so a
    row seen stale stays stale."""
    pruned = 0
    while not stopping():
        with write_transaction(session):
            deleted = session.execute(PRUNE).rowcount
        pruned += deleted
        if deleted < PRUNE_BATCH:
            break
    return pruned
