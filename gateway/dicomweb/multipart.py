"""multipart/related responses (RFC 2387, PS3.18 8.6.1) and Accept negotiation (PS3.18 8.7).

The writer streams: each part's body is an iterator that is only pulled when the response
reaches it, so a study goes out one blob chunk at a time. Negotiation reads the Accept header
into media ranges (q-ordered, RFC 9110 12.5.1) and answers, per kind of resource, what the
client will take: DICOM instances in which transfer syntaxes, bulk data in which media types,
rendered images as JPEG, PNG or GIF. Anything it cannot satisfy is a 406.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from fastapi import HTTPException
from pydicom.uid import ExplicitVRLittleEndian

DICOM = "application/dicom"
OCTET = "application/octet-stream"
MULTIPART = "multipart/related"
#: PS3.18 Table 8.7.3-5: media type of compressed bulk data, by transfer syntax
COMPRESSED_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
#: earlier editions' names, still sent by clients
ALIASES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}
RENDERED = ("image/jpeg", "image/png", "image/gif")
FLUSH = 1 << 16
_SPLIT = re.compile(r',(?=(?:[^"]*"[^"]*")*[^"]*$)')


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One element of an Accept header: `type/subtype` with lower-cased parameter names."""

    media_type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def inner(self) -> str:
        """The media type a multipart range asks for in its `type` parameter (else itself)."""
        if self.media_type == MULTIPART:
            return self.params.get("type", DICOM).lower()
        return self.media_type

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")

    def matches(self, media_type: str) -> bool:
        inner = ALIASES.get(self.inner, self.inner)
        if inner in ("*/*", "*"):
            return True
        if inner.endswith("/*"):
            return media_type.startswith(inner[:-1])
        return inner == media_type


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of an Accept header, best first; no or an empty header means `*/*`."""
    if not (header or "").strip():
        return [MediaRange("*/*")]
    out: list[MediaRange] = []
    for item in _SPLIT.split(header or ""):
        pieces = [p.strip() for p in item.split(";")]
        if not pieces[0]:
            continue
        params: dict[str, str] = {}
        for piece in pieces[1:]:
            name, _, value = piece.partition("=")
            params[name.strip().lower()] = value.strip().strip('"')
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        if q > 0:
            out.append(MediaRange(pieces[0].lower(), params, q))
    out.sort(key=lambda r: -r.q)  # stable: equal weights keep the client's order
    return out


def not_acceptable(detail: str) -> HTTPException:
    return HTTPException(status_code=406, detail=detail)


@dataclass(frozen=True, slots=True)
class DicomChoice:
    """How to answer a DICOM retrieve: multipart or one bare part, and the syntaxes in order."""

    multipart: bool
    syntaxes: tuple[str, ...]
    #: the client named no transfer syntax (so the default, Explicit VR Little Endian, applies)
    defaulted: bool = False


def negotiate_dicom(header: str | None, *, single_part: bool) -> DicomChoice:
    """PS3.18 8.7.3.5: `multipart/related; type="application/dicom"[; transfer-syntax=...]`.

    No transfer-syntax parameter means Explicit VR Little Endian (8.7.3.5.2); `*` means as
    stored. A bare `application/dicom` is a single-part answer, allowed for one instance only.
    """
    choices: list[tuple[bool, str | None]] = []
    for r in parse_accept(header):
        bare = r.media_type == DICOM
        if bare and not single_part:
            continue
        if bare or (r.media_type in (MULTIPART, "multipart/*", "*/*", "application/*") and r.matches(DICOM)):
            multipart = not bare
            choices.append((multipart, r.transfer_syntax))
    if not choices:
        kinds = 'multipart/related; type="application/dicom"' + (" or application/dicom" if single_part else "")
        raise not_acceptable(f"this resource is served as {kinds} (with an optional transfer-syntax parameter)")
    multipart, first = choices[0]
    syntaxes = tuple(dict.fromkeys(ts or ExplicitVRLittleEndian for m, ts in choices if m == multipart))
    return DicomChoice(multipart, syntaxes, defaulted=first is None)


@dataclass(frozen=True, slots=True)
class BulkChoice:
    """The client's acceptable bulk data representations, best first."""

    ranges: tuple[MediaRange, ...]
    multipart: bool

    def select(self, transfer_syntax: str, *, encapsulated: bool) -> tuple[str, bool] | None:
        """(media type, decode?) for pixel data stored in `transfer_syntax`, or None (406).

        Uncompressed data goes out as application/octet-stream. Compressed frames go out as
        stored under their media type (PS3.18 Table 8.7.3-5) when the client takes it, and are
        decoded when it asks for application/octet-stream; a wildcard takes them as stored.
        """
        compressed = COMPRESSED_MEDIA_TYPES.get(transfer_syntax) if encapsulated else None
        for r in self.ranges:
            ts_ok = r.transfer_syntax in (None, "*")
            if not encapsulated or ALIASES.get(r.inner, r.inner) == OCTET:
                if r.matches(OCTET) and (ts_ok or r.transfer_syntax == ExplicitVRLittleEndian):
                    return OCTET, encapsulated
                continue
            if compressed and r.matches(compressed) and (ts_ok or r.transfer_syntax == transfer_syntax):
                # answer with the client's own name for the type when it used an older alias
                return (r.inner if ALIASES.get(r.inner) == compressed else compressed), False
        return None


