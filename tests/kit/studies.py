"""The study builder of the search tests (QIDO-RS and C-FIND search one archive built with it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage

from tests.kit import dicom_factory as f


@dataclass
class StudySpec:
    """A study built for a test: its UIDs and the Part-10 bytes of its instances, to be stored."""

    label: str
    uid: str = field(default_factory=f.uid)
    series: list[str] = field(default_factory=list)
    sops: list[str] = field(default_factory=list)
    files: list[bytes] = field(default_factory=list)


def study(
    label: str,
    name: str,
    pid: str,
    date: str,
    series: tuple[tuple[str, int], ...] = (("CT", 1),),
    *,
    time: str = "101500",
    charset: str | None = None,
    sex: str = "M",
    issuer: str | None = None,
    referring: str | None = None,
    accession: str | None = None,
    age: str | None = None,
    out_of_order: bool = False,
) -> StudySpec:
    """A study of `series` (modality, instance count); an ``OT`` series holds secondary captures.

    `accession` defaults to ``ACC-<label>``; `out_of_order` stores each series' last instance
    first (3, 1, 2), so that answers must be sorted by InstanceNumber, not by arrival.
    """
    spec = StudySpec(label)
    for number, (modality, count) in enumerate(series, 1):
        series_uid = f.uid()
        spec.series.append(series_uid)
        for instance_number in [count, *range(1, count)] if out_of_order else range(1, count + 1):
            ds = f.ct_dataset(
                study_uid=spec.uid,
                series_uid=series_uid,
                patient_id=pid,
                patient_name=name,
                charset=charset,
                issuer=issuer,
                modality=modality,
                instance_number=instance_number,
            )
            if modality == "OT":
                ds.SOPClassUID = SecondaryCaptureImageStorage
            ds.StudyDate, ds.StudyTime, ds.SeriesNumber, ds.PatientSex = date, time, number, sex
            ds.AccessionNumber = (accession or f"ACC-{label}")[:16]
            if age:
                ds.PatientAge = age
            if referring:
                ds.ReferringPhysicianName = referring
            spec.sops.append(ds.SOPInstanceUID)
            spec.files.append(f.to_bytes(ds))
    return spec


def slices(n: int, *, patient_id: str = "PAT-1", series: int = 2, size: int = 32) -> list[Dataset]:
    """`n` CT slices of one new study over `series` series (the retrieve tests' study)."""
    study_uid, series_uids = f.uid(), [f.uid() for _ in range(series)]
    return [
        f.ct_dataset(
            study_uid=study_uid,
            series_uid=series_uids[i % series],
            patient_id=patient_id,
            rows=size,
            columns=size,
            instance_number=i + 1,
        )
        for i in range(n)
    ]


#: studies of one patient, and instances in each: enough answers to cancel in the middle of, even
#: when the SCU (pynetdicom, in this process) reads its first answer tens of ms after the SCP sent it
BULK, BULK_INSTANCES = 30, 8


#: the archive the C-FIND tests search, and C-FIND and QIDO-RS search alike (the parity test)
QUERY_ARCHIVE = {
    s.label: s
    for s in [
        study("ion", "Popescu^Ion", "P001", "20260115", (("CT", 3), ("OT", 1)), referring="Ionescu^Radu"),
        study("ion-x", "Popescu^Ion", "P001", "20230505", (("CR", 1),), issuer="SPITAL-X"),
        study("maria", "Popescu^Maria", "P002", "20251201", (("MR", 2), ("CT", 1)), sex="F"),
        study("stef", "Ştefănescu^Ioana", "P003", "20260310", charset="ISO_IR 101", sex="F"),
        study("stef-mr", "Ștefănescu^Ioana", "P003", "20240101", (("MR", 2),), charset="ISO_IR 192", sex="F"),
        study("turcanu", "Țurcanu^Mihai", "P004", "20240620", (("US", 1),), charset="ISO_IR 192"),
        study("andrei", "Ionescu^Andrei", "P005", "20260115", (("CR", 1),), issuer="2.16.642.99"),
        *(
            study(f"masiv-{i:02d}", "Masiv^Pacient", "P100", f"2019{i % 12 + 1:02d}01", (("CT", BULK_INSTANCES),))
            for i in range(BULK)
        ),
    ]
}
#: the studies with a name of their own (not the bulk of one patient)
NAMED = {label for label in QUERY_ARCHIVE if not label.startswith("masiv")}
