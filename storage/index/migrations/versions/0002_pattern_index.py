"""PostgreSQL: a text_pattern_ops index so wildcard name searches use an index

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

Under a non-C collation PostgreSQL cannot use a plain btree index for `LIKE 'ABC%'`; QIDO and
C-FIND PatientName=ABC* queries would scan every study. SQLite runs these as GLOB, which
the existing index serves.
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

PATTERN_INDEXES = {
    "ix_studies_patient_name_pattern": "patient_name_folded",
    "ix_studies_patient_id_pattern": "patient_id",
    "ix_studies_accession_pattern": "accession_number",
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, column in PATTERN_INDEXES.items():
        op.create_index(name, "studies", [column], postgresql_ops={column: "text_pattern_ops"})


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in PATTERN_INDEXES:
        op.drop_index(name, table_name="studies")
