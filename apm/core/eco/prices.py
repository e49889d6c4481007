"""Day-ahead spot prices: one slot, a contiguous series, and loaders (CSV, JSON, the bundled week).

Prices are NOK per kWh excluding VAT, as the day-ahead market publishes them (converted from EUR/MWh).
Slots are 15 minutes since delivery day 2025-10-01 (SDAC 15-minute MTU), 60 minutes before; 30 is
accepted too. Times are always timezone-aware; files must carry a UTC offset on every time.
"""

from __future__ import annotations

import csv
import io
import json
import math
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

OSLO = ZoneInfo("Europe/Oslo")
AREAS = ("NO1", "NO2", "NO3", "NO4", "NO5")
SLOT_MINUTES = (15, 30, 60)
SAMPLE_WEEK = "no1-sample-week.csv"


class PriceError(ValueError):
    """Prices that cannot be used: malformed file, naive time, gap, overlap, unknown area."""


def check_area(area: str) -> str:
    if area not in AREAS:
        raise PriceError(f"unknown price area {area!r}; expected one of {', '.join(AREAS)}")
    return area


def local_iso(t: datetime) -> str:
    """ISO 8601 in Oslo time, as the market and its users write it."""
    return t.astimezone(OSLO).isoformat()


def parse_time(text: str, where: str = "") -> datetime:
    """An ISO 8601 time with a UTC offset ('Z' allowed)."""
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise PriceError(f"{where}not an ISO 8601 time: {text!r}") from None
    if t.tzinfo is None or t.utcoffset() is None:
        raise PriceError(f"{where}time {text!r} has no UTC offset (write e.g. 2026-01-12T00:00+01:00)")
    return t


@dataclass(frozen=True, slots=True)
class PriceSlot:
    start: datetime
    end: datetime
    nok_per_kwh: float
    # True for a forecast standing in for prices not yet published (see PriceSeries.extended_until).
    estimated: bool = False

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            t = getattr(self, name)
            if t.tzinfo is None or t.utcoffset() is None:
                raise PriceError(f"slot {name} {t.isoformat()} is not timezone-aware")
            # Kept in UTC: Python subtracts and compares two times of one zoneinfo zone on the wall
            # clock, which is wrong across a DST change.
            object.__setattr__(self, name, t.astimezone(UTC))
        minutes = (self.end - self.start).total_seconds() / 60
        if minutes not in SLOT_MINUTES:
            raise PriceError(
                f"slot {local_iso(self.start)}..{local_iso(self.end)} lasts {minutes:g} min;"
                f" expected {', '.join(map(str, SLOT_MINUTES))}"
            )
        if not math.isfinite(self.nok_per_kwh):
            raise PriceError(f"slot {local_iso(self.start)} has price {self.nok_per_kwh!r}")

    @property
    def hours(self) -> float:
        return (self.end - self.start).total_seconds() / 3600

    def contains(self, t: datetime) -> bool:
        return self.start <= t < self.end


