"""scans: the git ref an image was built from (`ref`, sent with the upload) and the image's name without tag and
digest, indexed together to find a scan's baseline (spec section 3) in one probe

Scans stored before keep NULL in both: they are nobody's baseline by branch.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 20:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scan_runs") as batch:
        batch.add_column(sa.Column("image_name", sa.String(1024), nullable=True))
        batch.add_column(sa.Column("ref", sa.String(255), nullable=True))
        batch.create_index("ix_scan_runs_baseline", ["org_id", "repo_full_name", "image_name", "ref", "id"])


def downgrade() -> None:
    with op.batch_alter_table("scan_runs") as batch:
        batch.drop_index("ix_scan_runs_baseline")
        batch.drop_column("ref")
        batch.drop_column("image_name")
