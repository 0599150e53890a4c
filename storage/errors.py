"""Typed storage errors; each edge (DIMSE, HTTP, FHIR) maps them to its own vocabulary.

Every error carries the DICOM status it stands for (PS3.4 Annex B.2.3 for C-STORE, the same
codes STOW-RS reports as FailureReason, PS3.18 10.5.3) and a human-readable `detail` that
names what was wrong without patient data.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base of every error the storage layer raises on purpose."""

    #: DICOM status (C-STORE / STOW-RS FailureReason)
    status: int = 0xC000
    #: short machine-readable reason, used as a metrics label and a log field
    reason: str = "error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class RejectedInput(StorageError):
    """The object was refused; nothing of it was kept."""


class NotDicom(RejectedInput):
    status = 0xC000  # Error: cannot understand
    reason = "not_dicom"


class Truncated(RejectedInput):
    status = 0xC000
    reason = "truncated"


class MissingAttribute(RejectedInput):
    status = 0xA900  # Error: data set does not match SOP class
    reason = "missing_attribute"


class MissingUid(MissingAttribute):
    reason = "missing_uid"


class InvalidUid(RejectedInput):
    status = 0xA900
    reason = "invalid_uid"


class BadCharset(RejectedInput):
    status = 0xA900
    reason = "bad_charset"


class TooDeep(RejectedInput):
    """Sequences nested deeper than the archive reads (storage.dicom.parse.MAX_DEPTH)."""

    status = 0xA900
    reason = "nested_too_deep"


class PixelDataMismatch(RejectedInput):
    """Native Pixel Data whose length is not what Rows, Columns, samples, bits and frames make."""

    status = 0xA900
    reason = "pixel_data_length"


class TooLarge(RejectedInput):
    """An object over the size the channel takes (PACS_DICOM_MAX_OBJECT_SIZE, PACS_HTTP_MAX_OBJECT_SIZE)."""

    status = 0xA700  # Refused: Out of Resources
    reason = "too_large"


class StudyMismatch(RejectedInput):
    """STOW-RS to /studies/{study} with an instance of another study (PS3.18 10.5.1)."""

    status = 0xA900
    reason = "study_mismatch"


class InvalidIdentifier(RejectedInput):
    """A C-MOVE/C-GET identifier that does not say what to retrieve (PS3.4 C.4.2.1.4)."""

    status = 0xA900  # Failed: Identifier does not match SOP Class
    reason = "invalid_identifier"


class InvalidCommitmentRequest(RejectedInput):
    """A storage commitment N-ACTION whose Action Information cannot be acted upon (PS3.7 10.1.4.1.10)."""

    status = 0x0115  # Invalid Argument Value
    reason = "invalid_commitment_request"


class OutOfResources(StorageError):
    """The archive could not keep the object (blob store or database failed)."""

    status = 0xA700
    reason = "out_of_resources"


class CannotTranscode(StorageError):
    """The instance cannot be sent in any of the transfer syntaxes asked for (WADO-RS 406,
    a failed C-MOVE/C-GET sub-operation)."""

    status = 0xC000
    reason = "cannot_transcode"


class NotFound(StorageError):
    status = 0xC000
    reason = "not_found"


class Gone(NotFound):
    """A resource that existed and was deleted (HTTP 410): a deleted FHIR Subscription."""

    reason = "gone"


class Conflict(StorageError):
    """The request contradicts what the archive holds (HTTP 409)."""

    status = 0xC000
    reason = "conflict"


class NotAuthorized(StorageError):
    status = 0x0124  # PS3.7 C.5: Refused: Not Authorized
    reason = "not_authorized"


class NotAuthenticated(NotAuthorized):
    """The credential proves nothing any more (a revoked token): HTTP 401, not 403."""

    reason = "not_authenticated"


class StudyNotWritable(NotAuthorized):
    """A write into a study the caller's organization does not own; the answer does not say whose it is."""


class PatientMismatch(RejectedInput):
    """An instance whose patient (PatientID and IssuerOfPatientID) is not its study's patient."""

    status = 0xA900  # Error: Data Set does not match SOP Class (PS3.4 B.2.3): the closest refusal
    reason = "patient_mismatch"


class UnknownDestination(StorageError):
    """C-MOVE to an AE title that is not registered with an address (PS3.4 C.4.2.1.4)."""

    status = 0xA801  # Refused: Move Destination unknown
    reason = "unknown_destination"