def negotiate_bulk(header: str | None) -> BulkChoice:
    """PS3.18 8.7.3.3: bulk data and frames, uncompressed or in their compressed media type."""
    ranges = tuple(parse_accept(header))
    return BulkChoice(ranges, multipart=not ranges or ranges[0].media_type in (MULTIPART, "*/*", "multipart/*"))


def negotiate_rendered(header: str | None, query_accept: str | None = None) -> str:
    """PS3.18 8.7.4: the rendered media type, JPEG unless the client prefers PNG or GIF.

    The `accept` query parameter (8.3.3.1) takes precedence over the header.
    """
    for r in parse_accept(query_accept or header):
        for media_type in RENDERED:
            if r.media_type != MULTIPART and r.matches(media_type):
                return media_type
    raise not_acceptable(f"rendered images are served as {', '.join(RENDERED)}")


@dataclass(frozen=True, slots=True)
class Part:
    content_type: str
    body: Iterable[bytes]
    location: str | None = None


def new_boundary() -> str:
    return uuid.uuid4().hex


def content_type(inner: str, boundary: str) -> str:
    return f'{MULTIPART}; type="{inner}"; boundary={boundary}'


def stream(parts: Iterable[Part], boundary: str) -> Iterator[bytes]:
    """Encode parts as a multipart/related body, pulling each body only when it is reached.

    Yields
    ------
    bytes
        Chunks of the body; small pieces (part headers) are merged into the next chunk so a
        response is not a stream of tiny writes.
    """
    buf = bytearray()
    for part in parts:
        head = f"--{boundary}\r\nContent-Type: {part.content_type}\r\n"
        if part.location:
            head += f"Content-Location: {part.location}\r\n"
        buf += head.encode() + b"\r\n"
        for chunk in part.body:
            buf += chunk
            if len(buf) >= FLUSH:
                yield bytes(buf)
                buf.clear()
        buf += b"\r\n"
    buf += f"--{boundary}--\r\n".encode()
    yield bytes(buf)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A single `bytes=` range (RFC 9110 14.1.2) as [start, end); None to send the whole object.

    Several ranges are answered with the whole object (allowed by RFC 9110 14.2).

    Raises
    ------
    HTTPException
        416 when the range lies outside the object.
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, sep, last = spec.strip().partition("-")
    if not sep or not (first or last) or not (first or "0").isdigit() or not (last or "0").isdigit():
        return None  # malformed: ignored (RFC 9110 14.2)
    if first:
        start, end = int(first), min(size, int(last) + 1) if last else size
        if last and int(last) < start:
            return None
    else:
        start, end = max(0, size - int(last)), size
        if int(last) == 0:
            start = size
    if start >= size:
        raise HTTPException(416, detail=f"range {spec} lies outside the {size} bytes", headers=_unsatisfied(size))
    return start, end


def _unsatisfied(size: int) -> dict[str, str]:
    return {"Content-Range": f"bytes */{size}"}
