"""A streaming reader of multipart/related bodies (RFC 2387, RFC 2046 5.1), for STOW-RS.

The body is read in chunks and each part is handed out as soon as its closing delimiter has
been seen, so a part is stored while the client still sends the next one. A part lives in
memory up to `memory_limit` bytes and spills to a temporary file (in `TMPDIR`) beyond, so a
multi-gigabyte study costs at most one part's worth of memory; the file is removed when the
consumer moves on to the next part.

Tolerances, because senders differ: a preamble and an epilogue are skipped; the first
delimiter may open the body without a CRLF before it; line breaks may be CRLF or a bare LF;
transport padding (spaces, tabs) after a delimiter is ignored; a body that ends right after a
delimiter without the closing `--` is accepted as finished. A part the body stops inside of
is handed out with `complete=False` and must not be stored.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import anyio.from_thread
from starlette.requests import ClientDisconnect, Request

MEMORY_LIMIT = 8 << 20  # a part up to 8 MiB stays in memory
MAX_HEADER_BYTES = 16 << 10
BATCH = 256 << 10  # bytes pulled from the event loop per hop
_PADDING = b" \t"
_MAX_PADDING = 256


class MultipartError(ValueError):
    """The body is not a readable multipart body; `str()` says where it broke."""


@dataclass(frozen=True, slots=True)
class ContentType:
    media_type: str
    params: dict[str, str] = field(default_factory=dict)


_PARAM = re.compile(r';\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)\s*')


def parse_content_type(header: str) -> ContentType:
    """`multipart/related; type="application/dicom"; boundary=x` -> media type and parameters.

    RFC 9110 8.3.1: names are case-insensitive, values are tokens or quoted strings (with
    backslash escapes). A header without a `type/subtype` gives an empty media type.
    """
    media_type, _, rest = header.partition(";")
    media_type = media_type.strip().lower()
    if media_type.count("/") != 1 or " " in media_type:
        media_type = ""
    params: dict[str, str] = {}
    for m in _PARAM.finditer(";" + rest if rest else ""):
        value = m.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[m.group(1).lower()] = value
    return ContentType(media_type, params)


@dataclass(slots=True)
class Part:
    """One body part: its headers (lower-case names) and its bytes, in memory or in a file."""

    headers: dict[str, str]
    data: bytes | None
    path: Path | None
    size: int
    complete: bool

    @property
    def media_type(self) -> str:
        """The part's media type without parameters; empty when it has no Content-Type.

        A Content-Type that is not `type/subtype` is given back as written (lower case), not
        as empty: RFC 2045 5.2 reads a malformed one as text/plain, never as the default type.
        """
        value = self.headers.get("content-type", "").strip()
        return (parse_content_type(value).media_type or value.lower()) if value else ""


class PartTooLarge(MultipartError):
    """A part longer than the reader takes (`max_part_size`); nothing of it is kept."""


class _Spool:
    """Bytes in memory up to a limit, then in a temporary file; refused past `max_size`."""

    def __init__(self, memory_limit: int, spool_dir: Path | None, max_size: int | None = None) -> None:
        self.memory_limit = memory_limit
        self.spool_dir = spool_dir
        self.max_size = max_size
        self.mem = bytearray()
        self.file: IO[bytes] | None = None
        self.size = 0

    def write(self, data: bytes | bytearray) -> None:
        if not data:
            return
        self.size += len(data)
        if self.max_size is not None and self.size > self.max_size:
            raise PartTooLarge(f"a part is over the {self.max_size} bytes this server takes")
        if self.file is None and len(self.mem) + len(data) > self.memory_limit:
            self.file = tempfile.NamedTemporaryFile(prefix="stow-", suffix=".part", dir=self.spool_dir, delete=False)
            self.file.write(self.mem)
            self.mem = bytearray()
        if self.file is not None:
            self.file.write(data)
        else:
            self.mem += data

    def finish(self, headers: dict[str, str], *, complete: bool) -> Part:
        if self.file is not None:
            self.file.close()
            return Part(headers, None, Path(self.file.name), self.size, complete)
        return Part(headers, bytes(self.mem), None, self.size, complete)

    def discard(self) -> None:
        self.mem = bytearray()
        if self.file is not None:
            self.file.close()
            Path(self.file.name).unlink(missing_ok=True)


class _Buffer:
    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self.buf = bytearray(b"\r\n")  # so a delimiter at the very start is found like any other
        self.eof = False

    def fill(self) -> bool:
        """Append the next chunk; False at the end of the body."""
        for chunk in self._chunks:
            if chunk:
                self.buf += chunk
                return True
        self.eof = True
        return False


def _after_delimiter(buf: bytearray, pos: int, eof: bool) -> tuple[str, int]:
    """What follows a delimiter at `pos`: ("close"|"open"|"end"|"more"|"no", where it ends).

    "close" is `--` (the last part is done); "open" is padding and a line break (a part
    follows); "end" is the body ending there; "more" needs more bytes to tell; "no" means the
    boundary string was only a prefix of other text, not a delimiter.
    """
    rest = buf[pos : pos + 2]
    if rest == b"--":
        return "close", pos + 2
    if rest == b"-":
        return ("end", pos + 1) if eof else ("more", pos)
    q = pos
    while q < len(buf) and buf[q] in _PADDING and q - pos < _MAX_PADDING:
        q += 1
    if q == len(buf):
        return ("end", q) if eof else ("more", pos)
    if buf[q] == 0x0A:
        return "open", q + 1
    if buf[q] == 0x0D:
        if q + 1 == len(buf):
            return ("end", q + 1) if eof else ("more", pos)
        if buf[q + 1] == 0x0A:
            return "open", q + 2
    return "no", pos


def _next_delimiter(src: _Buffer, needle: bytes, sink: _Spool | None) -> tuple[str, bool]:
    """Consume up to and past the next delimiter, feeding what comes before it to `sink`.

    Returns what follows the delimiter ("close", "open", "end") and True, or ("end", False)
    when the body ended without another delimiter.
    """
    keep = len(needle) + 1  # a needle may straddle two chunks; +1 for the CR before it
    start = 0
    while True:
        buf = src.buf
        idx = buf.find(needle, start)
        if idx >= 0:
            kind, end = _after_delimiter(buf, idx + len(needle), src.eof)
            if kind == "more":
                src.fill()
                continue
            if kind == "no":
                start = idx + 1
                continue
            data_end = idx - 1 if idx > 0 and buf[idx - 1] == 0x0D else idx
            if sink is not None:
                sink.write(buf[:data_end])
            del buf[:end]
            return kind, True
        safe = len(buf) - keep
        if safe > 0:
            if sink is not None:
                sink.write(buf[:safe])
            del buf[:safe]
            start = max(0, start - safe)
        if not src.fill():
            if sink is not None:
                sink.write(src.buf)
            src.buf.clear()
            return "end", False


def _read_headers(src: _Buffer, max_header_bytes: int) -> tuple[dict[str, str], bool] | None:
    """Header lines up to the blank line, and whether that line came.

    None when the body ends right there (nothing but white space after the delimiter).
    """
    headers: dict[str, str] = {}
    last = ""
    used = 0
    while True:
        nl = src.buf.find(b"\n")
        if nl < 0:
            if len(src.buf) > max_header_bytes - used:
                raise MultipartError(f"part headers longer than {max_header_bytes} bytes")
            if not src.fill():
                return None if not used and not src.buf.strip() else (headers, False)
            continue
        line = bytes(src.buf[:nl]).rstrip(b"\r")
        del src.buf[: nl + 1]
        used += nl + 1
        if used > max_header_bytes:
            raise MultipartError(f"part headers longer than {max_header_bytes} bytes")
        if not line:
            return headers, True
        text = line.decode("latin-1")
        if text[0] in " \t" and last:
            headers[last] += " " + text.strip()
            continue
        name, sep, value = text.partition(":")
        if not sep or not name.strip():
            raise MultipartError(f"malformed part header line {text[:80]!r}")
        last = name.strip().lower()
        headers[last] = value.strip()


def read_parts(
    chunks: Iterable[bytes],
    boundary: str,
    *,
    memory_limit: int = MEMORY_LIMIT,
    spool_dir: Path | None = None,
    max_header_bytes: int = MAX_HEADER_BYTES,
    max_part_size: int | None = None,
) -> Iterator[Part]:
    """Yield the parts of a multipart body read from `chunks`, one at a time.

    A part's temporary file (in `spool_dir`) is deleted when the next part is requested or the
    iterator is closed, so consume (store) each part before moving on.

    Raises
    ------
    MultipartError
        No delimiter at all, or part headers that cannot be read.
    PartTooLarge
        A part is longer than `max_part_size`; it is not read further, nor kept.
    """
    if not boundary or len(boundary) > 200:
        raise MultipartError("the boundary parameter is empty or too long")
    needle = b"\n--" + boundary.encode("latin-1")
    src = _Buffer(chunks)
    kind, found = _next_delimiter(src, needle, None)  # skips the preamble
    if not found:
        raise MultipartError(f"the body holds no part: the boundary {boundary!r} never appears")
    while kind == "open":
        head = _read_headers(src, max_header_bytes)
        if head is None:
            return
        headers, complete = head
        if not complete:
            yield Part(headers, b"", None, 0, complete=False)
            return
        spool = _Spool(memory_limit, spool_dir, max_part_size)
        try:
            kind, found = _next_delimiter(src, needle, spool)
            yield spool.finish(headers, complete=found)
        finally:
            spool.discard()
        if not found:
            return
    # "close" or "end": whatever follows is the epilogue, ignored (and not read)


def request_chunks(request: Request, batch: int = BATCH) -> Iterator[bytes]:
    """The request body as a synchronous iterator, for `def` endpoints run in the threadpool.

    Each step hops to the event loop (anyio's thread portal) and pulls up to `batch` bytes
    from the ASGI stream, so the body is read as fast as parts are stored, never all at once.
    A client that disconnects simply ends the body; the part in flight is then incomplete.
    """
    stream = request.stream()
    done = False

    async def next_batch() -> bytes:
        nonlocal done
        out = bytearray()
        while not done and len(out) < batch:
            try:
                out += await stream.__anext__()
            except (StopAsyncIteration, ClientDisconnect):
                done = True
        return bytes(out)

    while not done:
        data = anyio.from_thread.run(next_batch)
        if data:
            yield data
