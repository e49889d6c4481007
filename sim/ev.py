"""An electric vehicle on a charging cable: on-board charger, response delay, battery.

What an EV does with the current a charger offers (IEC 61851 control pilot, research notes 4.1):

- it follows a new offer after ``response_s`` (IEC 61851-1 gives it about 5 s; EVerest notes that some
  EVs take another ~6 s);
- an offer below 6 A means "pause": it stops drawing when it sees it;
- after a pause or a first plug-in it waits ``start_delay_s`` and then ramps up at ``ramp_a_per_s``
  (SmartEVSE reports 10-40 s before some EVs draw at all); later increases ramp the same way,
  decreases are taken at once;
- it draws at most ``max_a`` per phase on ``phases`` phases (its on-board charger), less above
  ``taper_soc`` as the battery fills, and stops at ``target_soc``.

``step(now, offered_a)`` advances the EV to ``now`` (seconds, non-decreasing) and returns the current
it draws per phase for the interval that ends at ``now``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from apm.core.lines import Network, charging_power_w


@dataclass(slots=True)
class EV:
    id: str
    phases: int = 1
    max_a: float = 32.0
    battery_kwh: float = 60.0
    soc: float = 0.3
    target_soc: float = 1.0
    efficiency: float = 0.9  # AC energy to battery
    response_s: float = 3.0
    start_delay_s: float = 5.0
    ramp_a_per_s: float = 3.0
    taper_soc: float = 0.9
    min_a: float = 6.0
    # state
    current_a: float = 0.0  # per phase, as drawn now
    energy_kwh: float = 0.0  # AC energy taken from the grid
    _queue: deque[tuple[float, float]] = field(default_factory=deque)
    _offer: float = 0.0  # the offer the EV is acting on
    _last_offer: float = -1.0
    _start_at: float = math.inf  # when drawing may begin after a (re)start
    _last_t: float | None = None

    def __post_init__(self) -> None:
        if self.phases not in (1, 3):
            raise ValueError(f"EV {self.id}: phases must be 1 or 3")
        if not 0.0 <= self.soc <= 1.0:
            raise ValueError(f"EV {self.id}: soc must be within 0..1")

    @property
    def full(self) -> bool:
        return self.soc >= self.target_soc - 1e-9

    def limit_a(self) -> float:
        """What the on-board charger accepts at this state of charge."""
        if self.full:
            return 0.0
        if self.soc <= self.taper_soc:
            return self.max_a
        # linear taper down to a quarter of max at target_soc, never below the 6 A minimum
        frac = (self.target_soc - self.soc) / max(1e-9, self.target_soc - self.taper_soc)
        return max(self.min_a, self.max_a * (0.25 + 0.75 * frac))

    def plug(self, now: float) -> None:
        self._queue.clear()
        self._offer = 0.0
        self._last_offer = -1.0
        self.current_a = 0.0
        self._start_at = math.inf
        self._last_t = now

    def step(self, now: float, offered_a: float, network: Network = "TN", phases: int | None = None,
             volt: float = 230.0) -> float:
        """Advance to ``now`` under ``offered_a``; ``phases``: what the charger connects (<= self.phases)."""
        dt = 0.0 if self._last_t is None else now - self._last_t
        self._last_t = now
        if offered_a != self._last_offer:
            self._last_offer = offered_a
            self._queue.append((now + self.response_s, offered_a))
        q = self._queue
        while q and q[0][0] <= now:
            _, offer = q.popleft()
            if offer < self.min_a:
                offer = 0.0
            if self._offer == 0.0 and offer > 0.0:
                self._start_at = now + self.start_delay_s
            self._offer = offer
        target = min(self._offer, self.limit_a())
        cur = self.current_a
        if target <= 0.0:
            cur = 0.0
        elif target < cur:
            cur = target
        elif now >= self._start_at:
            cur = min(target, self.min_a) if cur == 0.0 else min(target, cur + self.ramp_a_per_s * dt)
        self.current_a = cur
        if cur > 0.0 and dt > 0.0:
            n = self.phases if phases is None else min(phases, self.phases)
            kwh = charging_power_w(network, n, cur, volt) * dt / 3.6e6
            self.energy_kwh += kwh
            self.soc = min(self.target_soc, self.soc + kwh * self.efficiency / self.battery_kwh)
        return cur
