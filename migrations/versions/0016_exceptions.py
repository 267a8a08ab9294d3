"""exceptions: accepted risks with scope, reason, owner and expiry (spec section 10)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "exceptions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("org_id", sa.Integer(), sa.ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("advisory_id", sa.String(1024), nullable=False),
        sa.Column("package_name", sa.String(1024), nullable=True),
        sa.Column("repo_full_name", sa.String(200), nullable=True),
        sa.Column("image", sa.String(1024), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("ticket_url", sa.String(2048), nullable=True),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("source", sa.String(20), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_by", sa.String(200), nullable=True),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.Column("expiry_recorded_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_exceptions_org_id_id", "exceptions", ["org_id", "id"])
    op.create_index("ix_exceptions_expiry", "exceptions", ["expiry_recorded_at", "expires_at"])
    with op.batch_alter_table("org_settings") as batch:
        batch.add_column(sa.Column("exceptions_until", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("org_settings") as batch:
        batch.drop_column("exceptions_until")
    op.drop_index("ix_exceptions_expiry", table_name="exceptions")
    op.drop_index("ix_exceptions_org_id_id", table_name="exceptions")
    op.drop_table("exceptions")
