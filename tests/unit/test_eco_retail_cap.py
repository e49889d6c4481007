"""Norgespris's monthly cap: the fixed price for the first 5000 kWh of a calendar month in a home (1000 in
a holiday home), the contract's (spot) price above it, the count starting again each month."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from apm.core.eco.prices import OSLO, PriceSeries, PriceSlot
from apm.core.eco.retail import (
    NORGESPRIS,
    NORGESPRIS_HOLIDAY_HOME_MONTHLY_KWH,
    NORGESPRIS_MONTHLY_KWH,
    SPOT,
    PriceModel,
    energy_cost,
    paid,
)


def quarters(start: datetime, prices: list[float]) -> PriceSeries:
    q = timedelta(minutes=15)
    return PriceSeries("NO1", tuple(PriceSlot(start + k * q, start + (k + 1) * q, p) for k, p in enumerate(prices)))


JAN = datetime(2026, 1, 20, 18, tzinfo=OSLO)
MONTH_END = datetime(2026, 1, 31, 23, 30, tzinfo=OSLO)  # two quarters in January, two in February


def test_the_cap_is_the_rule_in_force() -> None:
    assert NORGESPRIS_MONTHLY_KWH == 5000 and NORGESPRIS_HOLIDAY_HOME_MONTHLY_KWH == 1000
    assert NORGESPRIS.monthly_cap_kwh == 5000


def test_under_the_cap_every_slot_is_at_the_fixed_price() -> None:
    spot = quarters(JAN, [2.0, 0.1, 1.5])
    assert [s.nok_per_kwh for s in paid(spot, NORGESPRIS, used_kwh=4999)] == [0.40] * 3
    assert energy_cost(spot, [1.0, 1.0, 1.0], NORGESPRIS, used_kwh=1200) == pytest.approx(1.20)


def test_past_the_cap_the_rest_of_the_month_is_at_spot() -> None:
    spot = quarters(MONTH_END, [2.0, 1.8, 2.2, 1.0])
    assert [s.nok_per_kwh for s in paid(spot, NORGESPRIS, used_kwh=5000)] == [2.0, 1.8, 0.40, 0.40]


def test_energy_is_split_at_the_cap_and_the_count_restarts_with_the_month() -> None:
    spot = quarters(MONTH_END, [2.0, 1.8, 2.2, 1.0])
    # 4990 kWh used: 10 of the first slot's 20 at 0.40, its other 10 and the second slot at spot;
    # February starts again under the cap.
    got = energy_cost(spot, [20.0, 5.0, 3.0, 2.0], NORGESPRIS, used_kwh=4990)
    assert got == pytest.approx(10 * 0.40 + 10 * 2.0 + 5 * 1.8 + 3 * 0.40 + 2 * 0.40)


def test_a_holiday_home_has_its_own_cap() -> None:
    cabin = PriceModel("norgespris", monthly_cap_kwh=NORGESPRIS_HOLIDAY_HOME_MONTHLY_KWH)
    spot = quarters(JAN, [2.0, 2.0])
    assert energy_cost(spot, [4.0, 4.0], cabin, used_kwh=996) == pytest.approx(4 * 0.40 + 4 * 2.0)
    assert energy_cost(spot, [4.0, 4.0], NORGESPRIS, used_kwh=996) == pytest.approx(8 * 0.40)


def test_spot_has_no_cap() -> None:
    spot = quarters(JAN, [2.0, 0.5])
    assert energy_cost(spot, [1.0, 2.0], SPOT, used_kwh=1e6) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="2 energies for 3 slots"):
        energy_cost(quarters(JAN, [1, 1, 1]), [1.0, 1.0], SPOT)
