#!/usr/bin/env python3
"""Fill an index database with synthetic rows, for QIDO-RS timings at scale (no blobs, no DICOM files).

    python benchmarks/gen_index.py --database-url sqlite:////tmp/bench-data/pacs-1m-sqlite/index.db
    python benchmarks/gen_index.py --database-url postgresql+psycopg://pacs:pacs@127.0.0.1:55499/pacs

The schema is made by `storage.index.migrate.upgrade` (the migrations `pacs serve` runs), then
organizations, patient identities, studies (each with its one owner row in `study_owners`, as
ingest writes it), series, instances and shares are inserted directly:
SQLAlchemy Core executemany in batches of `--batch` rows on SQLite, COPY (psycopg) on PostgreSQL.
Every row looks like one ingest writes: the folded patient name (`storage.dicom.charset.fold`), the
study and series attribute JSON, each instance's DICOM JSON (small: ~30 elements, the pixel
data as a bulk data reference), the aggregates (counts, ModalitiesInStudy). Only the blobs are
missing, so QIDO and metadata answer and retrieve does not.

Distribution (deterministic for a given --seed):
* about 50,000 studies for 1,000,000 instances: CR 30 %, MR 20 %, DX 15 %, CT 15 %, US 10 %,
  MG 10 % of studies, 1-2 instances (CR, DX) up to ~50 (CT, MR) per study, 20 on average;
* patients: one per 2.5 studies, some with many studies; Romanian family and given names with
  their diacritics (both the comma-below and the cedilla forms of ș/ț), a few foreign ones
  (SMITH is rare on purpose: `PatientName=SMITH*` is the small query);
* study dates uniform over the 10 years 2016-01-01..2025-12-31; `--orgs` organizations (default
  8; patients are dealt to them in turn, each study owned by its patient's organization, so every
  organization owns about 1/N of the studies);
* `--shared F` (default 0): F of the studies (rounded, chosen at random) get one active share
  (no expiry, not revoked) from their owner to one other organization, drawn from a random
  generator of their own, so the studies, series and instances do not depend on it;
* the first study is a 500-instance CT (2 series of 250), the "big study" of the
  `studies/{uid}/instances` query; its UID is printed.

Prints one JSON line: counts, the big study's UID and the time taken. `--reset` drops every
table first; `--reuse` prints the summary of an already filled database instead of failing (it
must hold --instances instances, --orgs organizations and the shares of --shared, and every
column of the models).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, event, func, inspect, select, text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

from storage.dicom.charset import fold  # noqa: E402
from storage.dicom.parse import INSTANCE_TAGS  # noqa: E402
from storage.index.migrate import upgrade  # noqa: E402
from storage.index.models import (  # noqa: E402
    Base,
    Instance,
    Organization,
    PatientIdentity,
    Series,
    Share,
    Study,
    StudyOwner,
)

ROOT = "1.2.826.0.1.3680043.8.498.99"  # synthetic UIDs: ROOT.kind.counter
KIND_STUDY, KIND_SERIES, KIND_INSTANCE, KIND_FOR = 1, 2, 3, 4
EXPLICIT_LE = "1.2.840.10008.1.2.1"

ORGS = [
    ("spital-judetean", "Spitalul Clinic Județean de Urgență"),
    ("spital-municipal", "Spitalul Municipal"),
    ("spital-copii", "Spitalul de Copii „Sfânta Maria”"),
    ("institut-oncologie", "Institutul Regional de Oncologie"),
    ("clinica-imagistica", "Clinica de Imagistică Medicală"),
    ("policlinica-nord", "Policlinica Nord"),
    ("cabinet-radiologie", "Cabinet Radiologie Dr. Ionescu"),
    ("spital-cfr", "Spitalul Clinic CFR"),
]


def organizations(n: int) -> list[tuple[str, str]]:
    """The first `n` organizations: those of `ORGS`, then numbered clinics."""
    extra = [(f"clinica-{k:02d}", f"Clinica Medicală {k}") for k in range(len(ORGS) + 1, n + 1)]
    return (ORGS + extra)[:n]


# (name, weight): Romanian family names with their diacritics, comma-below and cedilla forms mixed
FAMILY = [
    ("POPESCU", 40),
    ("POPA", 30),
    ("POP", 28),
    ("RADU", 22),
    ("DUMITRU", 20),
    ("STAN", 18),
    ("STOICA", 16),
    ("GHEORGHE", 16),
    ("MATEI", 14),
    ("CIOBANU", 14),
    ("IONESCU", 14),
    ("CONSTANTIN", 13),
    ("ROTARU", 12),
    ("MUNTEANU", 12),
    ("MOLDOVAN", 12),
    ("BĂLAN", 11),
    ("ȘTEFĂNESCU", 10),
    ("Ştefănescu", 4),
    ("NĂSTASE", 9),
    ("DUMITRAȘCU", 8),
    ("TĂNASE", 8),
    ("ȚURCANU", 7),
    ("Ţurcanu", 3),
    ("MIHĂILESCU", 7),
    ("RĂDULESCU", 7),
    ("BĂDESCU", 6),
    ("ȘERBAN", 8),
    ("Şerban", 3),
    ("COSTACHE", 6),
    ("LUPU", 6),
    ("CRĂCIUN", 6),
    ("MOCANU", 6),
    ("ARDELEANU", 5),
    ("BOGDAN", 5),
    ("ENACHE", 5),
    ("VASILE", 9),
    ("MARIN", 9),
    ("MIHAI", 8),
    ("SANDU", 6),
    ("NEAGU", 5),
    ("PĂUN", 4),
    ("ZĂVOIANU", 3),
    ("ȚICLEANU", 3),
    ("BRÂNZĂ", 3),
    ("NEGRUȚ", 3),
    ("ÎNCEU", 2),
    ("SĂVULESCU", 3),
    ("PÎRVU", 3),
    ("PÂRVU", 3),
    ("ȘTIRBU", 3),
    ("FĂGĂRĂȘANU", 2),
    ("OANCEA", 4),
    ("SMITH", 0.3),
    ("NGUYEN", 0.4),
    ("MÜLLER", 0.4),
    ("KOVÁCS", 0.8),
    ("NAGY", 0.8),
]
GIVEN_M = [
    "ION",
    "GHEORGHE",
    "VASILE",
    "CONSTANTIN",
    "MIHAI",
    "ANDREI",
    "ȘTEFAN",
    "Ştefan",
    "ALEXANDRU",
    "NICOLAE",
    "DUMITRU",
    "TUDOR",
    "RĂZVAN",
    "CĂTĂLIN",
    "BOGDAN",
    "MARIUS",
    "COSMIN",
    "DRAGOȘ",
    "IONUȚ",
]
GIVEN_F = [
    "MARIA",
    "ELENA",
    "IOANA",
    "ANA",
    "ANDREEA",
    "MIHAELA",
    "CRISTINA",
    "ALEXANDRA",
    "GEORGIANA",
    "RALUCA",
    "IULIANA",
    "ROXANA",
    "CĂTĂLINA",
    "LĂCRĂMIOARA",
    "FLORENȚA",
    "Florenţa",
    "ȘTEFANIA",
    "BIANCA",
]
PHYSICIANS = ["POPOVICI^ADRIAN", "MĂRGINEANU^DANA", "ȚĂRANU^VICTOR", "GHEȚU^IRINA", "LAZĂR^PAUL", "DOBRE^OANA"]
# modality: (share of studies, SOP class, rows, columns, bits, series range, instances per series range, descriptions)
MODALITIES: dict[str, tuple[float, str, int, int, int, tuple[int, int], tuple[int, int], list[str]]] = {
    "CR": (0.30, "1.2.840.10008.5.1.4.1.1.1", 2500, 2048, 16, (1, 1), (1, 3), ["RADIOGRAFIE TORACE", "RX COLOANA"]),
    "MR": (0.20, "1.2.840.10008.5.1.4.1.1.4", 256, 256, 16, (3, 5), (6, 14), ["IRM CEREBRAL", "IRM GENUNCHI"]),
    "DX": (0.15, "1.2.840.10008.5.1.4.1.1.1.1", 2000, 2500, 16, (1, 2), (1, 2), ["RX BAZIN", "RX MÂNĂ"]),
    "CT": (0.15, "1.2.840.10008.5.1.4.1.1.2", 512, 512, 16, (2, 3), (15, 25), ["CT TORACE", "CT ABDOMEN NATIV"]),
    "US": (0.10, "1.2.840.10008.5.1.4.1.1.6.1", 600, 800, 8, (1, 1), (5, 40), ["ECOGRAFIE ABDOMINALĂ"]),
    "MG": (0.10, "1.2.840.10008.5.1.4.1.1.1.2", 3328, 4084, 16, (1, 1), (4, 4), ["MAMOGRAFIE BILATERALĂ"]),
}
FIRST_DAY, DAYS = date(2016, 1, 1), (date(2025, 12, 31) - date(2016, 1, 1)).days + 1
AVG_PER_STUDY = 20
BIG_SERIES, BIG_PER_SERIES = 2, 250


def uid(kind: int, n: int) -> str:
    return f"{ROOT}.{kind}.{n}"


def el(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def pn(name: str) -> dict[str, Any]:
    return el("PN", {"Alphabetic": name})


def dumps(obj: dict[str, Any]) -> str:
    return json.dumps(dict(sorted(obj.items())), separators=(",", ":"), ensure_ascii=False)


class Generator:
    """Rows in foreign-key order, with ids assigned here (so one pass links them)."""

    def __init__(self, instances: int, seed: int, orgs: int = len(ORGS)) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.orgs = organizations(orgs)
        self.target = instances
        self.now = datetime(2026, 1, 1, tzinfo=UTC)
        n_patients = max(1, round(instances / AVG_PER_STUDY / 2.5))
        names = [f for f, _ in FAMILY]
        weights = [w for _, w in FAMILY]
        self.patients: list[dict[str, Any]] = []
        for i in range(1, n_patients + 1):
            sex = self.rng.choice("MF")
            given = self.rng.choice(GIVEN_M if sex == "M" else GIVEN_F)
            name = f"{self.rng.choices(names, weights)[0]}^{given}"
            born = FIRST_DAY - timedelta(days=self.rng.randrange(365 * 2, 365 * 95))
            org = self.orgs[i % len(self.orgs)][0]
            self.patients.append(
                {
                    "id": i,
                    "issuer_kind": "org",
                    "issuer": org,
                    "patient_id": f"{1_000_000 + i}",
                    "patient_name": name,
                    "patient_name_folded": fold(name),
                    "birth_date": born.strftime("%Y%m%d"),
                    "sex": sex,
                    "created_at": self.now,
                }
            )
        self.study_n = self.series_n = self.instance_n = 0

    def organizations(self) -> list[dict[str, Any]]:
        return [{"id": o, "name": n, "created_at": self.now} for o, n in self.orgs]

    def shares(self, owners: list[str], fraction: float) -> list[dict[str, Any]]:
        """One active share for `fraction` of the studies (`owners[i]` owns study i + 1), each to
        another organization; a generator of its own (seed and --shared), so the rest of the data
        does not depend on it."""
        n = round(len(owners) * fraction)
        if n == 0 or len(self.orgs) < 2:
            return []
        rng = random.Random(f"shares:{self.seed}")
        ids = [o for o, _ in self.orgs]
        rows = []
        for k, study in enumerate(sorted(rng.sample(range(1, len(owners) + 1), n)), 1):
            owner = owners[study - 1]
            to = rng.choice([o for o in ids if o != owner])
            rows.append(
                {
                    "id": k,
                    "study_id": study,
                    "from_org": owner,
                    "to_org": to,
                    "reason": "second opinion (gen_index.py)",
                    "created_by": f"clinician@{owner}",
                    "created_at": self.now,
                    "expires_at": None,
                    "revoked_at": None,
                    "revoked_by": None,
                }
            )
        return rows

    def studies(self) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]]:
        """(study row, its series rows, its instance rows) until the target instance count."""
        rng = self.rng
        mods = list(MODALITIES)
        shares = [MODALITIES[m][0] for m in mods]
        while self.instance_n < self.target:
            big = self.study_n == 0
            modality = "CT" if big else rng.choices(mods, shares)[0]
            share, sop_class, rows, cols, bits, n_series, per_series, descs = MODALITIES[modality]
            if big:
                counts = [BIG_PER_SERIES] * BIG_SERIES
                patient = self.patients[0]
            else:
                counts = [rng.randint(*per_series) for _ in range(rng.randint(*n_series))]
                patient = self.patients[int(len(self.patients) * rng.random() ** 1.6)]
            left, trimmed = self.target - self.instance_n, []
            for c in counts:  # the last study stops at the target exactly
                if left > 0:
                    trimmed.append(min(c, left))
                    left -= trimmed[-1]
            counts = trimmed
            yield self._study(patient, modality, sop_class, rows, cols, bits, counts, rng.choice(descs))

    def _study(
        self,
        patient: dict[str, Any],
        modality: str,
        sop_class: str,
        rows: int,
        cols: int,
        bits: int,
        counts: list[int],
        description: str,
    ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
        rng = self.rng
        self.study_n += 1
        st_id = self.study_n
        st_uid = uid(KIND_STUDY, st_id)
        day = FIRST_DAY + timedelta(days=rng.randrange(DAYS))
        st_date = day.strftime("%Y%m%d")
        st_time = f"{rng.randrange(7, 20):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}"
        accession = f"A{st_id:09d}"
        physician = rng.choice(PHYSICIANS)
        org = patient["issuer"]
        pname = patient["patient_name"]
        study_attrs = {
            "00080005": el("CS", "ISO_IR 192"),
            "00080020": el("DA", st_date),
            "00080030": el("TM", st_time),
            "00080050": el("SH", accession),
            "00080090": pn(physician),
            "00081030": el("LO", description),
            "00100010": pn(pname),
            "00100020": el("LO", patient["patient_id"]),
            "00100021": el("LO", org),
            "00100030": el("DA", patient["birth_date"]),
            "00100040": el("CS", patient["sex"]),
            "0020000D": el("UI", st_uid),
            "00200010": el("SH", str(st_id % 100000)),
        }
        created = self.now - timedelta(days=(date(2026, 1, 1) - day).days)
        study = {
            "id": st_id,
            "study_uid": st_uid,
            "identity_id": patient["id"],
            "org_id": org,
            "source_ae": "MODALITY1",
            "patient_id": patient["patient_id"],
            "patient_name": pname,
            "patient_name_folded": patient["patient_name_folded"],
            "study_date": st_date,
            "study_time": st_time,
            "accession_number": accession,
            "study_id": str(st_id % 100000),
            "description": description,
            "referring_physician_folded": fold(physician),
            "modalities": modality,
            "num_series": len(counts),
            "num_instances": sum(counts),
            "attrs_json": dumps(study_attrs),
            "created_at": created,
            "updated_at": created,
        }
        series_rows, instance_rows = [], []
        frame_len = rows * cols * (3 if modality == "US" else 1) * (bits // 8)
        layout = json.dumps({"kind": "native", "offset": 1480, "length": frame_len, "frame_length": frame_len})
        for s_no, count in enumerate(counts, 1):
            self.series_n += 1
            se_id = self.series_n
            se_uid = uid(KIND_SERIES, se_id)
            se_desc = f"{description} {s_no}"
            series_attrs = {
                "00080005": el("CS", "ISO_IR 192"),
                "00080021": el("DA", st_date),
                "00080031": el("TM", st_time),
                "00080060": el("CS", modality),
                "00080070": el("LO", "SIEMENS"),
                "00080080": el("LO", org),
                "0008103E": el("LO", se_desc),
                "0020000E": el("UI", se_uid),
                "00200011": el("IS", s_no),
                "00200052": el("UI", uid(KIND_FOR, se_id)),
            }
            series_rows.append(
                {
                    "id": se_id,
                    "series_uid": se_uid,
                    "study_id": st_id,
                    "modality": modality,
                    "series_number": s_no,
                    "description": se_desc,
                    "body_part": "",
                    "series_date": st_date,
                    "series_time": st_time,
                    "num_instances": count,
                    "attrs_json": dumps(series_attrs),
                    "created_at": created,
                }
            )
            common = {**study_attrs, **series_attrs}
            common.pop("00100021")
            common.update(
                {
                    "00080008": el("CS", "ORIGINAL", "PRIMARY"),
                    "00080016": el("UI", sop_class),
                    "00280002": el("US", 3 if modality == "US" else 1),
                    "00280004": el("CS", "RGB" if modality == "US" else "MONOCHROME2"),
                    "00280010": el("US", rows),
                    "00280011": el("US", cols),
                    "00280100": el("US", bits),
                    "00280101": el("US", bits),
                    "00280102": el("US", bits - 1),
                    "00280103": el("US", 0),
                    "7FE00010": {"vr": "OW" if bits == 16 else "OB", "BulkDataURI": "bulk:7FE00010"},
                }
            )
            # the per-instance values go into a template: json.dumps per instance was most of the time
            common.update({"00080018": el("UI", "@@"), "00200013": el("IS", "@@"), "00200032": el("DS", "@@")})
            p0, p1, p2, p3 = dumps(common).split('"@@"')
            # the instance-level subset ingest keeps beside the whole JSON (storage.dicom.parse.INSTANCE_TAGS)
            a0, a1, a2, a3 = dumps({k: v for k, v in sorted(common.items()) if k in INSTANCE_TAGS}).split('"@@"')
            for i_no in range(1, count + 1):
                self.instance_n += 1
                in_id = self.instance_n
                sop = uid(KIND_INSTANCE, in_id)
                dicom_json = f'{p0}"{sop}"{p1}{i_no}{p2}-250.0,-250.0,{i_no * 5}.0{p3}'
                attrs_json = f'{a0}"{sop}"{a1}{i_no}{a2}-250.0,-250.0,{i_no * 5}.0{a3}'
                instance_rows.append(
                    {
                        "id": in_id,
                        "sop_uid": sop,
                        "series_id": se_id,
                        "study_id": st_id,
                        "sop_class_uid": sop_class,
                        "instance_number": i_no,
                        "transfer_syntax_uid": EXPLICIT_LE,
                        "object_key": f"bench/{in_id:010d}",
                        "size": frame_len + 1480,
                        "rows": rows,
                        "columns": cols,
                        "number_of_frames": 1,
                        "pixel_layout": layout,
                        "dicom_json": dicom_json,
                        "attrs_json": attrs_json,
                        "source_ae": "MODALITY1",
                        "created_at": created,
                    }
                )
        return study, series_rows, instance_rows


class Writer:
    """Batched inserts: Core executemany (SQLite and others) or COPY (PostgreSQL)."""

    def __init__(self, conn: Connection, use_copy: bool) -> None:
        self.conn = conn
        self.use_copy = use_copy
        self.rows = {
            "patient_identities": 0,
            "studies": 0,
            "series": 0,
            "instances": 0,
            "organizations": 0,
            "study_owners": 0,
            "shares": 0,
        }

    def write(self, table: Table, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if self.use_copy:
            # the columns the rows give: the others take their server default (organizations'
            # disabled_at and check_ae_address, added by migration 0007, are not generated)
            cols = [c.name for c in table.columns if c.name in rows[0]]
            dbapi = self.conn.connection.driver_connection
            with dbapi.cursor() as cur:  # type: ignore[union-attr]
                quoted = ", ".join(f'"{c}"' for c in cols)
                with cur.copy(f"COPY {table.name} ({quoted}) FROM STDIN") as copy:
                    for r in rows:
                        copy.write_row([r[c] for c in cols])
        else:
            self.conn.execute(table.insert(), rows)
        self.rows[table.name] += len(rows)


def make(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # what the server uses; set once, kept in the file
            cur.execute("PRAGMA synchronous=OFF")  # bulk load only: the server reopens with FULL
            cur.execute("PRAGMA cache_size=-262144")  # 256 MiB
            cur.close()

        return engine
    return create_engine(url)


def missing_columns(engine: Engine) -> list[str]:
    """The model columns the database lacks: a migration edited in place since it was generated
    (the database's revision is then already the head, so `upgrade` adds nothing)."""
    found = inspect(engine)
    tables = set(found.get_table_names())
    missing = []
    for table in Base.metadata.sorted_tables:
        have = {c["name"] for c in found.get_columns(table.name)} if table.name in tables else set()
        missing += [f"{table.name}.{c.name}" for c in table.columns if c.name not in have]
    return missing


def summary(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        counts = {
            t.name: conn.scalar(select(func.count()).select_from(t))
            for t in (
                Organization.__table__,
                PatientIdentity.__table__,
                Study.__table__,
                Series.__table__,
                Instance.__table__,
                StudyOwner.__table__,
                Share.__table__,
            )
        }
        big = conn.execute(
            select(Study.study_uid, Study.num_instances).order_by(Study.num_instances.desc(), Study.id).limit(1)
        ).first()
    return {"counts": counts, "big_study": big[0] if big else None, "big_study_instances": big[1] if big else 0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--database-url", required=True, help="SQLAlchemy URL (sqlite:///PATH or postgresql+psycopg://...)")
    ap.add_argument("--instances", type=int, default=1_000_000, help="instance rows (default 1,000,000)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--batch", type=int, default=10_000, help="instance rows per batch (default 10,000)")
    ap.add_argument("--orgs", type=int, default=len(ORGS), help=f"organizations (default {len(ORGS)})")
    ap.add_argument(
        "--shared",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="fraction of the studies shared with one other organization (default 0)",
    )
    ap.add_argument("--reset", action="store_true", help="drop every table first")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="if the database already holds --instances rows, --orgs organizations and the shares of --shared, "
        "just print it",
    )
    ap.add_argument(
        "--analyze",
        choices=("auto", "yes", "no"),
        default="auto",
        help="update planner statistics at the end; auto = PostgreSQL yes (autovacuum would), SQLite no "
        "(nothing in pacs runs ANALYZE on SQLite)",
    )
    args = ap.parse_args()
    if args.orgs < 1:
        ap.error("--orgs must be at least 1")
    if not 0.0 <= args.shared <= 1.0:
        ap.error("--shared must be between 0 and 1")
    url = args.database_url
    if url.startswith(("postgres://", "postgresql://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    engine = make(url)
    is_pg = engine.dialect.name == "postgresql"
    t0 = time.perf_counter()
    if args.reset:
        Base.metadata.drop_all(engine)
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    upgrade(engine)
    before = summary(engine)
    if before["counts"]["instances"]:
        counts = before["counts"]
        shares = round(counts["studies"] * args.shared) if args.orgs > 1 else 0
        held = (counts["instances"], counts["organizations"], counts["shares"], counts["study_owners"])
        missing = missing_columns(engine)
        if args.reuse and missing:
            sys.exit(
                f"{make_url(url).render_as_string()} lacks columns of the models ({', '.join(missing[:5])}): "
                "a migration changed since it was generated (--reset to start again)"
            )
        if args.reuse and held == (args.instances, args.orgs, shares, counts["studies"]):
            sys.stdout.write(
                json.dumps({**before, "reused": True, "database": make_url(url).render_as_string()}) + "\n"
            )
            return 0
        sys.exit(
            f"{make_url(url).render_as_string()} already holds {counts['instances']} instances, "
            f"{counts['organizations']} organizations, {counts['study_owners']} study owners and "
            f"{counts['shares']} shares (--reset to start again, --reuse to keep a database of exactly "
            f"--instances, --orgs and --shared: {args.instances}, {args.orgs}, {shares} shares)"
        )
    gen = Generator(args.instances, args.seed, args.orgs)
    t_gen = 0.0
    with engine.begin() as conn:
        w = Writer(conn, use_copy=is_pg)
        w.write(Organization.__table__, gen.organizations())
        for i in range(0, len(gen.patients), args.batch):
            w.write(PatientIdentity.__table__, gen.patients[i : i + args.batch])
        studies: list[dict[str, Any]] = []
        series: list[dict[str, Any]] = []
        instances: list[dict[str, Any]] = []
        owners: list[str] = []  # study id - 1 -> its organization

        def flush() -> None:
            w.write(Study.__table__, studies)
            w.write(
                StudyOwner.__table__,
                [
                    {
                        "study_id": s["id"],
                        "org_id": s["org_id"],
                        "study_date": s["study_date"],
                        "created_at": s["created_at"],
                    }
                    for s in studies
                ],
            )
            w.write(Series.__table__, series)
            w.write(Instance.__table__, instances)
            owners.extend(s["org_id"] for s in studies)
            studies.clear(), series.clear(), instances.clear()

        it = gen.studies()
        while True:
            g0 = time.perf_counter()
            item = next(it, None)
            t_gen += time.perf_counter() - g0
            if item is None:
                break
            studies.append(item[0])
            series.extend(item[1])
            instances.extend(item[2])
            if len(instances) >= args.batch:
                flush()
                if gen.study_n % 5000 < 50:
                    sys.stderr.write(f"  {gen.instance_n:,} instances, {time.perf_counter() - t0:.0f} s\n")
        flush()
        w.write(Share.__table__, gen.shares(owners, args.shared))
        if is_pg:  # ids were given explicitly: move the sequences past them
            for table in ("patient_identities", "studies", "series", "instances", "shares"):
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT coalesce(max(id), 1) FROM {table}))"
                    )
                )
    t_load = time.perf_counter() - t0
    analyze = args.analyze == "yes" or (args.analyze == "auto" and is_pg)
    if is_pg:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE" if analyze else "VACUUM"))
    else:
        with engine.connect() as conn:
            if analyze:
                conn.execute(text("ANALYZE"))
            conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
            conn.commit()
    engine.dispose()
    out = summary(make(url))
    out.update(
        database=make_url(url).render_as_string(),
        seed=args.seed,
        orgs=args.orgs,
        shared=args.shared,
        analyzed=analyze,
        seconds_load=round(t_load, 1),
        seconds_generate=round(t_gen, 1),
        seconds_total=round(time.perf_counter() - t0, 1),
        instances_per_s=round(args.instances / t_load),
    )
    sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
