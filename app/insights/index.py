"""The advisory search's index (latest_advisories): the advisory ids of each image's latest scan's findings, added by
the worker a batch of images at a time (index_advisories, every INDEX_EVERY) and pruned of scans no longer latest
(prune_advisories, every PRUNE_EVERY); read by app.insights.advisories, which reads a latest scan not indexed yet from
its findings (advisory_ids). Uploads do not write it: one index page per advisory id, it cost a tenth of the upload
throughput."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from app.db import write_transaction
from app.models import Finding, Image, LatestAdvisory

_images = Image.__table__
_advisories = LatestAdvisory.__table__


def advisory_ids(
    dialect: str,
    *where: sa.ColumnElement[bool],
    match: Callable[[sa.ColumnElement[str]], sa.ColumnElement[bool]] | None = None,
) -> sa.CompoundSelect:
    """The advisory ids of the findings meeting `where`, as rows (org_id, advisory_id, seq, scan_run_id): each
    finding's own id and its vendor ids, upper case, each once a finding; with `match`, only the ids it takes. What
    index_advisories adds to the index, and what the search reads of a scan not indexed yet. Ids compare byte by
    byte (PostgreSQL: collation "C", as the index's column)."""
    arrays: tuple[sa.ColumnElement[bool], ...] = ()
    if dialect == "postgresql":  # an array's elements; a JSON null or scalar, which it would refuse, is left out first
        vendor = sa.func.json_array_elements_text(Finding.vendor_ids).table_valued("value")
        arrays = (sa.func.json_typeof(Finding.vendor_ids) == "array",)
    else:  # a JSON null's one element is NULL, left out below
        vendor = sa.func.json_each(Finding.vendor_ids).table_valued("value")
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
        .where(*where, *arrays, vendor.c.value.is_not(None))
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
