"""access and audit: study owners, shares, disabled organizations, AE addresses, token revocations, the audit trail

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

Visibility becomes per organization ([6/10]): a study is seen by the organizations that sent it
(`study_owners`, filled here from `studies.org_id`) and those it is shared with (`shares`). An
organization can be disabled and can opt its AEs out of the address check; an AE can be bound
to a network or to a client certificate. `token_revocations` makes `pacs token revoke` take effect at once, and
`audit_records` is the hash-chained audit trail, read by forwarders through `audit_cursors`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("organizations") as batch:
        batch.add_column(sa.Column("disabled_at", TZ, nullable=True))
        batch.add_column(sa.Column("check_ae_address", sa.Boolean(), nullable=False, server_default=sa.true()))
    with op.batch_alter_table("application_entities") as batch:
        batch.add_column(sa.Column("allowed_from", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("tls_subject", sa.String(length=256), nullable=True))

    op.create_table(
        "study_owners",
        sa.Column("study_id", ID, sa.ForeignKey("studies.id", ondelete="CASCADE"), nullable=False),
        sa.Column("org_id", sa.String(length=64), sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("study_id", "org_id"),
    )
    op.create_index("ix_study_owners_org_study", "study_owners", ["org_id", "study_id"])
    op.execute(
        "INSERT INTO study_owners (study_id, org_id, created_at)"
        " SELECT id, org_id, created_at FROM studies WHERE org_id IS NOT NULL"
    )

    op.create_table(
        "shares",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("study_id", ID, sa.ForeignKey("studies.id", ondelete="CASCADE"), nullable=False),
        sa.Column("from_org", sa.String(length=64), nullable=True),
        sa.Column("to_org", sa.String(length=64), sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=256), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("expires_at", TZ, nullable=True),
        sa.Column("revoked_at", TZ, nullable=True),
        sa.Column("revoked_by", sa.String(length=256), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_shares_to_org_study", "shares", ["to_org", "study_id"])
    op.create_index("ix_shares_study_id", "shares", ["study_id"])

    op.create_table(
        "token_revocations",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("value", sa.String(length=256), nullable=False),
        sa.Column("revoked_at", TZ, nullable=False),
        sa.Column("revoked_by", sa.String(length=256), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_token_revocations_kind_value", "token_revocations", ["kind", "value"])

    op.create_table(
        "audit_records",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("time", TZ, nullable=False),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column("org", sa.String(length=64), nullable=True),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=128), nullable=False),
        sa.Column("patient", sa.String(length=64), nullable=True),
        sa.Column("study", sa.String(length=64), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(length=256), nullable=True),
        sa.Column("owner_org", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("chain", sa.String(length=128), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("chain", "seq", name="uq_audit_chain_seq"),
    )
    for column in ("time", "patient", "study", "actor", "action", "org"):
        op.create_index(f"ix_audit_records_{column}", "audit_records", [column])

    op.create_table(
        "audit_cursors",
        sa.Column("target", sa.String(length=255), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.Column("claimed_until", TZ, nullable=True),
        sa.PrimaryKeyConstraint("target"),
    )


def downgrade() -> None:
    op.drop_table("audit_cursors")
    op.drop_table("audit_records")
    op.drop_table("token_revocations")
    op.drop_table("shares")
    op.drop_table("study_owners")
    with op.batch_alter_table("application_entities") as batch:
        batch.drop_column("tls_subject")
        batch.drop_column("allowed_from")
    with op.batch_alter_table("organizations") as batch:
        batch.drop_column("check_ae_address")
        batch.drop_column("disabled_at")
