"""Bytes in, readings out: the frame reader and the decoder of one HAN stream, sans-IO."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

from han.decoder import Decoder
from han.errors import HanError
from han.hdlc import FrameReader
from han.reading import Reading


@dataclass(frozen=True, slots=True)
class Problem:
    """Something in the stream that gave no reading: where it starts and why."""

    offset: int
    kind: str  # "frame", "malformed", "encrypted", "unsupported", "implausible", "internal" (a decoder bug)
    reason: str


class HanReader:
    """``feed(bytes) -> list[Reading]``. Corrupt frames are counted and dropped, never decoded; a
    frame that passes its checks gives a reading within the physical ranges or a counted problem,
    never an exception (``han.plausibility``, ``tests/integration/test_han_armour.py``)."""

    def __init__(self, ct_ratio: float = 1.0) -> None:
        self.frames = FrameReader()
        self.decoder = Decoder(ct_ratio)
        self.readings = 0
        self.errors: Counter[str] = Counter()
        self.problems: deque[Problem] = deque(maxlen=1024)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Reading]:
        frames = self.frames.feed(data)
        self._frame_problems()
        out = []
        decode = self.decoder.decode
        for frame in frames:
            try:
                out.append(decode(frame.info))
            except HanError as exc:
                self.errors[exc.kind] += 1
                self.problems.append(Problem(frame.offset, exc.kind, str(exc)))
        self.readings += len(out)
        return out

    def close(self) -> None:
        """End of input: report an incomplete trailing frame."""
        self.frames.close()
        self._frame_problems()

    def _frame_problems(self) -> None:
        if not self.frames.problems:
            return
        for p in self.frames.pop_problems():
            self.errors["frame"] += 1
            self.problems.append(Problem(p.offset, "frame", p.reason))

    def pop_problems(self) -> list[Problem]:
        out = list(self.problems)
        self.problems.clear()
        return out

    @property
    def bytes_discarded(self) -> int:
        return self.frames.bytes_discarded
