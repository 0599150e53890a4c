"""Where pynetdicom writes a received C-STORE data set: the archive's folder, not /tmp.

pynetdicom lands each incoming data set in a `NamedTemporaryFile` of the system's temporary
folder (`STORE_RECV_CHUNKED_DATASET`) and deletes it after the C-STORE handler returns. What a
process killed mid-transfer leaves there belongs to no one: nothing finds it again. Pointed at
`Archive.temp_dir` (`<data-dir>/run/tmp/<host>:<pid>`), what a dead process leaves is removed by
the next start (`storage.ingest.recovery`). The folder is per association reader thread (the
DUL thread decodes the data set), set by `pacs.wire.guard`, so that SCPs of different archives
in one process (the tests') each write into their own.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Any

from pynetdicom import dimse_messages

_local = threading.local()
_original = tempfile.NamedTemporaryFile


def use(folder: Path | None) -> None:
    """Temporary data sets decoded by this thread go to `folder` (None: the system's)."""
    _local.folder = folder


def _named_temporary_file(*args: Any, **kwargs: Any) -> Any:
    folder = getattr(_local, "folder", None)
    if folder is not None:
        kwargs.setdefault("dir", folder)
    return _original(*args, **kwargs)


def install() -> None:
    """Idempotent: pynetdicom's C-STORE decoder creates its temporary files through `use`'s folder."""
    setattr(dimse_messages, "NamedTemporaryFile", _named_temporary_file)  # noqa: B010 - its module-level name


def discard_partial(assoc: Any) -> None:
    """Close and delete the temporary file of a C-STORE data set the association did not finish
    receiving (an abort, a refused PDU, a lost connection): pynetdicom keeps it otherwise."""
    message = getattr(assoc.dimse, "message", None)
    partial = getattr(message, "_data_set_file", None)
    if partial is None:
        return
    try:
        partial.close()
        Path(partial.name).unlink(missing_ok=True)
    except OSError:
        pass  # best effort: the next start removes what is left in the archive's folder
