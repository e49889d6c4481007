"""Per-line headroom: how many amperes our own chargers may draw in total on each grid line.

    available = fuse - safety margin - (measured line current - what our chargers draw on that line)

The bracket is the household's current ("house" below). Everything is a current magnitude and adds
arithmetically, as if every load on a line were in phase: a real line current is never larger than
that sum, so the estimate errs on the safe side for the loads it adds (see sim/grid.py for the same
model). Lowering our chargers' current never raises a line current, and raising it by x raises a
line current by at most x, so ``available`` is safe to hand out whatever the phase angles.

IT meters (3x230 V, three wires) with two measuring elements do not report I2 (Aidon, Kamstrup; Kaifa
MA304H3E does). Two estimates are made and the smaller used; both are upper bounds:

- Kirchhoff: on three wires the line currents sum to zero as phasors, so |I2| <= |I1| + |I3|, and
  for the household's share alone house2 <= |house1| + |house3|. Our chargers' draw cannot be taken
  out of |I1| and |I3| as magnitudes (house1 = |I1| - own1 assumes the household in phase with us: at
  PF 0.75 that was up to 4.3 A short of the true L2). ``refine_i2`` (default) takes each line's
  household current at its worst: our chargers' phasor on the line is known (in phase with their
  line or star voltages, PF 1) and the household's is within acos(0.7) + 30 = 75.6 degrees of the
  line's star voltage (every household load consumes at |PF| >= 0.7, `HOUSE_PF_MIN`, on L1-L2,
  L2-L3 or L3-L1, either phase sequence), so |house1| is at most what |I1| (widened by the meter's
  accuracy) allows at the largest angle between the two (`house_line_max`); and never more than the
  any-angle |I1| + |I3| + |own1 + own3|. A list that reports export (not all consuming) gets the
  any-angle bound. It is an upper bound on the household's L2 whatever our chargers then draw; the
  price is up to about twice the household's L1 and L3 current beside our own, and a third of the
  energy on Aidon IT (docs/it-l2-inference.md). ``refine_i2=False`` uses the bound on the whole line
  instead (house2 <= I1 + I3 - own2), pessimistic by our own chargers' current on L1 and L3.
- Two-wattmeter (``two_wattmeter``, on by default; `apm.core.three_wire`): the list's P and Q with |I1|,
  |I3| and the line-to-line voltages fix |I2| up to a mirror ambiguity; the larger solution, widened
  to cover the meter's accuracy, is an upper bound on the whole line's |I2|, and house2 = that less
  our chargers' draw on L2 (as for a measured line). Inconsistent data falls back to I1 + I3.
  Exact for loads between L1-L2 and L2-L3; pessimistic for balanced 3-phase and L3-L1 loads.
  (It bounds the whole line, as a measured line does: house2 = |I2| - own2, as if in phase.)
- Learned (``learn_mirror``, `apm.core.it_learner`): when our own steps have shown that the smaller
  two-wattmeter solution is the true one, that one, never more than ``learned_gain_max_in`` In +
  the margin below the others (docs/it-l2-inference.md: at most 1.13 In if the inference is wrong).

Optional second bound from the list's power (``i2_power_factor``, off by default): on three wires every
household load sits between two lines, so I1 + I2 + I3 <= 2 x (sum of load currents), and with every
household load at power factor >= pf that sum is at most P_house / (U pf). Hence
house2 <= 2 P_house / (U pf) - house1 - house3, which holds for any phase angles too (it needs
house1 >= I1 - own1, which the triangle inequality gives). It rests on the power-factor assumption and
on no local generation (it is skipped while the meter reports export); the tighter of the two bounds is
used. In the simulator's resistive world it is exact at pf = 1.

Between two 10 s lists, list 1 (every 2.5 s) carries the total import power (measured up to
``power_skew_s`` before it is stamped: our own power is taken anywhere in that window, so our own
decrease is never read as a household rise). A rise of the
household's part (total less our chargers' own power) by dP could all sit on any one line: a
230 V single-phase load adds dP/230 A to one line on TN, and to two lines on IT. So dP/U is added to
every line until the next per-phase list: conservative, and it only ever lowers the headroom. Since
the rise is on one or two lines only, ``rise_slack_a`` (margin + ``rise_hold_over_in`` x In, with
``rise_hold``) tells the balancer how far over that it may go to hold a charger at min_a rather than
pause it for the rise alone (apm.core.balancer, step 4: at most that x In above the fuse rating, until
the next per-phase list and the EV's response).

Cost: `compute` is O(1) plus a scan of the charger history since the measurement (a few entries).
"""

