"""Household load: a synthetic Norwegian home with electric heating, or a recorded trace.

Both give a `HouseSample` at simulated time t (seconds since local midnight of the first day): the
current on each grid line, the active and reactive power, and the power on each connection (a trace's
currents become such loads: see `TraceHome`).

Connections ("slots"): on TN 3x400 V a single-phase appliance sits between one line and neutral (slot
0, 1, 2 = L1, L2, L3); on IT 3x230 V between two lines (slot 0, 1, 2 = L1-L2, L2-L3, L3-L1), so its
current flows on both. Slot 3 is a balanced three-phase load. All loads are 230 V with a power factor:
heaters, the water heater, kettle, oven and the heating parts of appliances are resistive (PF 1);
motors and compressors are inductive (fridge 0.8, washer motor 0.7, dryer 0.95, ventilation and
standby 0.9, induction cooktop 0.98); LED lighting and electronics slightly capacitive (0.95 leading).
A sample gives each slot's active and reactive power; ``lines`` is the arithmetic sum of the apparent
currents each load puts on a line (the conservative in-phase model, see sim/grid.py, whose phasor
model adds them as phasors instead).

The synthetic home (numbers from research notes 5.2; SINTEF/Enova, NVE):

- base load 0.3-0.5 kW plus fridge cycling, lighting and TV in the evening;
- panel heaters (default 6, 0.8-1.5 kW) with thermostats in rooms that lose heat to the outdoors
  (winter day, coldest before dawn), 21 C by day and a 19 C setback at night, so they cycle faster
  when it is cold and all come on together at 06:00;
- a 2 kW water heater on a thermostat: showers in the morning and evening, small draws all day;
- cooktop zones (boil at full power, then simmer cycling), oven, kettle, washer, dryer, dishwasher.

Seeded with `random.Random(seed)`: the same seed gives the same day, to the watt.
Cost per sample: O(heaters) arithmetic plus the appliance events due since the last sample.
"""

from __future__ import annotations

import bisect
import csv
import heapq
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from apm.core.lines import Network, Triple

VOLT = 230.0
DAY = 86400.0
H = 3600.0


class HouseSample(NamedTuple):
    lines: Triple  # A per line L1, L2, L3 (in-phase sum of apparent currents)
    power_w: float
    slots_w: tuple[float, float, float, float] | None = None  # per connection (see module doc)
    reactive_var: float = 0.0  # > 0 inductive
    slots_var: tuple[float, float, float, float] | None = None  # reactive power per connection


# Reactive power per watt (tan of the power-factor angle; < 0 capacitive) of the appliance kinds.
Q_RESISTIVE = 0.0
Q_STANDBY = math.tan(math.acos(0.9))  # ventilation fans, router, standby: a mix, mostly motors (base_pf)
Q_FRIDGE = math.tan(math.acos(0.8))
Q_WASHER_MOTOR = math.tan(math.acos(0.7))
Q_DRYER = math.tan(math.acos(0.95))
Q_INDUCTION = math.tan(math.acos(0.98))
Q_ELECTRONICS = -math.tan(math.acos(0.95))  # LED drivers, TV, PC: slightly capacitive


def slot_lines(network: Network, slots_w: Sequence[float], volt: float = VOLT,
               slots_var: Sequence[float] | None = None) -> Triple:
    """Line currents (in-phase sum of apparent currents) of slot powers."""
    va = slots_w if slots_var is None else [math.hypot(w, q) for w, q in zip(slots_w, slots_var, strict=True)]
    a, b, c = va[0] / volt, va[1] / volt, va[2] / volt
    if network == "TN":
        three = va[3] / (3.0 * volt)
        return (a + three, b + three, c + three)
    three = va[3] / (math.sqrt(3.0) * volt)
    return (a + c + three, a + b + three, b + c + three)


@dataclass(frozen=True, slots=True)
class WinterDay:
    """Outdoor temperature: mean with a daily swing, coldest around 03:00."""

    mean_c: float = -8.0
    swing_c: float = 4.0

    def at(self, t: float) -> float:
        return self.mean_c - self.swing_c * math.cos(2 * math.pi * ((t % DAY) / DAY - 3.0 / 24.0))


@dataclass(slots=True)
class _Room:
    power_w: float
    slot: int
    ua: float  # W/K
    cap: float  # J/K
    temp: float
    on: bool


