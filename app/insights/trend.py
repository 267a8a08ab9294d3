"""The trend: per day, the critical/high/medium/low findings of the org's images (or one image) as their latest
scans had them that day, over the last DAYS days (spec section 6; issue 17).

One query whatever the size of the history. The org's: its days' changes (trend_changes, written by uploads), the
days before the window summed as one. One image's: its scans in the window and its last scan before it, as changes
(a scan's counts minus the image's scan before it). The running sum is made here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import aliased

from app.models import Image, ScanRun, TrendChange

DAYS = 90
LEVELS = ("critical", "high", "medium", "low")


@dataclass(frozen=True)
class Day:
    day: date
    critical: int
    high: int
    medium: int
    low: int

    @property
    def counts(self) -> tuple[int, int, int, int]:
        return (self.critical, self.high, self.medium, self.low)


def _image_statement() -> sa.Select[Any]:
    """Each scan's change to its image's counts (its counts minus the image's scan before it, in id order), summed
    per day. Within a day the changes add up to the day's last scan minus the image's state before the day, so no
    "last scan of the day" is needed; the image's last scan before the window starts it (dated the day before).
    Scans are sorted by (image id, scan id), two integers: the sort stays narrow."""
    s = ScanRun
    org: sa.BindParameter[int] = sa.bindparam("org", type_=sa.Integer)
    same_image = sa.and_(
        Image.org_id == s.org_id, Image.repo_full_name == s.repo_full_name, Image.image_name == s.image_name
    )
    this_image = (Image.repo_full_name == sa.bindparam("repo"), Image.image_name == sa.bindparam("name"))
    in_window = (
        sa.select(
            Image.id.label("image"),
            s.id.label("scan"),
            sa.func.date(s.created_at).label("day"),
            *(getattr(s, level).label(level) for level in LEVELS),
        )
        .join(Image, same_image)
        .where(s.org_id == org, s.created_at >= sa.bindparam("start", type_=sa.DateTime))
    )
    earlier = aliased(ScanRun, name="earlier")

    def last_before(column: str) -> sa.ScalarSelect[Any]:
        """A column of the image's last scan before the window: an index probe (ix_scan_runs_image_history)."""
        return (
            sa.select(getattr(earlier, column))
            .where(
                earlier.org_id == Image.org_id,
                earlier.repo_full_name == Image.repo_full_name,
                earlier.image_name == Image.image_name,
                earlier.created_at < sa.bindparam("start", type_=sa.DateTime),
            )
            .order_by(earlier.created_at.desc())
            .limit(1)
            .scalar_subquery()
        )

    starts = sa.select(
        Image.id.label("image"),
        last_before("id").label("scan"),
        sa.bindparam("before_day", type_=sa.Date).label("day"),
        *(last_before(level).label(level) for level in LEVELS),
    ).where(Image.org_id == org)
    in_window = in_window.where(*this_image)
    starts = starts.where(*this_image)
    started = starts.subquery("starts")
    before = sa.select(*started.c).where(started.c.scan.is_not(None))
    points = sa.union_all(in_window, before).subquery("points")
    changes = sa.select(
        points.c.day,
        *(
            (
                points.c[level]
                - sa.func.coalesce(
                    sa.func.lag(points.c[level]).over(partition_by=points.c.image, order_by=points.c.scan), 0
                )
            ).label(level)
            for level in LEVELS
        ),
    ).subquery("changes")
    return (
        sa.select(changes.c.day, *(sa.func.sum(changes.c[level]) for level in LEVELS))
        .group_by(changes.c.day)
        .order_by(changes.c.day)
    )


def _org_statement() -> sa.Select[Any]:
    """The org's days' changes in the window, and those before it as one row dated the day before."""
    t = TrendChange
    day = sa.case(
        (t.day < sa.bindparam("start_day", type_=sa.Date), sa.bindparam("before_day", type_=sa.Date)), else_=t.day
    )
    return (
        sa.select(day.label("day"), *(sa.func.sum(getattr(t, level)) for level in LEVELS))
        .where(t.org_id == sa.bindparam("org"))
        .group_by(day)
    )


ORG, IMAGE = _org_statement(), _image_statement()  # built once


def trend(session: Any, org_id: int, today: date, image: tuple[str, str] | None = None, days: int = DAYS) -> list[Day]:
    """The last `days` days up to `today`, oldest first, for the org's images or for one (repo, image name)."""
    start = today - timedelta(days=days - 1)
    params: dict[str, Any] = {
        "org": org_id,
        "start": datetime.combine(start, datetime.min.time()),
        "start_day": start,
        "before_day": start - timedelta(days=1),
    }
    if image is not None:
        params |= {"repo": image[0], "name": image[1]}
    changes = {
        _as_date(day): tuple(int(v or 0) for v in values)
        for day, *values in session.execute(IMAGE if image is not None else ORG, params)
    }
    running = [0, 0, 0, 0]
    out = []
    for offset in range(-1, days):
        day = start + timedelta(days=offset)
        running = [r + c for r, c in zip(running, changes.get(day, (0, 0, 0, 0)), strict=True)]
        if offset >= 0:
            out.append(Day(day, *running))
    return out


def _as_date(value: date | str) -> date:
    """PostgreSQL gives a date; SQLite's date() its ISO text."""
    return date.fromisoformat(value) if isinstance(value, str) else value
