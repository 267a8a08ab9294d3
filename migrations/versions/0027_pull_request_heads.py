"""pull_request_heads: every (head commit, base ref) a pull request had, so that a scan of such a head stored under
the base's ref (a pull_request_target run) is never taken for the base's, also once the pull request moves on or
closes; pull_requests.merge_sha: a merged pull request's merge commit (its head itself when fast-forwarded, whose
scans are then the base's). Replaces 0026's mark on the scans (scan_runs.pr_head, set when stored: it missed scans
stored after a close or a move). The heads known now are taken from pull_requests, from the scans linked to a pull
request and stored under its base's ref, and from 0026's marks.

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-06 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None


def upgrade() -> None:
    inspect = sa.inspect(op.get_bind())
    if not inspect.has_table("pull_request_heads"):  # (a database of a build of this session made it in its 0026)
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
    # Plain ADD/DROP COLUMN (SQLite 3.35 and later): batch mode would copy the tables on SQLite.
    if "merge_sha" not in {c["name"] for c in inspect.get_columns("pull_requests")}:
        op.add_column("pull_requests", sa.Column("merge_sha", sa.String(length=40), nullable=True))
    op.create_index("ix_pull_requests_merge", "pull_requests", ["org_id", "repo_full_name", "merge_sha"])
    marked = "pr_head" in {c["name"] for c in inspect.get_columns("scan_runs")}
    known = [
        "SELECT org_id, repo_full_name, head_sha, base_ref, number FROM pull_requests WHERE base_ref IS NOT NULL",
        "SELECT s.org_id, s.repo_full_name, s.commit_sha, s.ref, s.pr_number FROM scan_runs s"
        " JOIN pull_requests p ON p.org_id = s.org_id AND p.repo_full_name = s.repo_full_name"
        " AND p.number = s.pr_number AND p.base_ref = s.ref",
    ]
    if marked:  # 0026's marks, whatever pull request they were of (0: not known)
        known.append(
            "SELECT org_id, repo_full_name, commit_sha, ref, COALESCE(pr_number, 0) FROM scan_runs"
            " WHERE pr_head AND ref IS NOT NULL"
        )
    op.execute(
        "INSERT INTO pull_request_heads (org_id, repo_full_name, head_sha, base_ref, number)"
        f" SELECT * FROM ({' UNION '.join(known)}) AS k WHERE NOT EXISTS (SELECT 1 FROM pull_request_heads h"
        " WHERE h.org_id = k.org_id AND h.repo_full_name = k.repo_full_name AND h.head_sha = k.head_sha"
        " AND h.base_ref = k.base_ref AND h.number = k.number)"
    )
    if marked:
        op.execute("ALTER TABLE scan_runs DROP COLUMN pr_head")


def downgrade() -> None:
    op.add_column("scan_runs", sa.Column("pr_head", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.execute(  # 0026's marks back, from every head known (they would otherwise all be baselines again)
        "UPDATE scan_runs SET pr_head = true WHERE EXISTS (SELECT 1 FROM pull_request_heads h"
        " WHERE h.org_id = scan_runs.org_id AND h.repo_full_name = scan_runs.repo_full_name"
        " AND h.head_sha = scan_runs.commit_sha AND h.base_ref = scan_runs.ref)"
    )
    op.drop_index("ix_pull_requests_merge", table_name="pull_requests")
    op.execute("ALTER TABLE pull_requests DROP COLUMN merge_sha")
    op.drop_table("pull_request_heads")
