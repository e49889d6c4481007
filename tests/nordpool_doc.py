"""Nord Pool data-portal documents (``/api/DayAheadPrices``) shaped like the real ones, for tests.

The envelope's fields are the portal's (deliveryDateCET, version, updatedAt, deliveryAreas, market,
multiAreaEntries, blockPriceAggregates, currency, exchangeRate, areaStates, areaAverages); each entry
carries every asked area's price in NOK/MWh, rounded to the cent as the portal does, with UTC times.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from apm.core.eco.prices import OSLO, parse_json

FIXTURES = Path(__file__).resolve().parent / "eco_fixtures"


def _utc(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def day_slots(day: date, minutes: int = 15) -> list[tuple[datetime, datetime]]:
    """The delivery day's slots in UTC: 96/92/100 quarter-hours (24/23/25 hours) on normal/DST days."""
    start = datetime.combine(day, time(0), OSLO).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(0), OSLO).astimezone(UTC)
    step = timedelta(minutes=minutes)
    return [(start + i * step, start + (i + 1) * step) for i in range((end - start) // step)]


def document(day: date, prices_nok_per_kwh: Sequence[float], *, area: str = "NO1", minutes: int = 15,
             state: str = "Final", others: Sequence[str] = ("NO2",)) -> dict[str, Any]:
    """One delivery day. ``others`` are further areas priced in each entry (the portal answers for
    several when asked; we ask for one, but must pick ours out)."""
    slots = day_slots(day, minutes)
    if len(prices_nok_per_kwh) != len(slots):
        raise ValueError(f"{day} has {len(slots)} slots of {minutes} min, not {len(prices_nok_per_kwh)}")
    areas = [area, *others]
    entries = [
        {"deliveryStart": _utc(a), "deliveryEnd": _utc(b),
         "entryPerArea": {x: round(p * 1000 + 7.5 * k, 2) for k, x in enumerate(areas)}}
        for (a, b), p in zip(slots, prices_nok_per_kwh, strict=True)
    ]
    mean = round(sum(prices_nok_per_kwh) * 1000 / len(slots), 2)
    return {
        "deliveryDateCET": f"{day:%Y-%m-%d}",
        "version": 3,
        "updatedAt": f"{day - timedelta(days=1):%Y-%m-%d}T11:57:12.1843621Z",
        "deliveryAreas": areas,
        "market": "DayAhead",
        "multiAreaEntries": entries,
        "blockPriceAggregates": [
            {"blockName": "Off-peak 1", "deliveryStart": entries[0]["deliveryStart"],
             "deliveryEnd": entries[len(entries) // 3]["deliveryStart"],
             "averagePricePerArea": {x: {"average": mean, "min": mean, "max": mean} for x in areas}},
        ],
        "currency": "NOK",
        "exchangeRate": 11.71,
        "areaStates": [{"state": state, "areas": areas}],
        "areaAverages": [{"areaCode": x, "price": mean} for x in areas],
    }


def fixture_prices(day: date, area: str = "NO1") -> list[float]:
    """The prices of a recorded hvakosterstrommen.no day (tests/eco_fixtures), so both services tell the
    same day."""
    series = parse_json((FIXTURES / f"{day:%Y-%m-%d}_{area}.json").read_bytes(), area)
    return [s.nok_per_kwh for s in series]


def body(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=1).encode()
