"""The one Controller: readings and charger states in; headroom, setpoints and records out. Sans-IO.

    han.Reading (stamped when measured) -> MeterState -> HeadroomEstimator -> Headroom
    ChargerState (each charger's report) ---------------^                        |
    subscription state, eco plan  -> gate and eco caps --> Balancer ----------> Setpoints

Both drivers call the same methods in the same way:

- the device (`apm.services.device.Device` and `apm.services.balancer.BalancerService`): ``on_reading`` for every
  decoded frame, ``on_charger_states`` for every charger report, ``decide`` on every new headroom and
  every second, ``tick`` every second;
- the fast simulation (`sim.closed_loop.run`): the same, once per simulated step.

No asyncio, no files, no sockets, no clock: every method takes the time it is about (clock seconds).
What comes out is frozen values; publishing them is the driver's business.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from apm.core.balancer import Balancer, BalancerSettings, Mode
from apm.core.capacity_guard import CapacityGuard
from apm.core.charger_state import ChargerState
from apm.core.config import ChargerConfig, DeviceConfig, GridConfig, HeadroomSettings
from apm.core.eco.capacity import merge_caps
from apm.core.eco.schedule import EcoSchedule
from apm.core.headroom import Headroom, HeadroomEstimator
from apm.core.meter_state import HourlyEnergy, MeterState
from apm.core.subscription import FUSE_PROTECTION, Gate, SubscriptionState, features, gate
from apm.core.wiring import wiring_advice
from han import Reading

HanState = str  # "no data" | "fresh" | "stale"

# Meter data gone stale under fuse protection: the house may have grown since the last measurement,
# and the fixed current (fuse - margin, shared) on top of a loaded house can trip the fuse. So what the
# last fresh decision gave each charger is held (a list or two lost costs nothing), then brought down
# steadily toward ``min_a``: never more than the last measured headroom allowed, and less the longer
# nobody knows what the house draws. The fixed current still caps it.
STALE_HOLD_S = 60.0
STALE_DECAY_A_PER_S = 1.0 / 30.0


def balancer_settings(config: DeviceConfig) -> BalancerSettings:
    """The device's thresholds: its ``[balancer]`` table, which carries the top-level ``fixed_current_a``."""
    return config.balancer


@dataclass(frozen=True, slots=True)
class ReadingOutcome:
    """What one reading changed: the headroom now (None before the first per-phase list), the hourly
    record a list 3 completed, the installation advice when it changed, whether the meter is new."""

    reading: Reading
    measured_at: float
    headroom: Headroom | None
    hourly: HourlyEnergy | None = None
    advice: tuple[str, ...] | None = None  # None: unchanged
    new_meter: bool = False
    han_back: HanState | None = None  # the HAN state before this reading, when it was not "fresh"


@dataclass(frozen=True, slots=True)
class Setpoint:
    charger: str
    current_a: float
    reason: str
    changed: bool
    stage: str = ""  # the balancer's `apm.core.balancer.Stage` for it ("running", "paused", ...)
    until: float | None = None  # when that stage ends at the earliest (clock s; `ChargerStage.until`)


@dataclass(frozen=True, slots=True)
class Setpoints:
    """One decision: every charger's setpoint, the mode it was made in ("protect", "fixed",
    "fixed: stale meter data (30 s)", ...), and the headroom it rests on."""

    at: float
    mode: str
    setpoints: tuple[Setpoint, ...]
    headroom: Headroom | None

    def as_dict(self) -> dict[str, float]:
        return {s.charger: s.current_a for s in self.setpoints}


@dataclass(frozen=True, slots=True)
class Tick:
    """Time-driven news: the HAN data went stale (the headroom the balancer would use is too old)."""

    at: float
    went_stale: bool
    silent_s: float  # seconds since the last reading (0 without one)


@dataclass(frozen=True, slots=True)
class ControllerStatus:
    han_state: HanState
    last_reading_at: float | None
    readings: int
    counts: dict[int, int]
    hourly_records: int
    repeated_hourly_dropped: int
    setpoint_changes: int
    stale_s: float
    advice: tuple[str, ...]


