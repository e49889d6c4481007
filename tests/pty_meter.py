"""Test helper: a simulated meter pushing its frames onto a real pty, on its schedule, from a thread."""

from __future__ import annotations

import threading
import time
from datetime import datetime

from apm.io.serial.port import VENDOR_SETTINGS, SerialSettings
from sim.frames import MeterSpec
from sim.meter import Meter, Push
from sim.serial_line import VirtualSerialPort


class MeterOnPty:
    """``with MeterOnPty("aidon", "3p-it", speed=8) as m: ... m.start(); m.sent``: pushes go out at
    t / speed (and at ``speed`` times the baud rate) once ``start`` is called."""

    def __init__(self, vendor: str, kind: str, *, speed: float, duration: float,
                 start: str = "2025-01-15T09:59:50+01:00", seed: int = 1) -> None:
        self.meter = Meter(MeterSpec(vendor, kind), datetime.fromisoformat(start), seed=seed)
        self.pushes: list[Push] = self.meter.pushes_between(0.0, duration)
        self.speed = speed
        s = VENDOR_SETTINGS[vendor]
        self.settings = s
        self.line = VirtualSerialPort(SerialSettings(s.baud, s.parity), pace=speed)
        self.sent: list[Push] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def path(self) -> str:
        return self.line.path

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        began = time.monotonic()
        for push in self.pushes:
            delay = began + push.t / self.speed - time.monotonic()
            if self._stop.wait(max(delay, 0.0)):
                return
            self.line.write(push.frame)
            self.sent.append(push)

    def wait(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def __enter__(self) -> MeterOnPty:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        self.line.close()
