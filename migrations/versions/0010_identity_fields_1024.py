"""identity fields of a finding up to 1,024 characters, as the spec allows (were 200 and 500)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 17:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

WIDENED = {"cve_id": 200, "package": 500, "installed_version": 500, "fixed_version": 500}


def upgrade() -> None:
    with op.batch_alter_table("findings") as batch:
        for column, old in WIDENED.items():
            batch.alter_column(column, existing_type=sa.String(old), type_=sa.String(1024), existing_nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("findings") as batch:
        for column, old in WIDENED.items():
            batch.alter_column(column, existing_type=sa.String(1024), type_=sa.String(old), existing_nullable=True)
