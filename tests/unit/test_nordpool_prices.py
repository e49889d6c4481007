"""Nord Pool's day-ahead document read into the planner's series (apm.core.eco.nordpool), and how a
``--price-api`` value picks a service (apm.io.http.fallback.client_for)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pytest

from apm.core.eco.nordpool import day_url, parse_day
from apm.core.eco.prices import OSLO, PriceError
from apm.io.http.fallback import FallbackSource, client_for, price_source
from apm.io.http.prices import NordPoolClient, PriceClient
from tests.nordpool_doc import body, document, fixture_prices

JAN12 = date(2026, 1, 12)
SPRING = date(2026, 3, 29)  # Oslo: 02:00 +01:00 -> 03:00 +02:00, 23 hours
AUTUMN = date(2026, 10, 25)  # Oslo: 03:00 +02:00 -> 02:00 +01:00, 25 hours


def ramp(n: int) -> list[float]:
    return [round(0.3 + 0.01 * i, 5) for i in range(n)]


def test_a_quarter_hour_day_matches_the_recorded_hvakosterstrommen_day() -> None:
    prices = fixture_prices(JAN12)
    day = parse_day(body(document(JAN12, prices)), "NO1", JAN12)
    assert day is not None and day.final
    s = day.series
    assert len(s) == 96 and {x.hours for x in s} == {0.25}
    assert s.start == datetime(2026, 1, 12, tzinfo=OSLO) and s.end == datetime(2026, 1, 13, tzinfo=OSLO)
    # NOK/MWh rounded to the øre per MWh, /1000: equal to the recorded NOK/kWh to 1e-5.
    assert [x.nok_per_kwh for x in s] == pytest.approx(prices, abs=1e-5)
    assert s.slots[0].nok_per_kwh == pytest.approx(0.56635)


def test_our_area_is_picked_out_of_several() -> None:
    doc = document(JAN12, [0.5] * 96, area="NO1", others=("NO2", "NO5"))
    no1 = parse_day(body(doc), "NO1", JAN12)
    no5 = parse_day(body(doc), "NO5", JAN12)
    assert no1 is not None and no5 is not None
    assert no1.series.slots[0].nok_per_kwh == pytest.approx(0.5)
    assert no5.series.slots[0].nok_per_kwh == pytest.approx(0.515)  # the builder's per-area offset
    assert no5.series.area == "NO5"


def test_an_hourly_day_before_the_15_minute_market() -> None:
    day = date(2025, 9, 30)
    got = parse_day(body(document(day, ramp(24), minutes=60)), "NO1", day)
    assert got is not None and len(got.series) == 24 and {x.hours for x in got.series} == {1.0}
    assert got.series.slots[23].nok_per_kwh == pytest.approx(0.53)


@pytest.mark.parametrize(("day", "minutes", "slots", "hours"), [
    (SPRING, 15, 92, 23), (AUTUMN, 15, 100, 25), (SPRING, 60, 23, 23), (AUTUMN, 60, 25, 25),
])
def test_dst_days(day: date, minutes: int, slots: int, hours: int) -> None:
    got = parse_day(body(document(day, ramp(slots), minutes=minutes)), "NO1", day)
    assert got is not None
    s = got.series
    assert len(s) == slots and s.end - s.start == timedelta(hours=hours)
    assert s.start == datetime.combine(day, datetime.min.time(), OSLO)
    assert all(x.start.tzinfo is UTC for x in s)  # kept in UTC: the repeated autumn hour stays two hours
    assert [x.nok_per_kwh for x in s] == pytest.approx(ramp(slots))


def test_autumn_repeated_hour_keeps_both_quarters_apart() -> None:
    got = parse_day(body(document(AUTUMN, ramp(100))), "NO1", AUTUMN)
    assert got is not None
    local = [x.start.astimezone(OSLO) for x in got.series]
    twos = [t for t in local if t.hour == 2 and t.minute == 0]
    assert [t.utcoffset() for t in twos] == [timedelta(hours=2), timedelta(hours=1)]


@pytest.mark.parametrize("text", [b"", b"  \n", b'{"multiAreaEntries": []}',
                                  body({**document(JAN12, [0.5] * 96), "multiAreaEntries": []})])
def test_before_publication_is_not_published_not_an_error(text: bytes) -> None:
    assert parse_day(text, "NO1", JAN12) is None


def test_a_missing_area_price_refuses_the_day() -> None:
    doc = document(JAN12, [0.5] * 96)
    del doc["multiAreaEntries"][40]["entryPerArea"]["NO1"]
    with pytest.raises(PriceError, match="entry 40: no NO1 price"):
        parse_day(body(doc), "NO1", JAN12)
    doc["multiAreaEntries"][40]["entryPerArea"]["NO1"] = None  # as the portal writes a hole
    with pytest.raises(PriceError, match="entry 40: no NO1 price"):
        parse_day(body(doc), "NO1", JAN12)


def test_a_document_for_other_areas_is_refused() -> None:
    doc = document(JAN12, [0.5] * 96, area="NO2", others=())
    with pytest.raises(PriceError, match="for NO2, not NO1"):
        parse_day(body(doc), "NO1", JAN12)


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update(currency="EUR"), "in 'EUR', not NOK"),
    (lambda d: d["multiAreaEntries"].pop(50), "gap between"),
    (lambda d: d["multiAreaEntries"].pop(), "not the delivery day 2026-01-12"),
    (lambda d: d["multiAreaEntries"][3]["entryPerArea"].update(NO1="12,3"), "price '12,3' is not a number"),
    (lambda d: d["multiAreaEntries"][3].update(deliveryStart="2026-01-12T01:45:00"), "no UTC offset"),
    (lambda d: d["multiAreaEntries"][3].pop("deliveryEnd"), "missing 'deliveryStart' or 'deliveryEnd'"),
    (lambda d: d.update(multiAreaEntries={"a": 1}), "not a list"),
])
def test_bad_documents_are_refused_precisely(change, message: str) -> None:  # type: ignore[no-untyped-def]
    doc = document(JAN12, [0.5] * 96)
    change(doc)
    with pytest.raises(PriceError, match=message):
        parse_day(body(doc), "NO1", JAN12)


def test_the_wrong_day_is_refused() -> None:
    with pytest.raises(PriceError, match="not the delivery day 2026-01-13"):
        parse_day(body(document(JAN12, [0.5] * 96)), "NO1", date(2026, 1, 13))


def test_not_json_is_refused() -> None:
    with pytest.raises(PriceError, match="invalid JSON"):
        parse_day(b"<html>busy</html>", "NO1", JAN12)
    with pytest.raises(PriceError, match="JSON object"):
        parse_day(json.dumps([1]), "NO1", JAN12)


def test_preliminary_prices_are_marked() -> None:
    got = parse_day(body(document(JAN12, [0.5] * 96, state="Preliminary")), "NO1", JAN12)
    assert got is not None and not got.final


def test_the_portal_url() -> None:
    assert day_url("https://dataportal-api.nordpoolgroup.com/", "NO3", date(2026, 3, 29)) == (
        "https://dataportal-api.nordpoolgroup.com/api/DayAheadPrices?market=DayAhead&date=2026-03-29"
        "&deliveryArea=NO3&currency=NOK")


@pytest.mark.parametrize(("spec", "kind", "base"), [
    ("nordpool", NordPoolClient, "https://dataportal-api.nordpoolgroup.com"),
    ("hvakosterstrommen", PriceClient, "https://www.hvakosterstrommen.no"),
    ("https://dataportal-api.nordpoolgroup.com", NordPoolClient, "https://dataportal-api.nordpoolgroup.com"),
    ("https://prices.example.net/mirror/", PriceClient, "https://prices.example.net/mirror"),
    ("nordpool:http://127.0.0.1:8081", NordPoolClient, "http://127.0.0.1:8081"),
    ("hvakosterstrommen:http://127.0.0.1:8082", PriceClient, "http://127.0.0.1:8082"),
])
def test_a_price_api_value_picks_the_format(spec: str, kind: type, base: str) -> None:
    c = client_for("NO1", spec)
    assert type(c) is kind and c.base_url == base


@pytest.mark.parametrize("spec", ["nordpol", "nordpool:", "nordpool:ftp://x", "ftp://x", "www.example.net"])
def test_a_mistyped_price_api_value_is_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="price service"):
        client_for("NO1", spec)


def test_default_is_hvakosterstrommen_with_nord_pool_behind() -> None:
    src = price_source("NO2", ["default"])
    assert isinstance(src, FallbackSource)
    first, second = src.sources
    assert type(first) is PriceClient and type(second) is NordPoolClient
    assert isinstance(second, NordPoolClient) and second.area == "NO2"
    with pytest.raises(ValueError, match="give it alone"):
        price_source("NO1", ["default", "nordpool"])
