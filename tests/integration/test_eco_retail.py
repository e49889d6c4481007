"""Prices as Norwegians pay them (Norgespris, strømstøtte, 15-minute slots) and the fallback source."""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta

import pytest

from apm.core.eco.prices import OSLO, PriceSeries, PriceSlot, sample_week
from apm.core.eco.retail import NORGESPRIS, SPOT, STROMSTOTTE, paid, subsidy_by_hour
from apm.io.http.fallback import FallbackSource
from apm.io.http.prices import PriceApiError

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


def test_savings_under_norgespris_are_grid_and_capacity_only() -> None:
    from apm.core.eco.savings import commuter_week, verdict

    out = commuter_week(model=NORGESPRIS)
    at_once, capped = out[0], out[-1]
    assert {round(o.spot_nok, 6) for o in out} == {round(120 * 0.40, 6)}  # 120 kWh at 40 øre, whenever
    assert capped.grid_nok < at_once.grid_nok  # night rate
    assert capped.capacity_nok_per_month < at_once.capacity_nok_per_month
    words = verdict(out, NORGESPRIS)
    assert "saves nothing on the energy price" in words[1]
    assert "NOK a month on the capacity step" in words[2]
    spot = verdict(commuter_week(), SPOT)
    assert "saves nothing" not in spot[1]


def test_cli_savings_norgespris() -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-m", "apm", "eco", "savings", "--norgespris"], cwd=root,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Norgespris 40 øre/kWh" in r.stdout
    assert "Smart eco saves nothing on the energy price" in r.stdout
    assert "on the capacity step" in r.stdout
    r = subprocess.run([sys.executable, "-m", "apm", "eco", "savings", "--norgespris", "--stromstotte"],
                       cwd=root, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
