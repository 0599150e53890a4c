"""the Modality Worklist: scheduled procedure steps

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

One table an integrator fills over the admin API and modalities query with C-FIND
(PS3.4 K.6.1). Its indexes serve the usual modality query: station AE title and date, or
date and modality, within the performing organization.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLE = "scheduled_procedure_steps"
INDEXES = {
    "ix_scheduled_procedure_steps_accession_number": ["accession_number"],
    "ix_scheduled_procedure_steps_org_id": ["org_id"],
    "ix_scheduled_procedure_steps_patient_id": ["patient_id"],
    "ix_scheduled_procedure_steps_patient_name_folded": ["patient_name_folded"],
    "ix_scheduled_procedure_steps_study_instance_uid": ["study_instance_uid"],
    "ix_sps_date_modality": ["scheduled_procedure_step_start_date", "modality"],
    "ix_sps_station_date": ["scheduled_station_ae_title", "scheduled_procedure_step_start_date"],
}


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("org_id", sa.String(length=64), nullable=False),
        sa.Column("patient_name", sa.Text(), nullable=False),
        sa.Column("patient_name_folded", sa.Text(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("issuer_of_patient_id", sa.String(length=64), nullable=False),
        sa.Column("patient_birth_date", sa.String(length=8), nullable=False),
        sa.Column("patient_sex", sa.String(length=16), nullable=False),
        sa.Column("accession_number", sa.String(length=16), nullable=False),
        sa.Column("requested_procedure_id", sa.String(length=16), nullable=False),
        sa.Column("requested_procedure_description", sa.String(length=64), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("scheduled_procedure_step_id", sa.String(length=16), nullable=False),
        sa.Column("scheduled_procedure_step_description", sa.String(length=64), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("scheduled_station_ae_title", sa.String(length=16), nullable=False),
        sa.Column("scheduled_procedure_step_start_date", sa.String(length=8), nullable=False),
        sa.Column("scheduled_procedure_step_start_time", sa.String(length=16), nullable=False),
        sa.Column("scheduled_performing_physician_name", sa.Text(), nullable=False),
        sa.Column("scheduled_performing_physician_folded", sa.Text(), nullable=False),
        sa.Column("referring_physician_name", sa.Text(), nullable=False),
        sa.Column("referring_physician_folded", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table(TABLE, schema=None) as batch_op:
        for name, columns in INDEXES.items():
            batch_op.create_index(name, columns, unique=False)


def downgrade() -> None:
    with op.batch_alter_table(TABLE, schema=None) as batch_op:
        for name in INDEXES:
            batch_op.drop_index(name)
    op.drop_table(TABLE)
