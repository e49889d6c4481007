"""Sans-IO reader of HDLC frames (IEC 62056-46 frame format type 3) as AMS meters push them.

Goals: any read boundaries (one byte or megabytes per ``feed``), re-synchronisation after garbage,
no loss of a valid frame that follows a damaged one, and memory bounded by the largest legal frame.
The HAN port uses no byte stuffing, so 0x7E inside a frame is data and the 11-bit length field is
the only delimiter. Cost: each byte is looked at by ``bytearray.find`` and the CRC once, except
after a candidate is rejected, when the search restarts one byte after its flag (so a frame hidden
inside rejected bytes is still found); a rejected candidate is at most one frame long.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from han.crc import crc16_x25, fcs_bytes

FLAG = 0x7E
MAX_FRAME = 2047 + 2  # 11-bit length plus the two flags
_CHUNK = 4096  # input is scanned in slices of this size, which bounds the buffer
_MAX_ADDRESS = 4


@dataclass(frozen=True, slots=True)
class Frame:
    """A frame that passed both checks; ``info`` is reassembled across segments."""

    info: bytes
    dest: int
    src: int
    control: int
    offset: int  # stream offset of the opening flag (of the first segment)


@dataclass(frozen=True, slots=True)
class FrameProblem:
    offset: int  # stream offset of the opening flag
    reason: str


class FrameReader:
    """``feed(bytes) -> list[Frame]``; problems are counted and kept in ``problems``."""

    def __init__(self, max_message: int = 32 * 1024) -> None:
        self._buf = bytearray()
        self._base = 0  # stream offset of _buf[0]
        self._segments: list[bytes] = []
        self._segment_offset = 0
        self._segment_size = 0
        self._max_message = max_message
        self.frames_ok = 0
        self.frames_bad = 0
        self.bytes_discarded = 0
        self.garbage_runs = 0  # runs of bytes outside any frame, each reported once
        self._garbage = 0  # length of the current run
        self._garbage_at = 0
        self.problems: deque[FrameProblem] = deque(maxlen=1024)

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def pop_problems(self) -> list[FrameProblem]:
        out = list(self.problems)
        self.problems.clear()
        return out

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        out: list[Frame] = []
        if len(data) <= _CHUNK:
            self._buf += data
            self._scan(out)
        else:
            view = memoryview(data)
            for start in range(0, len(view), _CHUNK):
                self._buf += view[start : start + _CHUNK]
                self._scan(out)
        return out

    def close(self) -> None:
        """End of input: what is still buffered is an incomplete frame, or garbage."""
        buf = self._buf
        start = buf.find(FLAG)
        if start >= 0 and len(buf) - start > 2 and buf[start + 1] & 0xF0 == 0xA0:
            self._bad(start, f"input ends inside a frame ({len(buf) - start} bytes of it)")
        elif buf:
            self._discard(0, sum(1 for b in buf if b != FLAG))
        self._end_garbage()
        if self._segments:
            self._drop_segments("input ends before the last segment")
        self._base += len(buf)
        buf.clear()

    def _discard(self, at: int, count: int) -> None:
        if not self._garbage:
            self._garbage_at = self._base + at
        self._garbage += count
        self.bytes_discarded += count

    def _end_garbage(self) -> None:
        """A run of bytes outside frames ends where a frame (good or bad) starts, or at the end."""
        if self._garbage:
            self.garbage_runs += 1
            self.problems.append(FrameProblem(self._garbage_at, f"{self._garbage} bytes outside any frame"))
            self._garbage = 0

    def _bad(self, at: int, reason: str) -> None:
        self._end_garbage()
        self.frames_bad += 1
        self.problems.append(FrameProblem(self._base + at, reason))

    def _scan(self, out: list[Frame]) -> None:
        # The hot path: local names, no copies beyond the information field (crcmod reads the
        # bytearray slices directly), addresses kept as positions until a frame is complete.
        buf = self._buf
        find = buf.find
        n = len(buf)
        i = 0
        while True:
            j = find(FLAG, i)
            if j < 0:
                self._discard(i, n - i)
                i = n
                break
            if j > i:
                self._discard(i, j - i)
            i = j
            if n - i < 3:
                break
            if buf[i + 1] & 0xF0 != 0xA0:
                # Closing flag, flag fill between frames, or a 0x7E in garbage.
                i += 1
                continue
            found = _locate(buf, i, n)
            if found is None:
                break  # frame not complete yet
            if isinstance(found, str):
                self._bad(i, found)
                i += 1
                continue
            self._accept(out, i, *found)
            i = found[2]  # the closing flag may open the next frame
        if i:
            del buf[:i]
            self._base += i

    def _accept(self, out: list[Frame], start: int, src_at: int, control_at: int, end: int) -> None:
        """A sound frame from ``start`` to its closing flag at ``end``: out, or kept as a segment."""
        buf = self._buf
        if self._garbage:
            self._end_garbage()
        self.frames_ok += 1
        info = bytes(buf[control_at + 3 : end - 2])
        offset = self._base + start
        if buf[start + 1] & 0x08:  # segmentation bit: more segments follow
            if not self._segments:
                self._segment_offset = offset
            self._segments.append(info)
            self._segment_size += len(info)
            if self._segment_size > self._max_message:
                self._drop_segments("segmented message larger than the limit")
            return
        if self._segments:
            self._segments.append(info)
            info = b"".join(self._segments)
            offset = self._segment_offset
            self._segments.clear()
            self._segment_size = 0
        dest = int.from_bytes(buf[start + 3 : src_at], "big")
        src = int.from_bytes(buf[src_at:control_at], "big")
        out.append(Frame(info, dest, src, buf[control_at], offset))

    def _drop_segments(self, reason: str) -> None:
        self._end_garbage()
        self.problems.append(FrameProblem(self._segment_offset, reason))
        self.frames_bad += 1
        self._segments.clear()
        self._segment_size = 0


def _locate(buf: bytearray, i: int, n: int) -> tuple[int, int, int] | str | None:
    """The frame whose opening flag is at ``i``: the positions of its source address, control field and
    closing flag when it is whole and its checksums hold; why it is not a frame; or None while more
    bytes are needed to tell."""
    fmt = buf[i + 1]
    length = ((fmt & 0x07) << 8) | buf[i + 2]
    src_at = _address_end(buf, i + 3, n)
    control_at = _address_end(buf, src_at, n) if src_at > 0 else src_at
    if control_at < 0:
        return "address field too long"
    if control_at + 3 > n:
        return None  # header not complete yet
    hcs_at = control_at + 1
    end = i + 1 + length  # index of the closing flag
    if crc16_x25(buf[i + 1 : hcs_at]) != buf[hcs_at] | buf[hcs_at + 1] << 8:
        return "bad HCS"
    if end - 2 < control_at + 3:
        return f"length {length} shorter than the header"
    if end >= n:
        return None
    if buf[end] != FLAG:
        return f"no closing flag where length {length} ends the frame"
    if crc16_x25(buf[i + 1 : end - 2]) != buf[end - 2] | buf[end - 1] << 8:
        return "bad FCS"
    return src_at, control_at, end


def _address_end(buf: bytearray, p: int, n: int) -> int:
    """Index just after the HDLC address at ``p`` (a run of bytes up to one with its low bit set);
    ``n`` when the buffer ends first, -1 when the address is longer than allowed."""
    if p < n and buf[p] & 1:
        return p + 1  # one-byte address, the usual case
    start = p
    while p < n and not buf[p] & 1 and p - start < _MAX_ADDRESS:
        p += 1
    if p >= n:
        return n
    if not buf[p] & 1:
        return -1
    return p + 1


def build_frame(info: bytes, dest: bytes = b"\x41", src: bytes = b"\x08\x83", control: int = 0x13,
                segmented: bool = False) -> bytes:
    """The inverse of the reader: flags, format type 3 with length, addresses, HCS, info, FCS.

    Addresses are given as sent (the last byte has its low bit set).
    """
    length = 2 + len(dest) + len(src) + 1 + 2 + len(info) + 2
    if length > 0x7FF:
        raise ValueError(f"frame of {length} bytes does not fit the 11-bit length field")
    fmt = 0xA000 | (0x0800 if segmented else 0) | length
    header = fmt.to_bytes(2, "big") + dest + src + bytes((control,))
    header += fcs_bytes(header)
    body = header + info
    return b"\x7e" + body + fcs_bytes(body) + b"\x7e"