@dataclass(slots=True)
class _Tank:
    power_w: float
    slot: int
    deficit_wh: float  # heat missing to reach the set temperature
    on: bool


class SyntheticHome:
    """A Norwegian home with electric heating; ``sample(t)`` with non-decreasing t."""

    def __init__(self, network: Network, seed: int = 1, *, heaters: int = 6, weather: WinterDay | None = None,
                 days: int = 2, scale: float = 1.0, reactive: bool = True,
                 thermostat_step_s: float = 1.0, base_pf: float = 0.9) -> None:  # see Q_STANDBY
        self.network: Network = network
        self.reactive = reactive  # False: every load resistive (PF 1), the same day otherwise
        # how often the room thermostats look (from midnight); 10 s puts every heater switch on a
        # meter's 10 s list-2 instant, which flatters how fast a device sees it
        self.thermostat_step_s = thermostat_step_s
        self.seed = seed
        self.weather = weather or WinterDay()
        self.scale = scale
        # the base load's (standby, ventilation, router) power factor: a mix, mostly motors
        self._q_base = math.tan(math.acos(base_pf))
        rng = random.Random(seed)
        self._rng = rng
        self._slot_w = [0.0, 0.0, 0.0, 0.0]  # scheduled appliances
        self._slot_var = [0.0, 0.0, 0.0, 0.0]
        # heaters: design duty 62 % at -20 C (about 100 W/K for the house: ~10 MWh a year of space
        # heating), room time constant 3-5 h; spread over the connections as an electrician would
        self._rooms: list[_Room] = []
        first = rng.randrange(3)
        for i in range(heaters):
            p = rng.choice((800.0, 1000.0, 1200.0, 1500.0)) * scale
            ua = 0.62 * p / (21.0 + 20.0)
            tau = rng.uniform(3.0, 5.0) * H
            self._rooms.append(_Room(p, (first + i) % 3, ua, ua * tau, rng.uniform(19.0, 21.0), False))
        self._tank = _Tank(2000.0 * scale, rng.randrange(3), rng.uniform(0.0, 800.0), False)
        self._draws: list[tuple[float, float]] = []  # (time, Wh of hot water) sorted
        self._events: list[tuple[float, int, int, float, float]] = []  # (time, seq, slot, +/- W, +/- var)
        self._seq = 0
        for d in range(days):
            self._plan_day(d * DAY, rng)
        heapq.heapify(self._events)
        self._draws.sort()
        self._draw_i = 0
        self._last_t: float | None = None
        self._room_dt = 0.0

    # --- planning --------------------------------------------------------------------------------

    def _on(self, start: float, end: float, slot: int, watts: float, q: float = Q_RESISTIVE) -> None:
        """``watts`` on ``slot`` from ``start`` to ``end``; ``q``: reactive var per watt."""
        if end <= start:
            return
        w = watts * self.scale
        if not self.reactive:
            q = 0.0
        self._events.append((start, self._seq, slot, w, w * q))
        self._events.append((end, self._seq + 1, slot, -w, -w * q))
        self._seq += 2

    def _cycle(self, start: float, end: float, slot: int, watts: float, period: float, duty: float,
               rng: random.Random, q: float = Q_RESISTIVE) -> None:
        """Thermostat-style cycling between start and end."""
        t = start + rng.uniform(0, period * (1 - duty))
        while t < end:
            self._on(t, min(end, t + period * duty), slot, watts, q)
            t += period

    def _plan_day(self, d0: float, rng: random.Random) -> None:
        slot = rng.randrange
        self._on(d0, d0 + DAY, 0, rng.uniform(300.0, 500.0), self._q_base)  # standby, ventilation, router...
        fridge = slot(3)
        t = d0 + rng.uniform(0, 1800)
        while t < d0 + DAY:  # fridge/freezer compressor
            self._on(t, t + rng.uniform(600, 900), fridge, 150.0, Q_FRIDGE)
            t += rng.uniform(1800, 2700)
        lights = Q_ELECTRONICS
        self._on(d0 + rng.uniform(6.0, 6.5) * H, d0 + rng.uniform(8.0, 8.5) * H, slot(3), 250.0, lights)
        self._on(d0 + rng.uniform(15.5, 16.5) * H, d0 + rng.uniform(22.5, 23.5) * H, slot(3), 350.0, lights)
        self._on(d0 + rng.uniform(18.0, 19.0) * H, d0 + rng.uniform(22.5, 23.5) * H, slot(3), 200.0,
                 Q_ELECTRONICS)  # TV, PC
        # kettle / coffee
        for h in (rng.uniform(6.5, 7.5), rng.uniform(15.5, 16.5), rng.uniform(20.5, 21.5)):
            self._on(d0 + h * H, d0 + h * H + rng.uniform(120, 240), slot(3), 2000.0)
        # cooktop: zones on different slots; boil at full power, then simmer cycling
        zones = [(0, 2300.0), (1, 1800.0), (2, 1400.0), (0, 1200.0)]
        dinner = d0 + rng.uniform(16.5, 17.5) * H
        for z in range(rng.choice((2, 3, 3, 4))):
            zs, zw = zones[z]
            start = dinner + rng.uniform(0, 900)
            boil = start + rng.uniform(300, 600)
            end = boil + rng.uniform(900, 2400)
            self._on(start, boil, zs, zw, Q_INDUCTION)
            self._cycle(boil, end, zs, zw, rng.uniform(30, 60), rng.uniform(0.3, 0.6), rng, Q_INDUCTION)
        breakfast = d0 + rng.uniform(7.0, 7.5) * H
        self._on(breakfast, breakfast + rng.uniform(300, 600), 1, 1800.0, Q_INDUCTION)
        # oven: preheat, then thermostat cycling
        if rng.random() < 0.7:
            o = slot(3)
            start = dinner - rng.uniform(600, 1500)
            self._on(start, start + 600, o, 2200.0)
            self._cycle(start + 600, start + rng.uniform(2700, 4200), o, 2200.0, 90.0, 0.45, rng)
        # washer: heating then motor; dryer after it; dishwasher after dinner
        w = slot(3)
        ws = d0 + rng.choice((rng.uniform(9.0, 11.0), rng.uniform(18.5, 20.0))) * H
        self._on(ws + 300, ws + 300 + rng.uniform(600, 1200), w, 2000.0)
        self._on(ws, ws + rng.uniform(3600, 5400), w, 200.0, Q_WASHER_MOTOR)
        if rng.random() < 0.8:
            dr = slot(3)
            ds = max(ws + 5400, d0 + rng.uniform(20.0, 21.0) * H)
            self._cycle(ds, ds + rng.uniform(3600, 5400), dr, 2500.0, 240.0, 0.8, rng, Q_DRYER)
        dw = slot(3)
        dws = d0 + rng.uniform(19.5, 21.5) * H
        self._on(dws + 300, dws + 1200, dw, 2000.0)
        self._on(dws + 3600, dws + 4200, dw, 2000.0)
        # hot water: showers morning and evening, small draws during the day
        for _ in range(rng.choice((2, 3))):
            self._draws.append((d0 + rng.uniform(6.2, 8.0) * H, rng.uniform(1500, 3000)))
        for _ in range(rng.choice((1, 2))):
            self._draws.append((d0 + rng.uniform(18.0, 22.5) * H, rng.uniform(1500, 3000)))
        for _ in range(6):
            self._draws.append((d0 + rng.uniform(7.0, 22.0) * H, rng.uniform(100, 400)))

    # --- simulation ------------------------------------------------------------------------------

    def _setpoint(self, t: float) -> float:
        h = (t % DAY) / H
        return 21.0 if 6.0 <= h < 23.0 else 19.0

    def sample(self, t: float) -> HouseSample:
        slot_w = self._slot_w
        slot_var = self._slot_var
        ev = self._events
        while ev and ev[0][0] <= t:
            _, _, s, w, q = heapq.heappop(ev)
            slot_w[s] += w
            slot_var[s] += q
        dt = 0.0 if self._last_t is None else t - self._last_t
        self._last_t = t
        out = [slot_w[0], slot_w[1], slot_w[2], slot_w[3]]
        # rooms every thermostat_step_s (default every second: a thermostat switches at any second,
        # not in step with a meter's lists)
        self._room_dt += dt
        if self._room_dt >= self.thermostat_step_s or dt == 0.0:
            self._step_rooms(t, self._room_dt)
            self._room_dt = 0.0
        for r in self._rooms:
            if r.on:
                out[r.slot] += r.power_w
        tank = self._tank
        self._step_tank(t, dt)
        if tank.on:
            out[tank.slot] += tank.power_w
        var = [0.0, 0.0, 0.0, 0.0]
        for i in range(4):
            if out[i] < 0.5:
                out[i] = 0.0
            else:
                var[i] = slot_var[i] if abs(slot_var[i]) >= 0.5 else 0.0
        power = out[0] + out[1] + out[2] + out[3]
        slots = (out[0], out[1], out[2], out[3])
        slots_var = (var[0], var[1], var[2], var[3])
        return HouseSample(slot_lines(self.network, slots, slots_var=slots_var), power, slots,
                           var[0] + var[1] + var[2] + var[3], slots_var)

    def _step_rooms(self, t: float, dt: float) -> None:
        t_out = self.weather.at(t)
        sp = self._setpoint(t)
        for r in self._rooms:
            heat = r.power_w if r.on else 0.0
            r.temp += dt * (heat - r.ua * (r.temp - t_out)) / r.cap
            if r.temp < sp - 0.3:
                r.on = True
            elif r.temp > sp + 0.3:
                r.on = False

    def _step_tank(self, t: float, dt: float) -> None:
        tank = self._tank
        draws = self._draws
        while self._draw_i < len(draws) and draws[self._draw_i][0] <= t:
            tank.deficit_wh += draws[self._draw_i][1]
            self._draw_i += 1
        tank.deficit_wh += 60.0 * dt / H  # standing loss
        if tank.on:
            tank.deficit_wh -= tank.power_w * dt / H
        if tank.deficit_wh > 700.0:
            tank.on = True
        elif tank.deficit_wh <= 0.0:
            tank.on = False
            tank.deficit_wh = 0.0


