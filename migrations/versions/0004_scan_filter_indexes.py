"""indexes for the scans page filters: commit, PR, status

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 20:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_scan_runs_org_commit_sha": ["org_id", "commit_sha", "id"],
    "ix_scan_runs_org_pr": ["org_id", "pr_number", "id"],
    "ix_scan_runs_org_status": ["org_id", "status", "id"],
}


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, "scan_runs", columns)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="scan_runs")
