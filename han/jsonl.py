"""Readings as JSON lines (../shared/schema/reading.schema.json), for `decode`, `apm replay --json`.

msgspec encodes the frozen `Reading` dataclass directly, in its field order, with no intermediate
dict (``dataclasses.asdict`` deep-copies every reading and cost more than decoding it).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from han.reading import Reading

_encoder = msgspec.json.Encoder()


def json_line(reading: Reading) -> bytes:
    """One reading, without the newline."""
    return _encoder.encode(reading)


def json_lines(readings: Sequence[Reading]) -> bytes:
    """Readings, one per line, each line ending in a newline (b"" for none)."""
    return _encoder.encode_lines(readings) if readings else b""
