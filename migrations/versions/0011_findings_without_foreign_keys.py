"""findings without foreign keys: each row paid two referential checks at insert, the largest part of the database's
work for a small upload

A finding is only ever written by ingest, in the transaction that writes its scan (same org), and neither is ever
deleted (retention empties payloads; the chain keeps every row), so the keys checked nothing the code does not
guarantee; `fremforge verify` still finds a row moved or changed.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 18:40:00
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("findings") as batch:
        batch.drop_constraint("fk_findings_org_id_orgs", type_="foreignkey")
        batch.drop_constraint("fk_findings_scan_run_id_scan_runs", type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("findings") as batch:
        batch.create_foreign_key("fk_findings_org_id_orgs", "orgs", ["org_id"], ["id"], ondelete="CASCADE")
        batch.create_foreign_key(
            "fk_findings_scan_run_id_scan_runs", "scan_runs", ["scan_run_id"], ["id"], ondelete="CASCADE"
        )
