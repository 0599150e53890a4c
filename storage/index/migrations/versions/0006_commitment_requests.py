"""commitment_requests: storage commitment reports survive a restart

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23

A success on a Storage Commitment N-ACTION promises an N-EVENT-REPORT (PS3.4 J.3.2.1.3). The
request is kept here from before that success until its report is delivered or given up, so
a killed process no longer loses it: any SCP process claims the row and reports.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLE = "commitment_requests"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("transaction_uid", sa.String(length=64), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=False),
        sa.Column("org_id", sa.String(length=64), nullable=True),
        sa.Column("referenced", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_commitment_requests_due_at", TABLE, ["due_at"])


def downgrade() -> None:
    op.drop_index("ix_commitment_requests_due_at", table_name=TABLE)
    op.drop_table(TABLE)
