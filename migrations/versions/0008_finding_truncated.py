"""finding truncated: whether a descriptive field (title, primary_url, references) was cut to its limit at upload

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: rows stored before are NULL (not cut), and adding the column rewrites no row.
    with op.batch_alter_table("findings") as batch:
        batch.add_column(sa.Column("truncated", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("findings") as batch:
        batch.drop_column("truncated")
