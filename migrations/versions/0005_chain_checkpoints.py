"""chain checkpoints: the signed size and head hash of each org's chain, that later checkpoints must extend

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 01:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chain_checkpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("org_id", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("head_hash", sa.String(length=64), nullable=False),
        sa.Column("signed_at", sa.String(length=40), nullable=False),
        sa.Column("key_id", sa.String(length=100), nullable=False),
        sa.Column("signature", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["orgs.id"], name=op.f("fk_chain_checkpoints_org_id_orgs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chain_checkpoints")),
    )
    op.create_index("ix_chain_checkpoints_org_id_id", "chain_checkpoints", ["org_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_chain_checkpoints_org_id_id", table_name="chain_checkpoints")
    op.drop_table("chain_checkpoints")
