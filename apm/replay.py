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
import bisect
import json
import string
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from apm.recording import Recording, RecordingError, is_recording, read_recording
from han.decoder import Decoder
from han.dump import Dump, DumpError, looks_like_hex, parse_hex
from han.errors import HanError
from han.hdlc import FrameReader
from han.profiles import PUSH_SCHEDULES
from han.reading import Reading

FAST_CHUNK = 16 * 1024  # bytes per chunk when not paced (the decoder's problem lists stay short)
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
    """A loaded capture: the byte stream as the port delivered it, and when its chunks came."""

    path: str
    fmt: str  # "recording" | "hex" | "bin"
    data: bytes
    times: list[float] | None = None  # recording: receive time of each chunk
    starts: list[int] | None = None  # recording: stream offset of each chunk
    file_offsets: list[int] | None = None  # recording: file offset of each chunk's data
    dump: Dump | None = None  # hex: line numbers for ``where``
    damage: list[Damage] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # recording header (serial settings, start time)
    _vendor: str | None = None
    _scanned: bool = False

    @property
    def timed(self) -> bool:
        return self.times is not None

    def where(self, offset: int) -> str:
        """A human pointer to a stream offset: a line of a hex dump, a file byte of a recording."""
        if self.dump is not None:
            return self.dump.where(offset)
        if self.starts:
            i = max(bisect.bisect_right(self.starts, offset) - 1, 0)
            assert self.file_offsets is not None
            return f"file byte {self.file_offsets[i] + offset - self.starts[i]} (record {i + 1})"
        return f"byte {offset}"

    @property
    def vendor(self) -> str | None:
        """The meter of the first frame that decodes (looked for in the first MiB)."""
        if not self._scanned:
            self._scanned = True
            for _, _, meter in _frames(self.data[:_PRESCAN_BYTES]):
                if meter is not None:
                    self._vendor = meter
                    break
        return self._vendor

    def chunks(self, *, fast: bool = False) -> Iterator[tuple[float, bytes]]:
        """(t, bytes) in order; ``fast`` gives big chunks (all at t = 0 when the timing is unused)."""
        if fast:
            for start in range(0, len(self.data), FAST_CHUNK):
                yield 0.0, self.data[start : start + FAST_CHUNK]
        elif self.times is not None:
            assert self.starts is not None
            ends = self.starts[1:] + [len(self.data)]
            for t, start, end in zip(self.times, self.starts, ends, strict=True):
                yield t, self.data[start:end]
        else:
            yield from self._scheduled()

    def duration(self) -> float:
        """Seconds the capture lasts when paced (0 for a single chunk)."""
        if self.times:
            return self.times[-1] - self.times[0]
        last = 0.0
        for t, _ in self._scheduled():
            last = t
        return last

    def _scheduled(self) -> Iterator[tuple[float, bytes]]:
        """A dump without times: one chunk per frame (damage rides with the frame before it)."""
        frames = list(_frames(self.data))
        if not frames:
            if self.data:
                yield 0.0, self.data
            return
        vendor = next((m for _, _, m in frames if m is not None), None)
        schedule = PUSH_SCHEDULES.get(vendor or "aidon", PUSH_SCHEDULES["aidon"])
        t = 0.0
        previous: int | None = None
        for k, (offset, list_, _) in enumerate(frames):
            start = 0 if k == 0 else offset
            end = frames[k + 1][0] if k + 1 < len(frames) else len(self.data)
            if k:
                t += schedule.gap_before(list_, previous) if list_ else schedule.base_period
            previous = list_
            yield t, self.data[start:end]


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


# --- loading -----------------------------------------------------------------------------------


def open_capture(path: str | Path) -> Capture:
    """Load a capture, detecting its format. Raises ``CaptureError`` with a precise message."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except IsADirectoryError:
        raise CaptureError(f"{name} is a directory, not a dump") from None
    except OSError as exc:
        raise CaptureError(f"cannot read {name}: {exc.strerror or exc}") from None
    if not raw:
        raise CaptureError(f"{name} is empty")
    if is_recording(raw):
        try:
            return _from_recording(name, read_recording(raw))
        except RecordingError as exc:
            raise CaptureError(f"{name}: {exc}") from None
    if looks_like_hex(raw):
        try:
            dump = parse_hex(raw)
        except DumpError:
            return _tolerant_hex(name, raw)
        return Capture(name, "hex", dump.data, dump=dump)
    if _mostly_hex(raw):
        return _tolerant_hex(name, raw)
    return Capture(name, "bin", raw)


def _from_recording(name: str, rec: Recording) -> Capture:
    times, starts, offsets = [], [], []
    pos = 0
    for r in rec.records:
        times.append(r.t)
        starts.append(pos)
        offsets.append(r.offset + 12)  # after the record's length and time
        pos += len(r.data)
    data = b"".join(r.data for r in rec.records)
    damage = [Damage(f"file byte {p.offset}", p.reason) for p in rec.problems]
    if not rec.records and not damage:
        damage.append(Damage("end of header", "the recording holds no data (nothing was received)"))
    return Capture(name, "recording", data, times=times, starts=starts, file_offsets=offsets, damage=damage,
                   meta=rec.meta)


def _mostly_hex(raw: bytes) -> bool:
    """Hex text with some damaged lines (a binary capture is nowhere near 98 % hex digits)."""
    sample = raw[:65536]
    lines = sample.count(b"\n")
    return lines >= 2 and sum(b in _HEXISH for b in sample) >= 0.98 * len(sample)


def _tolerant_hex(name: str, raw: bytes) -> Capture:
    """Hex text line by line, skipping (and reporting) the lines that are not hex."""
    data = bytearray()
    starts: list[int] = []
    numbers: list[int] = []
    damage: list[Damage] = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            part = parse_hex(line)
        except DumpError as exc:
            reason = str(exc).split(": ", 1)[-1]
            damage.append(Damage(f"line {number}", f"not hex ({reason}): line skipped"))
            continue
        if part.data:
            starts.append(len(data))
            numbers.append(number)
            data += part.data
    if not data:
        raise CaptureError(f"{name}: no line of it is hex, and it is not a recording or a binary capture")
    dump = Dump(bytes(data), "hex", tuple(starts), tuple(numbers))
    return Capture(name, "hex", dump.data, dump=dump, damage=damage)


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

_FIELDS = tuple(Reading.__dataclass_fields__)
_dumps = json.JSONEncoder(separators=(", ", ": ")).encode


def json_line(reading: Reading) -> str:
    """``json.dumps(reading.to_json_dict())`` without ``asdict``'s deep copy (the replay hot path)."""
    d = {name: getattr(reading, name) for name in _FIELDS}
    d["estimated"] = list(reading.estimated)
    return _dumps(d)


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
