"""Captured HAN dumps as files: raw bytes as read from the port, or hex text."""

from __future__ import annotations

import bisect
import re
import string
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

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
        try:
            chunk = parse_line(line)
        except DumpError as exc:
            raise DumpError(f"line {number}: {exc}") from None
        if chunk:
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


# --- streaming: a dump of any size, read a piece at a time -------------------------------------------

SNIFF_BYTES = 64 * 1024  # how much of a dump decides "hex or bin" when not told
BATCH_BYTES = 16 * 1024  # stream bytes handed on at once (the decoder's problem lists stay short)


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line of a hex dump that is not hex (a torn last line, a logger's garbage): skipped."""

    number: int
    reason: str  # e.g. "odd number of hex digits (41)"


def parse_line(line: bytes) -> bytes:
    """One line of a hex dump as stream bytes (b"" for a blank or comment line); DumpError if not hex.

    A line holding exactly one frame stored without its flags (some loggers drop them) gets them back.
    """
    digits = _COMMENT.sub(b"", line).translate(None, b" \t\r\n\f\v")
    if not digits:
        return b""
    junk = digits.translate(None, _HEX_DIGITS)
    if junk:
        raise DumpError(f"{chr(junk[0])!r} is not a hex digit")
    if len(digits) % 2:
        raise DumpError(f"odd number of hex digits ({len(digits)})")
    chunk = bytes.fromhex(digits.decode())
    flagless = chunk[0] != 0x7E and chunk[0] & 0xF0 == 0xA0 and len(chunk) >= 2
    if flagless and ((chunk[0] & 0x07) << 8) | chunk[1] == len(chunk):
        chunk = b"\x7e" + chunk + b"\x7e"
    return chunk


class LineIndex:
    """Stream offset -> where it came from (a line of a hex dump, a record of a recording), for the
    recent part of the stream only, so it stays small for any dump.

    A decoder reports a problem right after the bytes that hold it, so the last few thousand pieces
    are enough; an older offset is given as a byte offset.
    """

    def __init__(self, keep: int = 4096) -> None:
        self._starts: list[int] = []
        self._values: list[Any] = []
        self._keep = keep

    def add(self, offset: int, value: Any) -> None:
        if len(self._starts) >= 2 * self._keep:
            del self._starts[: self._keep], self._values[: self._keep]
        self._starts.append(offset)
        self._values.append(value)

    def find(self, offset: int) -> tuple[int, Any] | None:
        """(stream offset where the piece holding ``offset`` starts, its value), if still known."""
        i = bisect.bisect_right(self._starts, offset) - 1
        return None if i < 0 else (self._starts[i], self._values[i])

    def where(self, offset: int) -> str:
        """A hex dump's line (the value is its number), else the byte offset."""
        found = self.find(offset)
        return f"byte {offset}" if found is None else f"line {found[1]} (byte {offset})"


def numbered_lines(f: BinaryIO, limit: int = 1 << 20) -> Iterator[tuple[int, bytes]]:
    """(line number, text) of a hex dump, never more than ``limit`` bytes at once.

    A longer line (a continuous dump on one line) comes in pieces under one number, each cut after
    a whole number of hex digits and with its comment removed, so each piece parses on its own.
    """
    number = 0
    carry = b""  # an odd last digit of a piece, or the rest of a long line after its comment began
    in_comment = False
    while line := f.readline(limit):
        whole = line.endswith(b"\n") or len(line) < limit
        if not carry and not in_comment and whole:
            number += 1
            yield number, line
            continue
        if not in_comment:
            text = carry + line
            cut = text.find(b"#")
            in_comment = cut >= 0 and not whole
            digits = (text if cut < 0 else text[:cut]).translate(None, b" \t\r\n\f\v")
            keep = len(digits) - len(digits) % 2 if not whole else len(digits)
            carry = digits[keep:]
            if keep:
                yield number + 1, digits[:keep]
        if whole:
            number += 1
            if carry:  # an odd digit left at the end of the line: parse_line says so
                yield number, carry
            carry, in_comment = b"", False


def hex_stream(lines: Iterable[tuple[int, bytes]], index: LineIndex | None = None,
               batch: int = BATCH_BYTES) -> Iterator[bytes | BadLine]:
    """The stream bytes of a hex dump's (number, line)s, about ``batch`` bytes at a time (``batch`` 0:
    one piece per line), with a `BadLine` in its place for each line that is not hex."""
    offset = 0
    pending: list[bytes] = []
    size = 0
    for number, line in lines:
        try:
            chunk = parse_line(line)
        except DumpError as exc:
            if pending:
                yield b"".join(pending)
                pending, size = [], 0
            yield BadLine(number, str(exc))
            continue
        if not chunk:
            continue
        if index is not None:
            index.add(offset, number)
        offset += len(chunk)
        pending.append(chunk)
        size += len(chunk)
        if size >= batch:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)


def bin_stream(f: BinaryIO, block: int = BATCH_BYTES) -> Iterator[bytes]:
    while chunk := f.read(block):
        yield chunk


def sniff(head: bytes, fmt: str | None = None) -> str:
    """"hex" or "bin" for a dump that starts with ``head`` (``fmt`` forces it)."""
    if fmt not in (None, "hex", "bin"):
        raise DumpError(f"unknown format {fmt!r} (hex or bin)")
    if fmt is not None:
        return fmt
    # A cut at the end of the sample may split a line: judge the whole lines only.
    whole = head if len(head) < SNIFF_BYTES else head[: head.rfind(b"\n") + 1] or head
    return "hex" if looks_like_hex(whole) else "bin"
