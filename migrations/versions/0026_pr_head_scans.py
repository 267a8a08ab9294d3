"""pull_request_heads: every (head commit, base ref) a pull request had, so that a scan of such a head stored under
the base's ref (a pull_request_target run) is never the base's baseline, also once the pull request moves on or
closes; pull_requests.merge_sha: a merged pull request's merge commit (its head itself when fast-forwarded, whose
scans are then the base's). The heads known now are taken from pull_requests.

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
    op.create_table(
        "pull_request_heads",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("org_id", sa.Integer(), nullable=False),
        sa.Column("repo_full_name", sa.String(length=200), nullable=False),
        sa.Column("head_sha", sa.String(length=40), nullable=False),
        sa.Column("base_ref", sa.String(length=255), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["orgs.id"], name=op.f("fk_pull_request_heads_org_id_orgs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pull_request_heads")),
        sa.UniqueConstraint(
            "org_id", "repo_full_name", "head_sha", "base_ref", "number", name="uq_pull_request_heads_head"
        ),
    )
    # A plain ADD COLUMN (batch mode would copy pull_requests on SQLite).
    op.add_column("pull_requests", sa.Column("merge_sha", sa.String(length=40), nullable=True))
    op.execute(
        "INSERT INTO pull_request_heads (org_id, repo_full_name, head_sha, base_ref, number)"
        " SELECT org_id, repo_full_name, head_sha, base_ref, number FROM pull_requests WHERE base_ref IS NOT NULL"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE pull_requests DROP COLUMN merge_sha")  # SQLite 3.35 and later; no copy of the table
    op.drop_table("pull_request_heads")
