"""The archive as a city runs it, without containers: deploy/local-cluster.sh's PostgreSQL, S3
server (Ceph RGW), two SCP processes behind HAProxy and two gateway processes behind nginx (TLS),
under load, then under faults.

* Load: 4 dcmtk storescu processes (through HAProxy, so over both SCPs) and 2 STOW-RS clients
  (through nginx, so over both gateways) ingest ~2,000 instances at once, two of the storescu
  sending the same 50 files at the same moment and every sender writing into one shared study,
  while 20 QIDO-RS / WADO-RS clients read. Afterwards every acknowledged instance is in the index
  exactly once, each study's and series' counts are exact, and no request failed.
* Faults during a second load: one SCP killed (kill -9) mid-transfer, one gateway killed,
  PostgreSQL restarted, the S3 server cut off (a relay between the archive and Ceph: the shared
  Ceph script cannot restart a store with its data). Senders and readers retry what fails;
  nothing acknowledged is lost, every failure is a 503 or a DIMSE failure status (never a wrong
  answer, never a 4xx or 500), everything succeeds once retried, and the background work (the
  patient linker) goes on afterwards.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select, text

from storage.index.models import Instance, LinkQueueItem, Series, Study
from tests.kit import dicom_factory as f
from tests.kit.net import TcpForwarder
from tests.kit.tools import TOOLS, require_tool

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "local-cluster.sh"
#: each reader's pause between two requests (20 readers: up to 200 requests a second, besides ingest)
READ_PACE = 0.1
#: instances each of the two modalities sends in each fault's phase: enough that the transfer is
#: still going when the fault strikes, once `STRIKE_AFTER` of them are stored
PER_PHASE = {"killed": 150, "database": 300, "objects": 300}
STRIKE_AFTER = 20
PORTS = 46  # local-cluster.sh uses CLUSTER_PORT_BASE + 0 .. + 41 (and the PostgreSQL/S3 pairs)

pytestmark = [pytest.mark.postgres, pytest.mark.s3, pytest.mark.dcmtk]


@dataclass
class Cluster:
    folder: Path
    env: dict[str, str]
    settings: dict[str, str]
    relay: TcpForwarder  # between the archive and the S3 server
    admin: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.settings["CLUSTER_URL"]

    @property
    def dicom(self) -> tuple[str, int]:
        host, port = self.settings["CLUSTER_DICOM"].split(":")
        return host, int(port)

    def client(self) -> httpx.Client:
        trust = ssl.create_default_context(cafile=self.settings["CLUSTER_CA"])  # nginx's development certificate
        return httpx.Client(base_url=self.url, verify=trust, headers=self.admin, timeout=60)

    def script(self, *args: str) -> None:
        subprocess.run(["bash", str(SCRIPT), *args], env=self.env, check=True, capture_output=True, timeout=240)

    def pid(self, name: str) -> int:
        return int((self.folder / f"{name}.pid").read_text())

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")


def _free_base() -> int:
    """A port such that it and the next PORTS are free on 127.0.0.1."""
    for base in range(24000, 60000, 97):
        try:
            for port in range(base, base + PORTS):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range for the cluster")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    for tool, package in (("haproxy", "haproxy"), ("nginx", "nginx"), ("envsubst", "gettext-base")):
        require_tool(tool, package)
    require_tool("storescu")
    folder = Path(f"/tmp/pacs-cluster-{os.getpid()}")  # Ceph's sockets want a short path
    base = _free_base()
    relay = TcpForwarder(("127.0.0.1", base + 40))
    relay.open()
    env = {
        **os.environ,
        "CLUSTER_PORT_BASE": str(base),
        "CLUSTER_S3_ENDPOINT": f"http://127.0.0.1:{relay.port}",
        "PACS_TOOLS": str(TOOLS),
        "PACS_SHUTDOWN_GRACE": "5",
        "PACS_HTTP_RATE_LIMIT": "0",
        "PACS_DICOM_RATE_LIMIT": "0",
        "PACS_MPI_INTERVAL": "0.5",
    }
    started = subprocess.run(
        ["bash", str(SCRIPT), "start", str(folder)], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        settings = dict(line.split("=", 1) for line in started.stdout.splitlines() if line.startswith("CLUSTER_"))
        token = (folder / "scp1" / "admin-token").read_text().strip()
        yield Cluster(folder, env, settings, relay, {"Authorization": f"Bearer {token}"})
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], env=env, capture_output=True, timeout=300)
        relay.close()
        subprocess.run(["rm", "-rf", str(folder)], check=False)


# ----- senders and readers ------------------------------------------------------------------------


def files_of(folder: Path, study: str, count: int, *, series: str | None = None, patient: str = "TOPO-1") -> list[Path]:
    """`count` small CT instances of `study` (in `series`, or one of their own) under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    series = series or f.uid()
    written = []
    for i in range(count):
        ds = f.ct_dataset(study_uid=study, series_uid=series, patient_id=patient, instance_number=i + 1)
        written.append(f.write(folder / f"{ds.SOPInstanceUID}.dcm", ds))  # a file's name is its SOP UID
    return written


