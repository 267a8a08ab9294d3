"""Each image's latest scan and the org's trend changes, written with an upload (app.findings.service) in the
upload's own transaction; the advisory ids of the images' latest scans (the search's index), added by the worker in
batches; read by app.insights (images now, the advisory search, the trend)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from app.db import write_transaction
from app.models import Finding, Image, LatestAdvisory, ScanRun, TrendChange

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


# Run with the upload's last statement (app.findings.store.insert: on PostgreSQL part of that one statement), in
# this order (on SQLite, one after another: the trend change reads the image's row before the move). The index rows
# of the image's new latest scan are the worker's (index_advisories): added with the upload, one index page per
# advisory id, they cost a tenth of the upload throughput; the search reads a scan not yet indexed from its findings.
MOVE = {
    "postgresql": (_change(postgresql.insert), _move(postgresql.insert)),
    "sqlite": (_change(sqlite.insert), _move(sqlite.insert)),
}


def move_params(
    org_id: int, repo: str, image_name: str, scan_id: int, now: datetime, counts: Mapping[str, int]
) -> dict[str, Any]:
    """MOVE's parameters."""
    return {
        "i_org": org_id,
        "i_repo": repo,
        "i_name": image_name,
        "i_scan": scan_id,
        "i_at": now,
        "i_day": now.date(),
        **{f"i_{level}": counts[level] for level in LEVELS},
    }


# ---------------------------------------------------------------- the advisory search's index


def advisory_ids(
    dialect: str,
    *where: sa.ColumnElement[bool],
    match: Callable[[sa.ColumnElement[str]], sa.ColumnElement[bool]] | None = None,
) -> sa.CompoundSelect:
    """The advisory ids of the findings meeting `where`, as rows (org_id, advisory_id, seq, scan_run_id): each
    finding's own id and its vendor ids, upper case, each once a finding; with `match`, only the ids it takes. What
    index_advisories adds to the index, and what the search reads of a scan not indexed yet. Ids compare byte by
    byte (PostgreSQL: collation "C", as the index's column)."""
    vendor = (
        sa.func.json_array_elements_text(Finding.vendor_ids)
        if dialect == "postgresql"
        else sa.func.json_each(Finding.vendor_ids)
    ).table_valued("value")
    own: sa.ColumnElement[str] = sa.func.upper(Finding.cve_id)
    theirs: sa.ColumnElement[str] = sa.func.upper(vendor.c.value)
    if dialect == "postgresql":
        own, theirs = own.collate("C"), theirs.collate("C")
    columns = (Finding.org_id, Finding.seq, Finding.scan_run_id)
    mine = sa.select(own.label("advisory_id"), *columns).where(*where, Finding.cve_id.is_not(None))
    vendors = (
        sa.select(theirs.label("advisory_id"), *columns)
        .select_from(Finding)
        .join(vendor, sa.true())
        .where(*where, vendor.c.value.is_not(None))
    )
    if match is not None:
        mine, vendors = mine.where(match(own)), vendors.where(match(theirs))
    return sa.union(mine, vendors)


INDEX_BATCH = 200  # images indexed a transaction
_lagging = _images.c.indexed_scan_id.is_distinct_from(_images.c.latest_scan_id)
UNINDEXED = sa.select(_images.c.id, _images.c.latest_scan_id).where(_lagging).order_by(_images.c.id).limit(INDEX_BATCH)
MARK_INDEXED = (
    sa.update(_images).where(_images.c.id == sa.bindparam("b_image")).values(indexed_scan_id=sa.bindparam("b_scan"))
)


def _add_advisories(dialect: str) -> sa.Insert:
    """The index rows of the scans `scans`: their findings' advisory ids (a row there already is left as it is)."""
    rows = advisory_ids(dialect, Finding.scan_run_id.in_(sa.bindparam("scans", expanding=True))).subquery("ids")
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    names = ("org_id", "advisory_id", "seq", "scan_run_id")
    # SQLite reads "ON CONFLICT" after a bare SELECT as a join's: the SELECT gets a WHERE clause of its own.
    source = sa.select(*(rows.c[n] for n in names)).where(rows.c.seq.is_not(None))
    return insert(_advisories).from_select(names, source).on_conflict_do_nothing()


ADD_ADVISORIES = {dialect: _add_advisories(dialect) for dialect in ("postgresql", "sqlite")}


def index_advisories(session: Any, stopping: Callable[[], bool] = lambda: False) -> int:
    """Add the index rows of each image's latest scan not indexed yet (the worker, every INDEX_EVERY), a batch of
    images per transaction; the images indexed. An image whose latest scan moves meanwhile stays behind (its indexed
    scan is the one indexed) until the next round; the rows of scans no longer latest are prune_advisories'."""
    indexed = 0
    while not stopping():
        with write_transaction(session):
            batch = session.execute(UNINDEXED).all()
            if batch:
                dialect = session.get_bind().dialect.name
                session.execute(ADD_ADVISORIES[dialect], {"scans": sorted({scan for _, scan in batch})})
                session.execute(MARK_INDEXED, [{"b_image": image, "b_scan": scan} for image, scan in batch])
        indexed += len(batch)
        if len(batch) < INDEX_BATCH:
            break
    return indexed


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
    transaction; the rows deleted. An image's latest scan id only grows, so a row seen stale stays stale."""
    pruned = 0
    while not stopping():
        with write_transaction(session):
            deleted = session.execute(PRUNE).rowcount
        pruned += deleted
        if deleted < PRUNE_BATCH:
            break
    return pruned