class Controller:
    """The device's decisions, driven by whoever has readings and charger states (module doc).

    ``settings`` are the balancer's (its ``stale_after_s`` also ages the headroom unless
    ``stale_after_s`` is given); ``headroom`` (the config's ``[headroom]``) and ``headroom_options``
    (single settings by name) go to `HeadroomEstimator`."""

    def __init__(self, grid: GridConfig, chargers: Sequence[ChargerConfig], *,
                 settings: BalancerSettings | None = None,
                 headroom: HeadroomSettings | None = None,
                 headroom_options: Mapping[str, Any] | None = None,
                 stale_after_s: float | None = None) -> None:
        self.grid = grid
        self.chargers = tuple(chargers)
        self.settings = settings or BalancerSettings()
        # When HAN data counts as stale for the headroom and the status (the balancer's own setting
        # unless the driver says otherwise)
        self.stale_after_s = self.settings.stale_after_s if stale_after_s is None else stale_after_s
        self.meter = MeterState()
        self.estimator = HeadroomEstimator(grid, chargers, headroom, stale_after_s=self.stale_after_s,
                                           **dict(headroom_options or {}))
        self.balancer = Balancer(grid.network, chargers, self.settings)
        self.max_a = {c.id: c.max_a for c in chargers}
        self.states: dict[str, ChargerState] = {}
        self.headroom: Headroom | None = None
        self.subscription: SubscriptionState | None = None
        self.granted: frozenset[str] = frozenset()
        self.eco = EcoSchedule()
        self.capacity: CapacityGuard | None = None  # the capacity-charge guard (`set_capacity`)
        self.advice: tuple[str, ...] = ()
        self.han_state: HanState = "no data"
        self.last_reading_at: float | None = None
        self.readings = 0
        self.hourly = 0
        self.stale_s = 0.0  # clock seconds decided on the fallback for stale or missing meter data
        self.last: Setpoints | None = None
        self._observed_at = float("-inf")
        self._held: dict[str, float] = {}  # each charger's setpoint at the last decision on fresh data
        self._stale_since: float | None = None
        self._external = False  # the headroom comes from elsewhere (`use_headroom`), not from readings

    # --- inputs ----------------------------------------------------------------------------------

    def on_reading(self, measured_at: float, reading: Reading) -> ReadingOutcome:
        """A decoded reading, stamped with when the meter measured it."""
        self.readings += 1
        self.last_reading_at = measured_at
        back = None if self.han_state == "fresh" else self.han_state
        self.han_state = "fresh"
        new_meter = reading.meter != self.meter.meter
        record = self.meter.update(measured_at, reading)
        if record is not None:
            self.hourly += 1
            if self.capacity is not None:
                self.capacity.on_hourly(record)
        advice = None
        if reading.list != 1:
            now_advice = wiring_advice(self.grid.network, self.chargers, reading)
            if now_advice != self.advice:
                self.advice = advice = now_advice
        return ReadingOutcome(reading, measured_at, self.headroom_at(measured_at), record, advice, new_meter, back)

    def on_charger_states(self, now: float, states: Iterable[ChargerState]) -> Headroom | None:
        """Charger reports: what each drew at ``state.at`` goes into the estimator's history (in time
        order); a car that left ends its "charge now". Returns the headroom recomputed."""
        for st in states:
            self.states[st.id] = st
            self._observed_at = max(self._observed_at, min(st.at, now))
            if st.mode == "disconnected":
                self.eco.car_left(st.id)  # a "charge now" lasts until the car leaves
        self.estimator.observe_chargers(self._observed_at, self.states)
        return self.headroom_at(now)

    def use_headroom(self, headroom: Headroom | None) -> None:
        """A headroom computed elsewhere (a balancer running apart from the device, over MQTT)."""
        self._external = True
        self.headroom = headroom

    def set_subscription(self, state: SubscriptionState | None, granted: Iterable[str] | None = None) -> None:
        """The subscription as evaluated (None: none known). ``granted``: the features its token grants
        (default: as `apm.core.subscription.features` says with fresh HAN data)."""
        self.subscription = state
        if state is None:
            self.granted = frozenset()
        else:
            self.granted = frozenset(granted if granted is not None else features(state, han_fresh=True))

    def replace_charger(self, charger: ChargerConfig) -> None:
        """A charger's limits changed while running (the web page's max current); same id and wiring."""
        self.chargers = tuple(charger if c.id == charger.id else c for c in self.chargers)
        self.max_a[charger.id] = charger.max_a
        self.balancer.replace_charger(charger)
        self.estimator.chargers[charger.id] = charger

    def set_eco(self, schedule: EcoSchedule) -> None:
        self.eco = schedule

    def set_capacity(self, guard: CapacityGuard | None) -> None:
        """The capacity-charge guard (`apm.core.capacity_guard`): its caps join the eco plan's whenever
        ``decide`` is given the wall-clock time."""
        self.capacity = guard

    # --- decisions -------------------------------------------------------------------------------

    def gate(self) -> Gate:
        """What the subscription allows; meter freshness is the `Balancer`'s own check."""
        fixed = self.settings.fixed_current_a
        if self.subscription is None:
            return Gate(frozenset(), fixed)
        g = gate(self.subscription, True, fixed)
        active = g.features & self.granted
        return Gate(active, None if FUSE_PROTECTION in active else fixed)

    def eco_caps(self, now_dt: datetime) -> dict[str, float] | None:
        """Eco caps per charger, or None when no plan applies."""
        eco = self.eco
        if eco.plan is None and not eco.overrides:
            return None
        out: dict[str, float] = {}
        for cid, max_a in self.max_a.items():
            plan = eco.plan
            planned = plan is not None and cid in plan.charger_ids and now_dt < plan.charger(cid).departure
            if cid in eco.overrides or planned:
                out[cid] = eco.allowed_current(cid, now_dt, max_a)
        return out or None

    def decide(self, now: float, now_dt: datetime | None = None, *, mode: Mode | None = None,
               allowed_a: Mapping[str, float] | None = None) -> Setpoints:
        """Every charger's setpoint now. ``mode``/``allowed_a`` given: a simulation that models the
        subscription and the eco plan itself; otherwise they follow from the subscription and eco inputs
        (eco needs ``now_dt``, the wall-clock date of ``now``). The capacity guard's caps (with ``now_dt``)
        are added in either case: they only ever lower a charger."""
        if mode is None:
            g = self.gate()
            mode = "protect" if g.fuse_protection else "fixed"
            if g.eco and now_dt is not None:
                allowed_a = self.eco_caps(now_dt)
        guard = None
        if self.capacity is not None and now_dt is not None:
            guard = self.capacity.decide(now_dt, self.meter.value("active_import_w"), self.states, self.max_a)
            allowed_a = merge_caps(dict(allowed_a) if allowed_a is not None else None, guard)
        before = self.last.as_dict() if self.last is not None else self.balancer.setpoints
        values = self.balancer.update(now, self.headroom, self.states, mode=mode, allowed_a=allowed_a)
        d = self.balancer.last
        how = d.mode if d is not None else mode
        if self.last is not None and self.last.mode.startswith("fixed:"):
            self.stale_s += max(0.0, now - self.last.at)  # the time since a decision on the fallback
        reasons = dict(d.reasons) if d is not None else {}
        if guard:
            _guard_reasons(guard, allowed_a or {}, values, reasons, self.max_a)
        if mode == "protect" and how != "protect":  # protection asked for, the meter data missing
            values = self._stale_cap(now, values, reasons)
        else:
            self._stale_since = None
            if how == "protect":
                self._held = dict(values)
        stages = d.stages if d is not None else {}
        out = tuple(Setpoint(cid, a, reasons.get(cid, how), before.get(cid) != a,
                             str(stages[cid].stage) if cid in stages else "",
                             stages[cid].until if cid in stages else None) for cid, a in values.items())
        self.last = Setpoints(now, how, out, self.headroom)
        return self.last

    def _stale_cap(self, now: float, values: dict[str, float], reasons: dict[str, str]) -> dict[str, float]:
        """``values`` (the balancer's fixed fallback) capped by the stale policy (STALE_HOLD_S)."""
        if not self._held:
            return values  # never measured: only the fixed current is known to be safe on its own
        if self._stale_since is None:
            self._stale_since = now
        over = now - self._stale_since - STALE_HOLD_S
        step = self.settings.resolution_a
        out = dict(values)
        for cid, a in values.items():
            held = self._held.get(cid, 0.0)
            cap = held if over <= 0 else max(min(held, self.settings.min_a), held - STALE_DECAY_A_PER_S * over)
            cap = math.floor(cap / step + 1e-9) * step
            if cap < a:
                out[cid] = round(cap, 3)
                reasons[cid] = f"held: stale meter data ({now - self._stale_since:.0f} s)"
        return out

    def tick(self, now: float) -> Tick:
        """Time-driven checks: HAN data that stopped coming turns stale (the balancer then falls back
        to the fixed current by itself, at the next ``decide``)."""
        silent = 0.0 if self.last_reading_at is None else now - self.last_reading_at
        stale = self.han_state == "fresh" and silent > self.stale_after_s
        if stale:
            self.han_state = "stale"
        return Tick(now, stale, silent)

    # --- status ----------------------------------------------------------------------------------

    def han_fresh(self, now: float) -> bool:
        return self.last_reading_at is not None and now - self.last_reading_at <= self.stale_after_s

    def status(self) -> ControllerStatus:
        m = self.meter
        return ControllerStatus(self.han_state, self.last_reading_at, self.readings, dict(m.counts),
                                self.hourly, m.repeats, self.balancer.changes, self.stale_s, self.advice)

    def headroom_at(self, now: float) -> Headroom | None:
        """The headroom recomputed for ``now`` (None before the first per-phase list)."""
        if self._external:
            return self.headroom
        h = self.estimator.compute(now, self.meter)
        if h is not None:
            self.headroom = h
        return h


def _guard_reasons(guard: Mapping[str, float], allowed: Mapping[str, float], values: Mapping[str, float],
                   reasons: dict[str, str], max_a: Mapping[str, float]) -> None:
    """Name the capacity guard where its cap is the one that holds a charger (the balancer calls every
    cap from outside an "eco plan" one)."""
    for cid, cap in guard.items():
        if cap > allowed.get(cid, math.inf) or cap >= max_a.get(cid, math.inf):
            continue  # the eco plan's cap is lower, or the guard leaves the charger its max
        held = values.get(cid, 0.0)
        if reasons.get(cid, "").startswith("eco plan") or (held > 0 and held >= math.floor(cap) - 1e-9):
            reasons[cid] = f"capacity guard: {cap:.1f} A until the hour ends"