def storescu(cluster: Cluster, aet: str, folder: Path) -> tuple[set[str], int, str]:
    """Send every file of `folder` over one association through HAProxy: the SOP Instance UIDs
    acknowledged with a success, storescu's exit status, and the end of what it said."""
    host, port = cluster.dicom
    proc = subprocess.run(
        [require_tool("storescu"), "-v", "-aet", aet, "-aec", "MUNIPACS", "+sd", host, str(port), str(folder)],
        capture_output=True,
        text=True,
        env={**os.environ, "TCP_NODELAY": "1"},
        timeout=600,
        check=False,
    )
    acked: set[str] = set()
    current = None
    for line in proc.stdout.splitlines() + proc.stderr.splitlines():
        if m := re.match(r"I: Sending file: (.+)$", line.strip()):
            current = Path(m.group(1)).stem
        elif "Received Store Response (Success)" in line and current:
            acked.add(current)
    said = proc.stdout.splitlines() + proc.stderr.splitlines()
    failures = [line for line in said if line.startswith(("E:", "F:"))] or said
    return acked, proc.returncode, "\n".join(failures[-5:])


def resend(cluster: Cluster, aet: str, folder: Path, attempts: int = 10) -> tuple[set[str], int, str]:
    """storescu again until it succeeds, 2 s apart, as a modality's retry queue does."""
    acked: set[str] = set()
    for _ in range(attempts):
        got, code, said = storescu(cluster, aet, folder)
        acked |= got
        if code == 0:
            return acked, code, said
        time.sleep(2)
    return acked, code, said


def stow(cluster: Cluster, files: list[Path], *, batch: int = 10, retry: bool = False) -> set[str]:
    """STOW-RS `files`, `batch` to a request, through nginx; the SOP UIDs acknowledged. With
    `retry`, a 503 or a dropped connection is tried again (after the outage); without, every
    request must succeed."""
    acked: set[str] = set()
    with cluster.client() as http:
        for start in range(0, len(files), batch):
            part = files[start : start + batch]
            boundary = "topology"
            body = (
                b"".join(
                    f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p.read_bytes() + b"\r\n"
                    for p in part
                )
                + f"--{boundary}--\r\n".encode()
            )
            headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}
            for attempt in range(60):
                try:
                    answer = http.post("/dicomweb/studies", content=body, headers=headers)
                except httpx.TransportError:
                    assert retry, "a STOW-RS request failed without a fault"
                    time.sleep(1)
                    continue
                if answer.status_code == 503 and retry:
                    time.sleep(1)
                    continue
                assert answer.status_code == 200, (attempt, answer.status_code, answer.text[:300])
                refs = answer.json().get("00081199", {}).get("Value", [])
                acked |= {r["00081155"]["Value"][0] for r in refs}
                break
            else:
                raise AssertionError("a STOW-RS request never succeeded")
    return acked


