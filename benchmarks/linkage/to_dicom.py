"""Write the first rows of a linkage CSV (`generate.py`) as small DICOM files, one per identity.

    .venv/bin/python benchmarks/linkage/to_dicom.py --csv /tmp/bench-data/linkage-100k.csv \
        --count 2000 --out /tmp/bench-data/linkage-dicom-2000

Used by `benchmarks/linking.sh` (ingest with the patient index's linker on and off). Each row
becomes one CT Image Storage instance of 64x64 16-bit pixels (~8.6 KB) in its own study and
series, with unique UIDs (derived from the row number and `--seed`, so a rerun writes the same
files):

* PatientID, PatientName, PatientBirthDate, PatientSex, PatientAddress as in the row (the
  address as is, even where it is longer than the 64 characters of LO: the server keeps up to
  256, and real senders do send such addresses);
* IssuerOfPatientID = the row's issuer when its kind is `dicom`; none when it is `org` (the
  identity then takes the namespace of the organization the sending AE is registered to);
* the CNP, when the row has one (even a cut or mistyped one, as the sender gave it), as an
  OtherPatientIDsSequence item with IssuerOfPatientID `RO-CNP`;
* SpecificCharacterSet ISO_IR 192 (UTF-8: the names and addresses have Romanian diacritics).

Layout: `OUT/<sender>/p<k>/<row number>.dcm`, where sender is `dicom` for the rows that carry
their issuer, else the org issuer's name (CLINIC-A, CLINIC-B, LAB-C: to be sent by an AE of
that organization), and k = 1..`--parts` deals the rows round-robin (for parallel clients).
A `manifest.tsv` lists row number, sender, part, issuer kind, issuer, patient ID, file.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

#: an address longer than LO's 64 characters is written as given (see the docstring)
config.settings.writing_validation_mode = config.IGNORE
config.settings.reading_validation_mode = config.IGNORE

ROOT = "1.2.826.0.1.3680043.10.1555."  # arbitrary prefix for the generated UIDs (uniqueness from the hash)


def uid(seed: int, n: int, what: str) -> str:
    return generate_uid(prefix=ROOT, entropy_srcs=[str(seed), str(n), what])


def dataset(row: dict[str, str], n: int, seed: int, pixels: bytes) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = uid(seed, n, "sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid(seed, n, "study")
    ds.SeriesInstanceUID = uid(seed, n, "series")
    ds.FrameOfReferenceUID = uid(seed, n, "frame")
    ds.PatientName = row["patient_name"]
    ds.PatientID = row["patient_id"]
    if row["issuer_kind"] == "dicom":
        ds.IssuerOfPatientID = row["issuer"]
    ds.PatientBirthDate = row["birth_date"]
    ds.PatientSex = row["sex"]
    if row.get("address"):
        ds.PatientAddress = row["address"]
    if row.get("national_id"):
        item = Dataset()
        item.PatientID = row["national_id"]
        item.IssuerOfPatientID = "RO-CNP"
        item.TypeOfPatientID = "TEXT"
        ds.OtherPatientIDsSequence = [item]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260115"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = f"{8 + n % 10:02d}{n % 60:02d}00"
    ds.AccessionNumber = f"LNK{n:07d}"
    ds.StudyID = str(n)
    ds.StudyDescription = "CT linkage bench"
    ds.ReferringPhysicianName = ""
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.SeriesDescription = "scout"
    ds.BodyPartExamined = "HEAD"
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 1.0
    ds.KVP = 120
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.PixelData = pixels
    return ds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, required=True)
    parser.add_argument("--count", type=int, default=2000, help="the first COUNT rows")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--parts", type=int, default=2, help="round-robin parts per sender (parallel clients)")
    parser.add_argument("--seed", type=int, default=1, help="for the UIDs")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    pixels = rng.integers(0, 4096, size=(64, 64), dtype=np.uint16).tobytes()
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = [("row", "sender", "part", "issuer_kind", "issuer", "patient_id", "file")]
    with args.csv.open(newline="", encoding="utf-8") as fp:
        for n, row in enumerate(csv.DictReader(fp), start=1):
            if n > args.count:
                break
            sender = "dicom" if row["issuer_kind"] == "dicom" else row["issuer"]
            part = (n - 1) % args.parts + 1
            folder = args.out / sender / f"p{part}"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{n:06d}.dcm"
            dataset(row, n, args.seed, pixels).save_as(path, enforce_file_format=True)
            manifest.append((str(n), sender, str(part), row["issuer_kind"], row["issuer"], row["patient_id"],
                             str(path.relative_to(args.out))))  # fmt: skip
    with (args.out / "manifest.tsv").open("w", encoding="utf-8") as fp:
        fp.writelines("\t".join(r) + "\n" for r in manifest)
    sys.stderr.write(f"{len(manifest) - 1} files -> {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
