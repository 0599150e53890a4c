"""other identifiers of a patient: what an identity's OtherPatientIDsSequence names, for linking

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

[7/10]: besides the CNP, senders name other identifiers of the patient (an insurance number,
another institution's ID of the same patient) in OtherPatientIDsSequence. An identity keeps them
(`patient_identities.other_ids`, JSON [[issuer, value], ...], for the model to compare), and
`identity_aliases` indexes them, with the identity's own key when its issuer is a DICOM one, so
that the linker finds in one indexed query the identities that share one (`storage.patients.linker`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("patient_identities") as batch:
        batch.add_column(sa.Column("other_ids", sa.Text(), nullable=False, server_default=""))
    op.create_table(
        "identity_aliases",
        sa.Column("identity_id", ID, nullable=False),
        sa.Column("issuer", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["identity_id"], ["patient_identities.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("identity_id", "issuer", "value"),
    )
    op.create_index("ix_identity_aliases_issuer_value", "identity_aliases", ["issuer", "value"])
    op.execute(
        "INSERT INTO identity_aliases (identity_id, issuer, value) SELECT id, issuer, patient_id"
        " FROM patient_identities WHERE issuer_kind = 'dicom' AND length(issuer) <= 64"
    )


def downgrade() -> None:
    op.drop_index("ix_identity_aliases_issuer_value", table_name="identity_aliases")
    op.drop_table("identity_aliases")
    with op.batch_alter_table("patient_identities") as batch:
        batch.drop_column("other_ids")