@dataclass
class Readers:
    """Clients that read while the senders write: what each answer was."""

    statuses: dict[int, int] = field(default_factory=dict)
    wrong: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def count(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1


def read_until_stopped(cluster: Cluster, readers: Readers, shared_study: str, *, outages: bool) -> None:
    with cluster.client() as http:
        n = 0
        while not readers.stop.wait(READ_PACE):
            n += 1
            path = "/dicomweb/studies?limit=20" if n % 2 else f"/dicomweb/studies/{shared_study}/metadata"
            try:
                answer = http.get(path)
            except httpx.TransportError as exc:
                readers.wrong.append(f"{path}: {type(exc).__name__}")
                continue
            readers.count(answer.status_code)
            if answer.status_code == 200:
                if not isinstance(answer.json(), list):
                    readers.wrong.append(f"{path}: 200 without a JSON array")
            elif not (outages and answer.status_code == 503 and answer.headers.get("retry-after")):
                readers.wrong.append(f"{path}: {answer.status_code} {answer.text[:120]}")


def serving(cluster: Cluster, timeout: float = 90.0) -> None:
    """Wait until both SCPs answer their readiness probe and HAProxy has taken them back (two good
    checks 2 s apart), then until an association through HAProxy is accepted: a phase starts on
    a whole cluster, not while the previous fault still echoes (otherwise its senders are refused
    before the fault they are meant to feel)."""
    deadline = time.monotonic() + timeout
    for name in ("CLUSTER_SCP1_HTTP", "CLUSTER_SCP2_HTTP"):
        url = f"http://{cluster.settings[name]}/readyz"
        while True:
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{name}: not ready in {timeout} s"
            time.sleep(0.5)
    time.sleep(6)  # HAProxy: rise 2, inter 2 s
    host, port = cluster.dicom
    echo = [require_tool("echoscu"), "-aet", "READY", "-aec", "MUNIPACS", host, str(port)]
    while subprocess.run(echo, capture_output=True, timeout=30, check=False).returncode != 0:
        assert time.monotonic() < deadline, "HAProxy refused associations after both SCPs were ready"
        time.sleep(1)


def stored_since(
    cluster: Cluster, study: str, more: int, senders: list[Future[tuple[set[str], int, str]]], timeout: float = 60.0
) -> None:
    """Wait until `more` instances of `study` are stored beyond those it held when called: the
    transfer under way, so that a fault strikes in the middle of it. Senders that all ended
    before that fail the wait at once, with what they said."""
    engine = create_engine(cluster.settings["CLUSTER_DATABASE_URL"])
    count = select(Study.num_instances).where(Study.study_uid == study)
    try:
        with engine.connect() as conn:
            start = conn.execute(count).scalar() or 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                if (conn.execute(count).scalar() or 0) >= start + more:
                    return
            if all(s.done() for s in senders):
                said = [s.result()[1:] for s in senders]
                raise AssertionError(f"the senders ended before {more} more instances were stored: {said}")
            time.sleep(0.02)
        raise AssertionError(f"{more} more instances of the study were not stored in {timeout} s")
    finally:
        engine.dispose()


def index_state(cluster: Cluster) -> dict[str, object]:
    engine = create_engine(cluster.settings["CLUSTER_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            sops = [r[0] for r in conn.execute(select(Instance.sop_uid))]
            studies = {
                r.study_uid: (r.num_instances, r.num_series)
                for r in conn.execute(select(Study.study_uid, Study.num_instances, Study.num_series))
            }
            counted = select(Study.study_uid, func.count(Instance.id)).join(Instance).group_by(Study.study_uid)
            actual = {row[0]: row[1] for row in conn.execute(counted).all()}
            series_off = conn.execute(
                select(func.count())
                .select_from(Series)
                .where(
                    Series.num_instances
                    != select(func.count(Instance.id)).where(Instance.series_id == Series.id).scalar_subquery()
                )
            ).scalar_one()
            pending = conn.execute(text("SELECT count(*) FROM pending_blobs")).scalar_one()
            queued = conn.execute(select(func.count()).select_from(LinkQueueItem)).scalar_one()
    finally:
        engine.dispose()
    return {
        "sops": sops,
        "studies": studies,
        "actual": actual,
        "series_off": series_off,
        "pending": pending,
        "queued": queued,
    }


def assert_exact(cluster: Cluster, acknowledged: set[str]) -> dict[str, object]:
    state = index_state(cluster)
    sops: list[str] = state["sops"]  # type: ignore[assignment]
    assert len(sops) == len(set(sops)), "an instance is in the index twice"
    missing = acknowledged - set(sops)
    assert not missing, f"{len(missing)} acknowledged instances are missing, e.g. {sorted(missing)[:3]}"
    studies: dict[str, tuple[int, int]] = state["studies"]  # type: ignore[assignment]
    actual: dict[str, int] = state["actual"]  # type: ignore[assignment]
    wrong = {uid: (kept[0], actual.get(uid, 0)) for uid, kept in studies.items() if kept[0] != actual.get(uid, 0)}
    assert not wrong, f"study counts differ from their instances: {list(wrong.items())[:3]}"
    assert state["series_off"] == 0, "a series count differs from its instances"
    return state


# ----- the tests -----------------------------------------------------------------------------------


def test_two_scps_and_two_gateways_ingest_at_once_while_twenty_clients_read(cluster: Cluster, tmp_path: Path) -> None:
    shared = f.uid()  # every sender writes into this study at the same time
    senders = [tmp_path / f"scu{i}" for i in range(4)]
    for i, folder in enumerate(senders):
        files_of(folder, shared, 100, patient="TOPO-SHARED")
        for _ in range(3):
            files_of(folder, f.uid(), 97, patient=f"TOPO-{i}")
    duplicates = files_of(tmp_path / "dup", f.uid(), 50, patient="TOPO-DUP")
    for folder in senders[:2]:  # the same 50 files from two modalities at the same moment
        for path in duplicates:
            (folder / path.name).write_bytes(path.read_bytes())
    stowed = [files_of(tmp_path / f"stow{i}", shared, 100, patient="TOPO-SHARED") for i in range(2)]
    stowed = [s + files_of(tmp_path / f"stow{i}", f.uid(), 100, patient=f"TOPO-W{i}") for i, s in enumerate(stowed)]
    first = stow(cluster, files_of(tmp_path / "first", shared, 1, patient="TOPO-SHARED"))  # what readers read
    expected = {p.stem for folder in senders for p in folder.iterdir()} | {p.stem for s in stowed for p in s} | first
    assert len(expected) == 4 * (100 + 3 * 97) + 50 + 2 * 200 + 1  # 2,015 distinct instances

    readers = Readers()
    with ThreadPoolExecutor(max_workers=26) as pool:
        reading = [pool.submit(read_until_stopped, cluster, readers, shared, outages=False) for _ in range(20)]
        scus = [pool.submit(storescu, cluster, f"MODALITY{i}", folder) for i, folder in enumerate(senders)]
        stows = [pool.submit(stow, cluster, files) for files in stowed]
        results = [s.result() for s in scus]
        acknowledged = set().union(first, *(r[0] for r in results), *(s.result() for s in stows))
        readers.stop.set()
        for r in reading:
            r.result()

    assert all(code == 0 for _, code, _ in results), [code for _, code, _ in results]
    assert acknowledged == expected, f"{len(expected - acknowledged)} not acknowledged"
    state = assert_exact(cluster, acknowledged)
    assert len(state["sops"]) == len(expected)  # type: ignore[arg-type]
    assert state["studies"][shared] == (1 + 4 * 100 + 2 * 100, 7)  # type: ignore[index]
    assert not readers.wrong, readers.wrong[:5]
    assert readers.statuses.get(200, 0) > 100 and set(readers.statuses) == {200}
    for scp in ("scp1", "scp2"):  # HAProxy spread the modalities over both
        assert "dimse.assoc.released" in cluster.log(scp), scp


@pytest.mark.timeout(600)
def test_faults_lose_nothing_acknowledged_and_fail_only_retryably(cluster: Cluster, tmp_path: Path) -> None:
    """Three phases, each with new instances in flight when its fault strikes, then everything
    sent once more with all up."""
    shared = f.uid()
    phases = {
        phase: [
            files_of(tmp_path / phase / f"scu{i}", shared, PER_PHASE[phase], patient="FAULT-SHARED").pop().parent
            for i in (0, 1)
        ]
        for phase in PER_PHASE
    }
    stowed = files_of(tmp_path / "stow", shared, 60, patient="FAULT-SHARED")
    acknowledged = stow(cluster, files_of(tmp_path / "first", shared, 1, patient="FAULT-SHARED"))
    folders = [folder for pair in phases.values() for folder in pair]
    expected = {p.stem for folder in folders for p in folder.iterdir()} | {p.stem for p in stowed} | acknowledged

    def send(phase: str) -> list[Future[tuple[set[str], int, str]]]:
        return [pool.submit(storescu, cluster, f"FAULTY{i}", folder) for i, folder in enumerate(phases[phase])]

    readers = Readers()
    began = time.monotonic()

    def mark(what: str) -> None:  # where the time went, in the output of a failure
        print(f"[topology +{time.monotonic() - began:.1f} s] {what}", file=sys.stderr, flush=True)

    with ThreadPoolExecutor(max_workers=16) as pool:
        reading = [pool.submit(read_until_stopped, cluster, readers, shared, outages=True) for _ in range(10)]
        try:
            # an SCP process and a gateway process die mid-transfer (kill -9), and come back
            serving(cluster)
            mark("killed: sending")
            killed = send("killed")
            stows = pool.submit(stow, cluster, stowed, batch=5, retry=True)
            stored_since(cluster, shared, STRIKE_AFTER, killed)  # mid-transfer
            mark("killed: scp1 and gw1")
            os.killpg(cluster.pid("scp1"), signal.SIGKILL)
            os.killpg(cluster.pid("gw1"), signal.SIGKILL)
            first = [s.result() for s in killed]
            mark(f"killed: senders done {[r[1] for r in first]}")
            cluster.script("restart-one", str(cluster.folder), "scp1")
            cluster.script("restart-one", str(cluster.folder), "gw1")

            # PostgreSQL restarts while instances arrive
            serving(cluster)
            mark("database: sending")
            during_restart = send("database")
            stored_since(cluster, shared, STRIKE_AFTER, during_restart)
            mark("database: stopping PostgreSQL")
            pg = ["--dir", cluster.settings["CLUSTER_PG_DIR"]]
            subprocess.run(["bash", str(TOOLS / "stop-postgres.sh"), *pg], check=True, capture_output=True, timeout=60)
            time.sleep(3)
            port = ["--port", cluster.settings["CLUSTER_PG_PORT"]]
            subprocess.run(
                ["bash", str(TOOLS / "start-postgres.sh"), *pg, *port], check=True, capture_output=True, timeout=120
            )
            mark("database: PostgreSQL started again")
            second = [s.result() for s in during_restart]
            mark(f"database: senders done {[r[1:] for r in second]}")

            # the object store is cut off for 4 s while instances arrive
            serving(cluster)
            mark("objects: sending")
            during_cut = send("objects")
            stored_since(cluster, shared, STRIKE_AFTER, during_cut)
            mark("objects: cut")
            cluster.relay.close()
            time.sleep(4)
            cluster.relay.open()
            mark("objects: reopened")
            third = [s.result() for s in during_cut]
            mark(f"objects: senders done {[r[1] for r in third]}")
            acknowledged |= stows.result()

            serving(cluster)
            mark("resending")
            # everything once more, as a modality retries: what was refused is stored, what was
            # stored is "already present" (a success), and nothing is stored twice. HAProxy takes
            # an SCP back after two good readiness checks (4 s): until then a retry may be refused
            resent = [pool.submit(resend, cluster, f"FINAL{i}", folder) for i, folder in enumerate(folders)]
            last = [r.result() for r in resent]
            mark("resent")
        finally:  # the readers end whatever happened, or the pool waits for them forever
            readers.stop.set()
        for r in reading:
            r.result()

    for result in first + second + third + last:
        acknowledged |= result[0]
    assert all(code == 0 for _, code, _ in last), [said for _, code, said in last if code]
    assert acknowledged == expected
    state = assert_exact(cluster, acknowledged)
    assert state["studies"][shared][0] == len(expected)  # type: ignore[index]
    assert not readers.wrong, readers.wrong[:5]
    assert set(readers.statuses) == {200, 503}, readers.statuses  # the restart was felt, retryably
    assert any(code != 0 for _, code, _ in first), "the killed SCP cut a transfer"
    said = cluster.log("scp1") + cluster.log("scp2")
    refused = set(re.findall(r"(?:ingest|dimse\.store)\.unavailable .*backend=\W?(database|object store)", said))
    assert refused == {"database", "object store"}, "each outage refused a C-STORE, retryably"
    missed = [len(r[0]) < PER_PHASE["database"] for r in second + third]
    assert any(missed), "no C-STORE was refused during the outages: the test would prove nothing"
    # background work goes on: the identities queued during the faults are linked
    deadline = time.monotonic() + 60
    while index_state(cluster)["queued"]:
        assert time.monotonic() < deadline, "the patient linker did not resume"
        time.sleep(0.5)
    with cluster.client() as http:
        assert http.get("/readyz").status_code == 200