from __future__ import annotations

import cmath
import dataclasses
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from apm.core.charger_state import ChargerState
from apm.core.config import STALE_AFTER_S, ChargerConfig, GridConfig, HeadroomSettings
from apm.core.it_learner import HOUSE_PF_MIN, Learner, ListValues, Pair, Verdict, own_phasors
from apm.core.lines import LINES, ZERO, Network, Triple, charging_power_w, rotation_index
from apm.core.meter_state import MeterState
from apm.core.three_wire import DEFAULT_ACCURACY, Accuracy, i2_from_reading
from han.reading import Reading

NOMINAL_V = 230.0
__all__ = ["STALE_AFTER_S", "Headroom", "HeadroomEstimator", "HeadroomSettings", "NOMINAL_V"]

OptTriple = tuple[float | None, float | None, float | None]
_SKEW_SURE = 3  # lagging powers seen this many times more than not: judge rises over the skew window
# IT: a line's household current is the sum of its two loads' (L1: those on L1-L2 and L3-L1), each
# within acos(HOUSE_PF_MIN) of its line-to-line voltage, which is 30 degrees off the line's star
# voltage: so within this angle of the star voltage, for either phase sequence.
_HOUSE_CONE = math.acos(HOUSE_PF_MIN) + math.radians(30.0)
# Unit star voltages of L1 and L3 in `own_phasors`' frame (U12 real), sequence L1-L2-L3.
_STAR_L1, _STAR_L3 = cmath.exp(-1j * math.radians(30.0)), cmath.exp(-1j * math.radians(270.0))


@dataclass(frozen=True, slots=True)
class Headroom:
    """The amperes our chargers may draw in total on each line, and what it rests on.

    ``available_a`` is None for a line the supply does not have (single-phase meters report L1 only)
    and may be negative when the household alone is above the limit. ``measured_a`` holds the line
    currents as the meter reported them (None: not reported, e.g. I2 on IT).
    """

    at: float  # clock time (s) of the computation
    measured_at: float  # arrival of the per-phase list it rests on
    network: Network
    supply_phases: int
    limit_a: float  # fuse rating less the safety margin
    available_a: OptTriple
    measured_a: OptTriple
    house_a: OptTriple  # household current per line (estimated; bound for an unreported I2)
    own_a: Triple  # our chargers' draw per line at the measurement
    rise_a: float  # added to every line from list 1's power rise since that measurement
    age_s: float
    fresh: bool
    reason: str
    # IT without I2: the upper estimate of the whole L2 line current it rests on (house + own, before
    # any list 1 rise), and how it was made ("two-wattmeter", "kirchhoff", "power"); None otherwise
    i2_a: float | None = None
    i2_method: str | None = None
    # How far a line's allocation may exceed ``available_a`` to hold a charger at min_a rather than
    # pause it for ``rise_a`` alone (``[headroom] rise_hold``; 0: pause). A line that carries the rise
    # then runs at most this above the limit, i.e. rise_hold_over_in x In above the fuse rating.
    rise_slack_a: float = 0.0


@dataclass(frozen=True, slots=True)
class _Own:
    at: float
    lines: Triple
    power_w: float
    phasors: dict[int, Pair] = dataclasses.field(default_factory=dict)  # IT: I1, I3 per phase sequence