@dataclass(frozen=True, slots=True)
class PriceSeries:
    """Contiguous, ordered slots of one price area (no gaps, no overlaps)."""

    area: str
    slots: tuple[PriceSlot, ...]

    def __post_init__(self) -> None:
        check_area(self.area)
        if not self.slots:
            raise PriceError("a price series needs at least one slot")
        for a, b in zip(self.slots, self.slots[1:], strict=False):
            if b.start != a.end:
                kind = "gap" if b.start > a.end else "overlap or disorder"
                raise PriceError(f"{kind} between {local_iso(a.end)} and {local_iso(b.start)}")

    def __len__(self) -> int:
        return len(self.slots)

    def __iter__(self) -> Iterator[PriceSlot]:
        return iter(self.slots)

    @property
    def start(self) -> datetime:
        return self.slots[0].start

    @property
    def end(self) -> datetime:
        return self.slots[-1].end

    @property
    def known_until(self) -> datetime:
        """End of the last published (not estimated) slot; the start if none is published."""
        known = [s for s in self.slots if not s.estimated]
        return known[-1].end if known else self.start

    def at(self, t: datetime) -> PriceSlot | None:
        i = bisect_right(self.slots, t, key=lambda s: s.start) - 1
        if i >= 0 and self.slots[i].contains(t):
            return self.slots[i]
        return None

    def window(self, start: datetime, end: datetime) -> PriceSeries:
        """The slots overlapping [start, end)."""
        chosen = tuple(s for s in self.slots if s.end > start and s.start < end)
        if not chosen:
            raise PriceError(f"no prices between {local_iso(start)} and {local_iso(end)}")
        return PriceSeries(self.area, chosen)

    def merged(self, other: PriceSeries) -> PriceSeries:
        """Union of two series of one area; the other's slots win where they overlap (published
        prices replace estimates)."""
        if other.area != self.area:
            raise PriceError(f"cannot merge {self.area} with {other.area} prices")
        kept = [s for s in self.slots if s.end <= other.start or s.start >= other.end]
        return PriceSeries(self.area, tuple(sorted([*kept, *other.slots], key=lambda s: s.start)))

    def extended_until(self, until: datetime) -> PriceSeries:
        """This series continued to ``until`` with a persistence forecast: each missing slot takes
        the price of the slot 24 hours earlier (or one series length earlier if shorter), marked
        estimated. Tomorrow's prices look most like today's at the same hour; the plan is redone
        when the real ones arrive."""
        if until <= self.end:
            return self
        period = min(timedelta(hours=24), self.end - self.start)
        slots = list(self.slots)
        while slots[-1].end < until:
            last = slots[-1]
            back = last.end - period
            model = slots[bisect_right(slots, back, key=lambda s: s.start) - 1]
            slots.append(PriceSlot(last.end, last.end + (model.end - model.start), model.nok_per_kwh, True))
        return PriceSeries(self.area, tuple(slots))

    def to_csv(self) -> str:
        out = io.StringIO()
        out.write("start,end,price_nok_per_kwh\n")
        for s in self.slots:
            out.write(f"{local_iso(s.start)},{local_iso(s.end)},{s.nok_per_kwh:.5f}\n")
        return out.getvalue()

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "area": self.area,
            "prices": [
                {
                    "start": local_iso(s.start),
                    "end": local_iso(s.end),
                    "price_nok_per_kwh": s.nok_per_kwh,
                    **({"estimated": True} if s.estimated else {}),
                }
                for s in self.slots
            ],
        }


def _infer_ends(starts: list[datetime], where: str) -> list[datetime]:
    """Ends for rows that only give a start: the next row's start; the last row repeats the step."""
    if len(starts) < 2:
        raise PriceError(f"{where}one 'time' row cannot tell the slot length; use start,end columns")
    ends = starts[1:]
    return [*ends, starts[-1] + (starts[-1] - starts[-2])]


