"""Who may hold the SCP's association slots: per-host and per-AE bounds, so the modalities get in.

Why: an SCP process serves at most `PACS_MAX_ASSOCIATIONS` associations, and a connection
holds a slot from the moment it is accepted. A probe showed 200 silent TCP connections making
every legitimate association fail for a minute, and 64 held associations of one unregistered AE
locking out every C-ECHO. So:

- a host (peer address) holds at most `PACS_DICOM_MAX_PER_ADDRESS` connections at once; the
  next one is closed as soon as it is accepted (`dimse.connection.refused`);
- a calling AE title holds at most `PACS_DICOM_MAX_PER_AE` associations; the next request is
  rejected, transient, "local limit exceeded" (PS3.8 Table 9-21), before any negotiation;
- a connection has `PACS_DICOM_ACSE_TIMEOUT` (10 s) to ask for its association, and an
  association may stay silent `PACS_DICOM_IDLE_TIMEOUT` (60 s), so what is held is soon freed.

The bounds are per SCP process (with `--dicom-workers N`, each worker keeps its own counts).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

from pynetdicom import evt
from pynetdicom.association import Association

from storage.logs import event
from storage.metrics import ASSOCIATIONS

log = logging.getLogger(__name__)

#: A-ASSOCIATE-RJ: rejected-transient, service provider (presentation), local limit exceeded
LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)


class Admission:
    """The connection counts of one SCP process and its bounds."""

    def __init__(self, per_address: int, per_ae: int) -> None:
        self.per_address = per_address
        self.per_ae = per_ae
        self._lock = threading.Lock()
        self._by_address: Counter[str] = Counter()

    def enter(self, address: str) -> bool:
        """Count a connection accepted from `address`; False (not counted) if that host holds enough."""
        with self._lock:
            if self._by_address[address] >= self.per_address:
                return False
            self._by_address[address] += 1
            return True

    def leave(self, address: str) -> None:
        """A connection counted by `enter` ended."""
        with self._lock:
            self._by_address[address] -= 1
            if self._by_address[address] <= 0:
                del self._by_address[address]

    def refused(self, address: str, port: int) -> None:
        """Log and count a connection closed by `enter`'s bound."""
        ASSOCIATIONS.labels("refused").inc()
        event(
            log,
            "dimse.connection.refused",
            level=logging.WARNING,
            peer=f"{address}:{port}",
            reason=f"{self.per_address} connections from this host at once (PACS_DICOM_MAX_PER_ADDRESS)",
        )

    def on_requested(self, e: evt.Event) -> None:
        """EVT_REQUESTED: reject an association request of an AE title that holds enough already."""
        assoc = e.assoc
        request = assoc.requestor.primitive
        if request is None:
            return
        calling = str(request.calling_ae_title).strip()
        held = sum(
            1
            for other in assoc.ae.active_associations
            if other is not assoc
            and other.is_acceptor
            and other.requestor.primitive is not None
            and str(other.requestor.primitive.calling_ae_title).strip() == calling
            and not (other.is_rejected or other.is_aborted or other.is_released)
        )
        if held < self.per_ae:
            return
        reject(
            assoc,
            LOCAL_LIMIT_EXCEEDED,
            f"local limit exceeded: {self.per_ae} associations of this AE title at once (PACS_DICOM_MAX_PER_AE)",
        )


def reject(assoc: Association, why: tuple[int, int, int], reason: str) -> None:
    """Send an A-ASSOCIATE-RJ (`why`: result, source, reason, PS3.8 9.3.4) from EVT_REQUESTED,
    close, count it and write the one `dimse.assoc.rejected` line that says why."""
    request = assoc.requestor.primitive
    assoc.acse.send_reject(*why)
    assoc.kill()  # as pynetdicom after its own rejections: the A-ASSOCIATE-RJ leaves before the close
    ASSOCIATIONS.labels("rejected").inc()
    event(
        log,
        "dimse.assoc.rejected",
        level=logging.WARNING,
        calling_ae=str(request.calling_ae_title).strip() if request else "",
        called_ae=str(request.called_ae_title).strip() if request else "",
        peer=f"{assoc.requestor.address}:{assoc.requestor.port}",
        reason=reason,
    )
