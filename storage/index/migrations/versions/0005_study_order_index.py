"""studies (study_date, id): the order of a study search without a sort

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23

QIDO-RS and C-FIND list studies newest first (study_date DESC, id DESC). Without an index in
that order the database sorts every visible study before it can return the first page: at
1,000,000 instances ~1 ms of a 17 ms `/dicomweb/studies` on PostgreSQL. Read backwards, this
index hands the page out in order, and the LIMIT stops the scan there. It serves StudyDate
ranges as the single-column index did, which it replaces.
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_studies_date_id", "studies", ["study_date", "id"])
    op.drop_index("ix_studies_study_date", table_name="studies")


def downgrade() -> None:
    op.create_index("ix_studies_study_date", "studies", ["study_date"])
    op.drop_index("ix_studies_date_id", table_name="studies")
