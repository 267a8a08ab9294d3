"""Images: each (repo, image name) an org builds with its latest scan (moved by every upload: app.findings.latest);
the images-now list and one image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from app.models import Image, ScanRun

CURSOR = "i"  # the kind of the images list's cursors (app.web.cursors): an image id, the list goes on after it


@dataclass(frozen=True)
class ImageNow:
    """An image and its latest scan, as the images-now list shows it."""

    id: int
    repo_full_name: str
    image_name: str
    scan: ScanRun


_NOW = sa.select(Image.id, Image.repo_full_name, Image.image_name, ScanRun).join(
    ScanRun, ScanRun.id == Image.latest_scan_id
)


def images_now(
    session: Any, org_id: int, after: int | None = None, limit: int = 50, repo: str | None = None
) -> tuple[list[ImageNow], int | None]:
    """Up to `limit` of the org's images with their latest scans, in the order first seen, after the image `after`;
    and the id to go on from when more follow. `repo` (letter case ignored) narrows it to one repo's."""
    q = _NOW.where(Image.org_id == org_id).order_by(Image.id).limit(limit + 1)
    if after is not None:
        q = q.where(Image.id > after)
    if repo:
        q = q.where(sa.func.lower(Image.repo_full_name) == repo.lower())
    rows = [ImageNow(*row) for row in session.execute(q)]
    more = len(rows) > limit
    return rows[:limit], rows[limit - 1].id if more else None


def image(session: Any, org_id: int, image_id: int) -> ImageNow | None:
    """One of the org's images with its latest scan; None if the org has no such image."""
    row = session.execute(_NOW.where(Image.org_id == org_id, Image.id == image_id)).one_or_none()
    return ImageNow(*row) if row is not None else None
