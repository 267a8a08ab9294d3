"""pull requests: their base branch (as refs/heads/<base>) and base commit, learnt from pull_request webhooks, to
find a head scan's baseline (spec section 3); NULL for pull requests learnt before

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 20:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pull_requests") as batch:
        batch.add_column(sa.Column("base_ref", sa.String(255), nullable=True))
        batch.add_column(sa.Column("base_sha", sa.String(40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pull_requests") as batch:
        batch.drop_column("base_sha")
        batch.drop_column("base_ref")
