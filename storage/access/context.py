"""The request context: who is asking, through which channel, from where, and who records it.

One `Context` is built per HTTP request (the gateway's dependencies), per DICOM association
(`pacs/policy.py`) and per console command, and passed to every storage call that reads or
writes patient data. Access decisions (`storage.access.policy`) read it; refusals go through
`Context.refused`, which logs them once and hands them to the audit recorder, so no edge logs
an access refusal of its own. The recorder is where the audit trail plugs in (DESIGN.md
"Access, shares, emergency access, consent and audit"); until it lands, `NO_AUDIT` keeps nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
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


class AuditRecorder(Protocol):
    """Where access events go (the audit trail); recording must not fail the request."""

    def record(self, access: AccessEvent) -> None: ...


class _NoAudit:
    def record(self, access: AccessEvent) -> None:
        del access


#: the recorder of a context built without one: keeps nothing
NO_AUDIT: AuditRecorder = _NoAudit()


@dataclass(frozen=True, slots=True)
class Context:
    """Who is asking (`principal`), through which `channel`, from which `source` address."""

    principal: Principal
    channel: Channel
    source: str = ""
    audit: AuditRecorder = NO_AUDIT

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
        self.audit.record(
            AccessEvent(
                actor=self.principal.sub,
                org=self.principal.org,
                channel=self.channel,
                source=self.source,
                action=action,
                outcome="refused",
                detail=detail,
            )
        )
        return NotAuthorized(detail)
