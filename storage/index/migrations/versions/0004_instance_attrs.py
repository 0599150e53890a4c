"""instances.attrs_json: the instance-level attributes searches read

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23

QIDO-RS and C-FIND instance answers parsed each instance's whole DICOM JSON (1.5-3 KB) to
pick a dozen attributes; at 500 matches that parse was most of the answer's time. Ingest now
keeps the instance-level subset beside it. Rows indexed before this revision keep NULL and
are answered from `dicom_json`, as before, so the upgrade does not rewrite the table.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("instances", sa.Column("attrs_json", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("attrs_json")
