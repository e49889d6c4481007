"""CRC-16/X.25, the HDLC frame check (HCS and FCS) of IEC 62056-46."""

from __future__ import annotations

import crcmod.predefined

# crcmod compiles this into its C extension when available: the hot path of the frame reader.
crc16_x25 = crcmod.predefined.mkPredefinedCrcFun("x-25")


def fcs_bytes(data: bytes) -> bytes:
    """The two check bytes as they go on the wire (least significant byte first)."""
    return crc16_x25(data).to_bytes(2, "little")
