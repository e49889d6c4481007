"""A simulated AMS meter, sans-IO: the frames it pushes between two instants of a simulated clock.

    meter = Meter(MeterSpec("aidon", "3p-it"), start=datetime(2025, 1, 15, 9, 59, 50))
    for t, frame in meter.frames_between(0.0, 60.0):   # seconds since the start
        ...                                              # the caller writes, sleeps, or both

Lists go out on the vendor's schedule (``han.profiles.PUSH_SCHEDULES``), aligned to the meter's own
clock: Aidon list 1 every 2.5 s, list 2 every 10 s, list 3 at hh:00:10 in place of a list 2 (its clock
and counters read hh:00:00); Kaifa 2 s / 10 s / hh:00:10; Kamstrup the 10 s list and the hourly list at
hh:00:05. What is measured comes from a per-line current source ``currents_at(t) -> (l1, l2, l3)`` and a
voltage source ``voltages_at(t, currents) -> (u1, u2, u3)`` (IT: line-to-line U12, U13, U23); the power
follows from them (resistive loads; on IT 230 V loads between two lines) unless a ``power(t)`` source
is given. All are sampled once a second of simulated time (a real meter averages too) and held in
between; the energy counters integrate the power of those samples, so they agree with the lists.

Faults to test the device (a scenario's ``[meter]``): ``outages`` (no lists at all between two
times), ``repeat_hourly`` (every hourly list sent again 2 s later, a known Aidon fault) and ``skew_s``
(the powers in a list are measured that many seconds before its currents and voltages: a meter's
values are not sampled at one instant). A negative power is export (A- counts it).

Calls must move forward in time (``frames_between`` with ``t0`` at or after the previous ``t1``):
the sources may be stateful simulations. The same calls give the same bytes, however they are split.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from han.profiles import PUSH_SCHEDULES, PushSchedule
from han.reading import Reading
from sim.frames import MeterSpec, build, reported

Triple = tuple[float, float, float]
CurrentSource = Callable[[float], Triple]  # seconds since the start -> A on L1, L2, L3
VoltageSource = Callable[[float, Triple], Triple]  # (t, line currents) -> V (IT: U12, U13, U23)
PowerSource = Callable[[float], float]  # seconds since the start -> active import power, W

_HOUR_MS = 3_600_000
_HISTORY = 64  # seconds of samples kept for lists stamped before they are sent (Aidon's hourly list)
REPEAT_AFTER_S = 2.0  # a repeated hourly list (``repeat_hourly``) follows the first this much later


@dataclass(frozen=True, slots=True)
class Push:
    """One notification as sent: when (seconds since the start), which list, what it says, its bytes."""

    t: float
    list: int
    reading: Reading  # as a decoder reads it back (the meter's resolution, what its kind sends)
    frame: bytes


@dataclass(frozen=True, slots=True)
class Sample:
    """What the meter measures during one second of simulated time."""

    currents: Triple
    voltages: Triple
    power_w: float
    reactive_var: float  # > 0 inductive (import), < 0 capacitive (export)
    energy_wh: tuple[float, float, float, float]  # A+, A-, R+, R- at the start of the second


class HouseholdCurrents:
    """``sim.household``'s synthetic home as a current source (a Norwegian winter day, seeded).

    ``t`` counts from the meter's start, ``start_of_day`` seconds after local midnight. The home plans
    whole days; a long run gets a fresh plan (the next seed) every ``days`` days.
    """

    def __init__(self, kind: str, seed: int = 1, start_of_day: float = 0.0, days: int = 2) -> None:
        from sim.household import SyntheticHome

        self._home_class = SyntheticHome
        self.network = "IT" if kind == "3p-it" else "TN"
        self.single_phase = kind == "1p"
        self.seed = seed
        self.start_of_day = start_of_day
        self.days = days
        self._home = None
        self._origin = 0.0  # house time where the current plan starts

    def __call__(self, t: float) -> Triple:
        house_t = self.start_of_day + t
        if self._home is None or house_t - self._origin >= self.days * 86400.0:
            first_day = int(house_t // 86400.0)
            self._origin = first_day * 86400.0
            self._home = self._home_class(self.network, self.seed + first_day, days=self.days)
        l1, l2, l3 = self._home.sample(house_t - self._origin).lines
        if self.single_phase:  # a single-phase service: every load is on L1
            return (l1 + l2 + l3, 0.0, 0.0)
        return (l1, l2, l3)


def default_currents(kind: str, seed: int = 1, start_of_day: float = 0.0) -> CurrentSource:
    """The household of ``sim.household``, else (if it is missing) a simple built-in profile."""
    try:
        return HouseholdCurrents(kind, seed, start_of_day)
    except ImportError:  # pragma: no cover - the household model ships with sim
        return _simple_profile(seed)


def _simple_profile(seed: int) -> CurrentSource:
    rng = random.Random(seed)
    phase = [rng.uniform(0, 2 * math.pi) for _ in range(3)]

    def currents(t: float) -> Triple:
        heater = [4.0 if math.sin(2 * math.pi * t / 900.0 + p) > 0.2 else 0.0 for p in phase]
        return tuple(1.2 + 0.4 * math.sin(2 * math.pi * t / 3600.0 + p) + h  # type: ignore[return-value]
                     for p, h in zip(phase, heater, strict=True))

    return currents


def default_voltages(kind: str, seed: int = 1) -> VoltageSource:
    """230 V with a slow daily swing, a little noise and a sag with load (IT: line-to-line)."""
    rng = random.Random(seed ^ 0x5EED)
    base = [rng.uniform(229.0, 235.0) for _ in range(3)]
    it = kind == "3p-it"

    def voltages(t: float, i: Triple) -> Triple:
        swing = 2.0 * math.sin(2 * math.pi * t / 86400.0)
        wobble = [0.6 * math.sin(t / 37.0 + k) for k in range(3)]
        if it:  # a line-to-line voltage sags with the current on both of its lines
            sag = (i[0] + i[1], i[0] + i[2], i[1] + i[2])
            return tuple(base[k] + swing + wobble[k] - 0.12 * sag[k] for k in range(3))  # type: ignore[return-value]
        return tuple(base[k] + swing + wobble[k] - 0.25 * i[k] for k in range(3))  # type: ignore[return-value]

    return voltages


class Meter:
    """One meter: its spec (vendor, kind, identity), its clock and counters, and what it measures."""

    def __init__(self, spec: MeterSpec, start: datetime, currents: CurrentSource | None = None,
                 voltages: VoltageSource | None = None, *, power: PowerSource | None = None,
                 reactive: PowerSource | None = None, seed: int = 1,
                 energy_wh: tuple[float, float, float, float] | None = None,
                 outages: Sequence[tuple[float, float]] = (), repeat_hourly: bool = False,
                 skew_s: float = 0.0) -> None:
        if skew_s < 0 or skew_s >= _HISTORY:
            raise ValueError(f"skew_s must be within [0, {_HISTORY}) seconds")
        self.spec = spec
        self.outages = tuple((float(a), float(b)) for a, b in outages)
        self.repeat_hourly = repeat_hourly
        self.skew_s = skew_s
        self.schedule: PushSchedule = PUSH_SCHEDULES[spec.vendor]
        self.start = start.replace(microsecond=0)  # the clock ticks in whole seconds from here
        midnight = self.start.replace(hour=0, minute=0, second=0)
        start_of_day = (self.start - midnight).total_seconds()
        self.currents_at = currents or default_currents(spec.kind, seed, start_of_day)
        self.voltages_at = voltages or default_voltages(spec.kind, seed)
        self.power_at = power  # None: the power follows from the currents and voltages
        self.reactive_at = reactive  # None: a little inductive, in proportion to the power
        rng = random.Random(seed)
        self._energy = list(energy_wh or (rng.uniform(5e6, 60e6), 0.0, rng.uniform(1e5, 2e6),
                                          rng.uniform(5e5, 3e6)))
        self._origin_ms = round(start_of_day * 1000)
        self._step_ms = _step_ms(self.schedule)
        self._second = -1  # the last second sampled
        self._samples: deque[tuple[int, Sample]] = deque(maxlen=_HISTORY)
        self._last_t = 0.0

    # --- the schedule ------------------------------------------------------------------------

    def push_times(self, t0: float, t1: float) -> list[tuple[float, int]]:
        """(t, list) of the pushes in [t0, t1), t in seconds since the start (outages left out,
        repeated hourly lists in)."""
        return [(t, list_) for t, list_, _ in self._plan(t0, t1)]

    def _plan(self, t0: float, t1: float) -> list[tuple[float, int, float]]:
        """(sent at, list, measured at) of the pushes in [t0, t1); a repeat was measured earlier."""
        out = [(t, lst, t) for t, lst in self._scheduled(t0, t1) if not self.silent(t)]
        if self.repeat_hourly:
            hourly = self.schedule.hourly_list
            back = REPEAT_AFTER_S
            out += [(t + back, lst, t) for t, lst in self._scheduled(t0 - back, t1 - back)
                    if lst == hourly and t >= 0.0 and not self.silent(t)]
            out.sort()
        return out

    def silent(self, t: float) -> bool:
        """Inside an outage (the meter sends nothing)."""
        return any(a <= t < b for a, b in self.outages)

    def _scheduled(self, t0: float, t1: float) -> list[tuple[float, int]]:
        s = self.schedule
        step = self._step_ms
        lo = self._origin_ms + math.ceil(t0 * 1000 - 1e-6)
        hi = self._origin_ms + math.ceil(t1 * 1000 - 1e-6)
        hourly_ms = round(s.hourly_at * 1000)
        slow_ms = round(s.slow_period * 1000)
        fast_ms = round(s.fast_period * 1000) if s.fast_list is not None else 0
        out = []
        for ms in range(-(-lo // step) * step, hi, step):
            if ms % _HOUR_MS == hourly_ms:
                list_ = s.hourly_list
            elif ms % slow_ms == 0:
                list_ = s.slow_list
            elif fast_ms and ms % fast_ms == 0:
                list_ = s.fast_list
            else:
                continue
            out.append(((ms - self._origin_ms) / 1000, list_))
        return out

    def clock(self, t: float) -> datetime:
        """The meter's clock ``t`` seconds after the start."""
        return self.start + timedelta(seconds=t)

    # --- measuring -----------------------------------------------------------------------------

    def sample(self, second: int) -> Sample:
        """The measurement of one second (sampled in order; the last ``_HISTORY`` are kept)."""
        if second <= self._second:
            for k, sample in reversed(self._samples):
                if k == second:
                    return sample
            raise ValueError(f"second {second} is older than the meter keeps (now at {self._second})")
        sample = self._samples[-1][1] if self._samples else None
        for k in range(self._second + 1, second + 1):
            if sample is not None:  # the counters run on the power of the previous second
                e = self._energy
                e[0 if sample.power_w >= 0 else 1] += abs(sample.power_w) / 3600.0
                if sample.reactive_var >= 0:
                    e[2] += sample.reactive_var / 3600.0
                else:
                    e[3] -= sample.reactive_var / 3600.0
            sample = self._measure(k)
            self._samples.append((k, sample))
        self._second = second
        assert sample is not None
        return sample

    def _measure(self, second: int) -> Sample:
        i = self.currents_at(float(second))
        if self.spec.kind == "1p":
            i = (i[0], 0.0, 0.0)
        u = self.voltages_at(float(second), i)
        if self.power_at is not None:  # a simulation that knows its loads' power better
            power = self.power_at(float(second))
        elif self.spec.kind == "3p-it":
            # A 230 V load between two lines shows its current on both: half the sum is the load current.
            power = (u[0] + u[1] + u[2]) / 3.0 * (i[0] + i[1] + i[2]) / 2.0
        elif self.spec.kind == "1p":
            power = u[0] * i[0]
        else:
            power = u[0] * i[0] + u[1] * i[1] + u[2] * i[2]
        # Without a source: heaters are resistive; motors add a little inductive, electronics a little
        # capacitive load.
        reactive = self.reactive_at(float(second)) if self.reactive_at is not None else 0.04 * power - 120.0
        return Sample(i, u, power, reactive, (self._energy[0], self._energy[1], self._energy[2], self._energy[3]))

    def energy_at(self, t: float) -> tuple[float, float, float, float]:
        """The counters (A+, A-, R+, R- in Wh/varh) at ``t``: the second's start plus its part.

        ``t`` may be before the start (an hourly list pushed after it but stamped at the full hour
        before it): the counters then run back on the first second's power."""
        second = max(0, math.floor(t))
        s = self.sample(second)
        part = (t - second) / 3600.0
        r, p = s.reactive_var, s.power_w
        return (max(0.0, s.energy_wh[0] + max(p, 0.0) * part), max(0.0, s.energy_wh[1] + max(-p, 0.0) * part),
                max(0.0, s.energy_wh[2] + max(r, 0.0) * part), max(0.0, s.energy_wh[3] + max(-r, 0.0) * part))

    # --- pushing -------------------------------------------------------------------------------

    def reading_at(self, t: float, list_: int) -> Reading:
        """What the meter would say in list ``list_`` at ``t`` (exact values, before its resolution)."""
        spec = self.spec
        stamp = t
        if list_ == self.schedule.hourly_list:
            stamp = t - (self.schedule.hourly_at - self.schedule.hourly_stamp)
        s = self.sample(math.floor(t))
        # the powers as they were skew_s before the currents and voltages (never before the start)
        ps = self.sample(max(0, math.floor(t - self.skew_s))) if self.skew_s else s
        clock = self.clock(stamp).isoformat()
        if list_ == 1:
            return Reading(meter=spec.vendor, list=1, active_import_w=max(ps.power_w, 0.0), meter_time=clock)
        i, u = s.currents, s.voltages
        fields: dict = dict(
            meter=spec.vendor, list=list_, list_id=spec.wire.list_id, meter_id=spec.meter_id,
            meter_type=spec.meter_type, meter_time=clock, phases=spec.phases,
            active_import_w=max(ps.power_w, 0.0), active_export_w=max(-ps.power_w, 0.0),
            reactive_import_var=max(ps.reactive_var, 0.0), reactive_export_var=max(-ps.reactive_var, 0.0),
            current_l1_a=i[0], current_l2_a=i[1], current_l3_a=i[2],
            voltage_l1_v=u[0], voltage_l2_v=u[1], voltage_l3_v=u[2],
        )
        if list_ == 3:
            a_in, a_out, r_in, r_out = self.energy_at(stamp)
            fields.update(active_import_wh=a_in, active_export_wh=a_out, reactive_import_varh=r_in,
                          reactive_export_varh=r_out)
        return Reading(**fields)

    def pushes_between(self, t0: float, t1: float) -> list[Push]:
        """The notifications sent in [t0, t1), in order."""
        if t0 < self._last_t - 1e-9:
            raise ValueError(f"the meter's time moves forward only: asked from {t0} after {self._last_t}")
        self._last_t = t1
        out = []
        for t, list_, measured in self._plan(t0, t1):
            exact = self.reading_at(measured, list_)
            out.append(Push(t, list_, reported(exact, self.spec), build(exact, self.spec)))
        return out

    def keeps(self, t: float) -> bool:
        """Whether a push at ``t`` can still be made: the meter keeps the last ``_HISTORY`` seconds of
        samples (a caller that fell further behind skips what it missed, as a real meter would)."""
        return math.floor(t) - self.skew_s - (self.schedule.hourly_at - self.schedule.hourly_stamp) \
            > self._second - _HISTORY

    def frames_between(self, t0: float, t1: float) -> list[tuple[float, bytes]]:
        """(t, frame bytes) of the notifications sent in [t0, t1)."""
        return [(p.t, p.frame) for p in self.pushes_between(t0, t1)]


def _step_ms(s: PushSchedule) -> int:
    """The grid every push instant lies on: the gcd of the periods and the hourly offset."""
    parts = [round(s.slow_period * 1000), round(s.hourly_at * 1000)]
    if s.fast_list is not None:
        parts.append(round(s.fast_period * 1000))
    return math.gcd(*parts)


def scenario_meter(sc: Any, world: Any, *, start: datetime | None = None) -> Meter:
    """The meter of a scenario (`sim.closed_loop.Scenario`: vendor, supply, faults) measuring a
    `sim.world.World` (which must keep a few steps of history: ``history_s``). Both closed loops use it."""
    kind = "1p" if sc.supply_phases == 1 else f"3p-{sc.network.lower()}"
    return Meter(MeterSpec(sc.vendor, kind), start or sc.start, currents=world.currents_at,
                 voltages=world.voltages_at, power=world.power_at, reactive=world.reactive_at,
                 outages=sc.outages, repeat_hourly=sc.repeat_hourly, skew_s=sc.skew_s)
