"""The clock every part of the running device agrees on: ``now()`` and ``await sleep(dt)``.

    clock = RealClock()                                   # the device in a house
    clock = ScaledClock(speed=20, start=scenario_start)   # a simulation, 20 x real time

``now()`` is POSIX seconds (a float), so a payload's ``ts`` is ``iso_ts(clock.now())`` and the sans-IO
cores (`MeterState`, `HeadroomEstimator`, `Balancer`, `SimCharger`) take it as their ``now``. A scaled
clock runs ``speed`` times faster than the wall clock from its anchor; every component holding the same
object reads the same simulated time, and ``sleep(dt)`` waits ``dt / speed`` of wall time. Timeouts of
the network itself (MQTT keepalive, reconnect backoff) stay in wall time: a broker does not speed up.

The scaled clock follows the monotonic wall clock, not a tick counter: when the event loop falls behind,
simulated time still moves, and a component that steps once per simulated second catches up by stepping
every second it missed (see sim/pipeline.py). `lag` says how far behind a caller runs.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime


class Clock:
    """Real time at ``speed`` 1; subclasses scale it."""

    speed: float = 1.0

    def now(self) -> float:
        return time.time()

    async def sleep(self, dt: float) -> None:
        """Sleep ``dt`` seconds of this clock."""
        await asyncio.sleep(max(0.0, dt) / self.speed)

    async def sleep_until(self, t: float) -> None:
        """Sleep until ``now() >= t`` (returns at once when it already is)."""
        while True:
            left = t - self.now()
            if left <= 0:
                return
            await asyncio.sleep(left / self.speed)

    def wall(self, dt: float) -> float:
        """Wall seconds that ``dt`` seconds of this clock take."""
        return dt / self.speed

    def datetime(self) -> datetime:
        """``now()`` as an aware UTC datetime (for the subscription and the eco plan)."""
        return datetime.fromtimestamp(self.now(), UTC)

    def lag(self, t: float) -> float:
        """Wall seconds by which a step due at clock time ``t`` is late now (0 when early)."""
        return max(0.0, (self.now() - t) / self.speed)


class RealClock(Clock):
    """The wall clock (time.time); sleeps are plain asyncio sleeps."""


class ScaledClock(Clock):
    """Simulated time: ``start`` at the anchor, then ``speed`` seconds per wall second."""

    def __init__(self, speed: float = 1.0, start: float | datetime | None = None) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self.speed = float(speed)
        self._frozen: float | None = None
        self._start = time.time()
        self._t0 = time.monotonic()
        self.anchor(start)

    def anchor(self, start: float | datetime | None = None) -> None:
        """Make ``now()`` read ``start`` at this instant (None: the present clock reading)."""
        if start is None:
            start = self.now()
        self._frozen = None
        self._start = start.timestamp() if isinstance(start, datetime) else float(start)
        self._t0 = time.monotonic()

    def now(self) -> float:
        if self._frozen is not None:
            return self._frozen
        return self._start + (time.monotonic() - self._t0) * self.speed

    def freeze(self) -> None:
        """Stop time where it is (a simulation that has ended: its parts shut down in no time)."""
        self._frozen = self.now()
