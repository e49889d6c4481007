"""LLC header and the DATA-NOTIFICATION APDU (IEC 62056-5-3) around the pushed list."""

from __future__ import annotations

from dataclasses import dataclass

from han import axdr
from han.errors import EncryptedPayload, MalformedPayload, UnsupportedList

LLC = b"\xe6\xe7\x00"
DATA_NOTIFICATION = 0x0F
_CIPHERED = {
    0xDB: "general-glo-ciphering",
    0xDF: "general-ded-ciphering",
    0xDC: "general-ciphering",
    0xDD: "general-signing",
}
_BLOCK_TRANSFER = 0xE0


@dataclass(slots=True)
class Notification:
    invoke_id: int
    time_at: int  # offset of the 12 date-time bytes in the header, -1 when absent
    time_raw: bytes | None
    body: axdr.Node


def parse_notification(info: bytes) -> Notification:
    """Parse an HDLC information field (LLC + APDU), or a bare APDU starting with 0x0F."""
    pos = 3 if info[:3] == LLC else 0
    if pos == 0 and info[:2] == LLC[:2]:
        raise MalformedPayload(f"LLC header {info[:3].hex()} is not E6 E7 00")
    if pos >= len(info):
        raise MalformedPayload("no APDU after the LLC header")
    tag = info[pos]
    if tag in _CIPHERED:
        raise EncryptedPayload(f"ciphered APDU ({_CIPHERED[tag]}, tag 0x{tag:02X}); no key configured")
    if tag == _BLOCK_TRANSFER:
        raise UnsupportedList("general-block-transfer APDU (0xE0): not used by Norwegian lists")
    if tag != DATA_NOTIFICATION:
        raise UnsupportedList(f"APDU tag 0x{tag:02X} is not a DATA-NOTIFICATION (0x0F)")
    if pos + 6 > len(info):
        raise MalformedPayload("truncated DATA-NOTIFICATION header")
    invoke_id = int.from_bytes(info[pos + 1 : pos + 5], "big")
    p = pos + 5
    kind = info[p]
    time_at, time_raw = -1, None
    if kind == 0x00:  # date-time absent (Aidon)
        p += 1
    elif kind == axdr.OCTET_STRING:  # 09 0C <12 bytes> (Kaifa, old Kamstrup firmware)
        n, vat = axdr.read_length(info, p + 1)
        if vat + n > len(info):
            raise MalformedPayload("truncated date-time in the notification header")
        time_at, time_raw = vat, bytes(info[vat : vat + n])
        p = vat + n
    elif kind == 0x0C:  # Kamstrup: the length of the octet string without its tag
        if p + 13 > len(info):
            raise MalformedPayload("truncated date-time in the notification header")
        time_at, time_raw = p + 1, bytes(info[p + 1 : p + 13])
        p += 13
    else:
        raise MalformedPayload(f"unexpected byte 0x{kind:02X} where the notification date-time starts")
    body = axdr.parse(info, p)
    if body.end != len(info):
        raise MalformedPayload(f"{len(info) - body.end} bytes after the notification body")
    return Notification(invoke_id, time_at, time_raw, body)
