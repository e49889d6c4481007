"""The planner on 15-minute prices (day-ahead since 2025-10-01): 96 slots a day, a plan in quarters."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from apm.core.eco.planner import CarRequest, Charger, plan, plan_at_once
from apm.core.eco.prices import OSLO, PriceSeries, PriceSlot

Q = timedelta(minutes=15)
DAY = datetime(2026, 1, 12, tzinfo=OSLO)


def test_a_plan_over_96_quarters_takes_the_cheapest_ones() -> None:
    # Dear all day except eight scattered quarters; the car needs about two hours at full power.
    cheap = {9, 14, 27, 33, 40, 41, 58, 63}
    prices = PriceSeries("NO1", tuple(PriceSlot(DAY + k * Q, DAY + (k + 1) * Q, 0.2 if k in cheap else 2.0)
                                      for k in range(96)))
    assert len(prices) == 96
    car = Charger("garage", max_a=16, phases=3, network="TN")
    need = 8 * 0.25 * car.max_kw  # all eight cheap quarters at full power
    p = plan([CarRequest(car, DAY + timedelta(days=1), need)], prices, DAY)
    slots = p.charger("garage").slots
    assert p.feasible and sum(s.energy_kwh for s in slots) == pytest.approx(need)
    assert {int((s.start - DAY) / Q) for s in slots} == cheap
    assert all(s.end - s.start == Q for s in slots)
    assert p.cost_nok < plan_at_once([CarRequest(car, DAY + timedelta(days=1), need)], prices, DAY).cost_nok
