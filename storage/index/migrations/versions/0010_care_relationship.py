"""care relationship and consent: the person on each study owner, the patient's consent history

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

[7/10]: an organization sees the studies of the persons it cares for (`storage.access.policy`).
`study_owners.person_id` is the person of the owned study's identity, kept by the patient index
whenever it links or splits (`storage.patients.linker`), so that the persons an organization
cares for, and their studies, are read from two indexes instead of joining every study of the
organization to its identity (a page of a clinic's studies at 1M instances: ~64 -> ~15 ms on
PostgreSQL, benchmarks/README.md). `consents` keeps every choice a person made about
cross-organization sharing, with who recorded it and when; `persons.cross_org_sharing` is the
one in force.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("study_owners") as batch:
        batch.add_column(sa.Column("person_id", ID, nullable=True))
    op.execute(
        "UPDATE study_owners SET person_id = (SELECT i.person_id FROM studies s"
        " JOIN patient_identities i ON i.id = s.identity_id WHERE s.id = study_owners.study_id)"
    )
    op.create_index("ix_study_owners_person_date", "study_owners", ["person_id", "study_date", "study_id"])
    op.create_index("ix_study_owners_org_person", "study_owners", ["org_id", "person_id"])
    op.create_index("ix_persons_cross_org_sharing", "persons", ["cross_org_sharing"])
    op.create_table(
        "consents",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("person_id", ID, nullable=False),
        sa.Column("cross_org_sharing", sa.String(length=8), nullable=False),
        sa.Column("recorded_by", sa.String(length=256), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column("org", sa.String(length=64), nullable=True),
        sa.Column("time", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_consents_person_id", "consents", ["person_id"])


def downgrade() -> None:
    op.drop_index("ix_consents_person_id", table_name="consents")
    op.drop_table("consents")
    op.drop_index("ix_persons_cross_org_sharing", table_name="persons")
    op.drop_index("ix_study_owners_org_person", table_name="study_owners")
    op.drop_index("ix_study_owners_person_date", table_name="study_owners")
    with op.batch_alter_table("study_owners") as batch:
        batch.drop_column("person_id")