class HeadroomEstimator:
    """Turns the meter's state and our chargers' reports into a `Headroom`, sans-IO.

    Call ``observe_chargers(now, states)`` whenever charger reports arrive (the estimator keeps a
    short history so it can take out what the chargers drew when the meter measured), and
    ``compute(now, meter)`` when the balancer needs a value.

    ``ct_ratio`` multiplies the meter's currents and power: leave it at 1.0 when the decoder has
    already applied the installation's CT ratio (the normal case); it is a hook for readings that
    arrive unscaled.
    """

    def __init__(
        self,
        grid: GridConfig,
        chargers: Sequence[ChargerConfig],
        settings: HeadroomSettings | None = None,
        *,
        ct_ratio: float = 1.0,
        stale_after_s: float = STALE_AFTER_S,
        history_s: float = 60.0,
        accuracy: Accuracy = DEFAULT_ACCURACY,
        **options: Any,
    ) -> None:
        """``settings`` (the config's ``[headroom]``); ``options`` override single settings by name
        (refine_i2, early_rise, rise_threshold_w, i2_power_factor, two_wattmeter, power_skew_s) and are checked
        against the same schema."""
        if ct_ratio <= 0:
            raise ValueError("ct_ratio must be greater than 0")
        s = settings or HeadroomSettings()
        if options:
            s = HeadroomSettings.from_dict({**msgspec.structs.asdict(s), **options})
        self.settings = s
        self.grid = grid
        self.network: Network = grid.network
        self.limit_a = grid.fuse_a - grid.safety_margin_a
        self.chargers = {c.id: c for c in chargers}
        self._rot = {c.id: rotation_index(c.rotation) for c in chargers}
        self.ct_ratio = ct_ratio
        self.stale_after_s = stale_after_s
        self.refine_i2 = s.refine_i2
        self.early_rise = s.early_rise
        self.rise_threshold_w = s.rise_threshold_w
        self.rise_slack_a = (grid.safety_margin_a + s.rise_hold_over_in * grid.fuse_a) if s.rise_hold else 0.0
        self.history_s = history_s
        self.i2_power_factor = s.i2_power_factor
        self.two_wattmeter = s.two_wattmeter
        self.accuracy = accuracy
        self._own: deque[_Own] = deque()
        self._supply_phases = 3
        seq = {"L1-L2-L3": 1, "L1-L3-L2": -1}.get(s.phase_sequence)
        self.learner = (Learner(seq, power_skew_s=s.power_skew_s)
                        if s.learn_mirror and self.network == "IT" else None)
        self.verdict: Verdict | None = None
        self._last_p: tuple[float, float] | None = None
        self._skew_score = 0
        self._list_at: float | None = None
        self._power_at: float | None = None

    # --- chargers --------------------------------------------------------------------------------

    def observe_chargers(self, now: float, states: Mapping[str, ChargerState]) -> None:
        """Record what our chargers draw now (per grid line, and their power)."""
        lines = [0.0, 0.0, 0.0]
        power = 0.0
        single = self._supply_phases == 1
        terminals: list[tuple[tuple[int, int, int], Triple]] = []
        for cid, s in states.items():
            rot = self._rot.get(cid)
            if rot is None:
                continue  # not one of ours: the meter counts it as household load
            c = s.currents_a
            terminals.append((rot, c))
            if single:
                lines[0] += c[0]
            else:
                lines[rot[0]] += c[0]
                lines[rot[1]] += c[1]
                lines[rot[2]] += c[2]
            draw = max(c)
            if draw > 0.0:
                phases = s.phases_in_use or (3 if c[2] > 0.0 else 1)
                power += charging_power_w(self.network, phases, draw)
        phasors = ({1: own_phasors(1, terminals), -1: own_phasors(-1, terminals)}
                   if self.network == "IT" and not single else {})
        own = self._own
        if own and own[-1].at == now:
            own.pop()
        own.append(_Own(now, (lines[0], lines[1], lines[2]), power, phasors))
        horizon = now - self.history_s
        while len(own) > 2 and own[1].at <= horizon:
            own.popleft()

    def own_at(self, t: float) -> _Own:
        """Our chargers' draw as last reported at or before ``t`` (the oldest kept if all are later)."""
        own = self._own
        if not own:
            return _Own(t, ZERO, 0.0)
        found = own[0]
        for o in reversed(own):
            if o.at <= t:
                found = o
                break
        return found

    def own_range(self, t0: float, t1: float) -> tuple[float, float]:
        """The least and the most power our chargers were reported to draw at some time in [t0, t1]."""
        lo = hi = self.own_at(t0).power_w
        for o in self._own:
            if t0 < o.at <= t1:
                lo = min(lo, o.power_w)
                hi = max(hi, o.power_w)
        return lo, hi

    # --- headroom --------------------------------------------------------------------------------

    def compute(self, now: float, meter: MeterState) -> Headroom | None:
        """The headroom now, or None before the first per-phase list."""
        r = meter.phase_reading
        t2 = meter.phase_at
        if r is None or t2 is None:
            return None
        k = self.ct_ratio
        measured: list[float | None] = [
            None if v is None else v * k for v in (r.current_l1_a, r.current_l2_a, r.current_l3_a)
        ]
        supply = r.phases if r.phases in (1, 3) else (3 if measured[2] is not None else 1)
        self._supply_phases = supply
        own_m = self.own_at(t2)
        own = own_m.lines
        notes: list[str] = []
        house: list[float | None] = [None, None, None]
        n_lines = 1 if supply == 1 else 3
        for i in range(n_lines):
            m = measured[i]
            if m is not None:
                house[i] = max(0.0, m - own[i])
        i2_a: float | None = None
        i2_method: str | None = None
        if supply == 3 and measured[1] is None:
            self._learn(meter, r, t2, own_m)
            house[1], i2_a, i2_method = self._house_l2(r, measured, house, own_m, notes)
        for i in range(n_lines):
            if house[i] is None:
                house[i] = self.limit_a
                notes.append(f"I{i + 1} not reported: no headroom on {LINES[i]}")
        rise = self._rise(meter, r.active_import_w, t2, own_m.power_w, r)
        if rise > 0.0:
            notes.append(f"list 1 power up {rise * NOMINAL_V:.0f} W: +{rise:.1f} A on every line")
        limit = self.limit_a
        available: list[float | None] = [None, None, None]
        for i in range(n_lines):
            h = house[i]
            assert h is not None
            house[i] = h + rise
            available[i] = limit - h - rise
        age = now - t2
        fresh = age <= self.stale_after_s
        if not fresh:
            notes.append(f"stale: last per-phase list {age:.0f} s ago")
        if not notes:
            worst = min(range(n_lines), key=lambda i: available[i])  # type: ignore[arg-type, return-value]
            notes.append(f"tightest line {LINES[worst]}")
        return Headroom(
            at=now,
            measured_at=t2,
            network=self.network,
            supply_phases=supply,
            limit_a=limit,
            available_a=(available[0], available[1], available[2]),
            measured_a=(measured[0], measured[1], measured[2]),
            house_a=(house[0], house[1], house[2]),
            own_a=own,
            rise_a=rise,
            age_s=age,
            fresh=fresh,
            reason="; ".join(notes),
            i2_a=i2_a,
            i2_method=i2_method,
            rise_slack_a=self.rise_slack_a if rise > 0.0 else 0.0,
        )

    def _house_l2(self, r: Reading, measured: list[float | None], house: list[float | None], own_m: _Own,
                  notes: list[str]) -> tuple[float, float | None, str | None]:
        """The household's L2 current when the meter does not report I2: on IT the smallest bound that
        applies, with the whole line's estimate and its method; on four wires none (the limit)."""
        own = own_m.lines
        h1, h3, m1, m3 = house[0], house[2], measured[0], measured[2]
        if self.network != "IT" or h1 is None or h3 is None or m1 is None or m3 is None:
            notes.append("I2 not reported and not bounded: no headroom on L2")
            return self.limit_a, None, None  # nothing for our chargers on L2
        # every bound that applies, as (house L2, method, note); the smallest is used
        bounds: list[tuple[float, str, str]] = []
        if self.refine_i2:
            bounds.append((self._kirchhoff_l2(r, m1, m3, own_m), "kirchhoff",
                           "I2 not reported: house L2 <= house L1 + house L3 at their worst angles"))
        else:
            bounds.append((max(0.0, m1 + m3 - own[1]), "kirchhoff", "I2 not reported: L2 <= I1 + I3"))
        if self.two_wattmeter:
            est = i2_from_reading(r, self.ct_ratio, self.accuracy)
            if est.method == "two-wattmeter":
                bounds.append((max(0.0, est.value_a - own[1]), "two-wattmeter",
                               f"I2 not reported: {est.value_a:.1f} A by the two-wattmeter triangle"))
            else:
                notes.append(f"two-wattmeter estimate not used ({est.reason})")
        by_power = self._i2_from_power(r, own_m.power_w, h1, h3)
        if by_power is not None:
            pf = self.i2_power_factor
            note = f"I2 not reported: house L2 <= 2 P / (U pf) - house L1 - house L3 (pf {pf:g})"
            bounds.append((by_power, "power", note))
        best = min(bounds, key=lambda b: b[0])
        learned = self._learned_l2(r, own[1], best[0])
        if learned is not None:
            best = learned
        notes.append(best[2])
        return best[0], best[0] + own[1], best[1]

    def _kirchhoff_l2(self, r: Reading, m1: float, m3: float, own_m: _Own) -> float:
        """house L2 <= |house L1| + |house L3|, each the most the line's household current can be
        with our chargers' phasor beside it (`house_line_max`); a list that reports export (the
        household is not all consuming loads) or our chargers without phasors: for any angle."""
        acc = self.accuracy
        e1, e3 = (acc.current_abs_a + (acc.current_rel + acc.gain_rel) * m for m in (m1, m3))
        pair = own_m.phasors.get(1)
        if pair is None or (r.active_export_w or 0.0) > 0.0:
            return m1 + e1 + own_m.lines[0] + m3 + e3 + own_m.lines[2]
        # for any angle |house L2| = |I2 - own2| <= |I1| + |I3| + |own1 + own3| may be tighter
        return min(house_line_max(m1, pair[0], _STAR_L1, e1) + house_line_max(m3, pair[1], _STAR_L3, e3),
                   m1 + e1 + m3 + e3 + abs(pair[0] + pair[1]))

    def _learned_l2(self, r: Reading, own2: float, bound: float) -> tuple[float, str, str] | None:
        """The household's L2 from the smaller two-wattmeter solution when the learner has resolved
        the mirror, never more than ``learned_gain_max_in`` In + margin below ``bound``; else None."""
        v = self.verdict
        if not self.two_wattmeter or v is None or not v.lower:
            return None
        low = i2_from_reading(r, self.ct_ratio, self.accuracy, lower=True)
        if low.method != "two-wattmeter":
            return None
        floor = bound - (self.settings.learned_gain_max_in * self.grid.fuse_a + self.grid.safety_margin_a)
        house = max(0.0, low.value_a - own2, floor)
        if house >= bound:
            return None
        return house, "two-wattmeter-learned", f"I2 not reported: {low.value_a:.1f} A, {v.reason}"

    def _learn(self, meter: MeterState, r: Reading, t2: float, own_m: _Own) -> None:
        """Feed the mirror learner a new list 2 or 3 (once) and each list 1's power."""
        if self.learner is None:
            return
        k = self.ct_ratio
        if t2 != self._list_at:
            self._list_at = t2
            values = _list_values(r, k)
            self.verdict = None if values is None else self.learner.on_list(
                t2, values, own_m.phasors, self._steady(t2))
        p = meter.values.get("active_import_w")
        if p is not None and p.at != t2 and p.at != self._power_at:
            self._power_at = p.at
            self.learner.on_power(p.at, p.value * k)

    def _steady(self, t2: float) -> bool:
        """Our chargers drew the same at ``t2`` as over the skew window (and a list 1) before it."""
        ref = self.own_at(t2).lines
        t0 = t2 - self.settings.power_skew_s - 3.0
        for o in (self.own_at(t0), *(o for o in self._own if t0 < o.at <= t2)):
            if max(abs(a - b) for a, b in zip(o.lines, ref, strict=True)) > 0.3:
                return False
        return True

    def _i2_from_power(self, r: Reading, own_power_w: float, h1: float, h3: float) -> float | None:
        """The power bound on the household's I2 (IT), or None when it does not apply."""
        pf = self.i2_power_factor
        p = r.active_import_w
        if pf is None or p is None or (r.active_export_w or 0.0) > 0.0:
            return None
        volts = [v for v in (r.voltage_l1_v, r.voltage_l2_v, r.voltage_l3_v) if v]
        u = min(volts) if volts else NOMINAL_V
        p_house = max(0.0, p * self.ct_ratio - own_power_w)
        return max(abs(h1 - h3), 2.0 * p_house / (u * pf) - h1 - h3)

    def _watch_skew(self, at: float, p_w: float) -> None:
        """Whether this meter's powers lag: after a step of ours (> 1 kW) between two list 1s, does
        the household power stay put with our power then (no lag) or with ours a second or two
        before (lag)? A score; the skew window is used only once the lag has been seen a few times
        more often than not (exact timing finds real rises best)."""
        prev, self._last_p = self._last_p, (at, p_w)
        skew = self.settings.power_skew_s
        if prev is None or skew <= 0.0 or at - prev[0] > 5.0:
            return
        lo, hi = self.own_range(prev[0], at)
        if hi - lo < 1000.0:
            return

        def moved(lag: float) -> float:
            return abs((p_w - self.own_at(at - lag).power_w) - (prev[1] - self.own_at(prev[0] - lag).power_w))

        exact = moved(0.0)
        lagged = min(moved(x) for x in (skew / 2.0, skew))
        if lagged < 0.3 * exact:
            self._skew_score = min(_SKEW_SURE + 2, self._skew_score + 1)
        elif exact < 0.3 * lagged:
            self._skew_score = max(0, self._skew_score - 1)

    def _rise(self, meter: MeterState, p_list: float | None, t2: float, own_p_then: float,
              r: Reading) -> float:
        """Amperes to add to every line for a household power rise seen in list 1 since ``t2``."""
        if not self.early_rise or p_list is None:
            return 0.0
        p = meter.values.get("active_import_w")
        if p is None or p.at <= t2:
            return 0.0
        self._watch_skew(p.at, p.value * self.ct_ratio)
        own_now = self.own_at(p.at).power_w
        own_then = own_p_then
        if self._skew_score >= _SKEW_SURE:
            # This meter measures its powers before it stamps them (up to power_skew_s): judge each
            # power with our chargers' power anywhere in that window, the reading with the least
            # household rise (a step of ours the meter's power has not seen yet is no household rise:
            # the phantom rises that paused chargers, issue 15).
            skew = self.settings.power_skew_s
            own_now = self.own_range(p.at - skew, p.at)[1]
            own_then = min(own_p_then, self.own_range(t2 - skew, t2)[0])
        d_house = (p.value - own_now) - (p_list - own_then)
        d_house *= self.ct_ratio
        if d_house <= self.rise_threshold_w:
            return 0.0
        volts = [v for v in (r.voltage_l1_v, r.voltage_l2_v, r.voltage_l3_v) if v]
        u = min(volts) if volts else NOMINAL_V
        return d_house / max(u, 1.0) if math.isfinite(d_house) else 0.0


