"""The meter's present state, merged from `Reading`s, with the age of every value; hourly energy.

What each list may change (NVE HAN lists, research notes 1.6):

- list 1 (every 2.5 s; Kamstrup sends none): active import power only;
- list 2 (every 10 s): powers, and the per-phase currents and voltages;
- list 3 (hourly): as list 2, plus the meter clock and the cumulative energy counters.

A quantity a reading does not carry (None) leaves the stored value alone; it just grows older. An IT
meter that never reports I2 therefore never has one.

Hourly energy: two consecutive list 3s give the energy of the hours between their clocks. Aidon meters
are known to send the same hourly list twice (same clock, same counters); the repeat is recognised and
dropped whole (its instantaneous values are stale copies too) so the hour is not counted twice.

Cost: `update` is O(number of quantities) and allocates one small object per changed value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from han.reading import QUANTITIES, Reading

# Cumulative counters (Wh, varh) come with list 3 only; everything else is an instantaneous value.
COUNTERS = tuple(q for q in QUANTITIES if q.endswith(("_wh", "_varh")))
INSTANT = tuple(q for q in QUANTITIES if q not in COUNTERS)

# Without a meter clock a repeat can only be told by its counters; a real next hour comes ~3600 s later.
_REPEAT_WINDOW_S = 1800.0


@dataclass(frozen=True, slots=True)
class Stamped:
    """A value and the clock time (seconds) it arrived."""

    value: float
    at: float

    def age(self, now: float) -> float:
        return now - self.at


@dataclass(frozen=True, slots=True)
class HourlyEnergy:
    """Energy imported and exported between two hourly lists (published with QoS 1).

    ``hour_start``/``hour_end`` are the meter's clock floored to the hour, ISO 8601 (with the meter's
    offset when it sends one). ``hours`` is more than 1 when hourly lists were missed in between;
    the energy then covers all of them.
    """

    hour_start: str
    hour_end: str
    hours: int
    import_wh: float
    export_wh: float
    meter_id: str | None = None


@dataclass(frozen=True, slots=True)
class Baseline:
    """The counters of the last hourly list: where the next hour's energy starts.

    The device keeps it in the flash image (`apm.io.storage.flash`) so that the first hourly list after a restart
    closes the hour that was open. ``at`` is the clock time it arrived (not kept: after a restart it is
    the restart), used to tell a repeated list from the next one when the meter sends no clock.
    """

    meter_time: str | None
    import_wh: float
    export_wh: float | None
    meter_id: str | None = None
    at: float = field(default=0.0, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"meter_time": self.meter_time, "import_wh": self.import_wh, "export_wh": self.export_wh,
                "meter_id": self.meter_id}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], at: float = 0.0) -> Baseline:
        """The stored form back; ValueError/TypeError/KeyError for anything else."""
        meter_time, meter_id = d["meter_time"], d.get("meter_id")
        import_wh, export_wh = d["import_wh"], d.get("export_wh")
        if not all(isinstance(v, str | None) for v in (meter_time, meter_id)) or isinstance(import_wh, bool) \
                or not isinstance(import_wh, int | float) or not isinstance(export_wh, int | float | None):
            raise TypeError(f"not a baseline: {dict(d)!r}")
        return cls(meter_time, float(import_wh), None if export_wh is None else float(export_wh), meter_id, at)


class BaselineStore(Protocol):
    """Where the baseline is kept across a restart (the flash image; `apm.io.storage.flash.FlashBaseline`)."""

    def load(self) -> Baseline | None: ...

    def save(self, baseline: Baseline) -> None: ...


class MeterState:
    """Merge readings in arrival order: ``update(now, reading)``; read values with their age."""

    def __init__(self) -> None:
        self.values: dict[str, Stamped] = {}
        self.meter: str | None = None
        self.meter_id: str | None = None
        self.meter_type: str | None = None
        self.meter_time: str | None = None
        self.phases: int | None = None
        # The last per-phase list (2 or 3) and when it arrived: currents, voltages and the power the
        # meter measured with them belong together, so the headroom reads them from here.
        self.phase_reading: Reading | None = None
        self.phase_at: float | None = None
        self.counts = {1: 0, 2: 0, 3: 0}
        self.repeats = 0  # repeated hourly lists dropped
        # The last hourly list's counters; a new value (never changed in place) whenever it moves on,
        # so whoever keeps it across a restart sees a change by identity.
        self.baseline: Baseline | None = None

    # --- input -----------------------------------------------------------------------------------

    def update(self, now: float, reading: Reading) -> HourlyEnergy | None:
        """Merge one reading received at ``now``; return the hourly record a list 3 completes, if any."""
        lst = reading.list
        if lst == 3 and self._is_repeat(now, reading):
            self.repeats += 1
            return None
        if reading.meter_id is not None and self.meter_id is not None and reading.meter_id != self.meter_id:
            # Another meter (replaced, or a wrong cable): its counters do not continue ours.
            self.baseline = None
            self.values.clear()
            self.phase_reading = None
            self.phase_at = None
        self.counts[lst] = self.counts.get(lst, 0) + 1
        self.meter = reading.meter
        if reading.meter_id is not None:
            self.meter_id = reading.meter_id
        if reading.meter_type is not None:
            self.meter_type = reading.meter_type
        if reading.meter_time is not None:
            self.meter_time = reading.meter_time
        values = self.values
        if lst == 1:
            if reading.active_import_w is not None:
                values["active_import_w"] = Stamped(reading.active_import_w, now)
            return None
        for name in INSTANT:
            v = getattr(reading, name)
            if v is not None:
                values[name] = Stamped(v, now)
        if reading.phases is not None:
            self.phases = reading.phases
        self.phase_reading = reading
        self.phase_at = now
        if lst != 3:
            return None
        for name in COUNTERS:
            v = getattr(reading, name)
            if v is not None:
                values[name] = Stamped(v, now)
        return self._close_hour(now, reading)

    def restore_baseline(self, baseline: Baseline, now: float = 0.0) -> None:
        """Continue hourly records from the baseline kept across a restart (`BaselineStore`)."""
        self.baseline = replace(baseline, at=now)

    # --- output ----------------------------------------------------------------------------------

    def value(self, name: str) -> float | None:
        s = self.values.get(name)
        return None if s is None else s.value

    def age(self, name: str, now: float) -> float | None:
        """Seconds since ``name`` last arrived; None when it never did."""
        s = self.values.get(name)
        return None if s is None else now - s.at

    def snapshot(self, now: float) -> dict[str, dict[str, float]]:
        """Every known value with its age: ``{name: {"value": v, "age_s": a}}`` (for status/MQTT)."""
        return {k: {"value": s.value, "age_s": now - s.at} for k, s in self.values.items()}

    # --- hourly lists ----------------------------------------------------------------------------

    def _is_repeat(self, now: float, r: Reading) -> bool:
        h = self.baseline
        if h is None or r.active_import_wh != h.import_wh or r.active_export_wh != h.export_wh:
            return False
        if r.meter_time is not None and h.meter_time is not None:
            return _same_time(r.meter_time, h.meter_time)
        return now - h.at < _REPEAT_WINDOW_S

    def _close_hour(self, now: float, r: Reading) -> HourlyEnergy | None:
        prev = self.baseline
        if r.active_import_wh is None:
            return None
        self.baseline = Baseline(r.meter_time, r.active_import_wh, r.active_export_wh, self.meter_id, now)
        if prev is None or (prev.meter_id is not None and prev.meter_id != self.meter_id):
            return None  # first hourly list, or another meter's counters: this one is the baseline
        prev_clock = _parse_time(prev.meter_time) if prev.meter_time is not None else None
        clock = _parse_time(r.meter_time) if r.meter_time is not None else None
        if prev_clock is None or clock is None:
            return None  # no clock to date the hour
        start, end = _floor_hour(prev_clock), _floor_hour(clock)
        if start.tzinfo is None or end.tzinfo is None:
            start, end = start.replace(tzinfo=None), end.replace(tzinfo=None)
        hours = round((end - start).total_seconds() / 3600.0)
        d_import = r.active_import_wh - prev.import_wh
        if hours < 1 or d_import < 0:
            return None  # clock set back or counters reset: start again from this list
        d_export = 0.0
        if r.active_export_wh is not None and prev.export_wh is not None:
            d_export = max(0.0, r.active_export_wh - prev.export_wh)
        return HourlyEnergy(start.isoformat(), end.isoformat(), hours, d_import, d_export, self.meter_id)


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _same_time(a: str, b: str) -> bool:
    ta, tb = _parse_time(a), _parse_time(b)
    if ta is None or tb is None:
        return a == b
    if ta.tzinfo is None or tb.tzinfo is None:
        return ta.replace(tzinfo=None) == tb.replace(tzinfo=None)
    return ta == tb


def _floor_hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)
