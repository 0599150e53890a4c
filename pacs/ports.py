"""The ports `pacs serve` listens on, and the one-line error when one cannot be had.

A busy port (another `pacs serve`, Orthanc on 11112, a web server on 8080) or a port below
1024 without the privilege used to end in a long traceback that named neither the port nor
how to change it; `Unavailable` says both.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Port:
    """One listening port and the settings that choose it."""

    name: str  # what it serves, as an operator calls it
    host: str
    number: int
    flag: str
    variable: str

    def __str__(self) -> str:
        return f"{self.host}:{self.number}"


def dicom(host: str, number: int) -> Port:
    return Port("DICOM", host, number, "--dicom-port", "PACS_DICOM_PORT")


def dicom_tls(host: str, number: int) -> Port:
    return Port("DICOM TLS", host, number, "--dicom-tls-port", "PACS_DICOM_TLS_PORT")


def http(host: str, number: int) -> Port:
    return Port("HTTP", host, number, "--http-port", "PACS_HTTP_PORT")


class Unavailable(Exception):
    """A port `pacs serve` cannot listen on; `str()` is the one line the operator needs."""

    def __init__(self, port: Port, error: OSError) -> None:
        super().__init__(port, error)
        self.port = port
        self.error = error

    def __str__(self) -> str:
        if self.error.errno == errno.EADDRINUSE:
            why = "it is in use by another program"
        elif self.error.errno == errno.EACCES:
            why = "permission denied (ports below 1024 need privileges)"
        else:
            why = self.error.strerror or str(self.error)
        return (
            f"cannot listen on the {self.port.name} port {self.port}: {why}; "
            f"choose another with {self.port.flag} or {self.port.variable}"
        )


def bind(port: Port) -> socket.socket:
    """A socket bound to `port` now (a busy port fails at once), not yet listening.

    Raises
    ------
    Unavailable
        The address is in use, not allowed or not this host's.
    """
    try:
        infos = socket.getaddrinfo(port.host, port.number, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        raise Unavailable(port, exc) from None
    return sock
