"""the gate's record (spec sections 2 and 3): each finding's blocking, new and exception_id as evaluated at upload;
each scan's blocking count, baseline scan and block_on; the commits whose posted state waits to be re-evaluated
(reposts)

Scans stored before: blocking is what blocked under the rule they were judged by (a high or critical finding of
a scan that failed); new and exception_id stay NULL (no baseline was asked, no exception existed).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05 20:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("findings") as batch:
        batch.add_column(sa.Column("blocking", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("new", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("exception_id", sa.Integer(), nullable=True))
    with op.batch_alter_table("scan_runs") as batch:
        batch.add_column(sa.Column("blocking", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("baseline_scan_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("block_on", sa.String(10), nullable=True))
    op.execute("UPDATE scan_runs SET blocking = critical + high WHERE status = 'failure'")
    op.execute(
        "UPDATE findings SET blocking = (severity IN ('critical', 'high') AND scan_run_id IN "
        "(SELECT id FROM scan_runs WHERE status = 'failure'))"
    )
    op.create_table(
        "reposts",
        sa.Column("org_id", sa.Integer(), sa.ForeignKey("orgs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("repo_full_name", sa.String(200), primary_key=True),
        sa.Column("commit_sha", sa.String(40), primary_key=True),
        sa.Column("base_url", sa.String(2048), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("requested_at", sa.DateTime(), nullable=False),
        sa.Column("claimed_until", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_reposts_due", "reposts", ["claimed_until"])


def downgrade() -> None:
    op.drop_index("ix_reposts_due", table_name="reposts")
    op.drop_table("reposts")
    with op.batch_alter_table("scan_runs") as batch:
        batch.drop_column("block_on")
        batch.drop_column("baseline_scan_id")
        batch.drop_column("blocking")
    with op.batch_alter_table("findings") as batch:
        batch.drop_column("exception_id")
        batch.drop_column("new")
        batch.drop_column("blocking")
