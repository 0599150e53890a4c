"""The audit trail forwarded to a real syslog receiver (rsyslogd), over both databases.

Records are inserted into `audit_records` directly (the hash chain is not the forwarder's
business: arbitrary hashes) and must reach rsyslog as RFC 5424 messages whose MSG is a DICOM
Audit Message (PS3.15 A.5) naming the actor, patient, study and outcome; they must wait in the
table while the receiver is away; two forwarders on one database must not both send; and TLS
must verify the receiver's certificate. The last tests check the action-to-EventID table of
`storage.audit.atna` and the message's schema order and size bound, without a receiver.
"""

from __future__ import annotations

import base64
import logging
import re
import socket
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from sqlalchemy import insert, select

from storage.archive import Archive
from storage.audit import atna
from storage.audit.forward import Forwarder, start_forwarder
from storage.audit.syslog import BOM, Target
from storage.index.db import Database
from storage.index.models import AuditCursor, AuditRecord
from storage.logs import EventFormatter
from tests.kit.backends import settings_for
from tests.kit.net import free_port
from tests.kit.syslog import Rsyslog, make_pki, rsyslog_fixture, start_rsyslog
from tests.kit.tools import missing

__all__ = ["rsyslog_fixture"]  # the session's rsyslogd, as the fixture `rsyslog`

HEADER = re.compile(rb"^<(\d+)>1 (\S+) (\S+) (\S+) (\S+) (\S+) (-) (.*)$", re.S)
WAIT = 10.0
#: the forwarder's waits, shortened so that a retry or an idle round costs a test little
FAST = {"idle": 0.05, "retry": (0.1, 0.3)}


@dataclass(frozen=True)
class Received:
    pri: int
    timestamp: str
    hostname: str
    app: str
    msgid: str
    xml: ET.Element

    @property
    def actor(self) -> str:
        return self.xml.findall("ActiveParticipant")[0].get("UserID", "")

    @property
    def objects(self) -> dict[str, str]:
        """ParticipantObjectID by ID type code (2: patient, 110180: study)."""
        return {
            o.find("ParticipantObjectIDTypeCode").get("csd-code", ""): o.get("ParticipantObjectID", "")  # type: ignore[union-attr]
            for o in self.xml.findall("ParticipantObjectIdentification")
        }

    @property
    def event_id(self) -> str:
        return self.xml.find("EventIdentification/EventID").get("csd-code", "")  # type: ignore[union-attr]

    @property
    def outcome(self) -> str:
        return self.xml.find("EventIdentification").get("EventOutcomeIndicator", "")  # type: ignore[union-attr]


def parse(line: bytes) -> Received:
    """One message as rsyslog wrote it (`%rawmsg%`): the RFC 5424 header, then BOM and XML."""
    m = HEADER.match(line)
    assert m is not None, line[:200]
    pri, timestamp, hostname, app, _procid, msgid, _sd, msg = m.groups()
    assert msg.startswith(BOM), msg[:20]
    return Received(
        int(pri), timestamp.decode(), hostname.decode(), app.decode(), msgid.decode(), ET.fromstring(msg[len(BOM) :])
    )


def received(server: Rsyslog, marker: str) -> list[Received]:
    """The messages of one test (its actors all contain `marker`), in arrival order."""
    return [r for r in map(parse, server.lines()) if marker in r.actor]


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """The captured log lines as the server writes them: event names and their fields."""
    return "\n".join(EventFormatter().format(r) for r in caplog.records)


