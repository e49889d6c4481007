"""Recordings of a HAN port: the raw bytes with their receive times, in a file that survives a kill.

Format (version 1; all integers little-endian; also in docs/recording-format.md)::

    APM-HAN-RECORDING 1\\n                     magic line (20 bytes)
    {"started": "...", "port": ..., ...}\\n    one line of JSON: what was recorded, how
    record*                                   one per chunk read from the port:
        u32   length of the data (1 .. 65536)
        f64   receive time, seconds since the recording started (monotonic clock)
        bytes the data, as read from the port
        u32   CRC-32 (zlib) of the 12 header bytes and the data

The file is only ever appended to, and each record goes out in one ``write`` of the whole record,
so a writer killed at any moment (SIGKILL, power cut) leaves every earlier record intact and at most
a torn last record, which a reader drops and reports. A damaged record in the middle (a bad CRC) is
reported and skipped: the reader searches forward for the next record whose CRC checks.

The header JSON holds ``started`` (UTC, ISO 8601), ``clock`` ("monotonic"), and where known ``port``,
``baud``, ``parity``, ``bytesize``, ``stopbits`` and ``tool``; readers ignore keys they do not know.
"""

from __future__ import annotations

import io
import json
import os
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO

MAGIC = b"APM-HAN-RECORDING 1\n"
MAX_DATA = 65536  # a longer read is split into several records
_HEAD = struct.Struct("<Id")
_CRC = struct.Struct("<I")
_MAX_HEADER = 64 * 1024


class RecordingError(ValueError):
    """Not a recording, or its header is unreadable: the message says which."""


@dataclass(frozen=True, slots=True)
class Record:
    t: float  # seconds since the recording started
    data: bytes
    offset: int  # file offset of the record


@dataclass(frozen=True, slots=True)
class RecordProblem:
    offset: int  # file offset where the damage starts
    reason: str


@dataclass(slots=True)
class Recording:
    meta: dict[str, Any]
    records: list[Record] = field(default_factory=list)
    problems: list[RecordProblem] = field(default_factory=list)
    torn: bool = False  # the last record was cut short (the writer stopped mid-write)


def is_recording(raw: bytes) -> bool:
    """True when ``raw`` starts like a recording (even one torn inside its magic line)."""
    n = min(len(raw), len(MAGIC))
    return n >= 8 and raw[:n] == MAGIC[:n]


def encode_record(t: float, data: bytes) -> bytes:
    head = _HEAD.pack(len(data), t)
    return head + data + _CRC.pack(zlib.crc32(data, zlib.crc32(head)))


def header_bytes(meta: dict[str, Any]) -> bytes:
    return MAGIC + json.dumps(meta, separators=(",", ":"), sort_keys=True).encode() + b"\n"


class RecordingWriter:
    """Appends records to a new recording file. A context manager; ``write(t, data)`` per chunk.

    ``fsync_every`` seconds (0: never) the file is also synced to disk, for power cuts; a killed
    process loses nothing that ``write`` has returned from, since the kernel has the bytes.
    """

    def __init__(self, path: str | os.PathLike[str], meta: dict[str, Any] | None = None, *,
                 overwrite: bool = False, fsync_every: float = 1.0) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if overwrite else os.O_EXCL)
        self.path = os.fspath(path)
        self._fd = os.open(self.path, flags, 0o644)
        self.meta = {"started": datetime.now(UTC).isoformat(timespec="milliseconds"), "clock": "monotonic"}
        self.meta |= meta or {}
        self.records = 0
        self.bytes = 0
        self._fsync_every = fsync_every
        self._synced = time.monotonic()
        self._write_all(header_bytes(self.meta))

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, t: float, data: bytes) -> None:
        for start in range(0, len(data), MAX_DATA):
            self._write_all(encode_record(t, bytes(data[start : start + MAX_DATA])))
            self.records += 1
        self.bytes += len(data)
        if self._fsync_every and time.monotonic() - self._synced >= self._fsync_every:
            os.fsync(self._fd)
            self._synced = time.monotonic()

    def _write_all(self, blob: bytes) -> None:
        view = memoryview(blob)
        while view:  # a regular file takes it in one write; the loop is for the rare short write
            n = os.write(self._fd, view)
            view = view[n:]

    def close(self) -> None:
        if self._fd >= 0:
            try:
                os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = -1


