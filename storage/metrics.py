"""Prometheus metrics of the archive, shared by every entry point of the ingest pipeline.

With several SCP worker processes, `pacs serve` points prometheus_client's multiprocess
mode at a folder under the data dir, so /metrics adds up every process.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

INSTANCES_STORED = Counter("pacs_instances_stored", "Instances newly stored, by entry point", ["via"])
INSTANCES_ALREADY_PRESENT = Counter(
    "pacs_instances_already_present", "Instances received again and acknowledged without a second copy", ["via"]
)
INSTANCES_REJECTED = Counter("pacs_instances_rejected", "Objects refused at ingest, by reason", ["via", "reason"])
BYTES_STORED = Counter("pacs_bytes_stored", "Bytes of newly stored instances", ["via"])
INGEST_SECONDS = Histogram(
    "pacs_ingest_seconds",
    "Time from a received object to its committed index row",
    ["via"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
)
ASSOCIATIONS = Counter("pacs_dimse_associations", "DICOM associations, by outcome", ["outcome"])
COMMITMENT_REPORTS = Counter(
    "pacs_commitment_reports",
    "Storage commitment report attempts, by outcome (same-association, new-association, retry, undelivered)",
    ["outcome"],
)

AUDIT_RECORDS = Counter("pacs_audit_records", "Audit records committed by this process")
EMERGENCY_ACCESS = Counter(
    "pacs_emergency_access", "Requests answered under emergency access (PACS-Emergency-Access), each audited"
)
