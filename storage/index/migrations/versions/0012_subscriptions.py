"""FHIR Subscriptions and their deliveries; studies indexed by their last change

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

[8/10]: a provider's system subscribes (FHIR R4 Subscription, rest-hook) to the studies it may
see that match a criteria; `subscription_deliveries` records each notification from matched to
delivered, so that any process sends it and none is lost on restart
(`storage.workflow.subscriptions`). The matcher reads studies by `updated_at`, which
`_lastUpdated` searches also filter on: indexed now.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_index("ix_studies_updated_at", "studies", ["updated_at"])
    op.create_table(
        "subscriptions",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("owner_sub", sa.String(length=256), nullable=False),
        sa.Column("owner_org", sa.String(length=64), nullable=True),
        sa.Column("owner_roles", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("criteria", sa.Text(), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("headers", sa.Text(), nullable=False),
        sa.Column("payload", sa.String(length=64), nullable=False),
        sa.Column("end_at", WHEN, nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("checked_until", WHEN, nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("updated_at", WHEN, nullable=False),
        sa.Column("deleted_at", WHEN, nullable=True),
    )
    op.create_index("ix_subscriptions_owner_org", "subscriptions", ["owner_org"])
    op.create_table(
        "subscription_deliveries",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("subscription_id", ID, nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("study_version", WHEN, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("due_at", WHEN, nullable=False),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.Column("claimed_until", WHEN, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("delivered_at", WHEN, nullable=True),
        sa.ForeignKeyConstraint(["subscription_id"], ["subscriptions.id"], ondelete="CASCADE"),
        sa.UniqueConstraint("subscription_id", "study_uid", "study_version", name="uq_subscription_delivery"),
    )
    op.create_index("ix_subscription_deliveries_due", "subscription_deliveries", ["state", "due_at"])


def downgrade() -> None:
    op.drop_index("ix_subscription_deliveries_due", table_name="subscription_deliveries")
    op.drop_table("subscription_deliveries")
    op.drop_index("ix_subscriptions_owner_org", table_name="subscriptions")
    op.drop_table("subscriptions")
    op.drop_index("ix_studies_updated_at", table_name="studies")
