"""Captured HAN dumps as files: raw bytes as read from the port, or hex text."""

from __future__ import annotations

import bisect
import re
import string
from dataclasses import dataclass

_HEX = frozenset(string.hexdigits.encode() + string.whitespace.encode())
_HEX_DIGITS = string.hexdigits.encode()
_COMMENT = re.compile(rb"#[^\n]*")


class DumpError(ValueError):
    """The file is not a dump in the format asked for."""


@dataclass(frozen=True, slots=True)
class Dump:
    data: bytes  # the byte stream, as the port would deliver it
    fmt: str  # "hex" | "bin"
    line_starts: tuple[int, ...] = ()  # hex: stream offset where each non-empty line starts
    line_numbers: tuple[int, ...] = ()

    def where(self, offset: int) -> str:
        """A human pointer to a stream offset: the line of a hex file, else the byte offset."""
        if not self.line_starts:
            return f"byte {offset}"
        i = max(bisect.bisect_right(self.line_starts, offset) - 1, 0)
        return f"line {self.line_numbers[i]} (byte {offset})"


def looks_like_hex(raw: bytes) -> bool:
    text = _COMMENT.sub(b"", raw)
    return bool(text.strip()) and all(b in _HEX for b in text)


def parse_hex(raw: bytes) -> Dump:
    """One frame per line or a continuous dump; spaces and ``#`` comments allowed.

    A line that holds exactly one frame stored without its flags (some loggers drop them) gets
    them back, so the frame reader sees what the port sent.
    """
    out = bytearray()
    starts: list[int] = []
    numbers: list[int] = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        text = _COMMENT.sub(b"", line)
        digits = text.translate(None, b" \t\r\f\v")
        if not digits:
            continue
        if digits.translate(None, _HEX_DIGITS):
            bad = chr(digits.translate(None, _HEX_DIGITS)[0])
            raise DumpError(f"line {number}: {bad!r} is not a hex digit")
        if len(digits) % 2:
            raise DumpError(f"line {number}: odd number of hex digits ({len(digits)})")
        chunk = bytes.fromhex(digits.decode())
        if chunk[0] != 0x7E and chunk[0] & 0xF0 == 0xA0 and len(chunk) >= 2:
            length = ((chunk[0] & 0x07) << 8) | chunk[1]
            if length == len(chunk):
                chunk = b"\x7e" + chunk + b"\x7e"
        starts.append(len(out))
        numbers.append(number)
        out += chunk
    return Dump(bytes(out), "hex", tuple(starts), tuple(numbers))


def load(raw: bytes, fmt: str | None = None) -> Dump:
    """Auto-detects hex text unless ``fmt`` says "hex" or "bin"."""
    if fmt not in (None, "hex", "bin"):
        raise DumpError(f"unknown format {fmt!r} (hex or bin)")
    if fmt == "bin" or (fmt is None and not looks_like_hex(raw)):
        return Dump(bytes(raw), "bin")
    return parse_hex(raw)
