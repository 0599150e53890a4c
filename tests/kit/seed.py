"""What the archive holds before a test asks: the kit's organizations, and stored objects."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from storage.access.context import Context
from storage.access.orgs import AeSpec, add_org
from storage.access.principal import Principal
from storage.archive import Archive
from storage.dicom.parse import Source
from storage.ingest.pipeline import IngestResult, ingest
from tests.kit import dicom_factory as f
from tests.kit.principals import CT_A, ORGS, ctx


def seed_orgs(archive: Archive, orgs: Iterable[str] = ORGS) -> None:
    """Register the organizations of `tests.kit.principals.ORGS` (all, or those named) and their AEs."""
    with archive.db.write() as session:
        for org in orgs:
            name, aes = ORGS[org]
            add_org(session, org, name, [AeSpec(ae) for ae in aes])


def seed(archive: Archive, *objects: Dataset | bytes, as_: Principal | Context = CT_A) -> list[IngestResult]:
    """Store `objects` (data sets or Part-10 bytes) through the ingest pipeline, sent by `as_`."""
    context = as_ if isinstance(as_, Context) else ctx(as_)
    return [
        ingest(Source(data=o if isinstance(o, bytes) else f.to_bytes(o)), context, archive=archive) for o in objects
    ]


def seed_files(
    archive: Archive,
    folder: Path,
    datasets: list[Dataset],
    ts: str = ExplicitVRLittleEndian,
    *,
    as_: Principal | Context = CT_A,
) -> list[Path]:
    """Write `datasets` as Part-10 files in `folder` (compressed to `ts` first unless already
    encapsulated) and store those files; the files, to compare with what a peer receives."""
    context = as_ if isinstance(as_, Context) else ctx(as_)
    paths = []
    for ds in datasets:
        if ts != ExplicitVRLittleEndian and not ds.PixelData.startswith(b"\xfe\xff\x00\xe0"):
            ds.compress(ts, generate_instance_uid=False)
        path = f.write(folder / f"{ds.SOPInstanceUID}.dcm", ds, ts)
        ingest(Source(path=path), context, archive=archive)
        paths.append(path)
    return paths