def wait_until(check: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


class Trail:
    """Inserts audit records for one test: each actor carries the test's marker."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.marker = uuid.uuid4().hex[:10]
        self.chain = f"test-{self.marker}"
        self.seq = 0

    def add(self, n: int = 1, *, id: int | None = None, **fields: object) -> list[int]:
        ids: list[int] = []
        with self.archive.db.write() as s:
            for _ in range(n):
                self.seq += 1
                values: dict[str, object] = {
                    "time": datetime.now(UTC),
                    "actor": f"dr-{self.marker}-{self.seq}",
                    "org": "spital-sf-spiridon",
                    "source": "10.0.0.5",
                    "channel": "dicomweb",
                    "action": "GET /dicomweb/studies/{study}",
                    "patient": f"PAT-{self.seq}",
                    "study": f"1.2.826.0.1.3680043.2.1125.{self.seq}",
                    "outcome": "ok",
                    "reason": None,
                    "owner_org": None,
                    "detail": "",
                    "chain": self.chain,
                    "seq": self.seq,
                    "prev_hash": "0" * 64,
                    "hash": uuid.uuid4().hex * 2,
                    **fields,
                }
                if id is not None:
                    values["id"] = id
                ids.append(int(s.execute(insert(AuditRecord).values(**values).returning(AuditRecord.id)).scalar_one()))
        return ids


def cursor(archive: Archive, target: str) -> AuditCursor | None:
    with archive.db.read() as s:
        return s.scalars(select(AuditCursor).where(AuditCursor.target == target)).first()


@pytest.fixture()
def trail(archive: Archive) -> Trail:
    return Trail(archive)


@pytest.fixture()
def forwarders() -> Iterator[list[Forwarder]]:
    """Forwarders a test starts, stopped after it whatever happens."""
    started: list[Forwarder] = []
    yield started
    for f in started:
        f.stop()


def forwarder(archive: Archive, url: str, owner: str, *, started: list[Forwarder], **options: object) -> Forwarder:
    f = Forwarder(archive.db, Target.parse(url), owner=owner, ae_title="MUNIPACS", **{**FAST, **options})  # type: ignore[arg-type]
    started.append(f)
    f.start()
    return f


def test_records_reach_rsyslog_as_rfc5424_atna(archive: Archive, rsyslog: Rsyslog, trail: Trail) -> None:
    ok = trail.add(2)
    refused = trail.add(
        action="C-FIND", channel="dimse", outcome="refused", detail="calling AE X is not registered", study=None
    )
    emergency = trail.add(reason="trauma: unconscious patient", owner_org="other-clinic")
    url = f"tcp://127.0.0.1:{rsyslog.port}"
    settings = archive.settings.model_copy(update={"audit_syslog": url})
    f = start_forwarder(archive.db, settings, owner=archive.owner)
    assert f is not None
    try:
        wait_until(lambda: len(received(rsyslog, trail.marker)) >= 4)
        wait_until(lambda: (c := cursor(archive, url)) is not None and c.last_id == emergency[0])
    finally:
        f.stop()
    got = {r.actor: r for r in received(rsyslog, trail.marker)}
    assert len(got) == 4
    with archive.db.read() as s:
        rows = {r.actor: r for r in s.scalars(select(AuditRecord).where(AuditRecord.id.in_(ok + refused + emergency)))}
    for actor, row in rows.items():
        msg = got[actor]
        assert (msg.app, msg.msgid) == ("pacs", "IHE+RFC-3881")
        aware = row.time if row.time.tzinfo else row.time.replace(tzinfo=UTC)
        assert datetime.fromisoformat(msg.timestamp.replace("Z", "+00:00")) == aware
        assert msg.timestamp.endswith("Z")
        assert msg.objects.get("2") == row.patient
        assert msg.objects.get("110180") == row.study
        ident = msg.xml.find("EventIdentification")
        assert ident is not None and ident.get("EventDateTime", "").endswith("Z")
        source = msg.xml.find("AuditSourceIdentification")
        assert source is not None and source.get("AuditSourceID") == settings.ae_title
    for i in ok:
        msg = got[f"dr-{trail.marker}-{i - ok[0] + 1}"]
        assert msg.pri == 10 * 8 + 5  # authpriv.notice
        assert (msg.event_id, msg.outcome) == ("110103", "0")  # DICOM Instances Accessed, success
    bad = next(r for r in got.values() if r.outcome != "0")
    assert bad.pri == 10 * 8 + 4  # authpriv.warning
    assert (bad.event_id, bad.outcome) == ("110113", "4")  # Security Alert, minor failure
    assert "110180" not in bad.objects
    description = bad.xml.find("EventIdentification/EventOutcomeDescription")
    assert description is not None and "not registered" in (description.text or "")
    urgent = got[f"dr-{trail.marker}-4"]
    assert urgent.event_id == "110113" and urgent.pri == 10 * 8 + 4
    purpose = urgent.xml.find("EventIdentification/PurposeOfUse")
    assert purpose is not None and purpose.get("csd-code") == "ETREAT"
    after = cursor(archive, url)
    assert after is not None and after.claimed_by is None  # given up at stop


def test_unset_target_starts_nothing(tmp_path: Path) -> None:
    assert start_forwarder(cast(Database, None), settings_for(tmp_path), owner="host:1") is None
    with pytest.raises(ValueError, match="tcp:// needs a port"):
        start_forwarder(cast(Database, None), settings_for(tmp_path, audit_syslog="tcp://siem"), owner="host:1")


def test_records_wait_while_the_receiver_is_down(
    archive: Archive,
    trail: Trail,
    tmp_path: Path,
    forwarders: list[Forwarder],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="storage.audit.forward")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    first = trail.add(3)
    forwarder(archive, url, "host-a:1", started=forwarders)
    wait_until(lambda: "audit.forward.unreachable" in logged(caplog))
    time.sleep(0.3)
    c = cursor(archive, url)
    assert c is not None and c.last_id == 0  # nothing sent: the records stay behind the cursor
    assert "ConnectionRefusedError" in logged(caplog)
    assert "PAT-" not in logged(caplog) and trail.marker not in logged(caplog)  # no record in the logs

    server = start_rsyslog(tmp_path / "rsyslog", port=port, tls=False)
    try:
        wait_until(lambda: len(received(server, trail.marker)) >= 3)
        wait_until(lambda: (c := cursor(archive, url)) is not None and c.last_id == first[-1])
        server.stop()  # the receiver goes away between two batches
        second = trail.add(2)
        time.sleep(0.5)
        c = cursor(archive, url)
        assert c is not None and c.last_id == first[-1]
        server.start()
        wait_until(lambda: len(received(server, trail.marker)) >= 5)
        wait_until(lambda: (c := cursor(archive, url)) is not None and c.last_id == second[-1])
    finally:
        server.stop()
    actors = [r.actor for r in received(server, trail.marker)]
    assert sorted(actors) == sorted(f"dr-{trail.marker}-{i}" for i in range(1, 6))  # each once, none lost
    assert "audit.forward.resumed" in logged(caplog)


def test_two_forwarders_on_one_database_send_once(
    archive: Archive, rsyslog: Rsyslog, trail: Trail, forwarders: list[Forwarder]
) -> None:
    url = f"tcp://127.0.0.1:{rsyslog.port}"
    a = forwarder(archive, url, "host-a:1", started=forwarders)
    b = forwarder(archive, url, "host-b:1", started=forwarders)
    trail.add(60)
    wait_until(lambda: len(received(rsyslog, trail.marker)) >= 60)
    time.sleep(0.3)  # a second sender would have sent by now
    actors = [r.actor for r in received(rsyslog, trail.marker)]
    assert len(actors) == len(set(actors)) == 60
    assert actors == [f"dr-{trail.marker}-{i}" for i in range(1, 61)]  # in id order
    c = cursor(archive, url)
    assert c is not None and c.claimed_by in (a.owner, b.owner)
    holder, other = (a, b) if c.claimed_by == a.owner else (b, a)

    holder.stop()  # gives up its claim: the other takes over at its next round
    trail.add(5)
    wait_until(lambda: len(received(rsyslog, trail.marker)) >= 65)
    time.sleep(0.3)
    actors = [r.actor for r in received(rsyslog, trail.marker)]
    assert len(actors) == len(set(actors)) == 65
    c = cursor(archive, url)
    assert c is not None and c.claimed_by == other.owner


def test_a_live_claim_is_respected_and_a_dead_holder_replaced(
    archive: Archive, rsyslog: Rsyslog, trail: Trail, forwarders: list[Forwarder]
) -> None:
    url = f"tcp://127.0.0.1:{rsyslog.port}"
    with archive.db.write() as s:  # another host's process holds it, for an hour
        s.add(
            AuditCursor(
                target=url, last_id=0, claimed_by="elsewhere:7", claimed_until=datetime.now(UTC) + timedelta(hours=1)
            )
        )
    trail.add(2)
    forwarder(archive, url, "host-a:1", started=forwarders)
    time.sleep(0.5)
    assert received(rsyslog, trail.marker) == []

    proc = subprocess.Popen(["true"])
    proc.wait()
    dead = f"{socket.gethostname()}:{proc.pid}"  # a process of this host that has exited
    with archive.db.write() as s:
        row = s.get(AuditCursor, url)
        assert row is not None
        row.claimed_by = dead
    wait_until(lambda: len(received(rsyslog, trail.marker)) >= 2)
    c = cursor(archive, url)
    assert c is not None and c.claimed_by == "host-a:1"


def test_a_hole_in_the_ids_is_waited_for_then_passed(
    archive: Archive, rsyslog: Rsyslog, trail: Trail, forwarders: list[Forwarder]
) -> None:
    """A record whose transaction commits late (a lower id, visible after a higher one) is not
    skipped; a hole that stays (a rolled-back insert) is passed once `gap_wait` is over."""
    url = f"tcp://127.0.0.1:{rsyslog.port}"
    trail.add(id=1)
    trail.add(id=2)
    trail.add(id=4)  # 3: still being committed
    forwarder(archive, url, "host-a:1", started=forwarders, gap_wait=0.8)
    wait_until(lambda: len(received(rsyslog, trail.marker)) >= 2)
    time.sleep(0.2)
    assert len(received(rsyslog, trail.marker)) == 2
    trail.add(id=3)
    wait_until(lambda: len(received(rsyslog, trail.marker)) >= 4)
    trail.add(id=6)  # 5 never comes
    wait_until(lambda: len(received(rsyslog, trail.marker)) >= 5)
    actors = [r.actor for r in received(rsyslog, trail.marker)]
    assert actors == [f"dr-{trail.marker}-{i}" for i in (1, 2, 4, 3, 5)]  # the 5th added had id 6


def test_tls_verifies_the_receiver(
    archive: Archive,
    rsyslog: Rsyslog,
    trail: Trail,
    tmp_path: Path,
    forwarders: list[Forwarder],
    caplog: pytest.LogCaptureFixture,
) -> None:
    if rsyslog.tls_port is None or rsyslog.pki is None:
        missing("rsyslog's TLS network stream driver (lmnsd_gtls)", "rsyslog-gnutls")
        return
    caplog.set_level(logging.INFO, logger="storage.audit.forward")
    url = f"tls://localhost:{rsyslog.tls_port}"
    stranger = make_pki(tmp_path / "other-ca", "stranger")
    trail.add(2)
    forwarder(archive, url, "host-a:1", started=forwarders, ca=stranger.ca)  # trusts another CA
    wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in logged(caplog))
    c = cursor(archive, url)
    assert c is not None and c.last_id == 0
    assert received(rsyslog, trail.marker) == []
    forwarders.pop().stop()

    ids = trail.add(1)
    forwarder(archive, url, "host-a:1", started=forwarders, ca=rsyslog.pki.ca)
    wait_until(lambda: len(received(rsyslog, trail.marker)) >= 3)
    wait_until(lambda: (c := cursor(archive, url)) is not None and c.last_id == ids[-1])
    assert {r.msgid for r in received(rsyslog, trail.marker)} == {"IHE+RFC-3881"}


def record(**fields: object) -> SimpleNamespace:
    base: dict[str, object] = {
        "time": datetime(2026, 3, 1, 8, 30, tzinfo=UTC),
        "actor": "dr.popescu",
        "org": "spital-sf-spiridon",
        "source": "10.0.0.5",
        "channel": "dicomweb",
        "action": "GET /dicomweb/studies/{study}",
        "patient": "PAT-1",
        "study": "1.2.3",
        "outcome": "ok",
        "reason": None,
        "owner_org": None,
        "detail": "",
    }
    return SimpleNamespace(**{**base, **fields})


@pytest.mark.parametrize(
    ("action", "channel", "outcome", "expected"),
    [
        ("GET /dicomweb/studies", "dicomweb", "ok", ("110112", "E", "0")),
        ("GET /dicomweb/studies/{study}/series", "dicomweb", "ok", ("110112", "E", "0")),
        ("GET /dicomweb/studies/{study}", "dicomweb", "ok", ("110103", "R", "0")),
        ("GET /dicomweb/studies/{study}/series/{series}/metadata", "dicomweb", "not-found", ("110103", "R", "4")),
        ("GET /wado", "wado-uri", "ok", ("110103", "R", "0")),
        ("POST /dicomweb/studies", "dicomweb", "failed", ("110104", "C", "8")),
        ("GET /fhir/ImagingStudy", "fhir", "ok", ("110112", "E", "0")),
        ("GET /fhir/Patient/{id}", "fhir", "ok", ("110110", "R", "0")),
        ("POST /fhir/Patient/$match", "fhir", "ok", ("110112", "E", "0")),
        ("C-FIND", "dimse", "ok", ("110112", "E", "0")),
        ("C-STORE", "dimse", "ok", ("110104", "C", "0")),
        ("C-MOVE", "dimse", "ok", ("110104", "R", "0")),
        ("C-GET", "dimse", "ok", ("110104", "R", "0")),
        ("N-ACTION", "dimse", "ok", ("110103", "R", "0")),
        ("association", "dimse", "ok", ("110114", "E", "0")),
        ("association", "dimse", "refused", ("110113", "E", "4")),
        ("C-MOVE", "dimse", "denied", ("110113", "E", "4")),
        ("emergency", "dicomweb", "ok", ("110113", "E", "0")),
        ("share", "api", "ok", ("110113", "E", "0")),
        ("revoke", "api", "ok", ("110113", "E", "0")),
        ("claim", "cli", "ok", ("110113", "E", "0")),
        ("import", "cli", "ok", ("110107", "C", "0")),
        ("DELETE /dicomweb/studies/{study}", "dicomweb", "ok", ("110105", "D", "0")),
    ],
)
def test_actions_map_to_dicom_audit_events(action: str, channel: str, outcome: str, expected: tuple[str, ...]) -> None:
    root = ET.fromstring(atna.message(record(action=action, channel=channel, outcome=outcome)))
    ident = root.find("EventIdentification")
    assert ident is not None
    event_id = ident.find("EventID")
    assert event_id is not None and event_id.get("codeSystemName") == "DCM"
    assert (event_id.get("csd-code"), ident.get("EventActionCode"), ident.get("EventOutcomeIndicator")) == expected
    local = [c for c in ident.findall("EventTypeCode") if c.get("codeSystemName") == "PACS"]
    assert [c.get("csd-code") for c in local] == [action]


def test_message_follows_the_schema_order_and_stays_bounded() -> None:
    """PS3.15 A.5.1: EventIdentification, ActiveParticipant+, AuditSourceIdentification,
    ParticipantObjectIdentification*; and RFC 5425's 8192 octets, however long the detail."""
    hostile = "\x00\x1b<&>\"'\n" + "é" * 20000
    xml = atna.message(record(detail=hostile, actor="a" * 256, reason="r" * 256, owner_org="other"))
    assert len(xml) <= atna.LIMIT and b"\n" not in xml and xml.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(xml)
    assert [c.tag for c in root] == [
        "EventIdentification",
        "ActiveParticipant",
        "ActiveParticipant",
        "AuditSourceIdentification",
        "ParticipantObjectIdentification",
        "ParticipantObjectIdentification",
    ]
    requestor, archive = root.findall("ActiveParticipant")
    assert (requestor.get("UserIsRequestor"), archive.get("UserIsRequestor")) == ("true", "false")
    assert requestor.get("NetworkAccessPointTypeCode") == "2"
    patient, study = root.findall("ParticipantObjectIdentification")
    assert (patient.get("ParticipantObjectTypeCode"), patient.get("ParticipantObjectTypeCodeRole")) == ("1", "1")
    assert (study.get("ParticipantObjectTypeCode"), study.get("ParticipantObjectTypeCodeRole")) == ("2", "3")
    detail = study.find("ParticipantObjectDetail")
    assert detail is not None and base64.b64decode(detail.get("value", "")) == b"other"
