"""COSEM values that are more than integers: OBIS codes and date-time (IEC 62056-6-2)."""

from __future__ import annotations

import re
import struct
from datetime import UTC, datetime, timedelta

DEVIATION_UNSPECIFIED = -0x8000
_DT = struct.Struct(">HBBBBBBBhB")


def obis(text: str) -> bytes:
    """'1-0:1.7.0.255' -> the 6 bytes meters send."""
    parts = re.split(r"[-:.]", text)
    if len(parts) != 6:
        raise ValueError(f"not an OBIS code: {text!r}")
    return bytes(int(p) for p in parts)


def datetime_iso(raw: bytes) -> str | None:
    """12-byte COSEM date-time -> ISO 8601; None when the date or time is not specified.

    The offset is taken as local = UTC + deviation: Norwegian meters send +60 in winter time
    (the DLMS text defines the opposite sign, the meters do not follow it). 0x8000: no offset.
    Hundredths 0xFF (not specified) are omitted.
    """
    if len(raw) != 12:
        return None
    year, month, day, _dow, hour, minute, second, hundredths, deviation, _status = _DT.unpack(raw)
    if year == 0xFFFF or not 1 <= month <= 12 or not 1 <= day <= 31:
        return None
    if hour > 23 or minute > 59 or second > 59:
        return None
    text = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
    if hundredths < 100 and hundredths:
        text += f".{hundredths:02d}"
    if deviation == DEVIATION_UNSPECIFIED or not -720 <= deviation <= 720:
        return text
    sign = "+" if deviation >= 0 else "-"
    hours, minutes = divmod(abs(deviation), 60)
    return f"{text}{sign}{hours:02d}:{minutes:02d}"


def datetime_bytes(when: datetime, *, with_offset: bool = True, status: int = 0x00) -> bytes:
    """The inverse of ``datetime_iso``: an aware datetime gets its offset as deviation."""
    deviation = DEVIATION_UNSPECIFIED
    if with_offset and when.tzinfo is not None:
        offset = when.utcoffset() or timedelta(0)
        deviation = int(offset.total_seconds() // 60)
    hundredths = 0xFF if not when.microsecond else when.microsecond // 10000
    return _DT.pack(
        when.year, when.month, when.day, when.isoweekday(), when.hour, when.minute, when.second,
        hundredths, deviation, status,
    )



UTC = UTC
