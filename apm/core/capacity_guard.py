"""The live capacity-charge guard the `Controller` owns: the readings it already gets in, per-charger caps out.

    import power (list 1 every 2.5 s; list 2 every 10 s, Kamstrup sends no list 1)
        -> HourMeter (this hour's energy)  --closed hours-->  MonthLog  <--list 3's hourly energy
    our chargers' reports -> household power = import - what our chargers draw
        -> hour_cap_kwh / advise / charger_currents (apm.core.eco.capacity)  -> caps, merged with eco's

Sans-IO: ``decide`` takes the wall-clock time (the hour and month are calendar facts) and the import
power as the meter last reported it; what the month log holds survives a restart through the driver
(`month_doc` / `month_from_doc`: the daily peak hours only, at most 31 pairs).

Restart mid-hour: what the hour used before the first sample is unknown; it is counted at the power the
guard first sees (the best guess there is, and the meter's list 3 replaces the hour's figure when it
closes). An hour the meter reported (list 3) is never overwritten by the guard's own integral.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from apm.core.charger_state import ChargerState
from apm.core.config import ChargerConfig, Network
from apm.core.eco.capacity import (
    CapacityGoal,
    CapacityStatus,
    GuardAdvice,
    GuardedCharger,
    HourMeter,
    MonthLog,
    advise,
    charger_currents,
    hour_cap_kwh,
    status,
)
from apm.core.eco.tariff import hour_of
from apm.core.lines import charging_power_w
from apm.core.meter_state import HourlyEnergy

# An EV drawing this much less than its setpoint takes no more (its own limit): the guard counts it at
# what it draws (+1 A), so that the room it leaves goes to the other chargers.
EV_LIMIT_GAP_A = 1.5


@dataclass(frozen=True, slots=True)
class GuardCaps:
    """One decision of the guard: its advice and the per-charger caps (A) it gives the balancer."""

    advice: GuardAdvice
    caps: dict[str, float]


class CapacityGuard:
    """Keeps each clock hour's energy under the owner's step (`CapacityGoal`); see the module doc."""

    def __init__(self, goal: CapacityGoal, network: Network, chargers: Sequence[ChargerConfig], *,
                 min_a: float = 6.0, log: MonthLog | None = None) -> None:
        self.goal = goal
        self.network: Network = network
        self.phases = {c.id: c.phases for c in chargers}  # in the configuration's order: its priority
        self.min_a = min_a
        self.log = log  # None until the first sample (then this month's, empty)
        self.meter: HourMeter | None = None
        self.last: GuardCaps | None = None
        self.lowered = 0  # decisions that held a charger under its max
        self.paused = 0  # decisions that held a charger at 0 A
        self._metered: set[datetime] = set()  # hours whose figure came from the meter (list 3)
        self._cap: tuple[datetime, MonthLog, float] | None = None  # hour_cap_kwh, cached per hour and log

    # --- inputs ----------------------------------------------------------------------------------

    def measure(self, t: datetime, import_w: float) -> None:
        """The import power (W) the meter reported, as of ``t``: integrated into the hour's energy."""
        t = t.astimezone(UTC)
        if self.log is None:
            self.log = MonthLog.of(t, self.goal.tz)  # an older month's log is replaced by its first hour
        if self.meter is None:
            start = HourMeter.start(t, import_w)
            before_h = (t - start.hour).total_seconds() / 3600  # unknown: counted at this power
            self.meter = replace(start, kwh=start.power_w / 1000 * before_h)
            return
        self.meter, closed = self.meter.advance(t, import_w)
        for hour, kwh in closed:
            if hour not in self._metered:
                self.log = self.log.with_hour(hour, kwh)

    def on_hourly(self, record: HourlyEnergy) -> None:
        """The meter's own figure for a closed hour (list 3's counters) replaces the integral; a record
        spanning missed hours cannot be split into hours and is left out."""
        if record.hours != 1:
            return
        try:
            start = datetime.fromisoformat(record.hour_start)
        except ValueError:
            return
        if start.tzinfo is None:  # a meter clock without offset is local time
            start = start.replace(tzinfo=self.goal.tz)
        start = start.astimezone(UTC)
        self._metered = {h for h in self._metered if h > start - timedelta(hours=3)} | {start}
        base = self.log if self.log is not None else MonthLog.of(start, self.goal.tz)
        self.log = base.with_hour(start, record.import_wh / 1000)

    # --- the decision ------------------------------------------------------------------------------

    def decide(self, t: datetime, import_w: float | None, states: Mapping[str, ChargerState],
               max_a: Mapping[str, float]) -> dict[str, float] | None:
        """Caps (A) for the chargers that want current, None before the first import power. ``max_a``:
        each charger's own limit (the balancer's)."""
        if import_w is not None:
            self.measure(t, import_w)
        if self.meter is None or self.log is None:
            return None
        t = t.astimezone(UTC)
        own_kw = sum(self._draw_kw(s) for cid, s in states.items() if cid in self.phases)
        household_kw = max(0.0, self.meter.power_w / 1000 - own_kw)
        advice = advise(self.goal, self.hour_cap(t), self.meter.used_kwh(t), t, household_kw)
        wanting = [self._guarded(cid, states[cid], max_a.get(cid, 32.0)) for cid in self.phases
                   if cid in states and states[cid].wants_current]
        caps = charger_currents(advice.chargers_kw, wanting)
        for g in wanting:
            if caps[g.id] == 0.0:
                self.paused += 1
            elif caps[g.id] < g.max_a:
                self.lowered += 1
        self.last = GuardCaps(advice, caps)
        return caps

    def hour_cap(self, t: datetime) -> float:
        """`hour_cap_kwh` for the hour of ``t`` (cached until the hour or the log changes)."""
        assert self.log is not None
        hour = hour_of(t)
        c = self._cap
        if c is None or c[0] != hour or c[1] is not self.log:
            c = self._cap = (hour, self.log, hour_cap_kwh(self.goal, self.log, t))
        return c[2]

    def _draw_kw(self, s: ChargerState) -> float:
        phases = s.phases_in_use or self.phases.get(s.id, 3)
        return charging_power_w(self.network, phases, s.draw_a) / 1000

    def _guarded(self, cid: str, s: ChargerState, max_a: float) -> GuardedCharger:
        phases = s.phases_in_use or self.phases[cid]
        top = max_a
        if s.mode == "charging" and s.draw_a >= self.min_a - 0.5 and s.draw_a < s.setpoint_a - EV_LIMIT_GAP_A:
            top = max(self.min_a, min(max_a, s.draw_a + 1.0))  # the EV's own limit, not ours
        return GuardedCharger(cid, charging_power_w(self.network, phases, 1.0) / 1000, self.min_a, top)

    # --- for the owner -------------------------------------------------------------------------------

    def status(self, t: datetime) -> CapacityStatus | None:
        """The month's counted peaks, their step, this hour's cap and use; None before the first sample."""
        if self.meter is None or self.log is None:
            return None
        return status(self.goal, self.log, self.meter.used_kwh(t), t)

    def to_dict(self, t: datetime) -> dict[str, Any] | None:
        """The status with the guard's present cap on each charger (for the web page, `apm info`, MQTT)."""
        st = self.status(t)
        if st is None:
            return None
        out = st.to_dict()
        last = self.last
        out["chargers_kw"] = (None if last is None or math.isinf(last.advice.chargers_kw)
                              else round(last.advice.chargers_kw, 2))
        out["caps_a"] = {} if last is None else {cid: round(a, 1) for cid, a in last.caps.items()}
        return out


