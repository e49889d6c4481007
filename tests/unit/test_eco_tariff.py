"""Grid energy charge by time of day and the capacity charge (three highest daily peaks, in steps)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apm.core.eco.prices import OSLO
from apm.core.eco.tariff import (
    ELVIA,
    ELVIA_CAPACITY,
    CapacityCharge,
    CapacityStep,
    EnergyCharge,
    TariffError,
    daily_peaks,
    hourly_energy,
)

MON = datetime(2026, 1, 12, tzinfo=OSLO)


def test_day_night_and_weekend_rates() -> None:
    e = EnergyCharge(0.40, 0.25, 6, 22)
    assert e.rate_at(MON.replace(hour=5, minute=59)) == 0.25
    assert e.rate_at(MON.replace(hour=6)) == 0.40
    assert e.rate_at(MON.replace(hour=21, minute=45)) == 0.40
    assert e.rate_at(MON.replace(hour=22)) == 0.25
    assert e.rate_at(MON + timedelta(days=5, hours=12)) == 0.25  # Saturday noon
    # Local time decides, whatever the offset the time is written in.
    assert e.rate_at(datetime.fromisoformat("2026-01-12T05:30:00+00:00")) == 0.40
    assert ELVIA.energy.rate_at(MON.replace(hour=21)) == pytest.approx(0.1699)
    with pytest.raises(TariffError):
        EnergyCharge(0.4, 0.2, 22, 6)


def test_steps_and_monthly_price() -> None:
    c = ELVIA_CAPACITY
    assert c.step_for(0).hi_kw == 2
    assert c.step_for(2.0).hi_kw == 2  # a bound belongs to the step below it
    assert c.step_for(2.0001).lo_kw == 2
    assert c.step_for(4.999).nok_per_month == 200.0
    assert c.monthly_nok(12.0) == 468.0
    assert math.isinf(c.step_for(1000).hi_kw)
    with pytest.raises(TariffError, match="do not join"):
        CapacityCharge((CapacityStep(0, 2, 1), CapacityStep(3, math.inf, 2)))


def test_month_figure_takes_one_peak_per_day() -> None:
    hours = [
        (MON.replace(hour=8), 9.0),
        (MON.replace(hour=18), 7.0),  # same day: only the 9 counts
        (MON + timedelta(days=1, hours=8), 5.0),
        (MON + timedelta(days=2, hours=8), 4.0),
        (MON + timedelta(days=3, hours=8), 1.0),
    ]
    assert daily_peaks(hours)[MON.date()] == 9.0
    assert ELVIA_CAPACITY.month_figure(hours) == pytest.approx((9 + 5 + 4) / 3)
    assert ELVIA_CAPACITY.cap_kw(hours) == pytest.approx(10)  # 6 kW is in the 5-10 step
    # An early high peak leaves less room: (7 + x + x) / 3 <= 5 -> x <= 4.
    early = [(MON, 7.0), (MON + timedelta(days=1), 1.0), (MON + timedelta(days=2), 1.0)]
    assert ELVIA_CAPACITY.month_figure(early) == pytest.approx(3.0)
    assert ELVIA_CAPACITY.cap_kw(early) == pytest.approx(4.0)
    assert ELVIA_CAPACITY.month_figure(hours[:1]) == 9.0  # first day of the month
    assert ELVIA_CAPACITY.month_figure([]) == 0.0


def test_hourly_energy_splits_intervals_over_clock_hours() -> None:
    h = hourly_energy([(MON.replace(hour=7, minute=30), MON.replace(hour=8, minute=30), 4.0)])
    assert h == {MON.replace(hour=7): 2.0, MON.replace(hour=8): 2.0}


@given(st.lists(st.tuples(st.integers(0, 24 * 30 - 1), st.floats(0, 30)), min_size=1, max_size=80))
def test_staying_under_the_cap_keeps_the_step(samples: list[tuple[int, float]]) -> None:
    """If every later hour stays at or under cap_kw, the month never reaches a higher step."""
    hours = {MON.replace(day=1) + timedelta(hours=h): kwh for h, kwh in samples}
    cut = len(hours) // 2
    items = sorted(hours.items())
    before, after = items[:cut], items[cut:]
    cap = ELVIA_CAPACITY.cap_kw(before)
    step = ELVIA_CAPACITY.step_for(ELVIA_CAPACITY.month_figure(before))
    capped = before + [(t, min(kwh, cap)) for t, kwh in after]
    later = ELVIA_CAPACITY.step_for(ELVIA_CAPACITY.month_figure(capped))
    assert later.hi_kw <= step.hi_kw or math.isinf(step.hi_kw)
