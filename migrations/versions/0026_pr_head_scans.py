"""scan_runs.pr_head: a scan of an open pull request's head stored under that pull request's base ref (a
pull_request_target run), marked when stored or when the pull request becomes known, so it is never a baseline of the
base, also once the pull request is closed (the scans stored before are marked by the open pull requests known now)

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-06 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN on both backends: batch mode would copy scan_runs on SQLite, and dropping the old copy cascades
    # to every row referencing a scan (images, outbox) with foreign keys on.
    op.add_column("scan_runs", sa.Column("pr_head", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.execute(
        "UPDATE scan_runs SET pr_head = true WHERE EXISTS (SELECT 1 FROM pull_requests p"
        " WHERE p.org_id = scan_runs.org_id AND p.repo_full_name = scan_runs.repo_full_name"
        " AND p.head_sha = scan_runs.commit_sha AND p.base_ref = scan_runs.ref AND p.state = 'open')"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE scan_runs DROP COLUMN pr_head")  # SQLite 3.35 and later; no copy of the table either