def parse_csv(text: str, area: str = "NO1", where: str = "") -> PriceSeries:
    """CSV with header ``start,end,price_nok_per_kwh`` or ``time,price``. Lines starting with '#'
    are comments."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise PriceError(f"{where}no price rows")
    reader = csv.DictReader(lines)
    fields = [f.strip() for f in reader.fieldnames or []]
    reader.fieldnames = fields
    columns: tuple[str, str | None, str]
    if {"start", "end", "price_nok_per_kwh"} <= set(fields):
        columns = ("start", "end", "price_nok_per_kwh")
    elif {"time", "price"} <= set(fields):
        columns = ("time", None, "price")
    else:
        raise PriceError(
            f"{where}CSV header {','.join(fields)!r}: expected 'start,end,price_nok_per_kwh' or 'time,price'"
        )
    starts: list[datetime] = []
    ends: list[datetime] = []
    values: list[float] = []
    for n, row in enumerate(reader, start=2):
        at = f"{where}line {n}: "
        start_col, end_col, price_col = columns
        starts.append(parse_time(row[start_col] or "", at))
        if end_col:
            ends.append(parse_time(row[end_col] or "", at))
        try:
            values.append(float(row[price_col] or ""))
        except ValueError:
            raise PriceError(f"{at}price {row[price_col]!r} is not a number") from None
    if not columns[1]:
        ends = _infer_ends(starts, where)
    return PriceSeries(check_area(area), _slots(starts, ends, values, where))


def _slots(
    starts: list[datetime], ends: list[datetime], values: list[float], where: str
) -> tuple[PriceSlot, ...]:
    try:
        return tuple(PriceSlot(s, e, v) for s, e, v in zip(starts, ends, values, strict=True))
    except PriceError as exc:
        raise PriceError(f"{where}{exc}") from None


# Key sets a JSON price object may use: ours, the public day-ahead API's, and a bare time/price pair.
_JSON_KEYS = (
    ("start", "end", "price_nok_per_kwh"),
    ("time_start", "time_end", "NOK_per_kWh"),
    ("time", None, "price"),
)


def parse_json(text: str | bytes, area: str = "NO1", where: str = "") -> PriceSeries:
    """A JSON list of price objects, or ``{"area": ..., "prices": [...]}``. Objects use
    ``start/end/price_nok_per_kwh``, the day-ahead API's ``time_start/time_end/NOK_per_kWh``, or
    ``time/price``."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PriceError(f"{where}invalid JSON: {exc}") from None
    if isinstance(doc, dict):
        area = doc.get("area", area)
        doc = doc.get("prices")
    if not isinstance(doc, list) or not doc:
        raise PriceError(f"{where}expected a non-empty list of prices")
    first = doc[0]
    if not isinstance(first, dict):
        raise PriceError(f"{where}price entries must be objects")
    keys = next((k for k in _JSON_KEYS if k[0] in first and k[2] in first), None)
    if keys is None:
        raise PriceError(f"{where}price object keys {sorted(first)}: expected start/end/price_nok_per_kwh")
    start_key, end_key, price_key = keys
    starts, ends, values = [], [], []
    for i, item in enumerate(doc):
        at = f"{where}entry {i}: "
        if not isinstance(item, dict) or start_key not in item or price_key not in item:
            raise PriceError(f"{at}missing {start_key!r} or {price_key!r}")
        starts.append(parse_time(str(item[start_key]), at))
        if end_key:
            if end_key not in item:
                raise PriceError(f"{at}missing {end_key!r}")
            ends.append(parse_time(str(item[end_key]), at))
        value = item[price_key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PriceError(f"{at}price {value!r} is not a number")
        values.append(float(value))
    if not end_key:
        ends = _infer_ends(starts, where)
    order = sorted(range(len(starts)), key=lambda i: starts[i])
    return PriceSeries(
        check_area(area),
        _slots([starts[i] for i in order], [ends[i] for i in order], [values[i] for i in order], where),
    )


def load_file(path: str | Path, area: str = "NO1") -> PriceSeries:
    """Prices from a .csv or .json file."""
    path = Path(path)
    kind = path.suffix.lower()
    if kind not in (".csv", ".json"):
        raise PriceError(f"{path}: unknown price file type {path.suffix!r}; use .csv or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PriceError(f"{path}: {exc.strerror or exc}") from None
    where = f"{path}: "
    return parse_json(text, area, where) if kind == ".json" else parse_csv(text, area, where)


def sample_week() -> PriceSeries:
    """The bundled NO1 winter week, 15-minute slots (synthetic; apm/core/eco/data/README.md)."""
    text = resources.files("apm.core.eco.data").joinpath(SAMPLE_WEEK).read_text(encoding="utf-8")
    return parse_csv(text, "NO1", f"{SAMPLE_WEEK}: ")


def concat(parts: Iterable[PriceSeries]) -> PriceSeries:
    """Series of one area joined in time order (each must start where the previous ends)."""
    parts = sorted(parts, key=lambda p: p.start)
    if not parts:
        raise PriceError("no price series to join")
    return PriceSeries(parts[0].area, tuple(s for p in parts for s in p.slots))
