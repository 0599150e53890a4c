"""newest first without reading other studies: an organization's studies by date, a name by date

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

A clinician's study list with no filter (the first page a viewer such as OHIF opens) is its
organization's newest studies. With visibility as `studies.id IN (owned UNION ALL shared)`,
both databases read every owned study's row to sort them by date before the first page (an
organization with 1/20 of 52,000 studies: ~2,700 rows for 1,000 answers). `study_owners` now
carries the study's date, which never changes once the study exists (ingest writes it with the
study and never updates it), and `(org_id, study_date, study_id)` hands an organization's
studies out newest first from the index alone.

A frequent family name (`PatientName=POPESCU*`, ~6 % of the studies) matched several thousand
studies that SQLite sorted whole rows of for the first 1,000. `(patient_name_folded,
study_date)` lets the page's keys be chosen from the index (`storage.query.search._keys_first`);
it serves every name match the single-column index did, which it replaces. PostgreSQL matches
names with its text_pattern_ops index (0002), which now carries `(study_date, id)` the same way;
the plain name index, which no search used there, goes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("study_owners") as batch:
        batch.add_column(sa.Column("study_date", sa.String(length=8), nullable=False, server_default=""))
    op.execute(
        "UPDATE study_owners SET study_date ="
        " (SELECT studies.study_date FROM studies WHERE studies.id = study_owners.study_id)"
    )
    op.create_index("ix_study_owners_org_date", "study_owners", ["org_id", "study_date", "study_id"])
    op.drop_index("ix_study_owners_org_study", table_name="study_owners")
    op.drop_index("ix_studies_patient_name_folded", table_name="studies")
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_studies_patient_name_pattern", table_name="studies")
        op.create_index(
            "ix_studies_patient_name_pattern",
            "studies",
            ["patient_name_folded", "study_date", "id"],
            postgresql_ops={"patient_name_folded": "text_pattern_ops"},
        )
    else:
        op.create_index("ix_studies_name_date", "studies", ["patient_name_folded", "study_date"])


def downgrade() -> None:
    op.create_index("ix_studies_patient_name_folded", "studies", ["patient_name_folded"])
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_studies_patient_name_pattern", table_name="studies")
        op.create_index(
            "ix_studies_patient_name_pattern",
            "studies",
            ["patient_name_folded"],
            postgresql_ops={"patient_name_folded": "text_pattern_ops"},
        )
    else:
        op.drop_index("ix_studies_name_date", table_name="studies")
    op.create_index("ix_study_owners_org_study", "study_owners", ["org_id", "study_id"])
    op.drop_index("ix_study_owners_org_date", table_name="study_owners")
    with op.batch_alter_table("study_owners") as batch:
        batch.drop_column("study_date")
