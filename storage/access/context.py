"""The request context: who is asking, through which channel, from where, and who records it.

One `Context` is built per HTTP request (the gateway's dependencies), per DICOM association
(`pacs/policy.py`) and per console command, and passed to every storage call that reads or
writes patient data. Access decisions (`storage.access.policy`) read it; refusals go through
`Context.refused`, which logs them once and hands them to the audit recorder, so no edge logs
an access refusal of its own. The recorder is where the audit trail plugs in (DESIGN.md
"Access, shares, emergency access, consent and audit", `storage.audit.trail`); a context built
without one (`NO_AUDIT`: tests of other rules, `PACS_AUDIT=false`) keeps nothing.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from storage.access.principal import Principal
from storage.errors import NotAuthorized
from storage.logs import event

log = logging.getLogger(__name__)


class Channel(StrEnum):
    """How a request reached the archive: DESIGN.md's audit channels, and the console."""

    DICOMWEB = "dicomweb"
    WADO_URI = "wado-uri"
    FHIR = "fhir"
    API = "api"
    DIMSE = "dimse"
    CLI = "cli"


@dataclass(frozen=True, slots=True)
class AccessEvent:
    """One access to patient data, or one refusal, as the audit trail will keep it."""

    actor: str
    org: str | None
    channel: Channel
    source: str
    action: str
    outcome: str
    detail: str = ""
    patient: str | None = None
    study: str | None = None
    #: an emergency access's reason (the `PACS-Emergency-Access` header)
    reason: str | None = None
    #: whether the caller's context let it see studies by care relationship (the audit trail
    #: then names the patient and owner of a study the caller reached that way)
    care_relationship: bool = False


class AuditRecorder(Protocol):
    """Where access events go (the audit trail, `storage.audit.trail.AuditTrail`).

    `record` returns once the event is kept and raises (an `OutOfResources`) when it cannot
    be: the operation it records must then fail. `submit` is the same for a caller that waits
    on its own terms: the gateway's event loop, or with `lead` a thread that may commit itself.
    """

    def record(self, access: AccessEvent) -> None: ...

    def submit(self, access: AccessEvent, *, lead: bool = False) -> Future[None]: ...

    def close(self) -> None: ...


class _NoAudit:
    def record(self, access: AccessEvent) -> None:
        del access

    def submit(self, access: AccessEvent, *, lead: bool = False) -> Future[None]:
        del access, lead
        done: Future[None] = Future()
        done.set_result(None)
        return done

    def close(self) -> None:
        pass


#: the recorder of a context built without one: keeps nothing
NO_AUDIT: AuditRecorder = _NoAudit()


#: the most studies one request's audit record names (a STOW-RS body of many studies)
MAX_NOTED_STUDIES = 100


@dataclass(slots=True)
class RequestNote:
    """What an HTTP request's one audit record says beyond its route: the studies it wrote and
    the reason of a refusal (`gateway.audit` records it when the answer starts)."""

    #: study UID -> its patient ID (None: to be looked up), in the order written
    studies: dict[str, str | None] = field(default_factory=dict)
    detail: str = ""
    #: the patient a read named other than by a study (FHIR's Patient/{id}): its patient ID
    patient: str | None = None

    def study(self, uid: str, patient: str | None = None) -> None:
        if uid not in self.studies and len(self.studies) < MAX_NOTED_STUDIES:
            self.studies[uid] = patient


@dataclass(frozen=True, slots=True)
class Context:
    """Who is asking (`principal`), through which `channel`, from which `source` address."""

    principal: Principal
    channel: Channel
    source: str = ""
    audit: AuditRecorder = NO_AUDIT
    #: the reason of a clinician's emergency access (`PACS-Emergency-Access`): reads are not
    #: limited to the organization's studies, and every one is audited with this reason
    emergency: str = ""
    #: set for an HTTP request, whose one audit record the gateway writes: refusals and the
    #: studies a write touched go there instead of into records of their own
    note: RequestNote | None = None
    #: whether a provider also sees the studies of the persons it cares for
    #: (`PACS_CARE_RELATIONSHIP`, `storage.access.policy.care_of`)
    care_relationship: bool = True

    def event(self, action: str, outcome: str, **fields: str | None) -> AccessEvent:
        """An access event of this context (actor, organization, channel, source filled in)."""
        return AccessEvent(
            actor=self.principal.sub,
            org=self.principal.org,
            channel=self.channel,
            source=self.source,
            action=action,
            outcome=outcome,
            reason=self.emergency or None,
            care_relationship=self.care_relationship,
            **fields,  # type: ignore[arg-type]
        )

    @classmethod
    def console(cls, principal: Principal | None = None, *, audit: AuditRecorder = NO_AUDIT) -> Context:
        """The operator at this host's console (`pacs import`, `pacs org claim`, start-up recovery)."""
        return cls(principal or Principal.system(), Channel.CLI, "localhost", audit)

    def refused(self, action: str, detail: str) -> NotAuthorized:
        """Log and record a refused `action`; return the error for the caller to raise.

        `raise ctx.refused("C-FIND", "calling AE X is not registered")`: one `access.refused`
        line per refusal, whatever the channel, and one access event with outcome `refused`.
        """
        event(
            log,
            "access.refused",
            level=logging.WARNING,
            channel=self.channel.value,
            actor=self.principal.sub,
            org=self.principal.org,
            source=self.source,
            action=action,
            reason=detail,
        )
        if self.note is not None:
            self.note.detail = detail
        else:
            self.audit.record(self.event(action, "refused", detail=detail))
        return NotAuthorized(detail)

    def touched(self, study_uid: str, patient: str | None = None) -> None:
        """Note that this request wrote into or about `study_uid` (STOW-RS, a share), for its record;
        `patient` when known spares the audit writer looking it up."""
        if self.note is not None:
            self.note.study(study_uid, patient)
