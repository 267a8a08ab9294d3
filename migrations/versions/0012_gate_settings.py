"""the gate's settings: block_threshold, ignore_unfixed, block_on (spec section 3); their defaults keep the rule
every org had (a high or critical finding blocks, fixed or not, new or not)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 19:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("org_settings") as batch:
        batch.add_column(sa.Column("block_threshold", sa.String(10), nullable=False, server_default="high"))
        batch.add_column(sa.Column("ignore_unfixed", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("block_on", sa.String(10), nullable=False, server_default="all"))


def downgrade() -> None:
    with op.batch_alter_table("org_settings") as batch:
        batch.drop_column("block_on")
        batch.drop_column("ignore_unfixed")
        batch.drop_column("block_threshold")
