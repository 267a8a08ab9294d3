"""the advisory search's index kept by the worker: each image's indexed scan (whose advisory ids are in
latest_advisories); uploads no longer write the index rows

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06 02:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("indexed_scan_id", sa.Integer(), nullable=True))
    # Until now every upload added its scan's rows: each image's latest scan is indexed.
    op.execute("UPDATE images SET indexed_scan_id = latest_scan_id")


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_column("indexed_scan_id")
