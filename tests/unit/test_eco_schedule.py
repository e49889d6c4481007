"""What the balancer gets from a plan: 0 A outside planned slots, the minimum current in partial slots,
and the manual "charge now" override until the car leaves."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apm.core.eco.planner import CarRequest, Charger, plan
from apm.core.eco.prices import OSLO, PriceSeries, PriceSlot
from apm.core.eco.schedule import EcoSchedule, allowed_current, change_times
from tests.eco_serve import serve

T0 = datetime(2026, 1, 12, 18, 0, tzinfo=OSLO)


def series(prices: list[float], minutes: int = 60) -> PriceSeries:
    step = timedelta(minutes=minutes)
    return PriceSeries(
        "NO1", tuple(PriceSlot(T0 + i * step, T0 + (i + 1) * step, p) for i, p in enumerate(prices))
    )


def test_zero_outside_planned_slots_and_planned_current_inside():
    ps = series([2.0, 0.1, 2.0, 0.2])
    charger = Charger("car", 16.0, 3, "TN")
    p = plan([CarRequest(charger, ps.end, 2 * charger.max_kw)], ps, T0)
    at = lambda h, m=0: T0 + timedelta(hours=h, minutes=m)  # noqa: E731
    assert allowed_current(p, "car", at(0, 30)) == 0.0
    assert allowed_current(p, "car", at(1)) == 16.0
    assert allowed_current(p, "car", at(1, 59)) == 16.0
    assert allowed_current(p, "car", at(2)) == 0.0
    assert allowed_current(p, "car", at(3, 30)) == 16.0
    assert allowed_current(p, "car", at(4)) == 0.0  # departed
    with pytest.raises(KeyError, match="no charger 'other'"):
        allowed_current(p, "other", at(1))


def test_partial_slot_runs_at_minimum_current_late_in_the_slot():
    ps = series([0.5, 0.1])
    charger = Charger("car", 16.0, 3, "TN", min_a=6.0)
    # 3 A for the cheap hour = 6 A for its last half hour.
    p = plan([CarRequest(charger, ps.end, 3 * charger.kw_per_a)], ps, T0)
    assert p.chargers[0].slots[0].current_a == pytest.approx(3.0)
    assert allowed_current(p, "car", T0 + timedelta(hours=1, minutes=29)) == 0.0
    assert allowed_current(p, "car", T0 + timedelta(hours=1, minutes=30)) == 6.0
    assert allowed_current(p, "car", T0 + timedelta(hours=1, minutes=59)) == 6.0


@settings(max_examples=60, deadline=None)
@given(
    prices=st.lists(st.floats(0, 3, allow_nan=False), min_size=1, max_size=8),
    fraction=st.floats(0, 1),
    max_a=st.sampled_from([6.0, 10.0, 16.0, 32.0]),
)
def test_serving_a_plan_delivers_its_energy(prices, fraction, max_a):
    ps = series(prices, 15)
    charger = Charger("car", max_a, 3, "IT")
    need = fraction * charger.max_kw * len(prices) / 4
    p = plan([CarRequest(charger, ps.end, need)], ps, T0)
    got = serve([p], budget_a=max_a)
    assert got["car"] == pytest.approx(need, abs=1e-6)
    # Never below the minimum while on.
    for t in change_times(p, "car"):
        a = allowed_current(p, "car", t)
        assert a == 0.0 or a >= charger.min_a - 1e-9


def test_charge_now_overrides_until_the_car_leaves():
    ps = series([2.0, 0.1])
    charger = Charger("car", 16.0, 3, "TN")
    p = plan([CarRequest(charger, ps.end, 5.0)], ps, T0)
    s = EcoSchedule(p)
    assert s.allowed_current("car", T0, 16.0) == 0.0
    s.charge_now("car")
    assert s.allowed_current("car", T0, 16.0) == 16.0
    assert s.allowed_current("car", T0 + timedelta(hours=5), 16.0) == 16.0  # past the plan too
    s.car_left("car")
    assert s.allowed_current("car", T0, 16.0) == 0.0
    assert s.allowed_current("car", T0 + timedelta(hours=1, minutes=50), 16.0) > 0
    assert s.allowed_current("unplanned", T0, 16.0) == 0.0
    assert EcoSchedule().allowed_current("car", T0, 16.0) == 0.0
