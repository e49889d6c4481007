"""Prices as Norwegians pay them (Norgespris, strømstøtte, 15-minute slots) and the fallback source."""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta

import pytest

from apm.eco.fallback import FallbackSource
from apm.eco.price_api import PriceApiError
from apm.eco.prices import OSLO, PriceSeries, PriceSlot, sample_week
from apm.eco.retail import NORGESPRIS, SPOT, STROMSTOTTE, paid, subsidy_by_hour

T0 = datetime(2026, 1, 12, 17, tzinfo=OSLO)


def _quarters(prices: list[float], start: datetime = T0) -> PriceSeries:
    q = timedelta(minutes=15)
    return PriceSeries("NO1", tuple(PriceSlot(start + i * q, start + (i + 1) * q, p) for i, p in enumerate(prices)))


def test_norgespris_is_flat_and_spot_unchanged() -> None:
    week = sample_week()
    fixed = paid(week, NORGESPRIS)
    assert {s.nok_per_kwh for s in fixed} == {0.40}
    assert [s.start for s in fixed] == [s.start for s in week]
    assert paid(week, SPOT) is week
    assert NORGESPRIS.flat and not STROMSTOTTE.flat


def test_stromstotte_pays_90_percent_above_75_ore_hour_by_hour() -> None:
    # one hour of quarters averaging 1.25 NOK: subsidy 0.9 * (1.25 - 0.75) = 0.45 on every quarter;
    # the next hour at 0.70 mean: none
    s = _quarters([1.0, 1.5, 1.0, 1.5, 0.6, 0.8, 0.7, 0.7])
    sub = subsidy_by_hour(s)
    assert list(sub.values()) == [pytest.approx(0.45), 0.0]
    got = [x.nok_per_kwh for x in paid(s, STROMSTOTTE)]
    assert got == pytest.approx([0.55, 1.05, 0.55, 1.05, 0.6, 0.8, 0.7, 0.7])
    # above the threshold the household pays threshold + 10 % of the rest, on the hour's mean
    assert sum(got[:4]) / 4 == pytest.approx(0.75 + 0.1 * 0.5)


class _Source:
    def __init__(self, result: object) -> None:
        self.result = result
        self.asked = 0

    def day(self, day: date) -> object:
        self.asked += 1
        if isinstance(result := self.result, Exception):
            raise result
        return result


class _AsyncSource(_Source):
    async def day(self, day: date) -> object:  # type: ignore[override]
        return _Source.day(self, day)


def test_fallback_uses_the_second_source_when_the_first_fails() -> None:
    series = _quarters([1.0] * 4)
    first, second = _Source(PriceApiError("HTTP 503")), _AsyncSource(series)
    fb = FallbackSource(first, second)
    assert asyncio.run(fb.day(date(2026, 1, 12))) is series
    assert fb.last is not None and fb.last.source == 1 and "HTTP 503" in fb.last.errors[0]
    # the first answers: the second is not asked
    fb = FallbackSource(_AsyncSource(series), second)
    assert asyncio.run(fb.day(date(2026, 1, 12))) is series
    assert second.asked == 1


def test_fallback_not_published_and_both_failing() -> None:
    fb = FallbackSource(_Source(None), _Source(None))
    assert asyncio.run(fb.day(date(2026, 1, 13))) is None
    fb = FallbackSource(_Source(OSError("no route")), _Source(PriceApiError("HTTP 500")))
    with pytest.raises(PriceApiError, match="no route.*HTTP 500"):
        asyncio.run(fb.day(date(2026, 1, 13)))
