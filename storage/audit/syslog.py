"""Audit messages as RFC 5424 syslog over TCP or TLS: the IHE ATNA Record Audit Event transport.

IHE ITI-20 sends each DICOM Audit Message (`storage.audit.atna`) as one RFC 5424 message, over
TLS (RFC 5425) or, inside a trusted network, plain TCP: facility 10 (authpriv), MSGID
"IHE+RFC-3881", no structured data, and the XML as the MSG, UTF-8 behind a BOM (RFC 5424
6.4). Both transports frame a message by counting its octets, "LEN SP MSG" (RFC 5425 4.3,
RFC 6587 3.4.1), so a message may hold any byte, a line break included.

`SyslogSender` keeps one connection and reconnects when asked to send on a broken one. What
syslog cannot say is whether the receiver stored a message: the protocol has no answer, so a
message written to the socket counts as sent. A receiver that closed the connection in
between is noticed before the next message is written (it has made the socket readable: a
syslog receiver never sends otherwise), so a restarted receiver does not silently swallow
the first messages written after it went away.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

#: RFC 5424 6.2.1: security/authorization messages (authpriv)
FACILITY_AUTHPRIV = 10
SEVERITY_WARNING = 4
SEVERITY_NOTICE = 5
VERSION = 1
APP_NAME = "pacs"
#: IHE ITI TF-2 3.20.4.2.1: the MSGID of a DICOM Audit Message
MSGID = "IHE+RFC-3881"
BOM = b"\xef\xbb\xbf"
#: RFC 5425 4.1's port for syslog over TLS, the default of a `tls://` target
TLS_PORT = 6514
#: how long connecting (TCP, then the TLS handshake) may take
CONNECT_TIMEOUT = 5.0
#: how long writing one message may block on a receiver that does not read
SEND_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Target:
    """Where audit messages go: `tcp://host:port` or `tls://host[:port]` (`PACS_AUDIT_SYSLOG`)."""

    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Target:
        """Read a target URL.

        Raises
        ------
        ValueError
            Not `tcp://` or `tls://`, no host, or no port for `tcp://` (syslog over TCP has no
            registered port; receivers use 514 or 601).
        """
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        if scheme not in ("tcp", "tls"):
            raise ValueError(f"audit syslog target {url!r}: use tcp://host:port or tls://host:port")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"audit syslog target {url!r}: {exc}") from None
        if not parts.hostname:
            raise ValueError(f"audit syslog target {url!r}: no host")
        if port is None:
            if scheme == "tcp":
                raise ValueError(f"audit syslog target {url!r}: tcp:// needs a port")
            port = TLS_PORT
        return cls(scheme, parts.hostname, port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def syslog_message(
    msg: bytes,
    *,
    time: datetime,
    severity: int,
    hostname: str | None = None,
    procid: str | None = None,
    facility: int = FACILITY_AUTHPRIV,
) -> bytes:
    """One RFC 5424 message (6): `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - BOM MSG`.

    `time` becomes an RFC 3339 UTC timestamp with microseconds (6.2.3; a naive time is taken
    as UTC); `msg` is UTF-8 (the XML), so it is marked with the BOM (6.4).
    """
    aware = time if time.tzinfo is not None else time.replace(tzinfo=UTC)
    stamp = aware.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    header = " ".join(
        (
            f"<{facility * 8 + severity}>{VERSION}",
            stamp,
            _field(hostname or socket.gethostname(), 255),
            APP_NAME,
            _field(procid or str(os.getpid()), 128),
            MSGID,
            "-",  # no STRUCTURED-DATA
        )
    )
    return header.encode("ascii") + b" " + BOM + msg


def frame(message: bytes) -> bytes:
    """Octet-counting framing, RFC 5425 4.3 / RFC 6587 3.4.1: `MSG-LEN SP SYSLOG-MSG`."""
    return str(len(message)).encode("ascii") + b" " + message


def _field(value: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces (RFC 5424 6), at most `limit`; "-" if empty."""
    cleaned = "".join(c for c in value if "!" <= c <= "~")[:limit]
    return cleaned or "-"


class SyslogSender:
    """One connection to a syslog receiver: `connect`, `send` each framed message, `close`.

    `send` connects first when needed, and raises `OSError` (`ssl.SSLError` and timeouts
    included) when the message could not be written; the caller keeps the message and
    retries later. Not thread-safe: one forwarder thread owns it.
    """

    def __init__(
        self,
        target: Target,
        *,
        ca: Path | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        send_timeout: float = SEND_TIMEOUT,
    ) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self.send_timeout = send_timeout
        self._tls: ssl.SSLContext | None = None
        if target.scheme == "tls":
            # The server's certificate must chain to `ca` (PACS_AUDIT_SYSLOG_CA) or, without
            # one, to the system's store, and name the host: an audit trail sent to whoever
            # answers on the address would leak who saw which patient.
            self._tls = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
            self._tls.minimum_version = ssl.TLSVersion.TLSv1_2
        self._sock: socket.socket | None = None

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self) -> None:
        """Open the connection (and the TLS session), within `connect_timeout`."""
        self.close()
        self._sock = self._open()

    def send(self, message: bytes) -> None:
        """Write one syslog message (unframed: `frame` is applied here), connecting if needed."""
        if self._sock is not None and self._peer_closed(self._sock):
            self.close()
        sock = self._sock
        if sock is None:
            sock = self._sock = self._open()
        try:
            sock.sendall(frame(message))
        except BaseException:
            self.close()
            raise

    def _open(self) -> socket.socket:
        sock = socket.create_connection((self.target.host, self.target.port), timeout=self.connect_timeout)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=self.target.host)
            sock.settimeout(self.send_timeout)
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        """Close the connection; a TLS session is ended with close_notify when the peer allows."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            if isinstance(sock, ssl.SSLSocket):
                sock.settimeout(1.0)
                sock.unwrap().close()
        except (OSError, ValueError):
            pass
        finally:
            sock.close()

    @staticmethod
    def _peer_closed(sock: socket.socket) -> bool:
        """Whether the receiver ended the connection: it never writes, so readable means closed."""
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)