DEFAULT_TRACE_PF = 0.95  # a trace's power factor (inductive) where it does not give its own
_LINE_COLS = ("l1_a", "l2_a", "l3_a")
_PAIR_COLS = ("l12_a", "l23_a", "l31_a")  # IT: the current of the loads between each pair of lines
_LINE_PF_COLS = ("l1_pf", "l2_pf", "l3_pf")
_PAIR_PF_COLS = ("l12_pf", "l23_pf", "l31_pf")


def it_pair_currents(l1: float, l2: float, l3: float) -> tuple[Triple, bool]:
    """The load currents (a, b, c) between L1-L2, L2-L3, L3-L1 that give the IT line-current
    magnitudes ``l1, l2, l3`` (>= 0) when every load has the same power factor; and whether it had to
    clamp.

    On three wires line k carries the difference of the currents of its two pairs, whose voltages
    are 120 degrees apart, so with one power factor (it turns every current alike)
    ``l1^2 = a^2 + c^2 + ac``, ``l2^2 = a^2 + b^2 + ab``, ``l3^2 = b^2 + c^2 + bc``, for either phase
    sequence (it mirrors the picture, not the lengths). That is the Fermat point of the triangle with
    sides l1, l2, l3: a, b, c are its distances to the corners. The system has other roots, with a
    negative current (a pair that generates); loads consume, so the non-negative one is taken: it
    exists, and is unique, when no angle of the triangle reaches 120 degrees, i.e. no line has
    ``lk^2 >= li^2 + lj^2 + li lj`` for the other two. Then (the Fermat distances in closed form)
    ``S = a + b + c``, ``S^2 = (l1^2 + l2^2 + l3^2) / 2 + 2 sqrt(3) area``, and the differences of the
    equations give ``(b - c) S = l2^2 - l1^2`` and so on.

    Magnitudes no set of loads can make (a line above what its neighbours allow, a single loaded
    line) are clamped up, never down: the pair away from the big line gets nothing, and the other two
    keep their ratio and grow until the big line is met, so no line of the world is below its trace.
    """
    # A nano-ampere is no current: squares of smaller values lose their precision in subnormal floats.
    x = (l1 if l1 > 1e-9 else 0.0, l2 if l2 > 1e-9 else 0.0, l3 if l3 > 1e-9 else 0.0)
    sq = (x[0] * x[0], x[1] * x[1], x[2] * x[2])
    for k in range(3):  # at most one line can be too large
        i, j = (k + 1) % 3, (k + 2) % 3
        if sq[k] > (sq[i] + sq[j] + x[i] * x[j]) * (1.0 + 1e-9):  # on the bound the roots below hold
            return _it_clamped(k, x), True
    total = sq[0] + sq[1] + sq[2]
    if total == 0.0:
        return (0.0, 0.0, 0.0), False
    area16 = max(0.0, 2.0 * (sq[0] * sq[1] + sq[1] * sq[2] + sq[2] * sq[0]) - (sq[0] ** 2 + sq[1] ** 2 + sq[2] ** 2))
    s = math.sqrt(total / 2.0 + 2.0 * math.sqrt(3.0) * math.sqrt(area16) / 4.0)
    a_b = (sq[0] - sq[2]) / s  # a - b
    c_a = (sq[2] - sq[1]) / s  # c - a
    a = (s + a_b - c_a) / 3.0
    return (max(0.0, a), max(0.0, a - a_b), max(0.0, a + c_a)), False


