"""Replay of captured HAN dumps: a timed byte source for the pipeline a live port feeds.

    capture = open_capture("dump.hex")              # a recording, hex text or raw binary, detected
    async for t, chunk in paced(capture.chunks(), speed=1.0):
        readings = reader.feed(chunk)               # han.HanReader, as for bytes from the port

``Capture.chunks()`` is sans-IO: (t, bytes) pairs, t in seconds since the capture began; ``paced``
sleeps until each is due (``speed`` times real time; None: as fast as the consumer takes them).
Timing comes from the recording's receive times, or for a dump without times from the vendor's push
schedule (``han.profiles.PUSH_SCHEDULES``): each frame is due one schedule gap after the one before.

What cannot be replayed is reported, never fatal: a torn or damaged record of a recording, a line
of a hex dump that is not hex, and (by the decoder) every damaged frame, with where it was.
"""

from __future__ import annotations

import asyncio
import os
import string
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from apm.io.storage.recording import RecordingError, RecordProblem, is_recording, stream_recording
from han.decoder import Decoder
from han.dump import (
    BATCH_BYTES,
    SNIFF_BYTES,
    BadLine,
    LineIndex,
    bin_stream,
    hex_stream,
    looks_like_hex,
    numbered_lines,
)
from han.errors import HanError
from han.hdlc import FrameReader
from han.jsonl import json_line as encode_line
from han.profiles import PUSH_SCHEDULES
from han.reading import Reading

FAST_CHUNK = BATCH_BYTES  # bytes per chunk when not paced (the decoder's problem lists stay short)
_PRESCAN_BYTES = 1 << 20  # how far to look for the first decodable frame (the vendor)
_HEXISH = frozenset(string.hexdigits.encode() + string.whitespace.encode())


class CaptureError(ValueError):
    """The file cannot be replayed at all (unreadable, or no format fits); the message says why."""


@dataclass(frozen=True, slots=True)
class Damage:
    """A part of the capture that was skipped before decoding (a record or a line)."""

    where: str
    reason: str


