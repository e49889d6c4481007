"""Nord Pool's day-ahead document (the data portal's ``DayAheadPrices``) read into a `PriceSeries`.

The portal answers ``GET {base}/api/DayAheadPrices?market=DayAhead&date=YYYY-MM-DD&deliveryArea=NO1
&currency=NOK`` with one delivery day (``date`` is the day in CET/CEST, which is Oslo time)::

    {"deliveryDateCET": "2026-01-12", "market": "DayAhead", "currency": "NOK", "deliveryAreas": ["NO1"],
     "areaStates": [{"state": "Final", "areas": ["NO1"]}],
     "multiAreaEntries": [{"deliveryStart": "2026-01-11T23:00:00Z", "deliveryEnd": "2026-01-11T23:15:00Z",
                           "entryPerArea": {"NO1": 566.35}}, ...], ...}

Prices are per MWh in the asked currency, spot ex VAT: /1000 gives NOK/kWh, the unit of hvakosterstrommen.no
and of the planner. Times are UTC; a day has 96 quarter-hours (92 and 100 on the DST days) since delivery
day 2025-10-01, 24 hours (23, 25) before. Before publication (~13:00) the portal answers 204 with no body
or an empty entry list: that is "not published", not an error.

Pure: bytes in, a series (or None) out. apm.io.http.prices.NordPoolClient does the HTTP.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from apm.core.eco.prices import OSLO, PriceError, PriceSeries, PriceSlot, check_area, local_iso, parse_time

HOST = "dataportal-api.nordpoolgroup.com"
DEFAULT_BASE_URL = f"https://{HOST}"


def day_url(base_url: str, area: str, day: date) -> str:
    """The portal's URL for one Oslo-time delivery day of one area, priced in NOK."""
    return (f"{base_url.rstrip('/')}/api/DayAheadPrices?market=DayAhead&date={day:%Y-%m-%d}"
            f"&deliveryArea={area}&currency=NOK")


@dataclass(frozen=True, slots=True)
class NordPoolDay:
    series: PriceSeries
    final: bool  # the area's state is "Final"; "Preliminary" prices may still change (not cached)


def _load(body: str | bytes, where: str) -> dict[str, Any] | None:
    if not body.strip():
        return None
    try:
        doc = json.loads(body)
    except json.JSONDecodeError as exc:
        raise PriceError(f"{where}invalid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PriceError(f"{where}expected a JSON object with 'multiAreaEntries'")
    return doc


def _state(doc: dict[str, Any], area: str) -> str | None:
    for entry in doc.get("areaStates") or ():
        if isinstance(entry, dict) and area in (entry.get("areas") or ()):
            return str(entry.get("state"))
    return None


def _slot(entry: Any, area: str, at: str) -> PriceSlot:
    if not isinstance(entry, dict) or "deliveryStart" not in entry or "deliveryEnd" not in entry:
        raise PriceError(f"{at}missing 'deliveryStart' or 'deliveryEnd'")
    per_area = entry.get("entryPerArea")
    value = per_area.get(area) if isinstance(per_area, dict) else None
    if value is None:
        # A hole in one area is not filled from another area or a neighbour: the day is refused whole.
        raise PriceError(f"{at}no {area} price (areas: {sorted(per_area) if isinstance(per_area, dict) else []})")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PriceError(f"{at}{area} price {value!r} is not a number")
    start = parse_time(str(entry["deliveryStart"]), at)
    end = parse_time(str(entry["deliveryEnd"]), at)
    return PriceSlot(start, end, value / 1000.0)


def parse_day(body: str | bytes, area: str, day: date, where: str = "") -> NordPoolDay | None:
    """One delivery day of ``area`` from the portal's answer; None when it is not published yet (an empty
    answer or no entries). PriceError when the document is for another currency, area or day, misses the
    area's price in any slot, or leaves a gap."""
    check_area(area)
    doc = _load(body, where)
    if doc is None:
        return None
    currency = doc.get("currency", "NOK")
    if currency != "NOK":
        raise PriceError(f"{where}prices in {currency!r}, not NOK")  # EUR/MWh read as NOK would be ~11x off
    areas = doc.get("deliveryAreas")
    if isinstance(areas, list) and area not in areas:
        raise PriceError(f"{where}the document is for {', '.join(map(str, areas)) or 'no area'}, not {area}")
    entries = doc.get("multiAreaEntries")
    if not entries:
        return None
    if not isinstance(entries, list):
        raise PriceError(f"{where}'multiAreaEntries' is not a list")
    slots = sorted((_slot(e, area, f"{where}entry {i}: ") for i, e in enumerate(entries)), key=lambda s: s.start)
    try:
        series = PriceSeries(area, tuple(slots))
    except PriceError as exc:
        raise PriceError(f"{where}{exc}") from None
    start = datetime.combine(day, time(0), OSLO)
    end = datetime.combine(day + timedelta(days=1), time(0), OSLO)
    if series.start != start or series.end != end:
        raise PriceError(f"{where}covers {local_iso(series.start)}..{local_iso(series.end)},"
                         f" not the delivery day {day}")
    return NordPoolDay(series, _state(doc, area) == "Final")
