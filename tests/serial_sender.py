"""A meter on a virtual serial line for tests: writes frames over and over at real 2400-baud pacing."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence

from apm.io.serial.port import SerialSettings
from sim.serial_line import DEFAULT_SETTINGS, VirtualSerialPort


class Sender:
    """``with Sender(frames, SerialSettings(2400, "N")) as s:`` a thread writes ``frames`` cyclically to ``s.path``.

    ``frames`` empty: a silent line (the port exists, nothing is sent).
    """

    def __init__(self, frames: Sequence[bytes], settings: SerialSettings = DEFAULT_SETTINGS, *,
                 pace: float = 1.0, link: str | None = None) -> None:
        self.frames = list(frames)
        self.line = VirtualSerialPort(settings, pace=pace, link=link, overflow_wait=0.1)
        self.path = link or self.line.path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if not self.frames:
            return
        for frame in itertools.cycle(self.frames):
            if self._stop.is_set():
                return
            self.line.write(frame)

    def __enter__(self) -> Sender:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.line.close()
