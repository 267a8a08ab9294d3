"""worker_heartbeats.github_app_id: the GitHub App an outbox worker posts as (NULL: none), so that /readyz can tell a
web process whose GitHub App settings differ from the worker's (its uploads would never be posted as it expects)

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-06 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("worker_heartbeats") as batch:
        batch.add_column(sa.Column("github_app_id", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("worker_heartbeats") as batch:
        batch.drop_column("github_app_id")
