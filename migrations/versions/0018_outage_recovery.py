"""outage recovery: outbox items revived after an outage, and the look for webhook deliveries that failed

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-12 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("revivals", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "webhook_redelivery_looks",
        sa.Column("hook", sa.String(50), primary_key=True),
        sa.Column("looked_at", sa.DateTime(), nullable=True),
        sa.Column("tried_at", sa.DateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("webhook_redelivery_looks")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("revivals")