@dataclass(slots=True)
class Capture:
    """A capture on disk, read a piece at a time: the byte stream as the port delivered it, and when.

    Nothing but the recent pieces' positions is kept, so a dump of any size replays in flat memory.
    ``damage`` grows while ``chunks`` reads (a torn record, a line that is not hex); ``position`` is
    how far into the file reading has come.
    """

    path: str
    fmt: str  # "recording" | "hex" | "bin"
    size: int  # bytes of the file
    meta: dict = field(default_factory=dict)  # recording header (serial settings, start time)
    damage: list[Damage] = field(default_factory=list)
    position: int = 0
    _index: LineIndex = field(default_factory=LineIndex)
    _vendor: str | None = None
    _scanned: bool = False

    @property
    def timed(self) -> bool:
        return self.fmt == "recording"

    def where(self, offset: int) -> str:
        """A human pointer to a stream offset: a line of a hex dump, a file byte of a recording."""
        found = self._index.find(offset)
        if found is None:
            return f"byte {offset}"
        start, value = found
        if self.fmt == "hex":
            return f"line {value} (byte {offset})"
        number, file_offset = value
        return f"file byte {file_offset + offset - start} (record {number})"

    @property
    def vendor(self) -> str | None:
        """The meter of the first frame that decodes (looked for in the first MiB)."""
        if not self._scanned:
            self._scanned = True
            head = bytearray()
            for _, data in self._pieces(report=False):
                head += data
                if len(head) >= _PRESCAN_BYTES:
                    break
            self._vendor = next((m for _, _, m in _frames(bytes(head)) if m is not None), None)
        return self._vendor

    def chunks(self, *, fast: bool = False) -> Iterator[tuple[float, bytes]]:
        """(t, bytes) in order; ``fast`` gives big chunks (all at t = 0 when the timing is unused)."""
        if fast:
            for _, data in self._pieces():
                yield 0.0, data
        elif self.fmt == "recording":
            yield from self._pieces()
        else:
            yield from self._scheduled()

    def _pieces(self, report: bool = True) -> Iterator[tuple[float, bytes]]:
        """(receive time or 0, stream bytes) straight from the file, noting damage and positions."""
        index = LineIndex()
        if report:  # a new pass: what the last one found is stale
            self.damage.clear()
            self._index = index
        note = self.damage.append if report else (lambda d: None)
        with open(self.path, "rb") as f:
            if self.fmt == "recording":
                yield from self._records(f, note, index)
            elif self.fmt == "hex":
                yield from self._hex(f, note, index)
            else:
                offset = 0
                for data in bin_stream(f, FAST_CHUNK):
                    offset += len(data)
                    self.position = offset
                    yield 0.0, data

    def _records(self, f: BinaryIO, note: Callable[[Damage], None],
                 index: LineIndex) -> Iterator[tuple[float, bytes]]:
        _, items = stream_recording(f)
        stream = number = 0
        has_damage = False
        for item in items:
            if isinstance(item, RecordProblem):
                has_damage = True
                note(Damage(f"file byte {item.offset}", item.reason))
                continue
            number += 1
            index.add(stream, (number, item.offset + 12))  # after the record's length and time
            stream += len(item.data)
            self.position = item.offset + len(item.data) + 16
            yield item.t, item.data
        if not number and not has_damage:
            note(Damage("end of header", "the recording holds no data (nothing was received)"))

    def _hex(self, f: BinaryIO, note: Callable[[Damage], None], index: LineIndex) -> Iterator[tuple[float, bytes]]:
        for piece in hex_stream(numbered_lines(f), index, FAST_CHUNK):
            self.position = f.tell()
            if isinstance(piece, BadLine):
                note(Damage(f"line {piece.number}", f"not hex ({piece.reason}): line skipped"))
            else:
                yield 0.0, piece

    def _scheduled(self) -> Iterator[tuple[float, bytes]]:
        """A dump without times: one chunk per frame (damage rides with the frame before it), each
        due one schedule gap after the one before."""
        schedule = PUSH_SCHEDULES.get(self.vendor or "aidon", PUSH_SCHEDULES["aidon"])
        pending = bytearray()  # stream bytes from the start of the current chunk on
        start = 0  # stream offset of pending[0]
        t = 0.0
        current: int | None = None  # list of the frame the current chunk holds (None: none decoded)
        first = True
        frames = _FrameCutter()
        for _, data in self._pieces():
            pending += data
            for offset, list_ in frames.feed(data):
                if first:  # bytes before the first frame ride with it
                    first, current = False, list_
                    continue
                yield t, bytes(pending[: offset - start])
                del pending[: offset - start]
                start = offset
                t += schedule.gap_before(list_, current) if list_ else schedule.base_period
                current = list_
        if pending:
            yield t, bytes(pending)


class _FrameCutter:
    """(stream offset, list) of each frame that passes its checks, fed piece by piece (list None if it
    does not decode)."""

    def __init__(self) -> None:
        self.reader = FrameReader()
        self.decoder = Decoder()

    def feed(self, data: bytes) -> Iterator[tuple[int, int | None]]:
        for frame in self.reader.feed(data):
            try:
                yield frame.offset, self.decoder.decode(frame.info).list
            except HanError:
                yield frame.offset, None


def _frames(data: bytes) -> Iterator[tuple[int, int | None, str | None]]:
    """(stream offset, list, meter) of each frame that passes its checks; list None if it does not decode."""
    reader = FrameReader()
    decoder = Decoder()
    for frame in reader.feed(data):
        try:
            reading = decoder.decode(frame.info)
        except HanError:
            yield frame.offset, None, None
        else:
            yield frame.offset, reading.list, reading.meter


# --- opening -----------------------------------------------------------------------------------