def read_recording(raw: bytes) -> Recording:
    """Every intact record of a recording; damage and a torn end are reported in ``problems``."""
    meta, items = stream_recording(io.BytesIO(raw))
    out = Recording(meta)
    for item in items:
        if isinstance(item, Record):
            out.records.append(item)
        else:
            out.problems.append(item)
            out.torn = out.torn or item.reason.startswith("torn")
    return out


_READ = 256 * 1024  # bytes read from the file at once
_WINDOW = _HEAD.size + MAX_DATA + _CRC.size  # enough to judge any record at the front of the buffer


def stream_recording(f: BinaryIO) -> tuple[dict[str, Any], Iterator[Record | RecordProblem]]:
    """The header of the recording open in ``f``, and its records and problems as they are read:
    memory stays at about one read whatever the file's size. Raises RecordingError for the header."""
    head = f.read(len(MAGIC) + _MAX_HEADER + 1)
    if not head.startswith(MAGIC):
        if is_recording(head):
            raise RecordingError("the recording ends inside its magic line (the writer stopped at once)")
        raise RecordingError("not a recording (no APM-HAN-RECORDING magic line)")
    end_of_meta = head.find(b"\n", len(MAGIC), len(MAGIC) + _MAX_HEADER)
    if end_of_meta < 0:
        raise RecordingError("the recording's header line is torn or longer than 64 KiB")
    try:
        meta = json.loads(head[len(MAGIC) : end_of_meta])
    except ValueError as exc:
        raise RecordingError(f"the recording's header is not JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise RecordingError("the recording's header is not a JSON object")
    return meta, _records(f, bytearray(head), end_of_meta + 1)


def _records(f: BinaryIO, buf: bytearray, pos: int) -> Iterator[Record | RecordProblem]:
    base = 0  # file offset of buf[0]
    eof = False
    damaged_from: int | None = None  # file offset where the damage being skipped began
    head_size, crc_size = _HEAD.size, _CRC.size
    while True:
        if not eof and len(buf) - pos < _WINDOW:
            del buf[:pos]
            base, pos = base + pos, 0
            more = f.read(_READ)
            eof = not more
            buf += more
            continue
        n = len(buf)
        if pos >= n:
            break
        record = _record_at(buf, pos)
        if record is not None:
            if damaged_from is not None:
                yield RecordProblem(damaged_from, f"damaged record (bad length or CRC): "
                                                  f"{base + pos - damaged_from} bytes skipped")
                damaged_from = None
            yield Record(record.t, record.data, base + pos)
            pos += head_size + len(record.data) + crc_size
            continue
        if damaged_from is None:
            # Only at the end of the file can a record be short (the buffer holds a whole one otherwise).
            if n - pos < head_size:
                yield RecordProblem(base + pos, f"torn last record ({n - pos} bytes of its header): ignored")
                return
            length = _HEAD.unpack_from(buf, pos)[0]
            if 0 < length <= MAX_DATA and pos + head_size + length + crc_size > n:
                yield RecordProblem(base + pos, f"torn last record ({n - pos} of {head_size + length + crc_size} "
                                                "bytes): ignored")
                return
            damaged_from = base + pos
        pos += 1
    if damaged_from is not None:
        yield RecordProblem(damaged_from, f"damaged record (bad length or CRC): "
                                          f"{base + len(buf) - damaged_from} bytes skipped")


def _record_at(raw: bytes | bytearray, pos: int) -> Record | None:
    """The record at ``pos`` if it is whole and its CRC checks."""
    if len(raw) - pos < _HEAD.size + _CRC.size:
        return None
    length, t = _HEAD.unpack_from(raw, pos)
    if not 0 < length <= MAX_DATA or not 0.0 <= t < 1e9:  # also rules out NaN
        return None
    start = pos + _HEAD.size
    end = start + length
    if end + _CRC.size > len(raw):
        return None
    crc = zlib.crc32(raw[start:end], zlib.crc32(raw[pos:start]))
    if crc != _CRC.unpack_from(raw, end)[0]:
        return None
    return Record(t, bytes(raw[start:end]), pos)