# --- kept across a restart -------------------------------------------------------------------------


def month_doc(log: MonthLog) -> dict[str, Any]:
    """The month log as stored: its daily peak hours only (what the month's figure is made of), at most
    one ``[UTC hour start, kWh]`` per day."""
    best: dict[Any, tuple[datetime, float]] = {}
    for h, kwh in log.hours:
        day = h.astimezone(log.tz).date()
        if day not in best or kwh > best[day][1]:
            best[day] = (h, kwh)
    return {"month": f"{log.year:04d}-{log.month:02d}",
            "peaks": [[h.strftime("%Y-%m-%dT%H:%MZ"), round(k, 4)] for h, k in sorted(best.values())]}


def month_from_doc(doc: Mapping[str, Any], goal: CapacityGoal) -> MonthLog:
    """`month_doc`'s form back; ValueError/TypeError/KeyError for anything else."""
    year, month = (int(x) for x in str(doc["month"]).split("-"))
    log = MonthLog(year, month, (), goal.tz)
    for h, kwh in doc["peaks"]:
        if isinstance(kwh, bool) or not isinstance(kwh, int | float) or not math.isfinite(kwh):
            raise TypeError(f"not an hour's energy: {kwh!r}")
        hour = datetime.fromisoformat(str(h).replace("Z", "+00:00"))
        if hour.tzinfo is None or not log.holds(hour):
            raise ValueError(f"hour {h!r} is not in {doc['month']}")
        log = log.with_hour(hour, float(kwh))
    return log


def guard_for(goal: CapacityGoal | None, network: Network, chargers: Sequence[ChargerConfig], *,
              min_a: float = 6.0, log: MonthLog | None = None) -> CapacityGuard | None:
    """The guard for a configuration (None when ``[capacity]`` is off or there is no charger to guard)."""
    if goal is None or not chargers:
        return None
    return CapacityGuard(goal, network, chargers, min_a=min_a, log=log)
