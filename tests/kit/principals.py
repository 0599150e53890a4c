"""Who may ask: one table of principals, and the request contexts they ask with.

Two organizations, each with its DICOM nodes and its users, an admin, and an AE nobody
registered. Tests name who asks from this table (`CT_A`, `CLINICIAN_B`...) and get the request
context of a channel with `ctx(principal)`; a "who sees what" matrix is one parametrization
over `PRINCIPALS`.
"""

from __future__ import annotations

from storage.access.context import Channel, Context
from storage.access.principal import Principal, Role

HOSP_A, CLINIC_B = "hosp-a", "clinic-b"
#: organization -> (name, AE titles of its nodes): what `seed.seed_orgs` registers
ORGS: dict[str, tuple[str, tuple[str, ...]]] = {
    HOSP_A: ("Spitalul Județean A", ("CT1", "STORESCU")),
    CLINIC_B: ("Clinica B", ("US-B",)),
}

CT_A = Principal.dicom_node("CT1", HOSP_A)  # the hospital's CT scanner
US_B = Principal.dicom_node("US-B", CLINIC_B)  # the clinic's ultrasound
UNREGISTERED = Principal.dicom_node("ROGUE", None)  # an AE no organization registered
CLINICIAN_A = Principal("dr@hosp-a", HOSP_A, frozenset({Role.CLINICIAN}))
INTEGRATOR_A = Principal("ris@hosp-a", HOSP_A, frozenset({Role.INTEGRATOR}))
CLINICIAN_B = Principal("dr@clinic-b", CLINIC_B, frozenset({Role.CLINICIAN}))
INTEGRATOR_B = Principal("ris@clinic-b", CLINIC_B, frozenset({Role.INTEGRATOR}))
ADMIN = Principal("admin", None, frozenset({Role.ADMIN}))

PRINCIPALS: dict[str, Principal] = {
    "ct-a": CT_A,
    "us-b": US_B,
    "unregistered": UNREGISTERED,
    "clinician-a": CLINICIAN_A,
    "integrator-a": INTEGRATOR_A,
    "clinician-b": CLINICIAN_B,
    "integrator-b": INTEGRATOR_B,
    "admin": ADMIN,
}


def ctx(principal: Principal, channel: Channel | None = None, source: str = "127.0.0.1") -> Context:
    """`principal`'s request context: over DIMSE for a DICOM node, DICOMweb for a token holder."""
    if channel is None:
        channel = Channel.DIMSE if principal.has(Role.MODALITY) else Channel.DICOMWEB
    return Context(principal, channel, source)
