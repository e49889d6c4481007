"""Price slots, series and loaders; the bundled sample week."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from apm.core.eco.prices import (
    OSLO,
    PriceError,
    PriceSeries,
    PriceSlot,
    load_file,
    parse_csv,
    parse_json,
    sample_week,
)

FIXTURES = Path(__file__).resolve().parents[1] / "eco_fixtures"


def test_sample_week_is_a_plausible_no1_winter_week() -> None:
    w = sample_week()
    assert w.area == "NO1"
    assert len(w) == 7 * 96
    assert w.start == datetime(2026, 1, 12, tzinfo=OSLO) and w.end == datetime(2026, 1, 19, tzinfo=OSLO)
    assert all(s.hours == 0.25 for s in w)
    prices = [s.nok_per_kwh for s in w]
    assert min(prices) > 0.3 and max(prices) < 2.5
    # Weekday shape: the morning (08) and evening (18) peaks cost clearly more than the night (03).
    for day in range(5):
        d0 = w.start + timedelta(days=day)

        def hour_mean(h: int, d0: datetime = d0) -> float:
            return sum(w.at(d0 + timedelta(hours=h, minutes=15 * q)).nok_per_kwh for q in range(4)) / 4

        assert hour_mean(8) > 1.6 * hour_mean(3)
        assert hour_mean(18) > 1.6 * hour_mean(3)
    # 15-minute texture: quarters within an hour differ.
    assert len({s.nok_per_kwh for s in w.slots[32:36]}) == 4


def test_csv_start_end_and_time_price_forms() -> None:
    a = parse_csv(
        "# recorded\nstart,end,price_nok_per_kwh\n"
        "2026-01-12T00:00+01:00,2026-01-12T01:00+01:00,0.5\n"
        "2026-01-12T01:00+01:00,2026-01-12T02:00+01:00,0.75\n",
        "NO3",
    )
    b = parse_csv("time,price\n2026-01-11T23:00Z,0.5\n2026-01-12T00:00Z,0.75\n", "NO3")
    assert a == b
    assert a.area == "NO3" and a.slots[1].nok_per_kwh == 0.75 and a.slots[1].hours == 1


def test_json_forms_agree(tmp_path: Path) -> None:
    api = load_file(FIXTURES / "2026-01-12_NO1.json")
    ours = tmp_path / "p.json"
    ours.write_text(json.dumps(api.to_json_dict()))
    assert load_file(ours) == api
    csv_file = tmp_path / "p.csv"
    csv_file.write_text(api.to_csv())
    assert load_file(csv_file) == api
    assert api == sample_week().window(api.start, api.end)


def test_hourly_dst_day_has_23_slots() -> None:
    # 2026-03-29: clocks go from 02:00 +01:00 to 03:00 +02:00 in Oslo.
    start = datetime(2026, 3, 29, tzinfo=OSLO).astimezone(UTC)
    rows = []
    for h in range(23):
        a, b = (start + timedelta(hours=i) for i in (h, h + 1))
        rows.append(
            {
                "NOK_per_kWh": 0.4,
                "EUR_per_kWh": 0.03,
                "EXR": 11.7,
                "time_start": a.astimezone(OSLO).isoformat(),
                "time_end": b.astimezone(OSLO).isoformat(),
            }
        )
    s = parse_json(json.dumps(rows), "NO2")
    assert len(s) == 23
    assert s.end - s.start == timedelta(hours=23)
    assert s.end == datetime(2026, 3, 30, tzinfo=OSLO)
    assert s.slots[2].start.astimezone(OSLO).utcoffset() == timedelta(hours=2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("start,end,price_nok_per_kwh\n2026-01-12T00:00,2026-01-12T01:00,0.5\n", "no UTC offset"),
        ("start,end,price_nok_per_kwh\n2026-01-12T00:00Z,2026-01-12T01:00Z,cheap\n", "line 2: price 'cheap'"),
        ("when,what\n2026-01-12T00:00Z,1\n", "expected 'start,end,price_nok_per_kwh' or 'time,price'"),
        ("start,end,price_nok_per_kwh\n2026-01-12T00:00Z,2026-01-12T00:20Z,0.5\n", "lasts 20 min"),
        (
            "time,price\n2026-01-12T00:00Z,1\n2026-01-12T01:00Z,1\n2026-01-12T03:00Z,1\n",
            "lasts 120 min",
        ),
        (
            "start,end,price_nok_per_kwh\n2026-01-12T00:00Z,2026-01-12T01:00Z,1\n2026-01-12T02:00Z,2026-01-12T03:00Z,1\n",
            "gap between",
        ),
        ("time,price\n2026-01-12T00:00Z,1\n", "one 'time' row"),
    ],
)
def test_bad_csv_is_refused_precisely(text: str, message: str) -> None:
    with pytest.raises(PriceError, match=message):
        parse_csv(text)


def test_bad_json_and_area() -> None:
    with pytest.raises(PriceError, match="invalid JSON"):
        parse_json("[")
    with pytest.raises(PriceError, match="entry 1: missing"):
        parse_json(
            '[{"time_start": "2026-01-12T00:00Z", "time_end": "2026-01-12T01:00Z", "NOK_per_kWh": 1}, {}]'
        )
    with pytest.raises(PriceError, match="unknown price area 'SE3'"):
        parse_csv("time,price\n2026-01-12T00:00Z,1\n2026-01-12T01:00Z,1\n", "SE3")
    with pytest.raises(PriceError, match="unknown price file type"):
        load_file("prices.txt")


def test_estimates_repeat_yesterday_and_are_replaced_by_published_prices() -> None:
    w = sample_week()
    day1 = w.window(w.start, w.start + timedelta(days=1))
    ext = day1.extended_until(w.start + timedelta(days=1, hours=8))
    assert ext.known_until == day1.end
    assert len(ext) == 96 + 32
    for s in ext.slots[96:]:
        assert s.estimated
        assert s.nok_per_kwh == day1.at(s.start - timedelta(days=1)).nok_per_kwh
    real = w.window(w.start + timedelta(days=1), w.start + timedelta(days=2))
    merged = ext.merged(real)
    assert merged == w.window(w.start, w.start + timedelta(days=2))
    assert merged.known_until == real.end


def test_slot_needs_aware_times() -> None:
    with pytest.raises(PriceError, match="not timezone-aware"):
        PriceSlot(datetime(2026, 1, 1), datetime(2026, 1, 1, 1), 1.0)
    with pytest.raises(PriceError, match="at least one slot"):
        PriceSeries("NO1", ())