def _it_clamped(k: int, x: Triple) -> Triple:
    """Line k is more than its two pairs can make: the opposite pair is 0, the other two scaled up."""
    i, j = (k + 1) % 3, (k + 2) % 3
    # pair (k, i) alone is on line i, pair (k, j) alone on line j: they carry li and lj, times g
    base = math.sqrt(x[i] * x[i] + x[j] * x[j] + x[i] * x[j])
    if base > 0.0:
        on_i, on_j = x[i] * x[k] / base, x[j] * x[k] / base
    else:
        on_i = on_j = x[k] / math.sqrt(3.0)
    out = [0.0, 0.0, 0.0]  # index m: the pair of lines (m, m + 1); pair (i, j) stays at 0
    out[k] = on_i  # pair (k, i)
    out[j] = on_j  # pair (j, k)
    return (out[0], out[1], out[2])


def _it_lines(pairs: Triple) -> Triple:
    """IT line-current magnitudes of pair currents with one power factor (see it_pair_currents)."""
    a, b, c = pairs
    return (math.sqrt(a * a + c * c + a * c), math.sqrt(a * a + b * b + a * b), math.sqrt(b * b + c * c + b * c))


class TraceHome:
    """Household loads from a recorded CSV, ``time_s`` and currents; each row holds until the next.

    Columns: ``l1_a,l2_a,l3_a`` (line-current magnitudes); on IT instead (or as well: they win)
    ``l12_a,l23_a,l31_a``, the current of the loads between each pair of lines. Power factors
    (inductive, 0.5..1): a ``pf`` column for every load of that row, or per connection
    ``l1_pf,l2_pf,l3_pf`` (TN) / ``l12_pf,l23_pf,l31_pf`` (IT), else ``pf`` (`DEFAULT_TRACE_PF`).

    Every row becomes loads a physical grid can carry (``slots_w`` and ``slots_var`` as the synthetic
    home gives them), so the phasor grid model, the meter's P and Q, and every estimator of the
    device fit the currents: on TN a load line to neutral per line; on IT the pair loads of
    `it_pair_currents` (line magnitudes that no loads make are clamped up: ``clamped`` counts those
    rows). ``lines`` is the loads' true line-current magnitudes: the trace's, but for clamped rows.
    ``scale`` multiplies every current. Before the first row the first row's loads apply; after the
    last, the last's.
    """

    def __init__(self, network: Network, times: Sequence[float], rows: Sequence[Triple], *,
                 pf: float = DEFAULT_TRACE_PF, pfs: Sequence[Triple] | None = None,
                 pairs: Sequence[Triple] | None = None, scale: float = 1.0) -> None:
        if not times:
            raise ValueError("trace has no rows")
        if any(b < a for a, b in zip(times, times[1:], strict=False)):
            raise ValueError("trace times must not decrease")
        if pairs is not None and network != "IT":
            raise ValueError("per-pair currents (l12_a, l23_a, l31_a) are for IT only")
        if scale < 0.0:
            raise ValueError("scale must not be negative")
        for row in (pfs or ((pf,) * 3,)):
            if not all(0.5 <= x <= 1.0 for x in row):
                raise ValueError(f"a power factor {row} is not within 0.5..1")
        for t, row in zip(times, pairs or rows, strict=True):
            if not all(0.0 <= x < math.inf for x in row):
                raise ValueError(f"at {t:g} s: a current {row} is negative or not finite")
        self.network: Network = network
        self._t = list(times)
        self.clamped = 0
        self._samples = [self._sample_of(k, rows, pairs, pfs[k] if pfs else (pf, pf, pf), scale)
                         for k in range(len(times))]
        self._i = 0

    def _sample_of(self, k: int, rows: Sequence[Triple], pairs: Sequence[Triple] | None, pf: Triple,
                   scale: float) -> HouseSample:
        if pairs is not None:
            loads = pairs[k]
        elif self.network == "IT":
            loads, clamped = it_pair_currents(*rows[k])
            self.clamped += clamped
        else:
            loads = rows[k]
        amps = [x * scale for x in loads]
        lines = (amps[0], amps[1], amps[2]) if self.network == "TN" else _it_lines((amps[0], amps[1], amps[2]))
        w = [VOLT * a * p for a, p in zip(amps, pf, strict=True)]
        var = [VOLT * a * math.sqrt(max(0.0, 1.0 - p * p)) for a, p in zip(amps, pf, strict=True)]
        return HouseSample(lines, w[0] + w[1] + w[2], (w[0], w[1], w[2], 0.0), var[0] + var[1] + var[2],
                           (var[0], var[1], var[2], 0.0))

    @property
    def rows(self) -> int:
        return len(self._t)

    @classmethod
    def from_csv(cls, network: Network, path: str | Path, *, pf: float = DEFAULT_TRACE_PF,
                 scale: float = 1.0) -> TraceHome:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            cols = set(reader.fieldnames or ())
            per_pair = network == "IT" and set(_PAIR_COLS) <= cols
            if "time_s" not in cols or not (per_pair or set(_LINE_COLS) <= cols):
                raise ValueError(f"{path}: header must be time_s,l1_a,l2_a,l3_a (on IT or l12_a,l23_a,l31_a)")
            if network == "IT" and set(_LINE_PF_COLS) & cols:
                raise ValueError(f"{path}: on IT a power factor belongs to a pair of lines: "
                                 "pf or l12_pf,l23_pf,l31_pf")
            pf_cols = _PAIR_PF_COLS if network == "IT" else _LINE_PF_COLS
            own_pf = set(pf_cols) <= cols
            amp_cols = _PAIR_COLS if per_pair else _LINE_COLS
            times: list[float] = []
            rows: list[Triple] = []
            pfs: list[Triple] = []
            for n, row in enumerate(reader, start=2):
                try:
                    times.append(float(row["time_s"]))
                    rows.append(_triple(row, amp_cols))
                    if own_pf:
                        pfs.append(_triple(row, pf_cols))
                    elif "pf" in cols:
                        pfs.append((float(row["pf"]),) * 3)
                except (TypeError, ValueError):
                    raise ValueError(f"{path}:{n}: not a number in {row}") from None
        try:
            if per_pair:
                return cls(network, times, rows, pf=pf, pfs=pfs or None, pairs=rows, scale=scale)
            return cls(network, times, rows, pf=pf, pfs=pfs or None, scale=scale)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def sample(self, t: float) -> HouseSample:
        ts = self._t
        i = self._i
        if i + 1 < len(ts) and ts[i + 1] <= t:
            i += 1
            if i + 1 < len(ts) and ts[i + 1] <= t:  # a jump: search
                i = bisect.bisect_right(ts, t) - 1
        elif ts[i] > t:
            i = max(0, bisect.bisect_right(ts, t) - 1)
        self._i = i
        return self._samples[i]