def house_line_max(measured_a: float, own: complex, star: complex, error_a: float) -> float:
    """The most household current an IT line can carry when the meter reads ``measured_a`` (true
    within ``error_a``) for the household's current plus ``own`` (our chargers' phasor on that line)
    and the household's is within `_HOUSE_CONE` of the line's ``star`` voltage (a unit phasor).

    With phi the angle between the household's current h and ours (|own| = r), |h + own| = m gives
    |h| = -r cos phi + sqrt(m^2 - r^2 sin^2 phi), which grows with phi: the worst case is the largest
    angle the cone allows, theta. A reading below the least any such household gives (our chargers'
    report a little high) is taken at that least."""
    r = abs(own)
    if r == 0.0:
        return measured_a + error_a
    theta = min(math.pi, _HOUSE_CONE + abs(cmath.phase(own / star)))
    sin, cos = math.sin(theta), math.cos(theta)
    m = max(measured_a + error_a, r if cos > 0.0 else r * sin)
    return -r * cos + math.sqrt(max(0.0, m * m - (r * sin) ** 2))


def _list_values(r: Reading, k: float) -> ListValues | None:
    """A list 2 or 3 of a two-element meter as the learner takes it, or None when it lacks a value
    or imports and exports at once."""
    i1, i3, imp, qi = r.current_l1_a, r.current_l3_a, r.active_import_w, r.reactive_import_var
    if i1 is None or i3 is None or imp is None or qi is None:
        return None
    exp, qe = r.active_export_w or 0.0, r.reactive_export_var or 0.0
    if exp > 0.0 and imp > 0.0:
        return None
    u = [x if x else 230.0 for x in (r.voltage_l1_v, r.voltage_l2_v, r.voltage_l3_v)]
    return ListValues(i1 * k, i3 * k, (imp - exp) * k, (qi - qe) * k, u[0], u[1], u[2],
                      "voltage_l2_v" in r.estimated or not r.voltage_l2_v)
