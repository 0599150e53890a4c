"""DICOM TLS (PS3.15 B.1 / BCP 195) on the SCP: dcmtk and pynetdicom clients with certificates
made in the test (a throwaway CA, a server certificate, client certificates), in one process and
through `pacs serve --dicom-workers 2`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import ValidationError
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import select

from pacs.server import RunningScp, start
from storage.access.orgs import AeSpec, add_org
from storage.index.models import Instance
from storage.settings import Settings
from tests.kit import dicom_factory as f
from tests.kit.backends import BACKENDS, make_settings, migrated_archive
from tests.kit.net import free_port
from tests.kit.servers import ServerProcess, start_server
from tests.kit.tools import require_tool

# --- a throwaway PKI ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path  # signed by the CA
    client_key: Path
    rogue_cert: Path  # self-signed: a client the CA never vouched for
    rogue_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "PACS tests"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _certificate(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    usage: Any = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer or (_name(cn), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("PACS test CA", ca_key, None, ca=True)
    _write(d / "ca.pem", ca)
    for name, usage, signed in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH, True),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH, True),
        ("rogue", ExtendedKeyUsageOID.CLIENT_AUTH, False),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        _write(d / f"{name}.pem", _certificate(name, key, (ca.subject, ca_key) if signed else None, usage=usage), key)
    return Pki(
        d / "ca.pem",
        d / "server.pem",
        d / "server.key",
        d / "client.pem",
        d / "client.key",
        d / "rogue.pem",
        d / "rogue.key",
    )


# --- the SCP with TLS --------------------------------------------------------------------------


@contextmanager
def tls_scp(request: pytest.FixtureRequest, tmp_path: Path, backend: str, pki: Pki, **tls: Any) -> Iterator[RunningScp]:
    options: dict[str, Any] = {"dicom_tls_port": 0, "dicom_tls_cert": pki.server_cert, "dicom_tls_key": pki.server_key}
    settings = make_settings(request, tmp_path, backend, **{**options, **tls})
    with migrated_archive(settings) as archive:
        with archive.db.write() as s:
            add_org(s, "hosp-a", "Spitalul Județean A", [AeSpec("CT1")])
        running = start(settings, archive)
        try:
            yield running
        finally:
            running.shutdown()


@pytest.fixture()
def mutual(request: pytest.FixtureRequest, tmp_path: Path, pki: Pki) -> Iterator[RunningScp]:
    """Plain port and TLS port, client certificates required (SQLite: the database is not the point)."""
    with tls_scp(request, tmp_path, "sqlite-fs", pki, dicom_tls_ca=pki.ca) as running:
        yield running


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pacs")


def tls_failures(caplog: pytest.LogCaptureFixture, timeout: float = 5.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        lines = [r.pacs_fields for r in caplog.records if r.getMessage() == "dimse.tls.failed"]  # type: ignore[attr-defined]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


# --- clients -----------------------------------------------------------------------------------


def dcmtk(
    tool: str, port: int, *args: object, tls: list[str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """A dcmtk client; `tls` its TLS options, e.g. ["+tls", key, cert, "+cf", ca]."""
    command = [require_tool(tool), *(tls or []), "-to", "10", "-aet", "CT1", "-aec", "MUNIPACS", "127.0.0.1", str(port)]
    return subprocess.run(
        [*command, *map(str, args)], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def with_cert(pki: Pki, cert: Path | None = None, key: Path | None = None) -> list[str]:
    return ["+tls", str(key or pki.client_key), str(cert or pki.client_cert), "-pw", "+cf", str(pki.ca)]


def without_cert(pki: Pki) -> list[str]:
    return ["+tla", "+cf", str(pki.ca)]


def pynetdicom_echo(port: int, pki: Pki, *, cert: bool = True) -> int | None:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    if cert:
        context.load_cert_chain(pki.client_cert, pki.client_key)
    ae = AE(ae_title="CT1")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="MUNIPACS", tls_args=(context, "localhost"))
    if not assoc.is_established:
        return None
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


# --- tests -------------------------------------------------------------------------------------


def test_echo_over_mutual_tls(mutual: RunningScp, pki: Pki) -> None:
    r = dcmtk("echoscu", mutual.tls_port, tls=with_cert(pki))
    assert r.returncode == 0, r.stderr
    assert pynetdicom_echo(mutual.tls_port, pki) == 0x0000


@pytest.mark.parametrize("backend", BACKENDS)
def test_storescu_over_tls_is_indexed(request: pytest.FixtureRequest, tmp_path: Path, pki: Pki, backend: str) -> None:
    ds = f.ct_dataset()
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    with tls_scp(request, tmp_path, backend, pki, dicom_tls_ca=pki.ca) as scp:
        r = dcmtk("storescu", scp.tls_port, path, tls=with_cert(pki))
        assert r.returncode == 0, r.stderr
        with scp.archive.db.read() as s:
            sop = s.scalar(select(Instance.sop_uid).where(Instance.sop_uid == ds.SOPInstanceUID))
    assert sop == ds.SOPInstanceUID


def test_plain_client_on_the_tls_port_fails_cleanly(
    mutual: RunningScp, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    started = time.monotonic()
    r = dcmtk("echoscu", mutual.tls_port)
    assert r.returncode != 0
    assert time.monotonic() - started < 10  # refused at once, not left to time out
    [failure] = tls_failures(caplog)
    assert failure["peer"].startswith("127.0.0.1:") and failure["reason"]
    r = dcmtk("echoscu", mutual.port)  # the plain port is unaffected
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("client", ["no certificate", "certificate of another CA"])
def test_mutual_tls_refuses_clients_the_ca_did_not_vouch_for(
    mutual: RunningScp, pki: Pki, caplog: pytest.LogCaptureFixture, client: str
) -> None:
    options = without_cert(pki) if client == "no certificate" else with_cert(pki, pki.rogue_cert, pki.rogue_key)
    r = dcmtk("echoscu", mutual.tls_port, tls=options)
    assert r.returncode != 0, r.stdout
    assert pynetdicom_echo(mutual.tls_port, pki, cert=False) is None
    failures = tls_failures(caplog)
    assert failures and all(line["reason"] for line in failures)
    assert not [r for r in caplog.records if r.getMessage() == "dimse.assoc.released"]


def test_an_ae_bound_to_a_certificate_is_accepted_only_with_it(mutual: RunningScp, pki: Pki) -> None:
    """`--tls-subject`: the AE must call over TLS with a certificate of that CN (the client's is "client")."""
    with mutual.archive.db.write() as s:
        add_org(s, "hosp-a", None, [AeSpec("CT1", tls_subject="client")])
    assert dcmtk("echoscu", mutual.tls_port, tls=with_cert(pki)).returncode == 0
    plain = dcmtk("echoscu", mutual.port)  # the same AE title, without its certificate
    assert plain.returncode != 0 and "Rejected" in plain.stdout + plain.stderr
    with mutual.archive.db.write() as s:
        add_org(s, "hosp-a", None, [AeSpec("CT1", tls_subject="ct1.spital-a.ro")])
    assert dcmtk("echoscu", mutual.tls_port, tls=with_cert(pki)).returncode != 0  # another certificate


def test_server_authentication_only_without_a_ca(request: pytest.FixtureRequest, tmp_path: Path, pki: Pki) -> None:
    with tls_scp(request, tmp_path, "sqlite-fs", pki) as scp:
        r = dcmtk("echoscu", scp.tls_port, tls=without_cert(pki))
        assert r.returncode == 0, r.stderr


def test_a_stalled_handshake_holds_up_no_one(mutual: RunningScp, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    with socket.create_connection(("127.0.0.1", mutual.tls_port)) as silent:  # connects, never says hello
        started = time.monotonic()
        r = dcmtk("echoscu", mutual.tls_port, tls=with_cert(pki))
        assert r.returncode == 0, r.stderr
        assert time.monotonic() - started < 10
        assert silent.fileno() >= 0


def test_tls_only_closes_the_plain_port(request: pytest.FixtureRequest, tmp_path: Path, pki: Pki) -> None:
    with tls_scp(request, tmp_path, "sqlite-fs", pki, dicom_tls_only=True) as scp:
        assert set(scp.servers) == {"tls"}
        with pytest.raises(LookupError):
            _ = scp.port
        assert pynetdicom_echo(scp.tls_port, pki) == 0x0000


def test_half_configured_tls_is_refused(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ValidationError, match="both"):
        Settings(data_dir=tmp_path, dicom_tls_cert=pki.server_cert)
    with pytest.raises(ValidationError, match="need a certificate"):
        Settings(data_dir=tmp_path, dicom_tls_only=True)
    with pytest.raises(ValidationError, match="does not exist"):
        Settings(data_dir=tmp_path, dicom_tls_cert=pki.server_cert, dicom_tls_key=tmp_path / "nope.key")
    settings = Settings(data_dir=tmp_path, dicom_tls_cert=pki.server_cert, dicom_tls_key=pki.server_key)
    assert settings.dicom_tls and settings.dicom_tls_port == 2762 and settings.dicom_tls_ca is None


# --- through `pacs serve --dicom-workers 2` ----------------------------------------------------


@pytest.fixture()
def served(tmp_path: Path, pki: Pki) -> Iterator[tuple[ServerProcess, int]]:
    tls_port = free_port()
    args = ["--dicom-workers", "2", "--dicom-tls-port", str(tls_port)]
    args += ["--dicom-tls-cert", str(pki.server_cert), "--dicom-tls-key", str(pki.server_key)]
    args += ["--dicom-tls-ca", str(pki.ca)]
    server = start_server(tmp_path / "var", extra_args=args)
    try:
        yield server, tls_port
    finally:
        server.kill()


def test_tls_through_the_dispatcher_and_workers(served: tuple[ServerProcess, int], pki: Pki, tmp_path: Path) -> None:
    server, tls_port = served
    ds = f.ct_dataset()
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)

    with socket.create_connection(("127.0.0.1", tls_port)):  # a stalled handshake in some worker
        r = dcmtk("storescu", tls_port, path, tls=with_cert(pki))
        assert r.returncode == 0, r.stderr + server.log_text()
    assert dcmtk("echoscu", tls_port).returncode != 0  # plain on the TLS port: refused...
    assert dcmtk("echoscu", tls_port, tls=without_cert(pki)).returncode != 0  # ...and so is no certificate
    assert dcmtk("echoscu", server.dicom_port).returncode == 0  # the plain port still serves

    studies = httpx.get(f"{server.url}/dicomweb/studies", headers=server.admin(), timeout=10).json()
    assert [s["0020000D"]["Value"][0] for s in studies] == [ds.StudyInstanceUID]
    deadline = time.monotonic() + 10
    while server.log_text().count("dimse.tls.failed") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    log = server.log_text()
    assert log.count("dimse.tls.failed") >= 2, log
    assert "dimse.worker.died" not in log
    served_by = {int(pid) for pid in re.findall(r"dimse\.assoc\.released .*?\bpid=(\d+)", log)}
    assert served_by and server.proc.pid not in served_by  # the workers served, the dispatcher only handed off
