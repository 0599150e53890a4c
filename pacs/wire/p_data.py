"""The P-DATA-TF PDU as `pacs.wire.direct_send` writes it and `pacs.wire.direct_receive` reads it.

PS3.8 9.3.5 (the PDU and its PDV items) and E.2 (the message control header). Both modules
frame one PDV per PDU, so one header struct covers the PDU, its only PDV item and the control
header.
"""

from __future__ import annotations

import struct

P_DATA_TF = 0x04
#: any PDU: type, reserved, PDU length
PDU_HEADER = struct.Struct(">BxI")
#: a P-DATA-TF with one PDV: PDU type, reserved, PDU length, PDV item length, presentation
#: context ID, message control header
ONE_PDV = struct.Struct(">BxIIBB")
#: message control header bits (PS3.8 E.2): bit 0 command, bit 1 last fragment
COMMAND, LAST = 0x01, 0x02


def header(n: int, context_id: int, flags: int) -> bytes:
    """The header of a P-DATA-TF carrying one PDV of `n` bytes: PDU length = PDV item length + 4."""
    return ONE_PDV.pack(P_DATA_TF, n + 6, n + 2, context_id, flags)