def open_capture(path: str | Path) -> Capture:
    """Open a capture, detecting its format from its start. Raises ``CaptureError`` with a precise message."""
    name = str(path)
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
            size = os.fstat(f.fileno()).st_size
            meta = _recording_meta(name, f, head)
    except IsADirectoryError:
        raise CaptureError(f"{name} is a directory, not a dump") from None
    except OSError as exc:
        raise CaptureError(f"cannot read {name}: {exc.strerror or exc}") from None
    if not head:
        raise CaptureError(f"{name} is empty")
    if meta is not None:
        return Capture(name, "recording", size, meta=meta)
    if looks_like_hex(head) or _mostly_hex(head):
        capture = Capture(name, "hex", size)
        if not any(True for _ in capture._pieces(report=False)):
            raise CaptureError(f"{name}: no line of it is hex, and it is not a recording or a binary capture")
        return capture
    return Capture(name, "bin", size)


def _recording_meta(name: str, f: BinaryIO, head: bytes) -> dict | None:
    if not is_recording(head):
        return None
    f.seek(0)
    try:
        meta, _ = stream_recording(f)
    except RecordingError as exc:
        raise CaptureError(f"{name}: {exc}") from None
    return meta


def _mostly_hex(raw: bytes) -> bool:
    """Hex text with some damaged lines (a binary capture is nowhere near 98 % hex digits)."""
    lines = raw.count(b"\n")
    return lines >= 2 and sum(b in _HEXISH for b in raw) >= 0.98 * len(raw)


# --- pacing ------------------------------------------------------------------------------------


async def paced(chunks: Iterable[tuple[float, bytes]], speed: float | None = 1.0) -> AsyncIterator[tuple[float, bytes]]:
    """Yield each (t, bytes) when it is due: t / ``speed`` after the first; ``speed`` None: at once."""
    if speed is not None and not speed > 0:
        raise ValueError(f"speed must be positive, got {speed}")
    t_first: float | None = None
    started = time.monotonic()
    for t, data in chunks:
        if speed is not None:
            if t_first is None:
                t_first, started = t, time.monotonic()
            delay = started + (t - t_first) / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        else:
            await asyncio.sleep(0)  # let other tasks (a pty writer, the device loop) run
        yield t, data


async def drained(path: str, timeout: float = 2.0) -> bool:
    """Wait until the program reading the pty at ``path`` has taken every byte (True), or ``timeout``.

    Closing a pty drops what its reader has not read yet; a replay or a simulated meter waits here
    before it closes, so the last frame is not lost.
    """
    import fcntl
    import os
    import struct
    import termios

    deadline = time.monotonic() + timeout
    fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        while True:
            pending = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
            if not pending:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
    finally:
        os.close(fd)


# --- output ------------------------------------------------------------------------------------

def json_line(reading: Reading) -> str:
    """The reading's JSON form (reading.schema.json), one line (see `han.jsonl`)."""
    return encode_line(reading).decode()


def describe(reading: Reading) -> str:
    """One line for a person: time, meter and list, and what the list carries."""
    parts = [f"{reading.meter:8} list {reading.list}", (reading.meter_time or "")[:19].ljust(19)]
    if reading.active_import_w is not None:
        parts.append(f"P+ {reading.active_import_w:7.0f} W")

    def triple(prefix: str, unit: str, digits: int) -> str | None:
        values = [getattr(reading, f"{prefix}_l{k}_{unit.lower()}") for k in (1, 2, 3)]
        if all(v is None for v in values):
            return None
        return "/".join("-" if v is None else f"{v:.{digits}f}" for v in values) + f" {unit}"

    for text in (triple("current", "A", 2), triple("voltage", "V", 1)):
        if text:
            parts.append(text)
    if reading.active_import_wh is not None:
        parts.append(f"A+ {reading.active_import_wh / 1000:.2f} kWh")
    return "  ".join(parts)
