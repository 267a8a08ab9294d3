"""fenced delivery: refusals and revision on outbox rows, check-run create counts, worker heartbeats

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("refusals", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("revision", sa.Integer(), server_default="0", nullable=False))
    with op.batch_alter_table("check_runs") as batch:
        batch.add_column(sa.Column("creates_sent", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("last_create_at", sa.DateTime(), nullable=True))
    op.create_table(
        "worker_heartbeats",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("beat_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_worker_heartbeats")),
    )
    op.create_index(op.f("ix_worker_heartbeats_beat_at"), "worker_heartbeats", ["beat_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_worker_heartbeats_beat_at"), table_name="worker_heartbeats")
    op.drop_table("worker_heartbeats")
    with op.batch_alter_table("check_runs") as batch:
        batch.drop_column("last_create_at")
        batch.drop_column("creates_sent")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("revision")
        batch.drop_column("refusals")
