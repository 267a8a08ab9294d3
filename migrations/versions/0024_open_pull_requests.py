"""ix_pull_requests_open: a repository's open pull requests found without reading every one it ever had (a new scan
of a base re-posts the heads of the open pull requests on it; a settings change, every open head)

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-06 13:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_pull_requests_open", "pull_requests", ["org_id", "repo_full_name", "state"])


def downgrade() -> None:
    op.drop_index("ix_pull_requests_open", table_name="pull_requests")
