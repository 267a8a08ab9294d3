"""org_settings.exceptions_version: moved by every change to the org's exceptions (created, revoked, expiry
recorded), so an upload that read the exceptions before taking the policy's lock knows whether they changed since

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06 07:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("org_settings") as batch:
        batch.add_column(sa.Column("exceptions_version", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("org_settings") as batch:
        batch.drop_column("exceptions_version")
