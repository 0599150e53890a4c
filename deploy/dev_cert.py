#!/usr/bin/env python3
"""A self-signed development certificate for nginx's TLS, made once: `dev_cert.py DIR [NAME ...]`.

Writes DIR/dev.crt and DIR/dev.key (the key readable by its owner only) unless both exist, for
the names given (default: localhost) and 127.0.0.1. For development and evaluation only: a
site puts its own certificate there (or terminates TLS at its ingress). Uses `cryptography`,
which the archive already depends on (PyJWT[crypto]), so the image needs no openssl binary.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_DAYS = 397  # what browsers accept for a server certificate


def make(folder: Path, names: list[str]) -> bool:
    """Write the pair into `folder`; False when it was there already."""
    cert_path, key_path = folder / "dev.crt", folder / "dev.key"
    if cert_path.exists() and key_path.exists():
        return False
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    alt = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return True


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: dev_cert.py DIR [NAME ...]")
    made = make(Path(sys.argv[1]), sys.argv[2:] or ["localhost"])
    sys.stdout.write(f"{'made' if made else 'kept'} {sys.argv[1]}/dev.crt and dev.key\n")
