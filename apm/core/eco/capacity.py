"""The capacity-charge guard, sans-IO: keep this clock hour's energy under the owner's chosen step.

The grid tariff's capacity element ("kapasitetsledd", apm.core.eco.tariff.CapacityCharge) is the mean of
the month's three highest hourly energies on different days, priced in steps. The owner picks a step
(``CapacityGoal.step_kw``, its upper bound: 5 means "stay in 2-5 kW"; a bound of the ladder, so that
a higher step never allows less, even in a month whose goal is already lost); during each hour the guard

1. measures the hour's energy so far (`HourMeter`: list 1's import power integrated; the hour is
   replaced by list 3's counter difference when that arrives, `MonthLog.with_hour`);
2. asks how much this hour may reach at most (`hour_cap_kwh`): the largest energy such that, if this
   hour and every later day of the month reached it, the month's figure would stay at the step. Early
   in a month that is the step's bound; an early high peak leaves less, the month's last days more;
3. projects the rest of the hour with the household's power now and returns the average power our
   chargers may draw until the hour ends (`advise`), which `charger_currents` turns into per-charger
   currents for the balancer's ``allowed_a`` (as the eco plan's caps): lower currents while every
   charger that runs gets its minimum, otherwise fewer chargers, and 0 A (pause) only when not even
   one charger's minimum fits. Because the cap is the average over the rest of the hour, a car whose
   minimum is above it waits and charges at its minimum in the hour's tail, when the room left is
   enough for that.

If the household stays constant and the chargers draw what `advise` allows, the hour ends exactly at
the cap less ``margin_kwh`` (the projection is a fixed point). The margin covers what chargers and
cars take to follow a lower setpoint.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo

from apm.core.config import CapacitySettings
from apm.core.eco.prices import OSLO
from apm.core.eco.tariff import ELVIA_CAPACITY, CapacityCharge, CapacityStep, TariffError, hour_of

HOUR = timedelta(hours=1)
# The common ladder of Norwegian DSOs' household tariffs (0-2, 2-5, 5-10, 10-15, 15-20, 20-25, 25-50,
# 50-75, 75-100, >100 kW): Elvia's from 2026-07-01, from kraftsystemet/fri-nettleie (research notes
# balancing-and-fuses.md 4.3), NOK/month ex VAT.
DEFAULT_LADDER = ELVIA_CAPACITY


def ladder(steps: Iterable[tuple[float, float]], peaks_counted: int = 3) -> CapacityCharge:
    """A ladder from ``(from_kw, nok_per_month)`` pairs in order, the first from 0 kW; the last step
    is open upwards (the configuration's form)."""
    pairs = list(steps)
    if not pairs:
        raise TariffError("a capacity ladder needs at least one step")
    tops = [lo for lo, _ in pairs[1:]] + [math.inf]
    return CapacityCharge(tuple(CapacityStep(lo, hi, nok) for (lo, nok), hi in zip(pairs, tops, strict=True)),
                          peaks_counted)


def ladder_pairs(charge: CapacityCharge) -> tuple[tuple[float, float], ...]:
    """The inverse of `ladder`."""
    return tuple((s.lo_kw, s.nok_per_month) for s in charge.steps)


@dataclass(frozen=True, slots=True)
class CapacityGoal:
    """The step the owner wants the month in, on a grid company's ladder. One object for the guard
    and the Smart eco planner (apm.core.eco.planner.CapacityLimit.for_goal)."""

    step_kw: float  # the month's figure stays at or under this: a step's upper bound on the ladder
    ladder: CapacityCharge = DEFAULT_LADDER
    margin_kwh: float = 0.0  # left unused each hour, for the chargers' lag
    tz: tzinfo = OSLO

    def __post_init__(self) -> None:
        if not (math.isfinite(self.step_kw) and self.step_kw > 0):
            raise TariffError(f"capacity step {self.step_kw} kW must be > 0")
        if not (math.isfinite(self.margin_kwh) and 0 <= self.margin_kwh < self.step_kw):
            raise TariffError(f"capacity margin {self.margin_kwh} kWh must be within 0..{self.step_kw}")
        bounds = self.ladder_bounds
        if self.step_kw not in bounds:
            raise TariffError(f"capacity step {self.step_kw:g} kW is not a step of the ladder: one of "
                              f"{', '.join(f'{b:g}' for b in bounds)}")

    @property
    def ladder_bounds(self) -> tuple[float, ...]:
        """The steps an owner can choose: the ladder's finite upper bounds."""
        return tuple(s.hi_kw for s in self.ladder.steps if math.isfinite(s.hi_kw))

    @property
    def step(self) -> CapacityStep:
        return self.ladder.step_for(self.step_kw)

    @property
    def nok_per_month(self) -> float:
        return self.step.nok_per_month


def goal_from_settings(settings: CapacitySettings, tz: tzinfo = OSLO) -> CapacityGoal | None:
    """The device config's ``[capacity]`` table as a goal (None when the guard is off)."""
    if not settings.enabled:
        return None
    return CapacityGoal(settings.step_kw, ladder(settings.ladder, settings.peaks_counted), settings.margin_kwh, tz)


# --- measuring the hour --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HourMeter:
    """The import energy of the clock hour ``hour`` so far, integrated from power samples: each sample
    holds until the next (list 1 comes every 2.5 s). ``at``/``power_w``: the last sample."""

    hour: datetime  # UTC start of the clock hour
    kwh: float
    at: datetime
    power_w: float

    @classmethod
    def start(cls, t: datetime, power_w: float) -> HourMeter:
        """A meter starting at ``t``; the hour's energy before ``t`` is unknown and counted as 0."""
        return cls(hour_of(t), 0.0, t.astimezone(UTC), max(0.0, power_w))

    def advance(self, t: datetime, power_w: float) -> tuple[HourMeter, tuple[tuple[datetime, float], ...]]:
        """The meter after a sample at ``t``, and the hours it closed on the way, (start, kWh) each.
        A sample older than the last is ignored; negative power (export) counts as 0."""
        t = t.astimezone(UTC)
        if t <= self.at:
            return self, ()
        closed = []
        hour, kwh, at = self.hour, self.kwh, self.at
        while t >= hour + HOUR:
            end = hour + HOUR
            closed.append((hour, kwh + self.power_w * (end - at).total_seconds() / 3.6e6))
            hour, kwh, at = end, 0.0, end
        kwh += self.power_w * (t - at).total_seconds() / 3.6e6
        return HourMeter(hour, kwh, t, max(0.0, power_w)), tuple(closed)

    def used_kwh(self, t: datetime) -> float:
        """Energy of the hour up to ``t`` (the last sample held), ``t`` within the hour."""
        t = min(t.astimezone(UTC), self.hour + HOUR)
        return self.kwh + self.power_w * max(0.0, (t - self.at).total_seconds()) / 3.6e6


@dataclass(frozen=True, slots=True)
class MonthLog:
    """The closed hours of one local calendar month, (UTC hour start, kWh) in time order."""

    year: int
    month: int
    hours: tuple[tuple[datetime, float], ...] = ()
    tz: tzinfo = OSLO

    @classmethod
    def of(cls, t: datetime, tz: tzinfo = OSLO) -> MonthLog:
        local = t.astimezone(tz)
        return cls(local.year, local.month, (), tz)

    def holds(self, t: datetime) -> bool:
        local = t.astimezone(self.tz)
        return (local.year, local.month) == (self.year, self.month)

    def with_hour(self, hour: datetime, kwh: float) -> MonthLog:
        """This log with one hour's energy added or replaced (list 3's counters correct the integral);
        an hour of a later month starts that month's log, one of an earlier month is ignored."""
        hour = hour.astimezone(UTC)
        if not self.holds(hour):
            local = hour.astimezone(self.tz)
            if (local.year, local.month) < (self.year, self.month):
                return self
            return MonthLog.of(hour, self.tz).with_hour(hour, kwh)
        kept = [(h, e) for h, e in self.hours if h != hour]
        kept.append((hour, max(0.0, kwh)))
        kept.sort(key=lambda p: p[0])
        return MonthLog(self.year, self.month, tuple(kept), self.tz)

    def daily_peaks(self) -> dict[date, float]:
        peaks: dict[date, float] = {}
        for h, kwh in self.hours:
            day = h.astimezone(self.tz).date()
            peaks[day] = max(peaks.get(day, 0.0), kwh)
        return peaks

    def counted_peaks(self, n: int) -> tuple[tuple[date, float], ...]:
        """The ``n`` highest daily peaks so far (the ones the month's figure is made of), highest first."""
        return tuple(sorted(self.daily_peaks().items(), key=lambda p: (-p[1], p[0]))[:n])

    def figure_kw(self, n: int) -> float:
        """The month's capacity figure so far: the mean of its (up to) ``n`` highest daily peaks."""
        peaks = self.counted_peaks(n)
        return sum(p for _, p in peaks) / len(peaks) if peaks else 0.0

    @property
    def days_in_month(self) -> int:
        return calendar.monthrange(self.year, self.month)[1]


# --- the cap ---------------------------------------------------------------------------------------


def _figure_with(others: Sequence[float], today: float, x: float, copies: int, n: int) -> float:
    """The month's figure if this hour reaches ``x`` (today's peak becomes max(today, x)) and ``copies``
    later days peak at ``x``: the mean of the ``n`` highest."""
    top = sorted([*others, max(today, x), *[x] * copies], reverse=True)[:n]
    return round(sum(top) / n, 9)


def hour_cap_kwh(goal: CapacityGoal, log: MonthLog, now: datetime) -> float:
    """The most energy the hour holding ``now`` may reach so that the month stays at ``goal.step_kw``
    even if every later day peaks as high (worst case). When the hours already logged put the month
    above the goal whatever comes, the goal becomes the bound of the step the month is bound to reach.
    Does not decrease through a month as long as the hours stay under it."""
    n = goal.ladder.peaks_counted
    local_day = now.astimezone(goal.tz).date()
    peaks = log.daily_peaks() if log.holds(now) else {}
    today = peaks.pop(local_day, 0.0)
    others = list(peaks.values())
    days_left = calendar.monthrange(local_day.year, local_day.month)[1] - local_day.day
    copies = min(n - 1, days_left)
    target = goal.step_kw
    least = _figure_with(others, today, 0.0, copies, n)
    if least > target:  # the goal is lost this month: hold the step it must reach
        target = goal.ladder.step_for(least).hi_kw
        if math.isinf(target):
            return math.inf
    # _figure_with is non-decreasing in x: bisect for the largest x that keeps the figure at target.
    lo, up = 0.0, target * n + 1.0
    for _ in range(60):
        mid = (lo + up) / 2
        lo, up = (mid, up) if _figure_with(others, today, mid, copies, n) <= target else (lo, mid)
    return lo


@dataclass(frozen=True, slots=True)
class GuardAdvice:
    """What the guard allows for the rest of the hour, from ``at``."""

    at: datetime
    hour: datetime  # UTC start of the hour
    cap_kwh: float  # the hour may reach this (inf: no cap)
    used_kwh: float  # the hour's energy so far
    household_kw: float  # the household's power now (import less our chargers)
    chargers_kw: float  # average power our chargers may draw until the hour ends (inf: no limit)

    @property
    def left_kwh(self) -> float:
        """How many kWh may still be used this hour to stay in the step (household included)."""
        return max(0.0, self.cap_kwh - self.used_kwh)

    @property
    def remaining_h(self) -> float:
        return (self.hour + HOUR - self.at).total_seconds() / 3600

    def projected_kwh(self, chargers_kw: float) -> float:
        """The hour's energy if the household stays as now and our chargers draw ``chargers_kw``."""
        return self.used_kwh + (self.household_kw + chargers_kw) * self.remaining_h


def advise(goal: CapacityGoal, cap_kwh: float, used_kwh: float, now: datetime, household_kw: float) -> GuardAdvice:
    """The chargers' power for the rest of the hour that keeps the hour at ``cap_kwh - margin``
    (``cap_kwh`` from `hour_cap_kwh`, ``used_kwh`` from `HourMeter.used_kwh`)."""
    hour = hour_of(now)
    at = now.astimezone(UTC)
    household_kw = max(0.0, household_kw)
    if math.isinf(cap_kwh):
        return GuardAdvice(at, hour, cap_kwh, used_kwh, household_kw, math.inf)
    remaining_h = max((hour + HOUR - at).total_seconds() / 3600, 1e-6)
    room = cap_kwh - goal.margin_kwh - used_kwh
    chargers_kw = max(0.0, room / remaining_h - household_kw)
    return GuardAdvice(at, hour, cap_kwh, used_kwh, household_kw, chargers_kw)


# --- from power to currents ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GuardedCharger:
    """A charger with a car that wants current: its power per ampere (phases in use, network) and its
    current range."""

    id: str
    kw_per_a: float
    min_a: float = 6.0
    max_a: float = 32.0


def _level(cap_kw: float, chargers: Sequence[GuardedCharger]) -> float:
    """The common current L with sum(kw_per_a * min(max_a, L)) = cap_kw (water-filling in amperes,
    the balancer's fairness); max of the max_a when the cap is more than all can take."""
    left = cap_kw
    order = sorted(chargers, key=lambda c: c.max_a)
    weight = sum(c.kw_per_a for c in order)
    for c in order:
        level = left / weight
        if level <= c.max_a:
            return level
        left -= c.kw_per_a * c.max_a
        weight -= c.kw_per_a
    return max(c.max_a for c in chargers)


def charger_currents(cap_kw: float, chargers: Sequence[GuardedCharger]) -> dict[str, float]:
    """Per-charger caps (A) whose power adds up to at most ``cap_kw``: equal currents (each up to its
    max) while every running charger gets its minimum; otherwise the last chargers in ``chargers``
    (the lowest priority) are paused (0 A) one by one. ``cap_kw`` inf: each charger's max."""
    out = {c.id: 0.0 for c in chargers}
    running = list(chargers)
    while running:
        level = math.inf if math.isinf(cap_kw) else _level(max(0.0, cap_kw), running)
        if all(min(c.max_a, level) >= c.min_a for c in running):
            for c in running:
                out[c.id] = min(c.max_a, level)
            return out
        running.pop()
    return out


def merge_caps(*caps: dict[str, float] | None) -> dict[str, float] | None:
    """The per-charger minimum of several ``allowed_a`` maps (eco plan, guard); None: no cap at all."""
    given = [c for c in caps if c is not None]
    if not given:
        return None
    out: dict[str, float] = {}
    for cap in given:
        for cid, a in cap.items():
            out[cid] = min(a, out.get(cid, math.inf))
    return out


# --- for the owner ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CapacityStatus:
    """This month's capacity step as an owner reads it (web page, Home Assistant)."""

    month: str  # "2026-01"
    peaks: tuple[tuple[date, float], ...]  # the daily peaks that count, highest first
    figure_kw: float
    step: CapacityStep  # the step the peaks so far put the month in
    goal_kw: float
    hour_cap_kwh: float
    hour_used_kwh: float

    @property
    def hour_left_kwh(self) -> float:
        return max(0.0, self.hour_cap_kwh - self.hour_used_kwh)

    def to_dict(self) -> dict[str, object]:
        return {
            "month": self.month,
            "peaks": [{"day": d.isoformat(), "kwh": round(k, 3)} for d, k in self.peaks],
            "figure_kw": round(self.figure_kw, 3),
            "step": {"from_kw": self.step.lo_kw, "to_kw": None if math.isinf(self.step.hi_kw) else self.step.hi_kw,
                     "nok_per_month": self.step.nok_per_month},
            "goal_kw": self.goal_kw,
            "hour_cap_kwh": None if math.isinf(self.hour_cap_kwh) else round(self.hour_cap_kwh, 3),
            "hour_used_kwh": round(self.hour_used_kwh, 3),
            "hour_left_kwh": None if math.isinf(self.hour_cap_kwh) else round(self.hour_left_kwh, 3),
        }


def status(goal: CapacityGoal, log: MonthLog, used_kwh: float, now: datetime) -> CapacityStatus:
    n = goal.ladder.peaks_counted
    figure = log.figure_kw(n) if log.holds(now) else 0.0
    local = now.astimezone(goal.tz)
    return CapacityStatus(f"{local:%Y-%m}", log.counted_peaks(n) if log.holds(now) else (), figure,
                          goal.ladder.step_for(figure), goal.step_kw, hour_cap_kwh(goal, log, now), used_kwh)
