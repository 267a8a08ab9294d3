"""orgs.suspended_installation_id: the installation a suspension unlinked, so that its unsuspend finds the org even
when the account was renamed while suspended (it made a new org before)

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06 09:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("orgs") as batch:
        batch.add_column(sa.Column("suspended_installation_id", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("orgs") as batch:
        batch.drop_column("suspended_installation_id")
