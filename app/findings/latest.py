"""Each image's latest scan and the org's trend changes, written with an upload (app.findings.service) in the
upload's own transaction; read by app.insights (images now, the advisory search, the trend). The advisory ids of the
images' latest scans (the search's index) are the worker's: app.insights.index."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from app.models import Image, ScanRun, TrendChange

_images = Image.__table__
_changes = TrendChange.__table__
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
# of the image's new latest scan are the worker's (app.insights.index): added with the upload, one index page per
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
