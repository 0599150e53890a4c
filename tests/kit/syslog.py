"""A real syslog receiver for the audit forwarder's tests: rsyslogd, started in a temp folder.

rsyslog (Debian `rsyslog`, TLS from `rsyslog-gnutls`) runs in the foreground under its own
configuration: imtcp on free ports of 127.0.0.1 (one plain, one TLS with a throwaway CA),
every message written as received (`%rawmsg%`, one per line) to a file, nothing read from or
written to the system's log, as the current user, its work directory in the folder. Missing,
it skips naming the package, or fails under PACS_TEST_REQUIRE_ALL=1 (`tests.kit.tools.missing`).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.kit.net import free_port
from tests.kit.tools import missing

START_TIMEOUT = 15.0


def rsyslogd() -> str:
    """The rsyslogd binary (it lives in /usr/sbin, often off a user's PATH)."""
    found = shutil.which("rsyslogd") or shutil.which("rsyslogd", path="/usr/sbin:/sbin")
    if found is None:
        missing("rsyslogd", "rsyslog")
        raise AssertionError("unreachable")  # missing() skips or fails
    return found


def has_tls_driver() -> bool:
    """Whether rsyslog's GnuTLS network stream driver (`rsyslog-gnutls`) is installed."""
    return any(Path("/usr/lib").glob("**/rsyslog/lmnsd_gtls.so"))


@dataclass(frozen=True)
class Pki:
    """A throwaway CA and a server certificate for `localhost` and 127.0.0.1 it signed (PEM files)."""

    ca: Path
    cert: Path
    key: Path


def make_pki(folder: Path, name: str = "audit-test") -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(folder / "ca.pem", folder / "server.pem", folder / "server-key.pem")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    pki.key.chmod(0o600)
    return pki


@dataclass
class Rsyslog:
    """One rsyslogd: `port` plain TCP, `tls_port` TLS (None without the GnuTLS driver)."""

    folder: Path
    port: int
    tls_port: int | None
    pki: Pki | None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def output(self) -> Path:
        return self.folder / "received.log"

    @property
    def conf(self) -> Path:
        return self.folder / "rsyslog.conf"

    def start(self) -> None:
        """Start (or start again, on the same ports and file) and wait until it listens."""
        work = self.folder / "work"
        work.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self._config(work))
        log = (self.folder / "rsyslogd.out").open("ab")
        self.proc = subprocess.Popen(
            [rsyslogd(), "-n", "-f", str(self.conf), "-i", str(self.folder / "rsyslogd.pid")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        for port in (self.port, self.tls_port):
            while port is not None and not _listening(port):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    out = (self.folder / "rsyslogd.out").read_text(errors="replace")[-2000:]
                    pytest.fail(f"rsyslogd did not listen on 127.0.0.1:{port}: {out}", pytrace=False)
                time.sleep(0.02)

    def stop(self) -> None:
        """Stop it (it writes what it received before it exits)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def lines(self) -> list[bytes]:
        """Every message received so far, as received (framing removed), in arrival order."""
        try:
            data = self.output.read_bytes()
        except FileNotFoundError:
            return []
        return [line for line in data.split(b"\n") if line]

    def _config(self, work: Path) -> str:
        tls_global = ""
        tls_input = ""
        if self.tls_port is not None and self.pki is not None:
            tls_global = (
                f' defaultNetstreamDriverCAFile="{self.pki.ca}"'
                f' defaultNetstreamDriverCertFile="{self.pki.cert}"'
                f' defaultNetstreamDriverKeyFile="{self.pki.key}"'
            )
            tls_input = (
                f'input(type="imtcp" address="127.0.0.1" port="{self.tls_port}" ruleset="audit"'
                ' streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")\n'
            )
        return (
            f'global(workDirectory="{work}" maxMessageSize="64k"{tls_global})\n'
            'module(load="imtcp")\n'
            'template(name="raw" type="string" string="%rawmsg%\\n")\n'
            'ruleset(name="audit") {\n'
            f'  action(type="omfile" file="{self.output}" template="raw" flushOnTXEnd="on")\n'
            "}\n"
            f'input(type="imtcp" address="127.0.0.1" port="{self.port}" ruleset="audit")\n' + tls_input
        )


def start_rsyslog(folder: Path, *, port: int | None = None, tls: bool = True) -> Rsyslog:
    """An rsyslogd listening on `port` (a free one by default) and, if it can, on a TLS port."""
    rsyslogd()
    use_tls = tls and has_tls_driver()
    server = Rsyslog(
        folder=folder,
        port=port or free_port(),
        tls_port=free_port() if use_tls else None,
        pki=make_pki(folder / "pki") if use_tls else None,
    )
    server.start()
    return server


@pytest.fixture(scope="session", name="rsyslog")
def rsyslog_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rsyslog]:
    """One rsyslogd for the session: plain TCP and, with `rsyslog-gnutls`, TLS."""
    server = start_rsyslog(tmp_path_factory.mktemp("rsyslog"))
    try:
        yield server
    finally:
        server.stop()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