def _triple(row: dict[str, str], cols: tuple[str, str, str]) -> Triple:
    return (float(row[cols[0]]), float(row[cols[1]]), float(row[cols[2]]))


def make_household(network: Network, model: str | None = None, trace: str | Path | None = None,
                   seed: int = 1, **options: float) -> SyntheticHome | TraceHome:
    """The scenario's ``[household]``: ``trace = "file.csv"`` or ``model = "winter"`` (the synthetic home)."""
    if trace is not None:
        return TraceHome.from_csv(network, trace, pf=float(options.pop("pf", DEFAULT_TRACE_PF)),
                                  scale=float(options.pop("scale", 1.0)))
    if model in (None, "winter", "norwegian-winter"):
        weather = WinterDay(mean_c=float(options.pop("outdoor_c", -8.0)))
        return SyntheticHome(network, seed, weather=weather, heaters=int(options.pop("heaters", 6)),
                             scale=float(options.pop("scale", 1.0)), days=int(options.pop("days", 2)),
                             reactive=bool(options.pop("reactive", True)),
                             thermostat_step_s=float(options.pop("thermostat_step_s", 1.0)),
                             base_pf=float(options.pop("base_pf", 0.9)))
    raise ValueError(f"household model {model!r} is not known (winter, or trace = \"file.csv\")")
