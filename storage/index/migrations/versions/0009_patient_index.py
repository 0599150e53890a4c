"""the master patient index: persons, identities' linking fields, the link queue, candidates, decisions, history

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

[7/10]: identities are linked into persons (`patient_identities.person_id`), by a CNP or a
score (`storage.patients`). Ingest queues a new identity (`link_queue`) in its own
transaction; a linker in every `pacs serve` takes queued identities one transaction each
(linked and dequeued together, so none is lost or linked twice), fills their linking
fields (`block_key`, `cnp`) and links them, records pairs it cannot decide
(`link_candidates`), keeps people's decisions (`link_decisions`), which the model never
overrides, and the history (`link_events`). Every identity that exists when this runs is
queued, so an upgraded archive links what it already holds.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "persons",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("merged_into", ID, nullable=True),
        sa.Column("cross_org_sharing", sa.String(length=8), nullable=False, server_default="opt-in"),
        sa.Column("consent_recorded_by", sa.String(length=256), nullable=True),
        sa.Column("consent_recorded_at", TZ, nullable=True),
        sa.Column("consent_note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    # plain ADD COLUMNs (SQLite takes an inline REFERENCES there): a batch rebuild of the table
    # would drop the one every study refers to
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE patient_identities ADD COLUMN person_id INTEGER REFERENCES persons (id)")
    else:
        op.add_column("patient_identities", sa.Column("person_id", ID, nullable=True))
        op.create_foreign_key(None, "patient_identities", "persons", ["person_id"], ["id"])
    op.add_column("patient_identities", sa.Column("address", sa.Text(), nullable=False, server_default=""))
    op.add_column(
        "patient_identities", sa.Column("national_id", sa.String(length=64), nullable=False, server_default="")
    )
    op.add_column("patient_identities", sa.Column("cnp", sa.String(length=13), nullable=True))
    op.add_column("patient_identities", sa.Column("block_key", sa.String(length=8), nullable=False, server_default=""))
    for column in ("person_id", "cnp", "block_key"):
        op.create_index(f"ix_patient_identities_{column}", "patient_identities", [column])

    op.create_table(
        "link_queue",
        sa.Column("identity_id", ID, sa.ForeignKey("patient_identities.id", ondelete="CASCADE"), nullable=False),
        sa.Column("queued_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("identity_id"),
    )
    op.create_index("ix_link_queue_queued_at", "link_queue", ["queued_at"])
    op.create_table(
        "link_candidates",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("identity_a", ID, sa.ForeignKey("patient_identities.id", ondelete="CASCADE"), nullable=False),
        sa.Column("identity_b", ID, sa.ForeignKey("patient_identities.id", ondelete="CASCADE"), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("reasons", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("decided_by", sa.String(length=256), nullable=True),
        sa.Column("decided_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("identity_a", "identity_b", name="uq_link_candidate_pair"),
    )
    op.create_index("ix_link_candidates_identity_b", "link_candidates", ["identity_b"])
    op.create_index("ix_link_candidates_status", "link_candidates", ["status"])
    op.create_table(
        "link_decisions",
        sa.Column("identity_a", ID, sa.ForeignKey("patient_identities.id", ondelete="CASCADE"), nullable=False),
        sa.Column("identity_b", ID, sa.ForeignKey("patient_identities.id", ondelete="CASCADE"), nullable=False),
        sa.Column("decision", sa.String(length=8), nullable=False),
        sa.Column("decided_by", sa.String(length=256), nullable=False),
        sa.Column("decided_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("identity_a", "identity_b"),
    )
    op.create_index("ix_link_decisions_identity_b", "link_decisions", ["identity_b"])
    op.create_table(
        "link_events",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("time", TZ, nullable=False),
        sa.Column("person_id", ID, nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("identity_a", ID, nullable=True),
        sa.Column("identity_b", ID, nullable=True),
        sa.Column("rule", sa.String(length=16), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_link_events_person_id", "link_events", ["person_id"])
    op.execute(
        "INSERT INTO link_queue (identity_id, queued_at)"
        " SELECT id, created_at FROM patient_identities WHERE issuer_kind <> 'none'"
    )


def downgrade() -> None:
    op.drop_table("link_events")
    op.drop_table("link_decisions")
    op.drop_table("link_candidates")
    op.drop_table("link_queue")
    for column in ("block_key", "cnp", "person_id"):
        op.drop_index(f"ix_patient_identities_{column}", table_name="patient_identities")
    with op.batch_alter_table("patient_identities") as batch:
        for column in ("block_key", "cnp", "national_id", "address", "person_id"):
            batch.drop_column(column)
    op.drop_table("persons")
