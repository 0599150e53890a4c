"""The index database: what the archive knows about every object it holds.

Study, series and instance rows carry the attributes queries match on as indexed columns,
plus the instance's DICOM JSON (bulk data replaced by references) and its pixel layout, so
that searches and metadata answers never open a blob. Study and series aggregates (counts,
modalities) are kept current by ingest, inside the same transaction as the instance.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

Id = BigInteger().with_variant(Integer, "sqlite")  # SQLite only auto-increments INTEGER PRIMARY KEY


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Organization(Base):
    """An institution (hospital, clinic, GP practice, the city's health office)."""

    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    #: when set, the organization's tokens and AEs are refused (`pacs org disable`)
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: whether its AEs are accepted only from their registered address or network; an
    #: organization behind NAT, whose modalities' addresses are not known, turns it off
    check_ae_address: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApplicationEntity(Base):
    """A DICOM node of an organization: its modalities, workstations and C-MOVE destinations."""

    __tablename__ = "application_entities"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    host: Mapped[str | None] = mapped_column(String(255))
    port: Mapped[int | None] = mapped_column(Integer)
    #: the address or network (CIDR) its associations must come from, when not `host`'s
    allowed_from: Mapped[str | None] = mapped_column(String(64))
    #: the common name (CN) of the client certificate it must present over DICOM TLS, when bound
    tls_subject: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PatientIdentity(Base):
    """One institution's identifier for a patient: (issuer, patient ID).

    `issuer_kind` says where the namespace came from: `dicom` (IssuerOfPatientID as sent),
    `org` (the sending organization, when the sender gave no issuer) or `ae` (an unregistered
    sender's AE title, for unassigned studies).
    """

    __tablename__ = "patient_identities"
    __table_args__ = (UniqueConstraint("issuer_kind", "issuer", "patient_id", name="uq_identity"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    issuer_kind: Mapped[str] = mapped_column(String(8))
    issuer: Mapped[str] = mapped_column(String(128))
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    patient_name: Mapped[str] = mapped_column(Text, default="")
    patient_name_folded: Mapped[str] = mapped_column(Text, default="", index=True)
    birth_date: Mapped[str] = mapped_column(String(8), default="")
    sex: Mapped[str] = mapped_column(String(16), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: the master person (`storage.patients.linker` sets it; none until the identity is linked)
    person_id: Mapped[int | None] = mapped_column(ForeignKey("persons.id"), index=True)
    #: PatientAddress as first received
    address: Mapped[str] = mapped_column(Text, default="", server_default="")
    #: a national ID the sender gave (PatientID with issuer RO-CNP, or an OtherPatientIDsSequence
    #: item), as received; `cnp` is it once checked against the demographics
    national_id: Mapped[str] = mapped_column(String(64), default="", server_default="")
    cnp: Mapped[str | None] = mapped_column(String(13), index=True)
    #: the first family word, folded (`storage.patients.names.block_key`): whom the model compares
    block_key: Mapped[str] = mapped_column(String(8), default="", server_default="", index=True)
    #: other identifiers the sender named (OtherPatientIDsSequence, the CNP aside): JSON
    #: [[issuer, value], ...], compared by the model; indexed in `identity_aliases`
    other_ids: Mapped[str] = mapped_column(Text, default="", server_default="")


class IdentityAlias(Base):
    """An identifier an identity is known by, for the linker's blocking: its own (issuer, patient
    ID) when the issuer is a DICOM one, and each other identifier its sender named."""

    __tablename__ = "identity_aliases"
    __table_args__ = (
        PrimaryKeyConstraint("identity_id", "issuer", "value"),
        Index("ix_identity_aliases_issuer_value", "issuer", "value"),
    )

    identity_id: Mapped[int] = mapped_column(ForeignKey("patient_identities.id", ondelete="CASCADE"))
    issuer: Mapped[str] = mapped_column(String(64))
    value: Mapped[str] = mapped_column(String(64))


#: a person's choice about cross-organization sharing (`Person.cross_org_sharing`)
OPT_IN, OPT_OUT = "opt-in", "opt-out"


class Person(Base):
    """A master person: the identities the patient index holds to be one human being.

    A person absorbed by a merge keeps its row with `merged_into` (its ID stays resolvable);
    the patient's choice about cross-organization sharing is kept here (DESIGN.md).
    """

    __tablename__ = "persons"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    merged_into: Mapped[int | None] = mapped_column(Id)
    cross_org_sharing: Mapped[str] = mapped_column(String(8), default="opt-in", server_default="opt-in", index=True)
    consent_recorded_by: Mapped[str | None] = mapped_column(String(256))
    consent_recorded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    consent_note: Mapped[str | None] = mapped_column(Text)


class ConsentRecord(Base):
    """A person's choice about cross-organization sharing, as recorded (the newest is in force,
    on `Person`): who recorded it for the patient, through which account and organization, when."""

    __tablename__ = "consents"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    person_id: Mapped[int] = mapped_column(Id, index=True)
    cross_org_sharing: Mapped[str] = mapped_column(String(8))
    recorded_by: Mapped[str] = mapped_column(String(256))
    note: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(256))
    org: Mapped[str | None] = mapped_column(String(64))
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LinkQueueItem(Base):
    """An identity the linker has yet to compare (queued by ingest in its own transaction)."""

    __tablename__ = "link_queue"

    identity_id: Mapped[int] = mapped_column(
        ForeignKey("patient_identities.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class LinkCandidate(Base):
    """A pair the model could not decide: a reviewer accepts (links) or rejects it."""

    __tablename__ = "link_candidates"
    __table_args__ = (UniqueConstraint("identity_a", "identity_b", name="uq_link_candidate_pair"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    identity_a: Mapped[int] = mapped_column(ForeignKey("patient_identities.id", ondelete="CASCADE"))
    identity_b: Mapped[int] = mapped_column(ForeignKey("patient_identities.id", ondelete="CASCADE"), index=True)
    score: Mapped[float] = mapped_column(Float)
    reasons: Mapped[str] = mapped_column(Text, default="[]")
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    decided_by: Mapped[str | None] = mapped_column(String(256))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class LinkDecision(Base):
    """A person's decision about a pair, which the model never overrides: `same` or `apart`."""

    __tablename__ = "link_decisions"
    __table_args__ = (PrimaryKeyConstraint("identity_a", "identity_b"),)

    identity_a: Mapped[int] = mapped_column(ForeignKey("patient_identities.id", ondelete="CASCADE"))
    identity_b: Mapped[int] = mapped_column(ForeignKey("patient_identities.id", ondelete="CASCADE"), index=True)
    decision: Mapped[str] = mapped_column(String(8))
    decided_by: Mapped[str] = mapped_column(String(256))
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LinkEvent(Base):
    """The history of a person's links: what linked or split it, by which rule or whom, when."""

    __tablename__ = "link_events"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    person_id: Mapped[int] = mapped_column(Id, index=True)
    action: Mapped[str] = mapped_column(String(16))
    identity_a: Mapped[int | None] = mapped_column(Id)
    identity_b: Mapped[int | None] = mapped_column(Id)
    rule: Mapped[str] = mapped_column(String(16), default="")
    score: Mapped[float | None] = mapped_column(Float)
    actor: Mapped[str] = mapped_column(String(256), default="")


class Study(Base):
    __tablename__ = "studies"
    __table_args__ = (
        Index("ix_studies_date_id", "study_date", "id"),  # newest first without a sort (migration 0005)
        # a name's page chosen by keys from the index alone (migration 0008): SQLite's GLOB uses
        # this one; PostgreSQL's LIKE 'ABC%' needs text_pattern_ops, so there the pattern index
        # carries the date and id instead
        Index("ix_studies_name_date", "patient_name_folded", "study_date").ddl_if(dialect="sqlite"),
        Index(
            "ix_studies_patient_name_pattern",
            "patient_name_folded",
            "study_date",
            "id",
            postgresql_ops={"patient_name_folded": "text_pattern_ops"},
        ).ddl_if(dialect="postgresql"),
        *(  # PostgreSQL: LIKE 'ABC%' under a non-C collation (migration 0002)
            Index(f"ix_studies_{name}_pattern", column, postgresql_ops={column: "text_pattern_ops"}).ddl_if(
                dialect="postgresql"
            )
            for name, column in (
                ("patient_id", "patient_id"),
                ("accession", "accession_number"),
            )
        ),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    identity_id: Mapped[int] = mapped_column(ForeignKey("patient_identities.id"), index=True)
    org_id: Mapped[str | None] = mapped_column(ForeignKey("organizations.id"), index=True)
    source_ae: Mapped[str] = mapped_column(String(16), default="")
    patient_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    patient_name: Mapped[str] = mapped_column(Text, default="")
    patient_name_folded: Mapped[str] = mapped_column(Text, default="")  # with the date: ix_studies_name_date
    study_date: Mapped[str] = mapped_column(String(8), default="")  # indexed with id: ix_studies_date_id
    study_time: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="", index=True)
    study_id: Mapped[str] = mapped_column(String(16), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    referring_physician_folded: Mapped[str] = mapped_column(Text, default="")
    modalities: Mapped[str] = mapped_column(String(256), default="")
    num_series: Mapped[int] = mapped_column(Integer, default=0)
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    attrs_json: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: indexed (migration 0012): FHIR's `_lastUpdated` and the Subscription matcher read by it
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class StudyOwner(Base):
    """An organization that sent (part of) a study, and therefore sees it.

    A study can have several: a second opinion adds a series, a referral returns a report
    (as dcm4chee's several access-control IDs per study). `Study.org_id` stays the first.
    """

    __tablename__ = "study_owners"
    __table_args__ = (
        PrimaryKeyConstraint("study_id", "org_id"),
        # an organization's studies newest first, from the index alone (migration 0008)
        Index("ix_study_owners_org_date", "org_id", "study_date", "study_id"),
        # the persons an organization cares for, and their studies (migration 0010)
        Index("ix_study_owners_org_person", "org_id", "person_id"),
        Index("ix_study_owners_person_date", "person_id", "study_date", "study_id"),
    )

    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    #: the study's date, copied: it is set when the study is created and never changes
    study_date: Mapped[str] = mapped_column(String(8), default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: the person of the study's identity, copied for the care relationship: set by ingest and
    #: kept by the patient index (`storage.patients.linker.follow_persons`) at every link and split
    person_id: Mapped[int | None] = mapped_column(Id)


class Share(Base):
    """A referral: organization `to_org` may read one study until `expires_at` or revocation."""

    __tablename__ = "shares"
    __table_args__ = (Index("ix_shares_to_org_study", "to_org", "study_id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    from_org: Mapped[str | None] = mapped_column(String(64))  # the sharer's organization (none: an admin)
    to_org: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    reason: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_by: Mapped[str | None] = mapped_column(String(256))


class TokenRevocation(Base):
    """`pacs token revoke`: one token (`kind` jti) or every token of a subject issued until now."""

    __tablename__ = "token_revocations"
    __table_args__ = (Index("ix_token_revocations_kind_value", "kind", "value"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(8))  # "jti" or "sub"
    value: Mapped[str] = mapped_column(String(256))
    revoked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_by: Mapped[str] = mapped_column(String(256), default="")


class AuditRecord(Base):
    """One access to patient data, or one refusal: the append-only audit trail.

    Each writer process keeps its own hash chain (`chain`, `seq` from 1): `hash` is SHA-256
    over `prev_hash` and the record's fields (storage.audit.chain), so altering, removing or
    inserting a row breaks the chain at that row, and `pacs audit verify` names it.
    """

    __tablename__ = "audit_records"
    __table_args__ = (
        UniqueConstraint("chain", "seq", name="uq_audit_chain_seq"),
        Index("ix_audit_records_time", "time"),
        Index("ix_audit_records_patient", "patient"),
        Index("ix_audit_records_study", "study"),
        Index("ix_audit_records_actor", "actor"),
        Index("ix_audit_records_action", "action"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(256))
    org: Mapped[str | None] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(String(64), default="")
    channel: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(128))
    patient: Mapped[str | None] = mapped_column(String(64))
    study: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(String(256))  # an emergency access's reason
    owner_org: Mapped[str | None] = mapped_column(String(64))  # the study's, on a cross-organization read
    detail: Mapped[str] = mapped_column(Text, default="")
    chain: Mapped[str] = mapped_column(String(128))
    seq: Mapped[int] = mapped_column(BigInteger)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditCursor(Base):
    """How far a forwarder (a syslog target) has sent the trail; the records stay untouched."""

    __tablename__ = "audit_cursors"

    target: Mapped[str] = mapped_column(String(255), primary_key=True)
    last_id: Mapped[int] = mapped_column(BigInteger, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="", index=True)
    series_number: Mapped[int | None] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(Text, default="")
    body_part: Mapped[str] = mapped_column(String(16), default="")
    series_date: Mapped[str] = mapped_column(String(8), default="")
    series_time: Mapped[str] = mapped_column(String(16), default="")
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    attrs_json: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Instance(Base):
    """A stored SOP instance: where its bytes are and what it says, without its bulk data."""

    __tablename__ = "instances"
    __table_args__ = (Index("ix_instances_series_number", "series_id", "instance_number"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    sop_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"))
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64), index=True)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    object_key: Mapped[str] = mapped_column(String(128), unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    pixel_layout: Mapped[str | None] = mapped_column(Text)
    dicom_json: Mapped[str] = mapped_column(Text)
    #: the instance-level attributes of `dicom_json` (storage.dicom.parse.INSTANCE_TAGS), what searches
    #: read: a tenth of the size to parse per match; NULL for rows indexed before migration 0004
    attrs_json: Mapped[str | None] = mapped_column(Text)
    source_ae: Mapped[str] = mapped_column(String(16), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PendingBlob(Base):
    """A blob whose fate is not settled: an ingest write in flight (reserved before the write,
    removed in the commit that indexes it) or a blob a DELETE has just orphaned (recorded in
    the transaction that removed its rows, removed once the blob is gone).

    Either way no index row points at it, so whatever is left here after a crash is deleted by
    start-up recovery, which therefore scans this table, never the bucket.
    """

    __tablename__ = "pending_blobs"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    object_key: Mapped[str] = mapped_column(String(128), unique=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class CommitmentRequest(Base):
    """A Storage Commitment request acknowledged and not yet reported (PS3.4 J.3.2.1.3).

    The N-ACTION's success promises an N-EVENT-REPORT, so the request is written here before
    that success is sent and deleted once the report is delivered or given up. A process that
    dies between the two leaves the row, and any SCP process sends the report: it claims the
    row first (`claimed_by` = host:pid, until `claimed_until`), so two processes never report
    the same request; a claim whose process is gone, or whose time ran out, is taken over.
    """

    __tablename__ = "commitment_requests"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    transaction_uid: Mapped[str] = mapped_column(String(64))
    calling_ae: Mapped[str] = mapped_column(String(16))
    org_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # the requester's, when it asked
    referenced: Mapped[str] = mapped_column(Text)  # JSON [[SOP Class UID, SOP Instance UID], ...]
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # delivery attempts made so far
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    claimed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Subscription(Base):
    """A FHIR Subscription: a provider's system is told (a rest-hook POST) when a study it may
    see and that matches `criteria` has arrived (`storage.workflow.subscriptions`).

    Owned by the principal that created it (`owner_*`): what it is told of is what that principal
    may see, decided when a study is matched and again when the notification is sent. Studies
    changed up to `checked_until` have been matched; `failures` counts failed sends in a row.
    A deleted subscription keeps its row (`deleted_at`), so that a read of it answers 410.
    """

    __tablename__ = "subscriptions"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    owner_sub: Mapped[str] = mapped_column(String(256))
    owner_org: Mapped[str | None] = mapped_column(String(64), index=True)
    owner_roles: Mapped[str] = mapped_column(String(128), default="")  # comma-separated
    status: Mapped[str] = mapped_column(String(16))  # active, error, off
    reason: Mapped[str] = mapped_column(Text, default="")
    criteria: Mapped[str] = mapped_column(Text)
    endpoint: Mapped[str] = mapped_column(Text)
    headers: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of "Name: value"
    payload: Mapped[str] = mapped_column(String(64), default="")  # "" (a ping) or a media type
    end_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str] = mapped_column(Text, default="")
    failures: Mapped[int] = mapped_column(Integer, default=0)
    checked_until: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SubscriptionDelivery(Base):
    """One notification of one subscription about one version of a study (its `updated_at`),
    from matched to delivered: the record of deliveries. Any process sends a due one after
    claiming it (`claimed_by` = host:pid until `claimed_until`), as commitment reports are."""

    __tablename__ = "subscription_deliveries"
    __table_args__ = (
        UniqueConstraint("subscription_id", "study_uid", "study_version", name="uq_subscription_delivery"),
        Index("ix_subscription_deliveries_due", "state", "due_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("subscriptions.id", ondelete="CASCADE"))
    study_uid: Mapped[str] = mapped_column(String(64))
    study_version: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending, delivered, dropped
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ScheduledProcedureStep(Base):
    """A Modality Worklist item (PS3.4 K.6.1): one scheduled step of a requested procedure.

    An integrator fills these over the admin API, so a modality fetches the patient's
    identity and the order's Study Instance UID instead of having them typed at the console.
    `org_id` is the performing institution: only its AEs see the step. Names keep their
    folded form (`storage.dicom.charset.fold`) for diacritic-insensitive matching, as studies do.
    """

    __tablename__ = "scheduled_procedure_steps"
    __table_args__ = (
        Index("ix_sps_date_modality", "scheduled_procedure_step_start_date", "modality"),
        Index("ix_sps_station_date", "scheduled_station_ae_title", "scheduled_procedure_step_start_date"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    patient_name: Mapped[str] = mapped_column(Text, default="")
    patient_name_folded: Mapped[str] = mapped_column(Text, default="", index=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_birth_date: Mapped[str] = mapped_column(String(8), default="")
    patient_sex: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="", index=True)
    requested_procedure_id: Mapped[str] = mapped_column(String(16), default="")
    requested_procedure_description: Mapped[str] = mapped_column(String(64), default="")
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    scheduled_procedure_step_id: Mapped[str] = mapped_column(String(16), default="")
    scheduled_procedure_step_description: Mapped[str] = mapped_column(String(64), default="")
    modality: Mapped[str] = mapped_column(String(16))
    scheduled_station_ae_title: Mapped[str] = mapped_column(String(16), default="")
    scheduled_procedure_step_start_date: Mapped[str] = mapped_column(String(8))
    scheduled_procedure_step_start_time: Mapped[str] = mapped_column(String(16), default="")
    scheduled_performing_physician_name: Mapped[str] = mapped_column(Text, default="")
    scheduled_performing_physician_folded: Mapped[str] = mapped_column(Text, default="")
    referring_physician_name: Mapped[str] = mapped_column(Text, default="")
    referring_physician_folded: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="SCHEDULED")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
