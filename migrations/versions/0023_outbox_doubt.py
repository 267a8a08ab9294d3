"""outbox.doubt_until: until when a post that timed out (or got a 502/504) may still land on GitHub, so that the
commit's newest state is checked against what GitHub shows until then, and posted again if an older one landed;
outbox.posting_until: the same for a post sent and not answered yet (left set when its worker died)

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-06 09:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("doubt_until", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("posting_until", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("posting_until")
        batch.drop_column("doubt_until")
