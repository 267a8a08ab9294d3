"""images, their latest scans' advisory ids, and trend changes: each repo's image names with their latest scan
(images now), the advisory ids of those scans' findings (the advisory search), and how much an org's latest counts
changed per day (the trend)

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-19 12:00:00
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from app import fields

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None
LEVELS = ("critical", "high", "medium", "low")


def upgrade() -> None:
    images = op.create_table(
        "images",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("org_id", sa.Integer(), sa.ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("repo_full_name", sa.String(200), nullable=False),
        sa.Column("image_name", sa.String(1024), nullable=False),
        sa.Column("latest_scan_id", sa.Integer(), sa.ForeignKey("scan_runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("org_id", "repo_full_name", "image_name", name="uq_images_org_repo_name"),
    )
    op.create_index("ix_images_org_id_id", "images", ["org_id", "id"])
    op.create_index("ix_images_latest_scan", "images", ["latest_scan_id"])
    advisories = op.create_table(
        "latest_advisories",
        sa.Column("org_id", sa.Integer(), primary_key=True),
        sa.Column(
            "advisory_id",
            sa.String(1024).with_variant(postgresql.VARCHAR(1024, collation="C"), "postgresql"),
            primary_key=True,
        ),
        sa.Column("seq", sa.BigInteger(), primary_key=True),
        sa.Column("scan_run_id", sa.Integer(), nullable=False),
        sqlite_with_rowid=False,
    )
    changes = op.create_table(
        "trend_changes",
        sa.Column("org_id", sa.Integer(), sa.ForeignKey("orgs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("day", sa.Date(), primary_key=True),
        *(sa.Column(level, sa.Integer(), nullable=False) for level in LEVELS),
    )
    with op.batch_alter_table("scan_runs") as batch:
        batch.create_index("ix_scan_runs_image_history", ["org_id", "repo_full_name", "image_name", "created_at"])
        batch.create_index("ix_scan_runs_org_created", ["org_id", "created_at"])
    conn = op.get_bind()
    scans = sa.table(
        "scan_runs",
        sa.column("id", sa.Integer()),
        sa.column("org_id", sa.Integer()),
        sa.column("repo_full_name", sa.String()),
        sa.column("image_ref", sa.String()),
        sa.column("image_name", sa.String()),
        sa.column("created_at", sa.DateTime()),
        *(sa.column(level, sa.Integer()) for level in LEVELS),
    )
    # Scans stored before image names were kept (0013) get theirs, so they are in the history of their image.
    unnamed = conn.execute(sa.select(scans.c.id, scans.c.image_ref).where(scans.c.image_name.is_(None))).all()
    for scan_id, image_ref in unnamed:
        conn.execute(sa.update(scans).where(scans.c.id == scan_id).values(image_name=fields.image_name(image_ref)))
    latest = conn.execute(
        sa.select(scans.c.org_id, scans.c.repo_full_name, scans.c.image_name, sa.func.max(scans.c.id)).group_by(
            scans.c.org_id, scans.c.repo_full_name, scans.c.image_name
        )
    ).all()
    now = datetime.now(UTC).replace(tzinfo=None)
    rows = [
        {"org_id": o, "repo_full_name": r, "image_name": n, "latest_scan_id": s, "updated_at": now}
        for o, r, n, s in latest
    ]
    if rows:
        op.bulk_insert(images, rows)
    # The advisory ids of the latest scans' findings, as uploads write them (app.findings.latest.advisory_rows).
    findings = sa.table(
        "findings",
        *(sa.column(c) for c in ("org_id", "scan_run_id", "seq", "cve_id", "synthetic")),
        sa.column("vendor_ids", sa.JSON()),
    )
    latest_ids = [r["latest_scan_id"] for r in rows]
    for start in range(0, len(latest_ids), 500):
        found = conn.execute(
            sa.select(
                findings.c.org_id, findings.c.scan_run_id, findings.c.seq, findings.c.cve_id, findings.c.vendor_ids
            )
            .where(findings.c.scan_run_id.in_(latest_ids[start : start + 500]), findings.c.cve_id.is_not(None))
            .where(sa.or_(findings.c.synthetic.is_(None), findings.c.synthetic.is_(False)))
        ).all()
        index = [
            {"org_id": org, "advisory_id": a, "seq": seq, "scan_run_id": scan}
            for org, scan, seq, cve, vendors in found
            for a in sorted({str(cve).upper(), *(str(v).upper() for v in vendors or ())})
        ]
        if index:
            op.bulk_insert(advisories, index)
    # Each scan's change to its image's counts (against the image's scan before it), summed per org and day.
    previous = {"partition_by": (scans.c.org_id, scans.c.repo_full_name, scans.c.image_name), "order_by": scans.c.id}
    per_scan = sa.select(
        scans.c.org_id,
        sa.func.date(scans.c.created_at).label("day"),
        *(
            (scans.c[level] - sa.func.coalesce(sa.func.lag(scans.c[level]).over(**previous), 0)).label(level)
            for level in LEVELS
        ),
    ).subquery("per_scan")
    per_day = sa.select(
        per_scan.c.org_id, per_scan.c.day, *(sa.func.sum(per_scan.c[level]) for level in LEVELS)
    ).group_by(per_scan.c.org_id, per_scan.c.day)
    conn.execute(sa.insert(changes).from_select(["org_id", "day", *LEVELS], per_day))


def downgrade() -> None:
    with op.batch_alter_table("scan_runs") as batch:
        batch.drop_index("ix_scan_runs_org_created")
        batch.drop_index("ix_scan_runs_image_history")
    op.drop_table("trend_changes")
    op.drop_table("latest_advisories")
    op.drop_index("ix_images_latest_scan", "images")
    op.drop_index("ix_images_org_id_id", "images")
    op.drop_table("images")
