"""Norwegian grid tariff: the energy charge by time of day and the capacity charge ("kapasitetsledd").

Capacity charge (most DSOs): for each day take the highest hourly energy (kWh in one clock hour,
i.e. the hour's mean kW); the month's figure is the mean of the three highest of those daily maxima;
it falls into a step priced per month. A step holds lo < x <= hi (the lowest includes 0), so an hour
total exactly at a step's upper bound does not move the house up.
Prices are NOK excluding VAT.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo

from apm.core.eco.prices import OSLO


class TariffError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class EnergyCharge:
    """Grid energy charge per kWh: a day rate on weekdays [day_start_hour, day_end_hour), the night rate
    otherwise (and all weekend when ``weekend_is_night``). Public holidays are not modelled."""

    day_nok_per_kwh: float
    night_nok_per_kwh: float
    day_start_hour: int = 6
    day_end_hour: int = 22
    weekend_is_night: bool = True
    tz: tzinfo = OSLO

    def __post_init__(self) -> None:
        if not 0 <= self.day_start_hour <= self.day_end_hour <= 24:
            raise TariffError(
                f"day hours {self.day_start_hour}-{self.day_end_hour} must satisfy 0 <= start <= end <= 24"
            )

    def rate_at(self, t: datetime) -> float:
        local = t.astimezone(self.tz)
        if self.weekend_is_night and local.weekday() >= 5:
            return self.night_nok_per_kwh
        if self.day_start_hour <= local.hour < self.day_end_hour:
            return self.day_nok_per_kwh
        return self.night_nok_per_kwh


@dataclass(frozen=True, slots=True)
class CapacityStep:
    lo_kw: float
    hi_kw: float  # math.inf for the top step
    nok_per_month: float

    def holds(self, kw: float) -> bool:
        return (self.lo_kw < kw or (self.lo_kw == 0 and kw >= 0)) and kw <= self.hi_kw


@dataclass(frozen=True, slots=True)
class CapacityCharge:
    steps: tuple[CapacityStep, ...]
    peaks_counted: int = 3  # daily maxima averaged per month

    def __post_init__(self) -> None:
        if not self.steps or self.steps[0].lo_kw != 0 or not math.isinf(self.steps[-1].hi_kw):
            raise TariffError("capacity steps must start at 0 kW and end with an open top step")
        for a, b in zip(self.steps, self.steps[1:], strict=False):
            if a.hi_kw != b.lo_kw or a.hi_kw <= a.lo_kw:
                raise TariffError(f"capacity steps {a.lo_kw}-{a.hi_kw} and {b.lo_kw}-{b.hi_kw} do not join")

    def step_for(self, kw: float) -> CapacityStep:
        if kw < 0:
            raise TariffError(f"capacity figure {kw} kW is negative")
        kw = round(kw, 6)  # meters count whole Wh: sums landing a hair over a bound are on it
        return next(s for s in self.steps if s.holds(kw))

    def monthly_nok(self, kw: float) -> float:
        return self.step_for(kw).nok_per_month

    def month_figure(self, hourly_kwh: Iterable[tuple[datetime, float]], tz: tzinfo = OSLO) -> float:
        """Mean of the ``peaks_counted`` highest daily maxima (fewer days so far: mean of those)."""
        peaks = sorted(daily_peaks(hourly_kwh, tz).values(), reverse=True)[: self.peaks_counted]
        return sum(peaks) / len(peaks) if peaks else 0.0

    def cap_kw(self, hourly_kwh_so_far: Iterable[tuple[datetime, float]], tz: tzinfo = OSLO) -> float:
        """The highest energy (kWh) every hour from now on may reach while the month stays in the step
        it is in now. Worst case: that energy becomes the peak of today and of as many later days as
        peaks are counted; so the month's figure with those extra peaks must stay within the step.
        Not simply the step's bound: an early high peak leaves less room."""
        hourly = list(hourly_kwh_so_far)
        peaks = sorted(daily_peaks(hourly, tz).values(), reverse=True)
        hi = self.step_for(self.month_figure(hourly, tz)).hi_kw
        if math.isinf(hi):
            return math.inf
        n = self.peaks_counted

        def figure(x: float) -> float:
            top = sorted([*peaks, *[x] * n], reverse=True)[:n]
            return round(sum(top) / len(top), 6)

        # figure() is non-decreasing in x: bisect for the largest x that keeps it within the step.
        lo, up = 0.0, hi * n + 1.0
        for _ in range(100):
            mid = (lo + up) / 2
            lo, up = (mid, up) if figure(mid) <= hi else (lo, mid)
        return min(lo, hi)  # x above hi would itself fill the top peaks


def daily_peaks(hourly_kwh: Iterable[tuple[datetime, float]], tz: tzinfo = OSLO) -> dict[date, float]:
    """The highest clock-hour energy of each local day."""
    peaks: dict[date, float] = {}
    for t, kwh in hourly_kwh:
        day = t.astimezone(tz).date()
        peaks[day] = max(peaks.get(day, -math.inf), kwh)
    return peaks


def hour_of(t: datetime) -> datetime:
    """Start of the clock hour holding ``t``, in UTC: Norwegian offsets are whole hours, and UTC
    arithmetic stays right across the DST changes."""
    return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def hourly_energy(intervals: Iterable[tuple[datetime, datetime, float]]) -> dict[datetime, float]:
    """Energy per clock hour from (start, end, kWh) intervals; an interval spanning hours is split in
    proportion to time."""
    hours: dict[datetime, float] = defaultdict(float)
    for start, end, kwh in intervals:
        span = (end - start).total_seconds()
        if span <= 0:
            continue
        t = start
        while t < end:
            h = hour_of(t)
            nxt = min(end, h + timedelta(hours=1))
            hours[h] += kwh * (nxt - t).total_seconds() / span
            t = nxt
    return dict(hours)


@dataclass(frozen=True, slots=True)
class GridTariff:
    name: str
    energy: EnergyCharge
    capacity: CapacityCharge = field(default_factory=lambda: ELVIA_CAPACITY)


def _per_month(steps_nok_per_year: list[tuple[float, float, float]]) -> CapacityCharge:
    return CapacityCharge(tuple(CapacityStep(lo, hi, round(y / 12, 2)) for lo, hi, y in steps_nok_per_year))


# Elvia households from 2026-07-01 (kraftsystemet/fri-nettleie tariffer/elvia.yml; NOK/year ex VAT, /12).
ELVIA_CAPACITY: CapacityCharge = _per_month(
    [
        (0, 2, 1440),
        (2, 5, 2400),
        (5, 10, 4032),
        (10, 15, 5616),
        (15, 20, 7248),
        (20, 25, 8880),
        (25, 50, 16896),
        (50, 75, 24960),
        (75, 100, 33024),
        (100, math.inf, 65280),
    ]
)
# Same source: 16.99 ore/kWh, weekdays 06-21 29.15 ore/kWh.
ELVIA = GridTariff("elvia-2026", EnergyCharge(0.2915, 0.1699, 6, 21), ELVIA_CAPACITY)
# Spot price only (what Zaptec's Eco mode considers).
NO_GRID_CHARGE = EnergyCharge(0.0, 0.0)
